"""Training of the embedded toy-world *multi-view* prior: the toy text prior taught to draw 4 views of one object.

MVDream (Shi et al. 2023) fine-tunes Stable Diffusion on 4 renders of one Objaverse object at once; this
is the same at toy size, fine-tuning the shipped toy text prior (``threed/priors/toyworld``), so that
``threed generate --recipe quickstart-mv`` runs offline on a CPU (``scripts/train_toyworld_prior.py --mode
multiview``):

* Model: the text prior's UNet made multi-view (:mod:`threed.guidance.multiview`): its self-attention runs
  across the 4 views of an object, and each view's camera (``camera_features``, threed's frame) enters
  through a new projection class embedding whose last layer starts at zero, so training starts from the
  text prior exactly. The text encoder is fine-tuned with it; its vocabulary gains the words of the
  two-object captions ("and"), as new rows at the end, so the old token ids keep their meaning.
* Data: groups of 4 sphere-traced renders of one scene at MVDream's camera layout (azimuths 90 degrees
  apart from a random start; one elevation, distance, field of view, light, shading mode and background per
  group), from the text prior's scenes, the asymmetric "cube with a <colour> front" family and a seeded
  sample of two-object scenes ("a red cube and a blue sphere", side by side as the toy world defines them).
  Each view keeps the text prior's view-suffixed caption ("..., side view"), since the prior was trained
  on them and the toy conditioner hands them on (``multiview.json`` ``view_prompts``). Groups are mirrored
  left-right at random (every scene's mirror image is itself with the azimuths negated and, for a pair,
  the objects swapped, so pair groups are not mirrored).
* Objective: the text prior's (DDPM, epsilon, cosine schedule, Min-SNR-5), with one noise level per
  group, as MVDream trains: the 4 views of an object are one sample.

Like the other toy priors it trains in the shared loop (:mod:`threed.toyworld.train_loop`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.loading import PACKAGE_ROOT
from threed.guidance.multiview import CAMERA_DIM, MultiViewSpec, camera_features, make_multiview
from threed.guidance.prior import PRIOR_ALIASES
from threed.toyworld.raycast import render
from threed.toyworld.scenes import VIEW_LABELS, Scene, catalogue, view_caption
from threed.toyworld.train_card import colour_of, foreground
from threed.toyworld.train_config import MultiViewTrainConfig
from threed.toyworld.train_data import _split, choose_scenes, sample_backgrounds
from threed.toyworld.train_loop import Log, ToyPrior, train_prior
from threed.toyworld.train_models import build_tokenizer, save_prior, tokenize


def training_scenes(cfg: MultiViewTrainConfig) -> list[Scene]:
    """The text prior's scenes (singles, the asymmetric family) and ``cfg.data.pairs`` two-object scenes
    drawn with ``cfg.seed`` (the held-out captions, and pairs containing them, stay out)."""
    d = cfg.data
    scenes = catalogue(held_out=d.held_out, asymmetric=True, pairs=False)
    if d.pairs:
        held = set(d.held_out)
        pairs = [s for s in catalogue(asymmetric=False, pairs=True) if len(s.objects) == 2
                 and not any(Scene((o,)).caption in held for o in s.objects)]
        pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed))[: d.pairs]
        scenes += [pairs[i] for i in sorted(pick.tolist())]
    return scenes


def group_cameras(groups: int, views: int, cfg: MultiViewTrainConfig, size: int, generator: torch.Generator
                  ) -> Cameras:
    """``groups`` x ``views`` cameras, views of a group adjacent: azimuths 360/views apart from a random start,
    one elevation (a ``p_overhead`` share at 60-85 degrees), distance, field of view and light per group."""
    d = cfg.data

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(groups, generator=generator)

    over = torch.rand(groups, generator=generator) < d.p_overhead
    el = torch.where(over, uniform(60.0, 85.0), uniform(*d.elevation_range))
    start = uniform(-180.0, 180.0)
    dist, fovy = uniform(*d.distance_range), uniform(*d.fovy_range)
    light_el, light_az = uniform(0.0, 60.0), uniform(-180.0, 180.0)
    light_d = uniform(2.0, 4.0)
    rep = lambda x: x.repeat_interleave(views)  # noqa: E731
    az = rep(start) + torch.arange(views).repeat(groups) * (360.0 / views)
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    cams = Cameras.orbit(rep(el), az, rep(dist), rep(fovy), size)
    la, le = torch.deg2rad(rep(light_az)), torch.deg2rad(rep(light_el))
    cams.light = rep(light_d)[:, None] * torch.stack([torch.cos(le) * torch.sin(la), torch.sin(le),
                                                       torch.cos(le) * torch.cos(la)], dim=-1)
    return cams


@dataclass
class GroupCache:
    """Pre-rendered groups: ``images`` N x V x 3 x H x W uint8 and each view's orbit parameters (N x V)."""

    images: Tensor
    scene: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    fovy: Tensor
    label: Tensor
    """View label index (VIEW_LABELS) of each view."""


