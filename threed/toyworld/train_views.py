"""Training of the embedded toy-world *view-conditioned* prior: a tiny pixel-space Zero-1-to-3.

It lets ``threed generate --image assets/examples/<toy>.png`` run offline on a CPU
(``image_model=toyworld``) and be scored against the toy world's ground truth. Same world, same
objective and same entry point as the text prior (``scripts/train_toyworld_prior.py --mode views``):

* Data: every toy-world scene (shapes x colours and the asymmetric "cube with a <colour> front"
  family, minus the held-out captions) sphere-traced from ``views_per_scene`` random cameras of
  :class:`threed.cameras.CameraSampler` over white, shaded albedo or lambertian at random. A training
  pair is two renders of one scene: the reference, framed exactly as image-to-3D frames a user's
  photo (:func:`threed.reference.image.frame_object`), and the target at its pose relative to the
  reference (:func:`threed.guidance.zero123.relative_pose`, the ``zero123`` convention). Pairs are
  mirrored left-right at random with the azimuth change negated (every scene is symmetric about x = 0).
* Model: Zero123's layout at toy size. A diffusers ``UNet2DConditionModel`` on 32 x 32 RGB taking
  [noisy target, reference] (6 channels) and one cross-attention token ``cc_projection([image
  embedding, pose])``, the image embedding from a tiny transformers ``CLIPVisionModelWithProjection``
  trained jointly (Zero123 uses a frozen CLIP; here nothing pretrained exists). The pose is also the
  UNet's class embedding (``class_embed_type="projection"``), which reaches every resolution. The
  first version had no image encoder: after 2,312 steps its samples did not depend on the reference
  at all (same noise, same sample for a red cube and a white pyramid; the denoising loss with a
  shuffled reference was within 5 % of the true one), so the global token is what carries identity.
* Objective: DDPM v-prediction, cosine schedule, x0 errors weighted by min(max(SNR, 1), 5) (the text
  prior's epsilon + Min-SNR-5 weighs the high-noise steps, where the reference decides colour and
  layout, by the SNR alone: see ``ViewTrainConfig.prediction_type``); the reference and the token are
  dropped together with probability 0.1 for classifier-free guidance on the image.
* Output: ``model_index.json``, ``unet/``, ``scheduler/``, ``cc_projection/``, ``image_encoder/``,
  ``feature_extractor/``, a model card and
  ``samples.png`` (per row: the reference, then ground truth and a sample at Δazimuth 0, 90, 180, 270).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, CameraSampler, CameraSamplerConfig
from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import atomic_folder, save_torch_atomic
from threed.guidance.zero123 import PixelViewPrior, clip_pixels, clip_preprocessing, relative_pose, save_projection
from threed.reference.image import frame_object
from threed.toyworld.raycast import render
from threed.toyworld.scenes import Scene, catalogue, parse_prompt
from threed.toyworld.train import (EMA, DiffusionTrainConfig, RenderDataConfig, ShapeJudge, UNetSizes, build_scheduler,
                                   colour_of, foreground, min_snr_weight)

SAMPLE_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
"""Azimuth changes of the sample grid's columns."""


@dataclass
class ViewModelConfig(UNetSizes):
    """Sizes of the view prior's UNet and pose projection."""

    token_dim: int = 64
    """Width of the token (the UNet's cross-attention dimension)."""
    image_dim: int = 64
    """Width of the image embedding (the CLIP vision model's projection)."""
    encoder_width: int = 64
    """Hidden width of the CLIP vision transformer."""
    encoder_layers: int = 2
    """Its transformer layers."""
    encoder_patch: int = 4
    """Its patch size in pixels (32 px -> 8 x 8 patches)."""


@dataclass
class ViewDataConfig(RenderDataConfig):
    """What the view prior is trained on (the text prior's held-out captions stay held out)."""

    views_per_scene: int = 64
    """Renders per scene; pairs are drawn among them."""
    p_albedo: float = 0.4
    """Share of renders shaded albedo; the rest lambertian (ambient ``ambient``)."""
    p_overhead: float = 0.1
    """Share of cameras at 60-85 degrees elevation."""
    ambient: float = 0.3
    """Ambient term of lambertian shading."""
    fill_ratio: float = 0.5
    """Framing of the reference (threed.reference.image); image-to-3D recipes with this prior use the same."""
    p_uncond: float = 0.1
    """Share of pairs without their reference (zero image and token), for classifier-free guidance."""


