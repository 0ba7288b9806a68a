"""The toy priors' training data: sphere-traced renders of toy-world scenes, rendered once into a cache.

* text prior: renders of every training scene from :class:`threed.cameras.CameraSampler` cameras, with
  random shading and backgrounds (:func:`render_cache`); captions carry DreamFusion's view suffixes; left-right
  flips at random (every scene is mirror-symmetric about x = 0, so a flip is the render from the mirrored
  camera, with the same view label).
* view prior: ``views_per_scene`` renders of each scene over white (:func:`render_views`); a training pair
  is two renders of one scene, the reference framed as image-to-3D frames a photo
  (:func:`threed.reference.image.frame_object`), the target at its pose relative to it
  (:func:`threed.guidance.zero123.relative_pose`) (:func:`training_pairs`).

Every draw comes from an explicit ``torch.Generator``, so the data of a seed is the same on every run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, CameraSampler, CameraSamplerConfig
from threed.errors import ThreedError
from threed.guidance.zero123 import relative_pose
from threed.reference.image import frame_object
from threed.toyworld.raycast import render
from threed.toyworld.scenes import COLOURS, VIEW_LABELS, Scene, view_caption
from threed.toyworld.train_config import ToyworldDataConfig, ViewDataConfig
from threed.toyworld.train_models import SPECIAL_TOKENS, tokenize


def vocabulary(scenes: Sequence[Scene]) -> list[str]:
    """Special tokens, then every word of the captions and view suffixes (sorted)."""
    words = {w for s in scenes for label in VIEW_LABELS for w in _split(view_caption(s.caption, label))}
    return list(SPECIAL_TOKENS) + sorted(words)


def _split(text: str) -> list[str]:
    return text.replace(",", " , ").split()


@dataclass
class RenderCache:
    """Pre-rendered training images and what each shows."""

    images: Tensor
    """N x 3 x H x W uint8."""
    scene: Tensor
    """N scene indices into the training catalogue."""
    label: Tensor
    """N indices into VIEW_LABELS."""


def sample_backgrounds(cfg: ToyworldDataConfig, scene: Scene, modes: Sequence[str],
                       generator: torch.Generator) -> Float[Tensor, "B 3"]:
    """Mostly white, some light grey, some random solid colours; never too close to the object's colours.

    A white object, or a textureless (white) render, gets no white background; a random colour
    within 0.25 of an object albedo becomes mid grey.
    """
    n = len(modes)
    u = torch.rand(n, generator=generator)
    grey = 0.55 + 0.4 * torch.rand(n, 1, generator=generator)
    bg = torch.where((u < cfg.p_white_background)[:, None], torch.ones(n, 3),
                     torch.where((u < cfg.p_white_background + cfg.p_grey_background)[:, None], grey.expand(n, 3),
                                 0.15 + 0.85 * torch.rand(n, 3, generator=generator)))
    albedos = [torch.tensor(COLOURS[c]) for o in scene.objects for c in (o.colour, o.front_colour) if c]
    whiteish = any(bool((a > 0.9).all()) for a in albedos)
    for i, m in enumerate(modes):
        colours = albedos + ([torch.ones(3)] if m == "textureless" or whiteish else [])
        if any(float((bg[i] - a).abs().max()) < 0.25 for a in colours):
            bg[i] = 0.45 + 0.2 * torch.rand(1, generator=generator)
    return bg


def choose_scenes(scenes: Sequence[Scene], n: int, p_asymmetric: float, p_pair: float,
                  generator: torch.Generator) -> Tensor:
    """``n`` scene indices: each draw's family (an asymmetric cube with share ``p_asymmetric``, a two-object
    scene with ``p_pair``, else a single object), then a scene of that family uniformly."""
    single = [i for i, s in enumerate(scenes) if len(s.objects) == 1 and s.objects[0].front_colour is None]
    asym = [i for i, s in enumerate(scenes) if len(s.objects) == 1 and s.objects[0].front_colour is not None]
    pair = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    u = torch.rand(n, generator=generator)
    fam = torch.where(u < p_asymmetric, 1, torch.where(u < p_asymmetric + p_pair, 2, 0))
    choice = torch.zeros(n, dtype=torch.long)
    for f, members in enumerate((single, asym, pair)):
        sel = fam == f
        if sel.any():
            if not members:
                raise ThreedError(f"data config asks for a scene family with no scenes (family {f})")
            pick = torch.randint(0, len(members), (int(sel.sum()),), generator=generator)
            choice[sel] = torch.tensor(members)[pick]
    return choice


def render_cache(cfg: ToyworldDataConfig, scenes: Sequence[Scene], generator: torch.Generator,
                 log=print) -> RenderCache:
    """Render ``cfg.cache_size`` training images of the given scenes (families mixed as configured)."""
    n, res = cfg.cache_size, cfg.image_size
    choice = choose_scenes(scenes, n, cfg.p_asymmetric, cfg.p_pair, generator)
    images = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    t0 = time.time()
    for k, idx in enumerate(torch.unique(choice).tolist()):
        rows = torch.nonzero(choice == idx, as_tuple=True)[0]
        for chunk in rows.split(128):
            b = len(chunk)
            cams = training_cameras(b, cfg.p_overhead, res, generator)
            u = torch.rand(b, generator=generator)
            modes = ["albedo" if x < cfg.p_albedo else "textureless" if x < cfg.p_albedo + cfg.p_textureless
                     else "lambertian" for x in u.tolist()]
            bg = sample_backgrounds(cfg, scenes[idx], modes, generator)
            out = render(scenes[idx], cams, modes, bg, ambient=cfg.ambient, supersample=cfg.supersample)
            images[chunk] = (out.rgb.permute(0, 3, 1, 2) * 255).round().to(torch.uint8)
            labels[chunk] = torch.tensor([VIEW_LABELS.index(v) for v in cams.view_labels()])
        if k % 20 == 0:
            log(f"rendered {k + 1} scenes, {time.time() - t0:.0f} s")
    return RenderCache(images, choice, labels)


def training_cameras(count: int, p_overhead: float, size: int, generator: torch.Generator) -> Cameras:
    """``count`` cameras of the default :class:`CameraSampler`, a ``p_overhead`` share of them (drawn first)
    replaced by cameras at 60-85 degrees elevation (the "overhead view" label)."""
    n_over = int((torch.rand(count, generator=generator) < p_overhead).sum())
    samplers = ((CameraSampler(CameraSamplerConfig()), count - n_over),
                (CameraSampler(CameraSamplerConfig(elevation_range=(60.0, 85.0))), n_over))
    return _cat_cameras([sampler.sample(size, generator=generator, batch_size=m) for sampler, m in samplers if m])


def _cat_cameras(cams: Sequence[Cameras]) -> Cameras:
    """One batch of the cameras of several (same image size)."""
    if len(cams) == 1:
        return cams[0]
    first = cams[0]
    kw = {k: torch.cat([getattr(c, k) for c in cams]) for k in
          ("c2w", "fovy", "elevation", "azimuth", "distance", "light")}
    return Cameras(height=first.height, width=first.width, **kw)


def caption_table(tokenizer, scenes: Sequence[Scene]) -> Tensor:
    """Token ids of every scene's caption: S x 5 x L (bare, then with each VIEW_LABELS suffix)."""
    texts = [view_caption(s.caption, lab) for s in scenes for lab in (None,) + VIEW_LABELS]
    return tokenize(tokenizer, texts).reshape(len(scenes), 1 + len(VIEW_LABELS), -1)