def render_groups(cfg: MultiViewTrainConfig, scenes: list[Scene], generator: torch.Generator, log: Log = print
                  ) -> GroupCache:
    """``cfg.data.groups`` groups of ``num_views`` renders; scenes drawn by family shares (singles, fronts, pairs)."""
    d, v, res = cfg.data, cfg.num_views, cfg.data.image_size
    n = d.groups
    choice = choose_scenes(scenes, n, d.p_asymmetric, d.p_pair, generator)
    images = torch.zeros(n, v, 3, res, res, dtype=torch.uint8)
    el, az, dist, fov, lab = (torch.zeros(n, v) for _ in range(5))
    t0 = time.time()
    for k, idx in enumerate(torch.unique(choice).tolist()):
        rows = torch.nonzero(choice == idx, as_tuple=True)[0]
        for chunk in rows.split(32):
            g = len(chunk)
            cams = group_cameras(g, v, cfg, res, generator)
            u = torch.rand(g, generator=generator)
            modes = ["albedo" if x < d.p_albedo else "textureless" if x < d.p_albedo + d.p_textureless
                     else "lambertian" for x in u.tolist()]
            bg = sample_backgrounds(d, scenes[idx], modes, generator)
            out = render(scenes[idx], cams, [m for m in modes for _ in range(v)], bg.repeat_interleave(v, 0),
                         ambient=d.ambient, supersample=d.supersample)
            images[chunk] = (out.rgb.permute(0, 3, 1, 2) * 255).round().to(torch.uint8).reshape(g, v, 3, res, res)
            for dst, src in ((el, cams.elevation), (az, cams.azimuth), (dist, cams.distance),
                             (fov, torch.rad2deg(cams.fovy))):
                dst[chunk] = src.reshape(g, v).float()
            lab[chunk] = torch.tensor([VIEW_LABELS.index(x) for x in cams.view_labels()], dtype=torch.float32
                                      ).reshape(g, v)
        if k % 100 == 0:
            log(f"rendered groups of {k + 1} scenes, {time.time() - t0:.0f} s")
    return GroupCache(images, choice, el, az, dist, fov, lab.long())


def extend_tokenizer(tokenizer, words: list[str], max_tokens: int):
    """``tokenizer``'s word-level vocabulary with ``words`` appended (old ids unchanged); returns the new one."""
    vocab = tokenizer.get_vocab()
    order = sorted(vocab, key=vocab.__getitem__)
    new = [w for w in sorted(set(words)) if w not in vocab]
    return build_tokenizer(order + new, max_tokens), len(new)


