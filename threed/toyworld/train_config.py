"""Configs of the toy-world priors' training: what is shared (optimisation, UNet sizes, rendered data) and
what each prior adds (the text prior's tokenizer and captions, the view prior's image encoder and pairs).

Every field has a one-line docstring; ``scripts/train_toyworld_prior.py KEY=VALUE`` overrides any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
class RenderDataConfig:
    """How a toy prior's training images are rendered, and which scenes are never shown."""

    image_size: int = 32
    """Image side in pixels."""
    supersample: int = 2
    """Rays per pixel side when rendering (antialiasing)."""
    held_out: tuple[str, ...] = ("a purple torus", "an orange cone", "a green cylinder")
    """Shape x colour captions never shown in training, to test compositional generalisation."""


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


# --------------------------------------------------------------------------- the text-to-image prior


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


# --------------------------------------------------------------------------- the view-conditioned prior


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


# --------------------------------------------------------------------------- the multi-view prior


@dataclass
class MultiViewDataConfig(ToyworldDataConfig):
    """What the multi-view prior is fine-tuned on: groups of views of one scene (``cache_size`` is not used)."""

    groups: int = 3072
    """Groups of ``num_views`` renders made once before training."""
    pairs: int = 256
    """Two-object scenes in the training set, drawn with the seed from the 42 x 41 (fewer: cheaper to render,
    each seen more often)."""
    p_asymmetric: float = 0.35
    """Share of groups from the "a <colour> cube with a <colour2> front" family."""
    p_pair: float = 0.15
    """Share of groups of two-object scenes."""
    p_no_suffix: float = 0.1
    """Share of groups whose captions carry no view suffix."""
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Elevations of the groups (degrees; threed's default training cameras)."""
    distance_range: tuple[float, float] = (2.5, 3.0)
    fovy_range: tuple[float, float] = (35.0, 45.0)
    """Distance and vertical field of view (degrees) of the groups."""


@dataclass
class MultiViewTrainConfig(DiffusionTrainConfig):
    """Fine-tuning of the toy multi-view prior from the toy text prior."""

    base: str = "toyworld"
    """The toy text prior it starts from: a folder, or ``toyworld`` for the shipped one."""
    num_views: int = 4
    """Views denoised together (MVDream's 4)."""
    data: MultiViewDataConfig = field(default_factory=MultiViewDataConfig)
    """Training data."""
    steps: int = 2000
    """Optimiser steps."""
    minutes: float = 90.0
    """Maximum wall time of rendering + training, summed over resumes."""
    lr: float = 5e-4
    """AdamW learning rate after warm-up (half the text prior's: it starts from trained weights)."""
    sample_prompts: tuple[str, ...] = (
        "a red cube", "a blue cube with a yellow front", "a green cube with a purple front",
        "a yellow cube with a blue front", "an orange cone", "a purple torus", "a white pyramid",
        "a red cube and a blue sphere")
    """Prompts of samples.png and the card's table."""
    samples_per_prompt: int = 6
    """Samples (objects) per prompt for the table; the sheet shows 2."""
    sample_steps: int = 30
    """DDIM steps for the samples."""
    cfg_scale: float = 3.0
    """Classifier-free guidance scale of the samples."""
