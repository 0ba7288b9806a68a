"""Training of the embedded toy-world prior: a tiny pixel-space text-to-image diffusion model.

The prior lets ``threed generate "a red cube"`` run offline on a CPU and be scored against the toy
world's ground truth. It is a diffusers ``UNet2DConditionModel`` on 32 x 32 RGB images in [-1, 1]
(no VAE: pixel space, like DeepFloyd IF stage I), conditioned by cross-attention on a small
transformers ``CLIPTextModel`` trained jointly from scratch on a word-level tokenizer.

* Data: sphere-traced renders of toy-world scenes (:mod:`threed.toyworld.raycast`) from
  :class:`threed.cameras.CameraSampler` cameras, with DreamFusion's view suffixes on the captions
  and random shading and backgrounds; pre-rendered once into a uint8 cache, flipped left-right
  at random (every scene is mirror-symmetric about x = 0, so a flip is the render from the
  mirrored camera, with the same view label).
* Objective: DDPM (Ho et al., 2020) epsilon prediction with the cosine schedule of Nichol &
  Dhariwal (2021) - the linear schedule wastes most steps on near-pure noise at 32 x 32 - and the
  Min-SNR-5 loss weighting of Hang et al. (2023), which speeds convergence. Captions are dropped
  with probability 0.1 for classifier-free guidance (Ho & Salimans, 2022).
* Output: a standard diffusers component folder (``model_index.json``, ``unet/``, ``scheduler/``,
  ``text_encoder/``, ``tokenizer/``) with the EMA weights, a model card and a sample grid.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, CameraSampler, CameraSamplerConfig
from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import atomic_folder, save_torch_atomic
from threed.toyworld.raycast import render
from threed.toyworld.scenes import COLOURS, SHAPES, VIEW_LABELS, Scene, catalogue, parse_prompt, view_caption

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
"""Token ids 0-3: padding, unknown word, begin and end of text."""


@dataclass
class UNetSizes:
    """Sizes of a toy prior's UNet (both toy priors use the same shape)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """UNet channels per resolution (32, 16, 8 pixels); cross-attention only at the lowest."""
    layers_per_block: int = 1
    """Resnet blocks per down block (up blocks get one more)."""
    attention_head_dim: int = 8
    """Channels per attention head."""
    norm_num_groups: int = 16
    """GroupNorm groups; must divide every block width."""


@dataclass
class PriorModelConfig(UNetSizes):
    """Sizes of the toy prior's UNet and text encoder."""

    text_hidden: int = 64
    """Width of the text encoder (and the UNet's cross-attention dimension)."""
    text_layers: int = 2
    """Transformer layers of the text encoder."""
    text_heads: int = 4
    """Attention heads of the text encoder."""
    max_tokens: int = 16
    """Tokenizer ``model_max_length``: prompts are padded to this many tokens."""


@dataclass
class RenderDataConfig:
    """How a toy prior's training images are rendered, and which scenes are never shown."""

    resolution: int = 32
    """Image side in pixels."""
    supersample: int = 2
    """Rays per pixel side when rendering (antialiasing)."""
    held_out: tuple[str, ...] = ("a purple torus", "an orange cone", "a green cylinder")
    """Shape x colour captions never shown in training, to test compositional generalisation."""


@dataclass
class ToyworldDataConfig(RenderDataConfig):
    """What the text prior is trained on."""

    cache_size: int = 24576
    """Renders made once before training (then flipped at random)."""
    p_asymmetric: float = 0.3
    """Share of renders from the "a <colour> cube with a <colour2> front" family."""
    p_pair: float = 0.0
    """Share of two-object scenes ("a red cube and a blue sphere"); 0 leaves them out entirely."""
    p_albedo: float = 0.25
    """Share of renders shaded with plain albedo."""
    p_textureless: float = 0.1
    """Share of renders shaded textureless (white, lit); the rest are lambertian."""
    p_overhead: float = 0.15
    """Share of cameras drawn from elevations 60-85 degrees (the "overhead view" label)."""
    p_white_background: float = 0.6
    """Share of white backgrounds; then light greys, then random solid colours."""
    p_grey_background: float = 0.2
    """Share of light grey backgrounds (0.55-0.95)."""
    p_no_suffix: float = 0.1
    """Share of captions without a view suffix, so bare prompts work too."""
    p_uncond: float = 0.1
    """Share of empty captions, for classifier-free guidance."""
    ambient: float = 0.3
    """Ambient term of lambertian shading (threed's ShadingConfig default)."""