@dataclass
class ViewTrainConfig(DiffusionTrainConfig):
    """Training run of the toy-world view prior (optimisation settings as the text prior's)."""

    model: ViewModelConfig = field(default_factory=ViewModelConfig)
    """Network sizes."""
    data: ViewDataConfig = field(default_factory=ViewDataConfig)
    """Training data."""
    minutes: float = 45.0
    """Maximum wall time of rendering + training, summed over resumes (sampling at the end is extra)."""
    batch_size: int = 32
    """Pairs per step."""
    sample_scenes: tuple[str, ...] = ("a red cube", "a blue cube with a yellow front", "a green cube with a red front",
                                      "a yellow cylinder", "a white pyramid", "a purple torus", "an orange cone")
    """One row of samples.png per caption (references from the front, elevation 0, distance 2.75)."""
    sample_steps: int = 50
    """DDIM steps for the samples."""
    cfg_scale: float = 3.0
    """Classifier-free guidance scale of the samples."""
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    """v: with ``snr_floor`` 1 the loss weighs x0 errors by min(max(SNR, 1), 5), so the high-noise steps where
    the reference decides colour and shape count as much as mid-noise ones (epsilon + Min-SNR weighs them by
    SNR, 0.02 at t = 900: the first version learnt almost nothing from its reference there)."""
    snr_floor: float = 1.0
    """See :class:`DiffusionTrainConfig`."""