class MultiViewToyPrior(ToyPrior):
    """The multi-view prior's networks (the text prior's, made multi-view), 4-view groups and card."""

    cfg: MultiViewTrainConfig

    def __init__(self, cfg: MultiViewTrainConfig):
        self.cfg = cfg
        self.views_per_sample = cfg.num_views

    def build(self) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        cfg = self.cfg
        base = PACKAGE_ROOT / PRIOR_ALIASES[cfg.base] if cfg.base in PRIOR_ALIASES else Path(cfg.base)
        if not (base / "unet").is_dir():
            raise ThreedError(f"the multi-view prior is fine-tuned from a toy text prior; {base} has none "
                              "(train it first: scripts/train_toyworld_prior.py --out threed/priors/toyworld)")
        if cfg.batch_size % cfg.num_views:
            raise ThreedError(f"batch_size {cfg.batch_size} must be a multiple of num_views {cfg.num_views}")
        self.scenes = training_scenes(cfg)
        old_tok = PreTrainedTokenizerFast.from_pretrained(base / "tokenizer")
        words = [w for s in self.scenes for lab in VIEW_LABELS for w in _split(view_caption(s.caption, lab))]
        self.tokenizer, self.new_words = extend_tokenizer(old_tok, words, old_tok.model_max_length)
        self.text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
        emb = self.text_encoder.get_input_embeddings()
        old_rows = emb.weight.shape[0]
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        with torch.no_grad():  # new words start at the mean embedding
            w = self.text_encoder.get_input_embeddings().weight
            w[old_rows:] = w[:old_rows].mean(0)
        base_unet = UNet2DConditionModel.from_pretrained(base / "unet")
        config = dict(base_unet.config)
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
        unet = UNet2DConditionModel.from_config(config)
        missing, unexpected = unet.load_state_dict(base_unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("class_embedding.") for k in missing):
            raise ThreedError(f"{base}/unet does not fit the multi-view UNet: {missing[:3]} {unexpected[:3]}")
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)  # pyright: ignore[reportAttributeAccessIssue]
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)  # pyright: ignore[reportAttributeAccessIssue]
        self.unet = make_multiview(unet, cfg.num_views)
        self.captions = tokenize(self.tokenizer, [view_caption(s.caption, lab) for s in self.scenes
                                                  for lab in (None,) + VIEW_LABELS]
                                 ).reshape(len(self.scenes), 1 + len(VIEW_LABELS), -1)
        if (self.captions == self.tokenizer.unk_token_id).any():
            raise ThreedError("a training caption tokenizes to [UNK]; the vocabulary is incomplete")
        self.uncond = tokenize(self.tokenizer, [""])[0]
        self.modules = {"unet": self.unet, "text_encoder": self.text_encoder}

    def describe(self) -> tuple[str, dict[str, Any]]:
        n_unet = sum(p.numel() for p in self.unet.parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        pairs = sum(len(s.objects) == 2 for s in self.scenes)
        return (f"toy multi-view prior from {self.cfg.base}: UNet {n_unet / 1e6:.2f} M params, text encoder "
                f"{n_text / 1e6:.3f} M, {len(self.scenes)} scenes ({pairs} pairs), {self.new_words} new words",
                {"unet_params": n_unet, "text_params": n_text, "scenes": len(self.scenes), "pairs": pairs,
                 "vocabulary": len(self.tokenizer), "new_words": self.new_words})

    def load_data(self, generator: torch.Generator, log: Log) -> dict[str, Any]:
        self.cache = render_groups(self.cfg, self.scenes, generator, log=log)
        return {"groups": len(self.cache.images)}

    def batch(self, generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``batch_size / num_views`` cached groups (mirrored at random, pairs never), their views' captions
        (bare for a ``p_no_suffix`` share of groups, empty for ``p_uncond``) and camera features."""
        cfg, d, c = self.cfg, self.cfg.data, self.cache
        v, g = cfg.num_views, cfg.batch_size // cfg.num_views
        idx = torch.randint(0, len(c.images), (g,), generator=generator)
        pair = torch.tensor([len(self.scenes[i].objects) == 2 for i in c.scene[idx].tolist()])
        flip = (torch.rand(g, generator=generator) < 0.5) & ~pair
        x = c.images[idx].float() / 127.5 - 1.0
        x = torch.where(flip[:, None, None, None, None], x.flip(-1), x).reshape(g * v, *x.shape[2:])
        az = torch.where(flip[:, None], -c.azimuth[idx], c.azimuth[idx])
        cams = Cameras.orbit(c.elevation[idx].flatten(), az.flatten(), c.distance[idx].flatten(),
                             c.fovy[idx].flatten(), d.image_size)
        bare = (torch.rand(g, generator=generator) < d.p_no_suffix)[:, None]
        slot = torch.where(bare, 0, 1 + c.label[idx])
        ids = self.captions[c.scene[idx][:, None].expand(g, v), slot]
        drop = (torch.rand(g, generator=generator) < d.p_uncond)[:, None, None]
        ids = torch.where(drop, self.uncond, ids).reshape(g * v, -1)
        return x.contiguous(), (ids, camera_features(cams, "threed"))

    def predict(self, noisy: Tensor, t: Tensor, condition: tuple[Tensor, Tensor]) -> Tensor:
        ids, cams = condition
        return self.unet(noisy, t, self.text_encoder(ids).last_hidden_state, class_labels=cams).sample

    def save(self, out: Path, scheduler: Any) -> None:
        self.scheduler = scheduler
        save_prior(out, self.unet, self.text_encoder, self.tokenizer, scheduler)
        MultiViewSpec(num_views=self.cfg.num_views, camera_frame="threed", view_prompts=True).write(out)

    def evaluate(self, out: Path) -> list[dict[str, Any]]:
        return multiview_sample_report(self.cfg, out, out / "samples.png")

    def card(self, summary: dict[str, Any]) -> str:
        return multiview_card(summary)


def expected_sides(scene: Scene) -> list[str] | None:
    """The dominant colour at azimuths 0, 90, 180, 270 (front, right, back, left) of a one-object scene."""
    if len(scene.objects) != 1:
        return None
    obj = scene.objects[0]
    return [obj.front_colour or obj.colour] + [obj.colour] * 3


@torch.no_grad()
def multiview_sample_report(cfg: MultiViewTrainConfig, folder: Path, path: Path | None = None,
                            prompts: tuple[str, ...] | None = None, samples: int | None = None,
                            steps: int | None = None) -> list[dict[str, Any]]:
    """Sample every prompt's 4 views at azimuths 0, 90, 180, 270 (elevation 15) from the saved prior; write the
    sheet (one row per object: its 4 views) to ``path``; judge each view's dominant colour against the
    truth's (front colour on the front only). Returns one row per prompt: the share of views right."""
    import imageio.v3 as iio

    from threed.guidance.multiview import load_multiview_prior
    from threed.toyworld.scenes import parse_prompt

    prior: Any = load_multiview_prior(str(folder))
    k, res = samples or cfg.samples_per_prompt, cfg.data.image_size
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    v = prior.num_views
    az = torch.arange(v, dtype=torch.float32) * 360.0 / v
    cams = Cameras.orbit(torch.full((v * k,), 15.0), az.repeat(k), 2.75, 40.0, res)
    report, rows = [], []
    for prompt in prompts or cfg.sample_prompts:
        imgs = prior.sample_views(prompt, cams, steps or cfg.sample_steps, cfg.cfg_scale, gen)
        want = expected_sides(parse_prompt(prompt))
        seen = [colour_of(im, foreground(im)) for im in imgs]
        row = {"prompt": prompt, "colours_seen": seen}
        if want is not None:
            right = [s == w for s, w in zip(seen, want * k)]
            row["sides_right"] = float(np.mean(right))
            row["front_right"] = float(np.mean([all(right[i * v:(i + 1) * v]) for i in range(k)]))
        report.append(row)
        rows += [torch.cat(list(imgs[i * v:(i + 1) * v]), dim=1) for i in range(min(k, 2))]
    if path is not None:
        grid = torch.cat(rows, dim=0).repeat_interleave(2, 0).repeat_interleave(2, 1)
        iio.imwrite(path, (grid.numpy() * 255).round().astype(np.uint8))
    return report


def multiview_card(s: dict[str, Any]) -> str:
    """README.md of the saved multi-view prior."""
    c, d = s["config"], s["config"]["data"]
    hist = s["history"]
    picks = sorted({0, len(hist) // 4, len(hist) // 2, 3 * len(hist) // 4, len(hist) - 1}) if hist else []
    loss_rows = "\n".join(f"| {hist[i][0]} | {hist[i][1]:.4f} | {hist[i][2] / 60:.1f} |" for i in picks)
    sample_rows = "\n".join(
        f"| {r['prompt']} | {r.get('sides_right', float('nan')):.2f} | {r.get('front_right', float('nan')):.2f} | "
        f"{', '.join(str(x) for x in r['colours_seen'][:8])} |" for r in s["eval"])
    return f"""# threed toy-world multi-view prior

A tiny MVDream-style multi-view diffusion model (Shi et al. 2023) in pixel space ({d['image_size']} x
{d['image_size']} RGB, no VAE): the 4 views of one object are denoised together, self-attention running
across them, each view's camera (its camera-to-world matrix, position at unit length, threed's +Y-up
frame) entering through the UNet's projection class embedding. Fine-tuned from the toy text prior
(`{c['base']}`) on 4-view renders of the toy world, so that `threed generate --recipe quickstart-mv`
runs offline on a CPU. It knows nothing outside the toy world.

## Components (diffusers layout)

`model_index.json`, `unet/` (diffusers `UNet2DConditionModel` with `class_embed_type: projection`, 16 camera
inputs; {s['unet_params'] / 1e6:.2f} M params), `text_encoder/` (transformers `CLIPTextModel`,
{s['text_params'] / 1e6:.3f} M params), `tokenizer/` (word level, {s['vocabulary']} tokens, {s['new_words']}
more than the text prior's), `scheduler/` (`DDPMScheduler`, cosine, {c['prediction_type']}), and
`multiview.json`: `num_views` {c['num_views']}, `camera_frame` threed, `view_prompts` true (each view's
prompt carries its DreamFusion view suffix, as the text prior was trained). Load it with
`threed.guidance.multiview.load_multiview_prior`; the cross-view attention processors are installed on
load. Folder size {s['folder_mb']} MB.

## Data

{s['groups']} groups of {c['num_views']} sphere-traced renders at MVDream's camera layout (azimuths 90 degrees
apart from a random start; one elevation in {d['elevation_range']} degrees (a {d['p_overhead']} share at
60-85), distance, field of view, light, shading and background per group) of {s['scenes']} scenes: every
shape x colour but the held-out {', '.join(d['held_out'])}, the asymmetric cube family (share
{d['p_asymmetric']}), and {s['pairs']} two-object scenes drawn with the seed (share {d['p_pair']}). Captions:
view-suffixed, bare for {d['p_no_suffix']} of the groups, empty for {d['p_uncond']}. Groups of one object are
mirrored left-right at random.

## Training

{s['steps']} steps of {c['batch_size']} images ({c['batch_size'] // c['num_views']} groups), AdamW lr {c['lr']},
one noise level per group, DDPM epsilon with Min-SNR-{c['min_snr_gamma']}, EMA {c['ema_decay']};
{s['train_minutes']} min on {c['threads']} CPU thread(s), seed {c['seed']}. Reproduce:
`python scripts/train_toyworld_prior.py --mode multiview --out threed/priors/toyworld-mv --seed {c['seed']}
--steps {s['steps']}`.

| step | loss | minutes |
| --- | --- | --- |
{loss_rows}

## Samples

`samples.png`: per row, the 4 views (azimuth 0, 90, 180, 270 at elevation 15) of one sample, 2 samples per
prompt; {c['sample_steps']} DDIM steps, guidance scale {c['cfg_scale']}. Each view's dominant colour
(chromaticity) is judged against the truth's: the front colour at azimuth 0, the body colour elsewhere.
"sides right" is the share of views right, "all 4 right" the share of samples with every view right.

| prompt | sides right | all 4 right | colours seen (first 8 views) |
| --- | --- | --- | --- |
{sample_rows}
"""


def train_multiview(cfg: MultiViewTrainConfig, out: str | Path, resume: bool = False, log: Log = print) -> dict:
    """Fine-tune the multi-view prior and write it to ``out`` (diffusers layout + multiview.json + card + sheet)."""
    return train_prior(MultiViewToyPrior(cfg), out, resume, log)
