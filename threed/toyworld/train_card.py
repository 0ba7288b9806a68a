"""What a trained toy prior says about itself: sample grids judged against ground truth, and its README.md.

Samples are judged with two simple, reproducible checks: the dominant foreground colour by chromaticity
(immune to shading) and the nearest ground-truth silhouette of a bank of training-like views; the same
checks on fresh ground-truth renders give the judges' own ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, CameraSampler
from threed.errors import ThreedError
from threed.guidance.zero123 import PixelViewPrior, relative_pose
from threed.reference.image import frame_object
from threed.toyworld.raycast import render
from threed.toyworld.scenes import COLOURS, SHAPES, VIEW_LABELS, Scene, parse_prompt
from threed.toyworld.train_config import ToyworldTrainConfig, ViewTrainConfig

SAMPLE_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
"""Azimuth changes of the sample grid's columns."""


@torch.no_grad()
def sample(unet, text_encoder, tokenizer, scheduler, prompts: Sequence[str], cfg_scale: float = 5.0,
           steps: int = 50, generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
    """DDIM samples with classifier-free guidance, in [0, 1], through the prior wrapper that score
    distillation uses (so the model card shows the prior exactly as generation sees it). Freezes the modules."""
    from threed.guidance.prior import PixelPrior

    prior = PixelPrior("toyworld-training", unet, scheduler, text_encoder, tokenizer,
                       device=next(unet.parameters()).device)
    return prior.sample(list(prompts), steps, cfg_scale, generator)


_PALETTE = torch.tensor([COLOURS[c] for c in COLOURS])
_CHROMA = _PALETTE / _PALETTE.max(dim=-1, keepdim=True).values


def foreground(img: Float[Tensor, "H W 3"], threshold: float = 0.12) -> Tensor:
    """Pixels that differ from the border colour (the solid background) by more than ``threshold``."""
    border = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = border.median(dim=0).values
    return (img - bg).abs().max(dim=-1).values > threshold


def colour_of(img: Float[Tensor, "H W 3"], mask: Tensor) -> str | None:
    """The palette colour most foreground pixels are nearest to, by chromaticity (immune to shading)."""
    px = img[mask]
    px = px[px.max(dim=-1).values > 0.1]
    if len(px) == 0:
        return None
    chroma = px / px.max(dim=-1, keepdim=True).values
    nearest = torch.cdist(chroma, _CHROMA).argmin(dim=-1)
    return list(COLOURS)[int(torch.bincount(nearest, minlength=len(COLOURS)).argmax())]


class ShapeJudge:
    """Nearest-silhouette shape classifier over ground-truth masks from training-like cameras."""

    def __init__(self, resolution: int, views: int, seed: int = 1234):
        gen = torch.Generator().manual_seed(seed)
        masks, names = [], []
        for shape in SHAPES:
            cams = CameraSampler().sample(resolution, generator=gen, batch_size=views)
            masks.append(render(Scene.single(shape, "red"), cams).opacity[..., 0] > 0.5)
            names += [shape] * views
        self.masks = torch.cat(masks).flatten(1).float()
        self.names = names

    def __call__(self, mask: Tensor) -> str:
        m = mask.flatten().float()
        inter = self.masks @ m
        union = self.masks.sum(-1) + m.sum() - inter
        return self.names[int((inter / union.clamp(min=1)).argmax())]


def expected_colour(prompt: str) -> str:
    """The colour that should dominate a render of ``prompt`` (the front colour in a front view)."""
    obj = parse_prompt(prompt).objects[0]
    if obj.front_colour is not None and prompt.rstrip().endswith("front view"):
        return obj.front_colour
    return obj.colour


def sample_report(cfg: ToyworldTrainConfig, unet, text_encoder, tokenizer, scheduler, path: Path) -> list[dict]:
    """Write the sample grid (first column: a ground-truth render) and score every row.

    Each sample is checked for its dominant colour (chromaticity of the foreground) and its shape
    (nearest ground-truth silhouette); the same checks on fresh ground-truth renders give the
    judges' own accuracy, the ceiling to compare against.
    """
    import imageio.v3 as iio

    res, k = cfg.data.image_size, cfg.samples_per_prompt
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    prompts = list(cfg.sample_prompts)
    judge = ShapeJudge(res, cfg.eval_bank_views)
    rows, report = [], []
    for prompt in prompts:
        imgs = sample(unet, text_encoder, tokenizer, scheduler, [prompt] * k, cfg.cfg_scale, cfg.sample_steps, gen)
        scene = parse_prompt(prompt)
        label = next((lab for lab in VIEW_LABELS if prompt.endswith(f"{lab} view")), "front")
        az = {"front": 0.0, "side": 90.0, "back": 180.0, "overhead": 0.0}[label] + torch.linspace(-30, 30, k)
        el = 70.0 if label == "overhead" else 15.0
        gt_cams = Cameras.orbit(el, az, torch.linspace(2.5, 3.0, k), 40.0, res)
        truth = render(scene, gt_cams, "lambertian", (1.0, 1.0, 1.0)).rgb
        want_c, want_s = expected_colour(prompt), scene.objects[0].shape
        got = [(colour_of(im, foreground(im)), judge(foreground(im))) for im in imgs]
        base = [(colour_of(im, foreground(im)), judge(foreground(im))) for im in truth]
        report.append({"prompt": prompt, "held_out": scene.caption in cfg.data.held_out,
                       "colour_ok": sum(c == want_c for c, _ in got) / k,
                       "shape_ok": sum(s == want_s for _, s in got) / k,
                       "gt_colour_ok": sum(c == want_c for c, _ in base) / k,
                       "gt_shape_ok": sum(s == want_s for _, s in base) / k,
                       "shapes_seen": [s for _, s in got], "colours_seen": [c for c, _ in got]})
        rows.append(torch.cat([truth[k // 2]] + list(imgs), dim=1))
    grid = torch.cat(rows, dim=0)
    grid = grid.repeat_interleave(2, 0).repeat_interleave(2, 1)  # 2x nearest, easier to look at
    iio.imwrite(path, (grid.numpy() * 255).round().astype(np.uint8))
    return report


def loss_weighting(c: dict) -> str:
    """The card's words for the loss weighting of config ``c`` (threed.toyworld.train_objective.min_snr_weight)."""
    if c["snr_floor"] > 0:
        return f"x0 loss weight min(max(SNR, {c['snr_floor']:g}), {c['min_snr_gamma']:g})"
    return f"Min-SNR-{c['min_snr_gamma']:g} loss weighting" if c["min_snr_gamma"] > 0 else "x0 loss weight SNR"


def model_card(s: dict) -> str:
    """README.md of the saved prior."""
    c = s["config"]
    d, m = c["data"], c["model"]
    hist = s["history"]
    picks = sorted({0, len(hist) // 4, len(hist) // 2, 3 * len(hist) // 4, len(hist) - 1}) if hist else []
    loss_rows = "\n".join(f"| {hist[i][0]} | {hist[i][1]:.4f} | {hist[i][2] / 60:.1f} |" for i in picks)
    return f"""# threed toy-world prior

A tiny text-to-image diffusion model in pixel space ({d['image_size']} x {d['image_size']} RGB in [-1, 1], no VAE),
trained from scratch on procedural renders of threed's toy world (`threed/toyworld/`), so that
`threed generate "a red cube"` runs offline on a CPU and can be scored against exact ground truth.
It knows nothing outside the toy world.

## Components (diffusers layout)

| folder | class | size |
| --- | --- | --- |
| `unet/` | diffusers `UNet2DConditionModel`, blocks {tuple(m['block_out_channels'])}, {m['layers_per_block']} layer(s) per block, cross-attention at the lowest resolution only | {s['unet_params'] / 1e6:.2f} M params |
| `text_encoder/` | transformers `CLIPTextModel`, hidden {m['text_hidden']}, {m['text_layers']} layers, {m['text_heads']} heads, trained jointly | {s['text_params'] / 1e6:.3f} M params |
| `tokenizer/` | transformers `PreTrainedTokenizerFast`, word level, {s['vocabulary']} tokens, unknown words -> `[UNK]` | |
| `scheduler/` | diffusers `DDPMScheduler`, {c['train_timesteps']} steps, `{c['beta_schedule']}` (cosine) betas, {c['prediction_type']} prediction | |

Folder size {s['folder_mb']} MB (fp32 safetensors). The weights are the EMA (decay {c['ema_decay']}) of the trained weights.

Use it like Stable Diffusion's text side: `ids = tokenizer(prompt, padding="max_length",
max_length={m['max_tokens']}).input_ids`, `text_encoder(ids).last_hidden_state` as `encoder_hidden_states`,
the empty prompt `""` as the unconditional one. Prompts containing words outside the vocabulary
tokenize to `[UNK]`: reject them. Guidance scale about {c['cfg_scale']}.

## Data

{s['scenes']} scenes: shapes {', '.join(SHAPES)} x colours {', '.join(COLOURS)}, plus the asymmetric
family "a <colour> cube with a <colour2> front" ({d['p_asymmetric']:.0%} of renders){' and two-object scenes' if d['p_pair'] else ''}.
Held out of training entirely: {', '.join(repr(h) for h in d['held_out'])}.
{s['cache_size']} sphere-traced renders ({d['supersample']}x{d['supersample']} supersampled), cameras from threed's
`CameraSampler` (elevation -10..45 deg, {d['p_overhead']:.0%} at 60..85 deg; distance 2.5-3.0; fovy 35-45 deg),
shading albedo {d['p_albedo']:.0%} / textureless {d['p_textureless']:.0%} / lambertian (ambient {d['ambient']}),
backgrounds white {d['p_white_background']:.0%} / light grey {d['p_grey_background']:.0%} / random solid colour,
random left-right flips. Captions carry DreamFusion's view suffix (", front view", ", side view",
", back view", ", overhead view" from `Cameras.view_labels()`); {d['p_no_suffix']:.0%} are bare and
{d['p_uncond']:.0%} empty (classifier-free guidance).

## Training

Seed {c['seed']}, {s['steps']} steps of batch {c['batch_size']} in {s['train_minutes']} min on {c['threads']} CPU thread(s);
AdamW lr {c['lr']} (warm-up {c['warmup_steps']} steps, then constant), weight decay {c['weight_decay']},
gradient clip {c['grad_clip']}, {c['prediction_type']} prediction, {loss_weighting(c)}. Cosine betas because the linear
schedule spends most of its steps on near-pure noise at this resolution (Nichol & Dhariwal 2021).
Reproduce: `python scripts/train_toyworld_prior.py --out <folder> --steps {c['steps']} --minutes {c['minutes']:g} --seed {c['seed']} --threads {c['threads']}`.

| step | loss (mean since previous row of the log) | minutes |
| --- | --- | --- |
{loss_rows}

{samples_section(c, s["eval"])}"""


def samples_section(c: dict, report: list[dict]) -> str:
    """The model card's "## Samples" section (to the end of the card) from a ``sample_report``."""
    eval_rows = "\n".join(
        f"| {r['prompt']} | {'yes' if r['held_out'] else ''} | {r['colour_ok']:.2f} ({r['gt_colour_ok']:.2f}) | "
        f"{r['shape_ok']:.2f} ({r['gt_shape_ok']:.2f}) | {', '.join(map(str, r['shapes_seen']))} |" for r in report)
    return f"""## Samples

`samples.png`: one row per prompt; first column a ground-truth render, then
{c['samples_per_prompt']} DDIM samples ({c['sample_steps']} steps, guidance {c['cfg_scale']}).
Automatic checks per row: share of samples whose dominant foreground colour (by chromaticity) is
the prompt's colour (the front colour in a front view), and whose silhouette is nearest to a
ground-truth silhouette of the prompt's shape; in brackets the same checks on ground-truth renders
(the judges' own ceiling: the silhouette judge confuses shapes whose outlines coincide from some views).

| prompt | held out | colour ok (truth) | shape ok (truth) | shapes judged |
| --- | --- | --- | --- | --- |
{eval_rows}
"""


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
    res, d = cfg.data.image_size, cfg.data
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

p(view | reference image, relative camera) in pixel space ({d['image_size']} x {d['image_size']} RGB in [-1, 1]),
trained from scratch on renders of threed's toy world so that `threed generate --image
assets/examples/<toy>.png` runs offline on a CPU (`image_model=toyworld`). It knows nothing outside the toy world.

## Components

| folder | what | |
| --- | --- | --- |
| `unet/` | diffusers `UNet2DConditionModel`, input [noisy view, framed reference] (6 channels), blocks {tuple(m['block_out_channels'])}, cross-attention at 8 x 8, pose class embedding (`class_embed_type="projection"`) | {s['params'] / 1e6:.2f} M params in all (UNet, encoder, projection) |
| `image_encoder/` | transformers `CLIPVisionModelWithProjection`, {m['encoder_layers']} layers, width {m['encoder_width']}, {m['encoder_patch']}-px patches, {m['image_dim']}-d embedding, trained jointly | |
| `feature_extractor/` | `CLIPImageProcessor` at {d['image_size']} px, CLIP's mean and std | |
| `cc_projection/` | `Linear({m['image_dim']} + 4, {m['token_dim']})`: the cross-attention token from [image embedding, pose], Zero123's layout | |
| `scheduler/` | diffusers `DDPMScheduler`, {c['train_timesteps']} steps, cosine betas, {c['prediction_type']} | |

Folder size {s['folder_mb']} MB. Pose: threed's `zero123` convention (`threed/guidance/zero123.py`):
[rad(el_ref - el), sin Δaz, cos Δaz, d - d_ref]. Unconditional branch: zero reference, zero token, pose
class embedding kept. The reference is framed with fill ratio {d['fill_ratio']} (`threed/reference/image.py`).

## Data and training

{s['scenes']} scenes (held out: {', '.join(d['held_out'])}), {d['views_per_scene']} views each ({s['views']} renders),
cameras from `CameraSampler` (elevation -10..45 deg, {d['p_overhead']:.0%} at 60..85; distance 2.5-3.0; fovy 35-45),
white background, albedo {d['p_albedo']:.0%} / lambertian. Seed {c['seed']}, {s['steps']} steps of batch {c['batch_size']}
in {s['train_minutes']} min on {c['threads']} CPU thread(s), AdamW lr {c['lr']}, {c['prediction_type']} prediction, {loss_weighting(c)}, EMA {c['ema_decay']}.
Reproduce: `python scripts/train_toyworld_prior.py --mode views --out <folder> --minutes {c['minutes']:g} --threads {c['threads']} --seed {c['seed']}`.

## Samples

`samples.png`: per row the framed reference (front, elevation 0), then pairs of (ground truth, sample) at
Δazimuth {', '.join(f'{a:g}' for a in SAMPLE_AZIMUTHS)} ({c['sample_steps']} DDIM steps, guidance {c['cfg_scale']}).
Mean mask IoU {mean_iou:.2f}; dominant colour right in {colour:.0%} of samples.

| scene | held out | Δazimuth | mask IoU | colour ok | shape judged |
| --- | --- | --- | --- | --- | --- |
{rows}
"""