def build_view_models(cfg: ViewModelConfig, resolution: int):
    """Fresh components: UNet2DConditionModel (6 channels in, pose class embedding), the projection
    ``Linear(image_dim + 4, token_dim)``, a CLIPVisionModelWithProjection and its CLIPImageProcessor."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    n = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution, in_channels=6, out_channels=3, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), cross_attention_dim=cfg.token_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
        class_embed_type="projection", projection_class_embeddings_input_dim=4)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=cfg.encoder_width, intermediate_size=2 * cfg.encoder_width, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=max(1, cfg.encoder_width // 16), image_size=resolution, patch_size=cfg.encoder_patch,
        projection_dim=cfg.image_dim))
    processor = CLIPImageProcessor(size={"shortest_edge": resolution},
                                   crop_size={"height": resolution, "width": resolution})
    return unet, torch.nn.Linear(cfg.image_dim + 4, cfg.token_dim), encoder, processor


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
    v, res = cfg.views_per_scene, cfg.resolution
    main = CameraSampler(CameraSamplerConfig())
    over = CameraSampler(CameraSamplerConfig(elevation_range=(60.0, 85.0)))
    imgs, masks, el, az, dist = [], [], [], [], []
    t0 = time.time()
    for k, scene in enumerate(scenes):
        n_over = int((torch.rand(v, generator=generator) < cfg.p_overhead).sum())
        parts = [s.sample(res, generator=generator, batch_size=m) for s, m in ((main, v - n_over), (over, n_over)) if m]
        cams = parts[0] if len(parts) == 1 else Cameras(
            height=res, width=res, **{a: torch.cat([getattr(c, a) for c in parts]) for a in
                                      ("c2w", "fovy", "elevation", "azimuth", "distance", "light")})
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
    ref, _, _ = frame_object(ref_rgb, ref_mask, cfg.fill_ratio, cfg.resolution)
    target = cache.images[j].float() / 255
    pose = relative_pose(cache.elevation[j], cache.azimuth[j], cache.distance[j], cache.elevation[i],
                         cache.azimuth[i], cache.distance[i], "zero123")
    flip = torch.rand(batch, generator=generator) < 0.5
    ref = torch.where(flip[:, None, None, None], ref.flip(2), ref)
    target = torch.where(flip[:, None, None, None], target.flip(2), target)
    pose[:, 1] = torch.where(flip, -pose[:, 1], pose[:, 1])
    to_model = lambda x: (x.permute(0, 3, 1, 2) * 2 - 1).contiguous()  # noqa: E731
    return to_model(target), to_model(ref), pose


def _ckpt_path(out: Path) -> Path:
    return out.parent / f"{out.name}-train-ckpt" / "state.pt"


def train_views(cfg: ViewTrainConfig, out: str | Path, resume: bool = False, log=print) -> dict:
    """Train the view prior and write it to ``out`` (diffusers-like layout + README.md + samples.png)."""
    out = Path(out)
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    d = cfg.data
    scenes = catalogue(held_out=d.held_out, asymmetric=True, pairs=False)
    unet, projection, encoder, processor = build_view_models(cfg.model, d.resolution)
    scheduler = build_scheduler(cfg)
    params = list(unet.parameters()) + list(projection.parameters()) + list(encoder.parameters())
    # the saved processor's own size and statistics, which guidance reads back (ViewConditionedPrior)
    clip_size, mean, std = clip_preprocessing(processor)
    clip_mean, clip_std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay)
    n_params = sum(p.numel() for p in params)
    log(f"toy view prior: {n_params / 1e6:.2f} M params, {len(scenes)} training scenes")
    ckpt = _ckpt_path(out)
    step, elapsed_before, history = 0, 0.0, []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume:
        if not ckpt.exists():
            raise ThreedError(f"--resume: no checkpoint at {ckpt}; run without --resume to start training")
        state = torch.load(ckpt, weights_only=False)
        if state["config"]["model"] != to_dict(cfg.model) or state["config"]["data"] != to_dict(cfg.data):
            raise ThreedError(f"--resume: checkpoint {ckpt} was made with another model/data config")
        unet.load_state_dict(state["unet"])
        projection.load_state_dict(state["projection"])
        encoder.load_state_dict(state["image_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema.shadow = state["ema"]
        gen.set_state(state["generator"])
        step, elapsed_before, history = state["step"], state["elapsed"], state["history"]
        log(f"resumed from {ckpt} at step {step} ({elapsed_before / 60:.1f} min done)")
    cache = render_views(d, scenes, torch.Generator().manual_seed(cfg.seed), log=log)
    log(f"render cache: {len(cache.images)} views in {time.time() - t_start:.0f} s")
    alphas = scheduler.alphas_cumprod

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def save_ckpt() -> None:
        save_torch_atomic({"unet": unet.state_dict(), "projection": projection.state_dict(),
                    "image_encoder": encoder.state_dict(), "optimizer": opt.state_dict(),
                    "ema": ema.shadow, "generator": gen.get_state(), "step": step, "elapsed": elapsed(),
                    "history": history, "config": to_dict(cfg)}, ckpt)

    unet.train()
    encoder.train()
    last_log = last_ckpt = t_window = time.time()
    window: list[float] = []
    log_steps = 0
    while step < cfg.steps and elapsed() < cfg.minutes * 60:
        b = cfg.batch_size
        target, ref, pose = training_pairs(cache, d, b, gen)
        keep = (torch.rand(b, generator=gen) >= d.p_uncond).float()
        noise = torch.randn(target.shape, generator=gen)
        t = torch.randint(0, cfg.train_timesteps, (b,), generator=gen)
        noisy = scheduler.add_noise(target, noise, t)
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        emb = encoder(clip_pixels((ref + 1) / 2, clip_size, clip_mean, clip_std)).image_embeds
        tokens = projection(torch.cat([emb, pose], dim=-1))[:, None, :] * keep[:, None, None]
        x = torch.cat([noisy, ref * keep[:, None, None, None]], dim=1)
        pred = unet(x, t, tokens, class_labels=pose).sample
        want = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(target, noise, t)
        per = (pred - want).pow(2).mean(dim=(1, 2, 3)) * min_snr_weight(alphas[t], cfg.min_snr_gamma, cfg.snr_floor,
                                                                          cfg.prediction_type)
        loss = per.mean()
        if not torch.isfinite(loss):
            raise ThreedError(f"loss became {loss.item()} at step {step}; last good checkpoint: {ckpt}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema.update(step)
        step += 1
        window.append(loss.item())
        log_steps += 1
        now = time.time()
        if now - last_log >= cfg.log_seconds or step == cfg.steps:
            rate = log_steps / (now - t_window)
            history.append((step, float(np.mean(window)), round(elapsed(), 1)))
            log(f"step {step} loss {np.mean(window):.4f} lr {lr:.2e} {rate:.2f} it/s elapsed {elapsed() / 60:.1f} min "
                f"of {cfg.minutes:g}")
            window, log_steps, t_window, last_log = [], 0, now, now
        if now - last_ckpt >= cfg.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = now
    if window:
        history.append((step, float(np.mean(window)), round(elapsed(), 1)))
    save_ckpt()
    train_minutes = elapsed() / 60
    log(f"training stopped at step {step} after {train_minutes:.1f} min; writing {out}")
    ema.copy_to(params)
    unet.eval()
    encoder.eval()
    save_view_prior(out, unet, projection, scheduler, encoder, processor)
    summary = {"steps": step, "train_minutes": round(train_minutes, 2), "params": n_params, "scenes": len(scenes),
               "views": len(cache.images), "history": history, "config": to_dict(cfg)}
    summary["eval"] = view_sample_report(cfg, out, out / "samples.png")
    summary["folder_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20, 2)
    (out / "README.md").write_text(view_model_card(summary))
    log(f"wrote {out} ({summary['folder_mb']} MB)")
    return summary


def save_view_prior(out: Path, unet, projection: torch.nn.Linear, scheduler, encoder, processor) -> None:
    """Write ``unet/``, ``scheduler/``, ``cc_projection/``, ``image_encoder/``, ``feature_extractor/`` and
    ``model_index.json`` (via a sibling folder, so a failed write leaves the previous prior whole)."""
    import diffusers

    with atomic_folder(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        save_projection(projection, tmp / "cc_projection")
        encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        processor.save_pretrained(tmp / "feature_extractor")
        index = {"_class_name": "ToyworldZero123", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                 "feature_extractor": ["transformers", "CLIPImageProcessor"], "cc_projection": ["threed", "CCProjection"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def reference_view(caption: str, resolution: int, elevation: float = 0.0, distance: float = 2.75,
                   fovy: float = 40.0, shading: str = "lambertian") -> tuple[Tensor, Tensor]:
    """A ground-truth render of ``caption`` from the front (unframed rgb and mask, ``1 x H x W x C``)."""
    cams = Cameras.orbit(elevation, 0.0, distance, fovy, resolution)
    out = render(parse_prompt(caption), cams, shading, (1.0, 1.0, 1.0))
    return out.rgb, out.opacity


def view_sample_report(cfg: ViewTrainConfig, folder: Path, path: Path) -> list[dict]:
    """Write the sample grid and score each sample against ground truth at its asked-for view:
    mask IoU (foreground against the background colour) and whether the dominant colour matches."""
    import imageio.v3 as iio

    from threed.guidance.zero123 import load_view_prior

    prior = load_view_prior(str(folder))
    if not isinstance(prior, PixelViewPrior):
        raise ThreedError(f"{folder} is not a pixel-space view prior")
    res, d = cfg.data.resolution, cfg.data
    judge = ShapeJudge(res, 32)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    rows, report = [], []
    for caption in cfg.sample_scenes:
        rgb, mask = reference_view(caption, res)
        ref, _, _ = frame_object(rgb, mask, d.fill_ratio, res)
        az = torch.tensor(SAMPLE_AZIMUTHS)
        cams = Cameras.orbit(0.0, az, 2.75, 40.0, res)
        truth = render(parse_prompt(caption), cams, "lambertian", (1.0, 1.0, 1.0))
        pose = relative_pose(cams.elevation, cams.azimuth, cams.distance, 0.0, 0.0, 2.75, "zero123")
        samples = prior.sample_views(ref, pose, cfg.cfg_scale, cfg.sample_steps, gen)
        for k, a in enumerate(SAMPLE_AZIMUTHS):
            m_s = foreground(samples[k])
            m_t = truth.opacity[k, ..., 0] > 0.5
            iou = float((m_s & m_t).sum()) / max(1, int((m_s | m_t).sum()))
            want = colour_of(truth.rgb[k], m_t)
            report.append({"scene": caption, "d_azimuth": a, "iou": round(iou, 3),
                           "colour_ok": colour_of(samples[k], m_s) == want, "shape": judge(m_s),
                           "held_out": caption in d.held_out})
        cells = [ref[0]] + [x for k in range(len(SAMPLE_AZIMUTHS)) for x in (truth.rgb[k], samples[k])]
        rows.append(torch.cat(cells, dim=1))
    grid = torch.cat(rows, dim=0).repeat_interleave(3, 0).repeat_interleave(3, 1)
    iio.imwrite(path, (grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return report


def view_model_card(s: dict) -> str:
    c, d, m = s["config"], s["config"]["data"], s["config"]["model"]
    rows = "\n".join(f"| {r['scene']} | {'yes' if r['held_out'] else ''} | {r['d_azimuth']:g} | {r['iou']:.2f} | "
                     f"{'yes' if r['colour_ok'] else 'no'} | {r['shape']} |" for r in s["eval"])
    mean_iou = float(np.mean([r["iou"] for r in s["eval"]]))
    colour = float(np.mean([r["colour_ok"] for r in s["eval"]]))
    return f"""# threed toy-world view prior (a tiny Zero-1-to-3)