@dataclass
class DiffusionTrainConfig:
    """Optimisation settings both toy priors share (text-to-image here, view-conditioned in ``train_views``);
    ``steps`` and ``minutes`` both cap a run, whichever comes first."""

    steps: int = 1_000_000
    """Maximum optimiser steps."""
    minutes: float = 75.0
    """Maximum wall time of rendering + training, summed over resumes (sampling at the end is extra)."""
    batch_size: int = 32
    """Images per step (32 beats 64 per CPU-second early in training)."""
    lr: float = 1e-3
    """AdamW learning rate, constant after warm-up (EMA does the averaging)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    ema_decay: float = 0.999
    """EMA decay of all weights, ramped as min(decay, (1 + step) / (10 + step))."""
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting (Hang et al. 2023); 0 turns it off."""
    snr_floor: float = 0.0
    """Lower bound of the loss weight in x0 terms, min(max(SNR, floor), gamma) (the floor of Salimans & Ho's
    truncated-SNR weighting, which keeps the high-noise steps that decide colour and layout in play); 0: none."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts; guidance converts either to a noise prediction (threed.guidance.prior)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """DDPMScheduler beta schedule (cosine)."""
    train_timesteps: int = 1000
    """Diffusion steps."""
    seed: int = 0
    """Seeds model init, data and noise."""
    threads: int = 1
    """torch intra-op threads."""
    ckpt_minutes: float = 5.0
    """Minutes between resumable checkpoints."""
    log_seconds: float = 30.0
    """Seconds between log lines."""


@dataclass
class ToyworldTrainConfig(DiffusionTrainConfig):
    """Training run of the toy-world text-to-image prior."""

    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    """Network sizes."""
    data: ToyworldDataConfig = field(default_factory=ToyworldDataConfig)
    """Training data."""
    sample_prompts: tuple[str, ...] = (
        "a red cube, front view", "a blue sphere, side view", "a yellow cylinder, front view",
        "a white pyramid, front view", "a green torus, front view", "a purple torus, front view",
        "an orange cone, side view", "a green cylinder, front view", "an orange cone",
        "a blue cube with a yellow front, front view", "a blue cube with a yellow front, back view")
    """One row of samples.png per prompt."""
    samples_per_prompt: int = 6
    """Samples per row."""
    sample_steps: int = 50
    """DDIM steps for the samples."""
    cfg_scale: float = 3.0
    """Classifier-free guidance scale for the samples (at 5 the objects of the shipped prior wash out to
    grey: 10 of 24 front-view samples judged the prompt's colour, against 19 of 24 at 3)."""
    eval_bank_views: int = 128
    """Ground-truth masks per shape for the shape check of the model card."""


def vocabulary(scenes: Sequence[Scene]) -> list[str]:
    """Special tokens, then every word of the captions and view suffixes (sorted)."""
    words = {w for s in scenes for label in VIEW_LABELS for w in _split(view_caption(s.caption, label))}
    return list(SPECIAL_TOKENS) + sorted(words)


def _split(text: str) -> list[str]:
    return text.replace(",", " , ").split()


def build_tokenizer(words: Sequence[str], max_tokens: int):
    """Word-level tokenizer: lowercase, split on whitespace and punctuation, unknown words -> [UNK].

    Wrapped as a transformers ``PreTrainedTokenizerFast`` with [BOS] ... [EOS] around every text.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_tokens)


def tokenize(tokenizer, texts: Sequence[str]) -> Tensor:
    """Token ids ``B x max_tokens``, padded like Stable Diffusion pipelines (no attention mask)."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_models(cfg: PriorModelConfig, vocab_size: int, resolution: int):
    """A fresh UNet2DConditionModel and CLIPTextModel of the configured sizes."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    return unet, text_encoder


def build_scheduler(cfg: ToyworldTrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, timestep_spacing="trailing")


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


def render_cache(cfg: ToyworldDataConfig, scenes: Sequence[Scene], generator: torch.Generator,
                 log=print) -> RenderCache:
    """Render ``cfg.cache_size`` training images of the given scenes (families mixed as configured)."""
    n, res = cfg.cache_size, cfg.resolution
    single = [i for i, s in enumerate(scenes) if len(s.objects) == 1 and s.objects[0].front_colour is None]
    asym = [i for i, s in enumerate(scenes) if len(s.objects) == 1 and s.objects[0].front_colour is not None]
    pair = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    u = torch.rand(n, generator=generator)
    fam = torch.where(u < cfg.p_asymmetric, 1, torch.where(u < cfg.p_asymmetric + cfg.p_pair, 2, 0))
    choice = torch.zeros(n, dtype=torch.long)
    for f, members in enumerate((single, asym, pair)):
        sel = fam == f
        if sel.any():
            if not members:
                raise ThreedError(f"data config asks for a scene family with no scenes (family {f})")
            pick = torch.randint(0, len(members), (int(sel.sum()),), generator=generator)
            choice[sel] = torch.tensor(members)[pick]
    main = CameraSampler(CameraSamplerConfig())
    overhead = CameraSampler(CameraSamplerConfig(elevation_range=(60.0, 85.0)))
    images = torch.zeros(n, 3, res, res, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    t0 = time.time()
    for k, idx in enumerate(torch.unique(choice).tolist()):
        rows = torch.nonzero(choice == idx, as_tuple=True)[0]
        for chunk in rows.split(128):
            b = len(chunk)
            n_over = int((torch.rand(b, generator=generator) < cfg.p_overhead).sum())
            cams = _cat_cameras([sampler.sample(res, generator=generator, batch_size=m)
                                 for sampler, m in ((main, b - n_over), (overhead, n_over)) if m])
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


def _cat_cameras(cams: Sequence[Cameras]) -> Cameras:
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


class EMA:
    """Exponential moving average of a list of tensors, with the usual warm-up ramp."""

    def __init__(self, params: Sequence[Tensor], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self, params: Sequence[Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def min_snr_weight(alpha_bar: Float[Tensor, "B"], gamma: float, floor: float = 0.0,
                   prediction_type: str = "epsilon") -> Float[Tensor, "B"]:
    """Per-sample weights of the squared error of the model's output such that, in x0 terms, the loss is
    weighted by min(max(SNR, floor), gamma) (Min-SNR-gamma of Hang et al. 2023, with an optional floor;
    gamma <= 0: no cap). An epsilon error is an x0 error times sqrt(SNR), a v error one times
    sqrt(SNR + 1). With no floor and no cap the epsilon loss is unweighted (1)."""
    snr = alpha_bar / (1 - alpha_bar)
    w = snr.clamp(min=floor) if floor > 0 else snr
    if gamma > 0:
        w = w.clamp(max=gamma)
    return w / (snr + 1) if prediction_type == "v_prediction" else w / snr


def _ckpt_dir(out: Path) -> Path:
    return out.parent / f"{out.name}-train-ckpt"


def _trainable(unet, text_encoder) -> list[Tensor]:
    return [p for p in unet.parameters()] + [p for p in text_encoder.parameters()]


def train(cfg: ToyworldTrainConfig, out: str | Path, resume: bool = False, log=print) -> dict:
    """Train the toy prior and write it to ``out`` (diffusers layout + README.md + samples.png).

    Checkpoints go to ``<out>-train-ckpt`` next to ``out`` every ``cfg.ckpt_minutes``; ``resume``
    continues from there (the render cache is rebuilt from the seed). Returns the run summary.
    """
    out = Path(out)
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    d = cfg.data
    scenes = catalogue(held_out=d.held_out, asymmetric=d.p_asymmetric > 0, pairs=d.p_pair > 0)
    words = vocabulary(scenes)
    tokenizer = build_tokenizer(words, cfg.model.max_tokens)
    captions = caption_table(tokenizer, scenes)
    if (captions == tokenizer.unk_token_id).any():
        raise ThreedError("a training caption tokenizes to [UNK]; the vocabulary is incomplete")
    uncond = tokenize(tokenizer, [""])[0]
    unet, text_encoder = build_models(cfg.model, len(words), d.resolution)
    unet = unet.to(memory_format=torch.channels_last)
    scheduler = build_scheduler(cfg)
    params = _trainable(unet, text_encoder)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    log(f"toy prior: UNet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.3f} M, "
        f"{len(scenes)} training scenes, vocabulary {len(words)} tokens")

    ckpt = _ckpt_dir(out) / "state.pt"
    step, elapsed_before, history = 0, 0.0, []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume:
        if not ckpt.exists():
            raise ThreedError(f"--resume: no checkpoint at {ckpt}; run without --resume to start training")
        state = torch.load(ckpt, weights_only=False)
        if state["config"]["model"] != to_dict(cfg.model) or state["config"]["data"] != to_dict(cfg.data) \
                or state["config"]["seed"] != cfg.seed:
            raise ThreedError(f"--resume: checkpoint {ckpt} was made with another model/data config or seed")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema.shadow = state["ema"]
        gen.set_state(state["generator"])
        step, elapsed_before, history = state["step"], state["elapsed"], state["history"]
        log(f"resumed from {ckpt} at step {step} ({elapsed_before / 60:.1f} min done)")

    cache = render_cache(d, scenes, torch.Generator().manual_seed(cfg.seed), log=log)
    log(f"render cache: {len(cache.images)} images in {time.time() - t_start:.0f} s")
    alphas = scheduler.alphas_cumprod
    budget = cfg.minutes * 60.0

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def save_ckpt() -> None:
        save_torch_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                    "optimizer": opt.state_dict(), "ema": ema.shadow, "generator": gen.get_state(), "step": step,
                    "elapsed": elapsed(), "history": history, "config": to_dict(cfg)}, ckpt)

    unet.train()
    text_encoder.train()
    last_log = last_ckpt = time.time()
    window, log_steps, t_window = [], 0, time.time()
    while step < cfg.steps and elapsed() < budget:
        b = cfg.batch_size
        idx = torch.randint(0, len(cache.images), (b,), generator=gen)
        x = cache.images[idx].float() / 127.5 - 1.0
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).contiguous(memory_format=torch.channels_last)
        u = torch.rand(b, generator=gen)
        slot = torch.where(u < d.p_no_suffix, 0, 1 + cache.label[idx])
        ids = captions[cache.scene[idx], slot]
        ids = torch.where((torch.rand(b, generator=gen) < d.p_uncond)[:, None], uncond, ids)
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, cfg.train_timesteps, (b,), generator=gen)
        noisy = scheduler.add_noise(x, noise, t)
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        pred = unet(noisy, t, text_encoder(ids).last_hidden_state).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3)) * min_snr_weight(alphas[t], cfg.min_snr_gamma)
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
            eta = min((cfg.steps - step) / max(rate, 1e-9), budget - elapsed())
            history.append((step, float(np.mean(window)), round(elapsed(), 1)))
            log(f"step {step} loss {np.mean(window):.4f} lr {lr:.2e} {rate:.2f} it/s "
                f"({1 / max(rate, 1e-9):.2f} s/step) elapsed {elapsed() / 60:.1f} min ETA {max(eta, 0) / 60:.1f} min")
            window, log_steps, t_window, last_log = [], 0, now, now
        if now - last_ckpt >= cfg.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = now
    if window:
        history.append((step, float(np.mean(window)), round(elapsed(), 1)))
    save_ckpt()
    train_seconds = elapsed()
    log(f"training stopped at step {step} after {train_seconds / 60:.1f} min; writing {out}")

    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    unet = unet.to(memory_format=torch.contiguous_format)
    save_prior(out, unet, text_encoder, tokenizer, scheduler)
    summary = {"steps": step, "train_minutes": round(train_seconds / 60, 2), "unet_params": n_unet,
               "text_params": n_text, "scenes": len(scenes), "vocabulary": len(words), "history": history,
               "cache_size": len(cache.images), "config": to_dict(cfg)}
    report = sample_report(cfg, unet, text_encoder, tokenizer, scheduler, out / "samples.png")
    summary["eval"] = report
    summary["folder_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20, 2)
    (out / "README.md").write_text(model_card(summary))
    log(f"wrote {out} ({summary['folder_mb']} MB) in {(time.time() - t_start) / 60:.1f} min this session")
    return summary


def save_prior(out: Path, unet, text_encoder, tokenizer, scheduler) -> None:
    """Write the diffusers component layout (replacing ``out`` atomically-ish via a sibling folder)."""
    import diffusers

    with atomic_folder(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        scheduler.save_pretrained(tmp / "scheduler")
        index = {"_class_name": "ToyworldPixelPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "unet": ["diffusers", "UNet2DConditionModel"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


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

    res, k = cfg.data.resolution, cfg.samples_per_prompt
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


def model_card(s: dict) -> str:
    """README.md of the saved prior."""
    c = s["config"]
    d, m = c["data"], c["model"]
    hist = s["history"]
    picks = sorted({0, len(hist) // 4, len(hist) // 2, 3 * len(hist) // 4, len(hist) - 1}) if hist else []
    loss_rows = "\n".join(f"| {hist[i][0]} | {hist[i][1]:.4f} | {hist[i][2] / 60:.1f} |" for i in picks)
    return f"""# threed toy-world prior

A tiny text-to-image diffusion model in pixel space ({d['resolution']} x {d['resolution']} RGB in [-1, 1], no VAE),
trained from scratch on procedural renders of threed's toy world (`threed/toyworld/`), so that
`threed generate "a red cube"` runs offline on a CPU and can be scored against exact ground truth.
It knows nothing outside the toy world.

## Components (diffusers layout)

| folder | class | size |
| --- | --- | --- |
| `unet/` | diffusers `UNet2DConditionModel`, blocks {tuple(m['block_out_channels'])}, {m['layers_per_block']} layer(s) per block, cross-attention at the lowest resolution only | {s['unet_params'] / 1e6:.2f} M params |
| `text_encoder/` | transformers `CLIPTextModel`, hidden {m['text_hidden']}, {m['text_layers']} layers, {m['text_heads']} heads, trained jointly | {s['text_params'] / 1e6:.3f} M params |
| `tokenizer/` | transformers `PreTrainedTokenizerFast`, word level, {s['vocabulary']} tokens, unknown words -> `[UNK]` | |
| `scheduler/` | diffusers `DDPMScheduler`, {c['train_timesteps']} steps, `{c['beta_schedule']}` (cosine) betas, epsilon prediction | |

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
gradient clip {c['grad_clip']}, Min-SNR-{c['min_snr_gamma']:g} loss weighting. Cosine betas because the linear
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


def refresh_samples(cfg: ToyworldTrainConfig, out: str | Path) -> list[dict]:
    """Redo ``samples.png`` and the card's samples section of a saved prior (e.g. at another guidance
    scale) without retraining; the rest of its README.md is kept."""
    from threed.guidance.prior import load_prior

    out = Path(out)
    card = out / "README.md"
    if not card.is_file() or "## Samples" not in card.read_text():
        raise ThreedError(f"{out} has no model card with a '## Samples' section; is it a trained toy prior?")
    prior = load_prior(str(out))
    report = sample_report(cfg, prior.unet, prior.text_encoder, prior.tokenizer, prior.scheduler, out / "samples.png")
    head = card.read_text().split("## Samples")[0]
    head = re.sub(r"Guidance scale about [0-9.]+\.", f"Guidance scale about {cfg.cfg_scale}.", head)
    card.write_text(head + samples_section(to_dict(cfg), report))
    return report