@dataclass
class ViewCache:
    """Pre-rendered views: images and masks (uint8), cameras and scene index of each."""

    images: Tensor
    """N x H x W x 3 uint8."""
    masks: Tensor
    """N x H x W x 1 uint8."""
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    scene: Tensor
    """N scene indices; the views of scene s are rows s*V ... s*V + V - 1."""


def render_views(cfg: ViewDataConfig, scenes: list[Scene], generator: torch.Generator, log=print) -> ViewCache:
    """``views_per_scene`` renders of every scene over white, albedo or lambertian."""
    v, res = cfg.views_per_scene, cfg.image_size
    imgs, masks, el, az, dist = [], [], [], [], []
    t0 = time.time()
    for k, scene in enumerate(scenes):
        cams = training_cameras(v, cfg.p_overhead, res, generator)
        modes = ["albedo" if u < cfg.p_albedo else "lambertian" for u in torch.rand(v, generator=generator).tolist()]
        out = render(scene, cams, modes, (1.0, 1.0, 1.0), ambient=cfg.ambient, supersample=cfg.supersample)
        imgs.append((out.rgb * 255).round().to(torch.uint8))
        masks.append((out.opacity * 255).round().to(torch.uint8))
        el.append(cams.elevation)
        az.append(cams.azimuth)
        dist.append(cams.distance)
        if k % 20 == 0:
            log(f"rendered {k + 1}/{len(scenes)} scenes, {time.time() - t0:.0f} s")
    return ViewCache(torch.cat(imgs), torch.cat(masks), torch.cat(el), torch.cat(az), torch.cat(dist),
                     torch.arange(len(scenes)).repeat_interleave(v))


def training_pairs(cache: ViewCache, cfg: ViewDataConfig, batch: int, generator: torch.Generator
                   ) -> tuple[Float[Tensor, "B 3 H W"], Float[Tensor, "B 3 H W"], Float[Tensor, "B 4"]]:
    """(target in [-1, 1], framed reference in [-1, 1], relative pose) for ``batch`` random pairs, mirrored at random."""
    v = cfg.views_per_scene
    scene = torch.randint(0, int(cache.scene.max()) + 1, (batch,), generator=generator)
    i = scene * v + torch.randint(0, v, (batch,), generator=generator)
    j = scene * v + torch.randint(0, v, (batch,), generator=generator)
    ref_rgb, ref_mask = cache.images[i].float() / 255, cache.masks[i].float() / 255
    ref, _, _ = frame_object(ref_rgb, ref_mask, cfg.fill_ratio, cfg.image_size)
    target = cache.images[j].float() / 255
    pose = relative_pose(cache.elevation[j], cache.azimuth[j], cache.distance[j], cache.elevation[i],
                         cache.azimuth[i], cache.distance[i], "zero123")
    flip = torch.rand(batch, generator=generator) < 0.5
    ref = torch.where(flip[:, None, None, None], ref.flip(2), ref)
    target = torch.where(flip[:, None, None, None], target.flip(2), target)
    pose[:, 1] = torch.where(flip, -pose[:, 1], pose[:, 1])
    to_model = lambda x: (x.permute(0, 3, 1, 2) * 2 - 1).contiguous()  # noqa: E731
    return to_model(target), to_model(ref), pose