p(view | reference image, relative camera) in pixel space ({d['resolution']} x {d['resolution']} RGB in [-1, 1]),
trained from scratch on renders of threed's toy world so that `threed generate --image
assets/examples/<toy>.png` runs offline on a CPU (`image_model=toyworld`). It knows nothing outside the toy world.

## Components

| folder | what | |
| --- | --- | --- |
| `unet/` | diffusers `UNet2DConditionModel`, input [noisy view, framed reference] (6 channels), blocks {tuple(m['block_out_channels'])}, cross-attention at 8 x 8, pose class embedding (`class_embed_type="projection"`) | {s['params'] / 1e6:.2f} M params in all (UNet, encoder, projection) |
| `image_encoder/` | transformers `CLIPVisionModelWithProjection`, {m['encoder_layers']} layers, width {m['encoder_width']}, {m['encoder_patch']}-px patches, {m['image_dim']}-d embedding, trained jointly | |
| `feature_extractor/` | `CLIPImageProcessor` at {d['resolution']} px, CLIP's mean and std | |
| `cc_projection/` | `Linear({m['image_dim']} + 4, {m['token_dim']})`: the cross-attention token from [image embedding, pose], Zero123's layout | |
| `scheduler/` | diffusers `DDPMScheduler`, {c['train_timesteps']} steps, cosine betas, {c['prediction_type']} | |

Folder size {s['folder_mb']} MB. Pose: threed's `zero123` convention (`threed/guidance/zero123.py`):
[rad(el_ref - el), sin Δaz, cos Δaz, d - d_ref]. Unconditional branch: zero reference, zero token, pose
class embedding kept. The reference is framed with fill ratio {d['fill_ratio']} (`threed/reference/image.py`).

## Data and training

{s['scenes']} scenes (held out: {', '.join(d['held_out'])}), {d['views_per_scene']} views each ({s['views']} renders),
cameras from `CameraSampler` (elevation -10..45 deg, {d['p_overhead']:.0%} at 60..85; distance 2.5-3.0; fovy 35-45),
white background, albedo {d['p_albedo']:.0%} / lambertian. Seed {c['seed']}, {s['steps']} steps of batch {c['batch_size']}
in {s['train_minutes']} min on {c['threads']} CPU thread(s), AdamW lr {c['lr']}, {c['prediction_type']} prediction, x0 loss weight min(max(SNR, {c['snr_floor']:g}), {c['min_snr_gamma']:g}), EMA {c['ema_decay']}.
Reproduce: `python scripts/train_toyworld_prior.py --mode views --out <folder> --minutes {c['minutes']:g} --threads {c['threads']} --seed {c['seed']}`.

## Samples

`samples.png`: per row the framed reference (front, elevation 0), then pairs of (ground truth, sample) at
Δazimuth {', '.join(f'{a:g}' for a in SAMPLE_AZIMUTHS)} ({c['sample_steps']} DDIM steps, guidance {c['cfg_scale']}).
Mean mask IoU {mean_iou:.2f}; dominant colour right in {colour:.0%} of samples.

| scene | held out | Δazimuth | mask IoU | colour ok | shape judged |
| --- | --- | --- | --- | --- | --- |
{rows}
"""
