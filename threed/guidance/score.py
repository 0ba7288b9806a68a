"""Score distillation: the guidance core, and the score rules that plug into it.

Every rule follows one recipe, DreamFusion's (Poole et al. 2022, eq. 3):

    x0 = encode(render)                       differentiable (VAE encoder or resize)
    t ~ schedule,  eps ~ N(0, I),  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    grad = w(t) * residual(x_t, t, eps, y)    the UNet runs under no_grad
    loss = 0.5 * sum((x0 - sg(x0 - grad))^2) / B,  so  d loss / d x0[b] = grad[b] / B

:class:`ScoreDistillation` does all of that, with the plumbing in the prior
(:mod:`threed.guidance.prior`). A rule only forms the residual (eps_hat is the classifier-free
guided prediction, Perp-Neg included when the prompt config asks for it):

    SDS   eps_hat(x_t; y) - eps                                     DreamFusion (Poole et al. 2022)
    NFSD  delta_D + s (eps(x_t; y) - eps(x_t; null))                Noise-Free SD (Katzir et al. 2024)
          delta_D = eps(x_t; null) if t < small_t else eps(x_t; null) - eps(x_t; negative)
    VSD   eps_hat(x_t; y) - eps_phi(x_t; y, camera)                 ProlificDreamer (Wang et al. 2023)
    ISM   eps_hat(x_t; y) - eps(x_s; null), x_s and x_t by DDIM inversion   LucidDreamer (Liang et al. 2023)
    Zero123-SDS  SDS's residual, y = the reference image at the view's relative pose   Zero-1-to-3 (Liu et al. 2023)

A rule with trainable state (VSD's LoRA) adds its own losses through :meth:`auxiliary_losses`
and exposes parameters and checkpoint state. Adding a rule is one small class with its config,
plus an entry in :data:`GUIDANCE_CONFIGS`; ``config.build`` picks the config class from ``kind``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.lora import CameraLoRA, camera_features
from threed.guidance.prior import DiffusionPrior, Weighting
from threed.guidance.prompts import Conditioning, PromptProcessor
from threed.render.output import RenderOut

Anneal = Literal["none", "linear", "sqrt", "step"]
Schedule = Literal["uniform", "dreamtime"]

NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")
"""The negative prompt of Noise-Free Score Distillation (Katzir et al. 2024, sec. 4)."""


@dataclass
class DreamTimeConfig:
    """DreamTime's prior over timesteps (Huang et al. 2023): flat on [m2, m1], Gaussian tails outside.

    All values are fractions of the prior's training timesteps (the paper's 800, 500, 300, 100 of 1000).
    """

    m1: float = 0.8
    """Upper end of the flat part."""
    m2: float = 0.5
    """Lower end of the flat part."""
    s1: float = 0.3
    """Width of the Gaussian tail above m1."""
    s2: float = 0.1
    """Width of the Gaussian tail below m2."""

    def __post_init__(self):
        if not (0 <= self.m2 <= self.m1 <= 1 and self.s1 > 0 and self.s2 > 0):
            raise ValueError(f"need 0 <= m2 <= m1 <= 1 and s1, s2 > 0, got {self}")

    def density(self, t: Float[Tensor, "N"]) -> Float[Tensor, "N"]:
        """Unnormalised prior at timesteps given as fractions."""
        above = torch.exp(-(t - self.m1).square() / (2 * self.s1**2))
        below = torch.exp(-(t - self.m2).square() / (2 * self.s2**2))
        return torch.where(t > self.m1, above, torch.where(t < self.m2, below, torch.ones_like(t)))


@dataclass
class ScoreConfig:
    """Settings every score rule shares: timesteps, weighting, clipping."""

    guidance_scale: float = 100.0
    """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
    t_min: float = 0.02
    """Smallest training timestep, as a fraction of the prior's training timesteps."""
    t_max: float = 0.98
    """Largest training timestep at the start of the stage (fraction)."""
    schedule: Schedule = "uniform"
    """uniform: t ~ U[t_min, t_max] per view, t_max moving as ``anneal`` says; dreamtime: one t per step,
    decreasing monotonically from t_max to t_min so that the steps spent at each t follow the
    ``dreamtime`` prior (DreamTime's time-prioritised schedule, Huang et al. 2023)."""
    anneal: Anneal = "none"
    """How t_max moves toward ``t_max_end`` (uniform schedule): linear or sqrt in progress (HiFA, Zhu et al.
    2023), or one switch after ``anneal_steps`` (ProlificDreamer, Wang et al. 2023)."""
    t_max_end: float = 0.5
    """t_max at the end of the anneal (unused with anneal: none)."""
    anneal_steps: int | None = None
    """Steps over which t_max anneals, switches, or the dreamtime schedule runs; None = the whole stage."""
    dreamtime: DreamTimeConfig = field(default_factory=DreamTimeConfig)
    """The prior over timesteps of the dreamtime schedule."""
    weighting: Weighting = "sds"
    """w(t): sds = 1 - abar_t, uniform = 1, fantasia = sqrt(abar_t) (1 - abar_t), ism = sqrt((1 - abar_t) / abar_t)."""
    grad_clip: float | None = None
    """Clamp every entry of the weighted residual w(t) r to [-grad_clip, grad_clip] (a value clamp, as in
    threestudio, not a norm rescale); None = no clamp."""

    def __post_init__(self):
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if self.anneal != "none" and not self.t_min <= self.t_max_end <= 1:
            raise ValueError(f"need t_min <= t_max_end <= 1, got t_max_end={self.t_max_end}")
        if self.schedule == "dreamtime" and self.anneal != "none":
            raise ValueError("the dreamtime schedule sets t itself; use anneal: none with it")
        if self.anneal_steps is not None and self.anneal_steps < 1:
            raise ValueError(f"anneal_steps must be >= 1 or null, got {self.anneal_steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


class TimestepSampler:
    """Run state of the timestep schedule: ``update(step, max_steps)`` moves t_max (or DreamTime's t)."""

    def __init__(self, cfg: ScoreConfig, num_train_timesteps: int):
        self.cfg = cfg
        self.num_train_timesteps = num_train_timesteps
        self.t_max = cfg.t_max
        if cfg.schedule == "dreamtime":
            lo, hi = self._range(cfg.t_max)
            self._steps = torch.arange(lo, hi + 1)
            p = cfg.dreamtime.density(self._steps.double() / num_train_timesteps)
            self._tail = (p / p.sum()).flip(0).cumsum(0).flip(0)  # mass of [t, hi]: 1 at lo, decreasing

    def _range(self, t_max: float) -> tuple[int, int]:
        last = self.num_train_timesteps - 1
        lo = min(int(self.cfg.t_min * self.num_train_timesteps), last)
        return lo, min(max(int(t_max * self.num_train_timesteps), lo), last)

    def update(self, step: int, max_steps: int) -> None:
        cfg = self.cfg
        n = cfg.anneal_steps or max(max_steps, 1)
        progress = min(max(step, 0) / n, 1.0)
        if cfg.schedule == "dreamtime":
            # The latest t whose tail mass reaches the progress: t(0) = t_max, t(1) = t_min, non-increasing.
            last = int((self._tail >= progress - 1e-9).nonzero().max())
            self.t_max = int(self._steps[last]) / self.num_train_timesteps
            return
        fraction = {"none": 0.0, "linear": progress, "sqrt": math.sqrt(progress),
                    "step": float(step >= n)}[cfg.anneal]
        self.t_max = cfg.t_max + (cfg.t_max_end - cfg.t_max) * fraction

    @property
    def bounds(self) -> tuple[int, int]:
        """Inclusive integer range of timesteps sampled now (one value under the dreamtime schedule)."""
        if self.cfg.schedule == "dreamtime":
            t = round(self.t_max * self.num_train_timesteps)
            return t, t
        return self._range(self.t_max)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> Int[Tensor, "B"]:
        """One timestep per view, uniform over :attr:`bounds` (on the generator's device, CPU by default)."""
        lo, hi = self.bounds
        device = generator.device if generator is not None else "cpu"
        return torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)


@dataclass
class NoisyBatch:
    """What a score rule sees: the noised renders and their conditioning (all without gradient)."""

    x0: Float[Tensor, "B C h w"]
    x_t: Float[Tensor, "B C h w"]
    noise: Float[Tensor, "B C h w"]
    t: Int[Tensor, "B"]
    text: Conditioning
    cameras: Cameras


@dataclass
class GuidanceOut:
    """A guidance step's loss and scalar terms for logging (``t``, ``t_max`` as fractions of T)."""

    loss: Float[Tensor, ""]
    terms: dict[str, float]


def distillation_loss(x0: Float[Tensor, "B C h w"], grad: Float[Tensor, "B C h w"]) -> Float[Tensor, ""]:
    """The stop-gradient target trick: 0.5 * sum((x0 - sg(x0 - grad))^2) / B has d/dx0 = grad / B exactly."""
    target = (x0 - grad).detach()
    return 0.5 * (x0 - target).square().sum() / x0.shape[0]


class ScoreDistillation:
    """The guidance core: renders -> x0 -> noised x_t -> rule residual -> weighted, clamped -> loss.

    Each view of the batch gets its own timestep and noise; the loss is the batch mean of the
    per-view losses, so learning rates do not depend on the batch size. Subclasses implement
    :meth:`residual`; a rule with trainable state (VSD's LoRA) also overrides
    :meth:`auxiliary_losses`, :meth:`parameter_groups`, :meth:`state_dict` and :meth:`load_state_dict`.
    """

    def __init__(self, cfg: ScoreConfig, prior: DiffusionPrior, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts
        self.generator = generator
        self.timesteps = TimestepSampler(cfg, prior.num_train_timesteps)

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        """The rule's score residual r, before the weighting w(t)."""
        raise NotImplementedError

    def auxiliary_losses(self, batch: NoisyBatch) -> dict[str, Float[Tensor, ""]]:
        """Extra losses (with gradient) the rule trains besides the scene, added to the guidance loss."""
        return {}

    def guided(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], text: Conditioning,
               extra: list[Float[Tensor, "B L D"]] | tuple = ()
               ) -> tuple[Float[Tensor, "B C h w"], Float[Tensor, "B C h w"], list[Float[Tensor, "B C h w"]]]:
        """(eps_hat, eps_u, [eps(x_t; e) for e in extra]) from one batched UNet call, where eps_hat is
        the prior's classifier-free guidance at ``guidance_scale`` with ``text``'s Perp-Neg negatives."""
        negatives = text.negatives
        embeddings = [text.cond, text.uncond, *(e for e, _ in negatives), *extra]
        concat = None if text.concat is None else [*text.concat, *[text.concat[0]] * (len(embeddings) - 2)]
        preds = self.prior.noise_predictions(x_t, t, embeddings, class_labels=text.class_labels, concat=concat)
        k = 2 + len(negatives)
        eps_hat = self.prior.guide(preds[0], preds[1], self.cfg.guidance_scale,
                                   [(p, w) for p, (_, w) in zip(preds[2:k], negatives)])
        return eps_hat, preds[1], preds[k:]

    def randn(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like``, from the guidance's generator, on its device."""
        device = self.generator.device if self.generator is not None else like.device
        return torch.randn(like.shape, generator=self.generator, device=device).to(like.device, torch.float32)

    def rand(self, n: int) -> Float[Tensor, "N"]:
        """U[0, 1) draws from the guidance's generator, on the prior's device."""
        device = self.generator.device if self.generator is not None else "cpu"
        return torch.rand(n, generator=self.generator, device=device).to(self.prior.device)

    def update(self, step: int, max_steps: int) -> None:
        """Advance schedules to ``step`` of a stage of ``max_steps`` steps."""
        self.timesteps.update(step, max_steps)

    def __call__(self, out: RenderOut, cameras: Cameras, *, t: Int[Tensor, "B"] | None = None,
                 noise: Float[Tensor, "B C h w"] | None = None) -> GuidanceOut:
        """Score ``out.rgb``; ``t`` and ``noise`` override the random draws (tests, deterministic evaluation)."""
        prior = self.prior
        x0 = prior.encode_images(out.rgb)
        b = x0.shape[0]
        t = (self.timesteps.sample(b, self.generator) if t is None else t).to(prior.device)
        noise = (self.randn(x0) if noise is None else noise).to(x0.device, torch.float32)
        text = self.prompts.conditioning(cameras)
        with torch.no_grad():
            x0_ = x0.detach()
            batch = NoisyBatch(x0=x0_, x_t=prior.add_noise(x0_, noise, t), noise=noise, t=t, text=text,
                               cameras=cameras)
            w = prior.weighting(t, self.cfg.weighting)
            grad = w.view(-1, 1, 1, 1) * self.residual(batch)
            if self.cfg.grad_clip is not None:
                grad = grad.clamp(-self.cfg.grad_clip, self.cfg.grad_clip)
        extra = self.auxiliary_losses(batch)
        loss = distillation_loss(x0, grad) + sum(extra.values())
        with torch.no_grad():
            stats = torch.stack([t.float().mean() / prior.num_train_timesteps, w.mean(),
                                 grad.flatten(1).norm(dim=1).mean(), *(v.detach() for v in extra.values())]).tolist()
        terms = {"t": stats[0], "t_max": self.timesteps.t_max, "w": stats[1], "grad_norm": stats[2],
                 **dict(zip(extra, stats[3:]))}
        return GuidanceOut(loss=loss, terms=terms)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of the guidance's own trainable state (none for a frozen-prior rule)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Trainable guidance state for checkpoints (empty for a frozen-prior rule)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ThreedError(f"{type(self).__name__} keeps no state, but the checkpoint has guidance state "
                              f"{sorted(state)[:5]}: it was written by another guidance kind")


# --------------------------------------------------------------------------- SDS


@dataclass
class SDSConfig(ScoreConfig):
    """Score Distillation Sampling (Poole et al. 2022)."""

    kind: Literal["sds"] = "sds"
    """Selects this rule."""


class SDS(ScoreDistillation):
    """Score Distillation Sampling (DreamFusion, Poole et al. 2022): r = eps_hat(x_t; y, t) - eps,
    with eps_hat the classifier-free guided prediction (large scale, ~100 for SD, ~20 for IF)."""

    cfg: SDSConfig

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text)
        return eps_hat - batch.noise


@dataclass
class Zero123Config(ScoreConfig):
    """SDS with a Zero123-family view-conditioned prior (Zero-1-to-3, Liu et al. 2023; Magic123, Qian et al.
    2023): the rule is SDS's, the condition is the reference image at each view's relative pose
    (:class:`threed.guidance.zero123.ImageConditioning`)."""

    kind: Literal["zero123"] = "zero123"
    """Selects this rule."""
    guidance_scale: float = 3.0
    """CFG scale on the image condition (Zero-1-to-3 samples at 3; threestudio distils at 3 to 5)."""
    model: str | None = None
    """View-conditioned prior: hub id, diffusers folder or ``toyworld``; None = the recipe's ``image_model``."""
    convention: Literal["auto", "zero123", "stable-zero123"] = "auto"
    """Pose vector the model was trained on (threed.guidance.zero123); auto: stable-zero123 when the model's
    name contains "stable", else zero123."""


# --------------------------------------------------------------------------- NFSD


@dataclass
class NFSDConfig(ScoreConfig):
    """Noise-Free Score Distillation (Katzir et al. 2024)."""

    kind: Literal["nfsd"] = "nfsd"
    """Selects this rule."""
    guidance_scale: float = 7.5
    """Scale s of the condition term s (eps(y) - eps(null)); NFSD works at ordinary CFG scales."""
    negative_prompt: str = NFSD_NEGATIVE_PROMPT
    """p_neg: delta_D ~ eps(null) - eps(p_neg) at large t. "" removes delta_D there (the residual is then
    s (eps(y) - eps(null)) alone: the prompt direction without the pull toward the image domain)."""
    small_t: float = 0.2
    """Below this timestep (fraction; the paper's 200 of 1000) delta_D = eps(null), the noise being negligible."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.small_t <= 1:
            raise ValueError(f"small_t must be in [0, 1], got {self.small_t}")


class NFSD(ScoreDistillation):
    """Noise-Free Score Distillation (Katzir et al. 2024): the noise prediction splits into a domain
    term delta_D, a condition term delta_C = eps(y) - eps(null) and noise delta_N; distilling
    delta_D + s delta_C (and never the noise) removes SDS's need for a huge guidance scale.

    The null branch is the unconditional one, so ``prompt.negative_prompt`` must be empty; NFSD's own
    negative prompt is ``guidance.negative_prompt``. No added-noise term appears in the residual.
    """

    cfg: NFSDConfig

    def __init__(self, cfg: NFSDConfig, prior: DiffusionPrior, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        if prompts.cfg.negative_prompt:
            raise ThreedError(f"NFSD needs the empty prompt as its unconditional branch, but prompt.negative_prompt "
                              f"is {prompts.cfg.negative_prompt!r}; set NFSD's negative prompt with "
                              f"guidance.negative_prompt and leave prompt.negative_prompt empty")
        try:
            self._negative = prompts.repeat(cfg.negative_prompt, 1)
        except ThreedError as exc:
            raise ThreedError(f"{exc}. NFSD's negative prompt is guidance.negative_prompt; set it to words this "
                              f"model knows, or to \"\" to drop the domain term") from exc

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        b = batch.t.shape[0]
        eps_hat, eps_null, (eps_neg,) = self.guided(batch.x_t, batch.t, batch.text,
                                                    [self._negative.expand(b, -1, -1)])
        small = (batch.t < self.cfg.small_t * self.prior.num_train_timesteps).view(-1, 1, 1, 1)
        delta_d = torch.where(small, eps_null, eps_null - eps_neg)
        return delta_d + (eps_hat - eps_null)  # eps_hat - eps_null = s delta_C (with Perp-Neg if on)


# --------------------------------------------------------------------------- VSD


@dataclass
class VSDConfig(ScoreConfig):
    """Variational Score Distillation (ProlificDreamer, Wang et al. 2023)."""

    kind: Literal["vsd"] = "vsd"
    """Selects this rule."""
    guidance_scale: float = 7.5
    """CFG scale of the pretrained branch; VSD works at ordinary scales."""
    anneal: Anneal = "step"
    """ProlificDreamer drops t_max once, after ``anneal_steps``."""
    anneal_steps: int | None = 5000
    """Steps before t_max switches to ``t_max_end``."""
    lora_rank: int = 4
    """Rank of the LoRA adapters of eps_phi."""
    lora_alpha: float | None = None
    """LoRA alpha (the update is scaled by alpha / rank); None = rank, a scale of 1."""
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Names of the UNet modules that get adapters (diffusers' attention projections)."""
    lora_lr: float = 1e-4
    """Learning rate of the adapters and the camera embedding in the stage's Adam."""
    camera_dropout: float = 0.1
    """Probability of training eps_phi on a view without its camera (zeroed features)."""

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not self.lora_lr > 0:
            raise ValueError(f"lora_lr must be > 0, got {self.lora_lr}")
        if not 0 <= self.camera_dropout <= 1:
            raise ValueError(f"camera_dropout must be in [0, 1], got {self.camera_dropout}")


class VSD(ScoreDistillation):
    """Variational Score Distillation (ProlificDreamer, Wang et al. 2023): r = eps_hat(x_t; y) -
    eps_phi(x_t; y, c), where eps_phi (:class:`CameraLoRA`, view-independent prompt, camera c) models
    the renders themselves and is trained every step with the diffusion loss on the detached renders.

    Training: the adapters join the *stage's* Adam as their own group (``lora_lr``) through
    :meth:`parameter_groups`, and their loss is part of the guidance loss (it reaches only the
    adapters; the render gradient reaches only the scene). One optimiser, one backward pass, and the
    stage's checkpoint already saves that optimiser's moments, so a resumed run continues exactly;
    :meth:`state_dict` holds the adapter weights. (A private optimiser would duplicate the stage's
    zero_grad/step/NaN and checkpoint logic.) Adam is invariant to the constant ``loss.guidance``
    weight the stage applies, so that weight does not change the adapters' effective learning rate.
    """

    cfg: VSDConfig

    def __init__(self, cfg: VSDConfig, prior: DiffusionPrior, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self.lora = CameraLoRA(prior.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        self._prompt = prompts.repeat(prompts.prompt, 1)

    def phi(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], cameras: Cameras,
            keep_camera: Tensor | None = None, raw: bool = False) -> Float[Tensor, "B C h w"]:
        """eps_phi(x_t; y, c) of the renders' model (``raw``: the model's own epsilon or v output);
        ``keep_camera`` (per view, 0 or 1) drops the camera condition where 0."""
        feats = camera_features(cameras).to(self.prior.device)
        if keep_camera is not None:
            feats = feats * keep_camera.view(-1, 1).to(feats)
        call = self.prior.model_outputs if raw else self.prior.noise_predictions
        return call(x_t, t, [self._prompt.expand(x_t.shape[0], -1, -1)], unet=self.lora.unet, class_labels=feats)[0]

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text)
        return eps_hat - self.phi(batch.x_t, batch.t, batch.cameras)

    def auxiliary_losses(self, batch: NoisyBatch) -> dict[str, Float[Tensor, ""]]:
        """eps_phi's diffusion loss on the detached renders, at its own t ~ U{0..T-1} and noise."""
        prior, b = self.prior, batch.x0.shape[0]
        t = (self.rand(b) * prior.num_train_timesteps).long().clamp_max(prior.num_train_timesteps - 1)
        noise = self.randn(batch.x0)
        keep = self.rand(b) >= self.cfg.camera_dropout
        with torch.enable_grad():
            pred = self.phi(prior.add_noise(batch.x0, noise, t), t, batch.cameras, keep, raw=True)
            loss = F.mse_loss(pred, prior.training_target(batch.x0, noise, t))
        return {"lora": loss}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.lora.adapter_parameters(), "lr": self.cfg.lora_lr, "weight_decay": 0.0,
                 "name": "guidance.lora"}]

    def state_dict(self) -> dict[str, Any]:
        return {"lora": self.lora.adapter_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"lora"}:
            raise ThreedError(f"the checkpoint's guidance state {sorted(state)[:5]} is not VSD's: it was written "
                              f"by another guidance kind")
        self.lora.load_adapter_state(state["lora"])


# --------------------------------------------------------------------------- ISM


@dataclass
class ISMConfig(ScoreConfig):
    """Interval Score Matching (LucidDreamer, Liang et al. 2023)."""

    kind: Literal["ism"] = "ism"
    """Selects this rule."""
    guidance_scale: float = 7.5
    """CFG scale of eps_hat at x_t."""
    weighting: Weighting = "ism"
    """LucidDreamer's w(t) = sqrt((1 - abar_t) / abar_t)."""
    delta_t: float = 0.05
    """Interval t - s between the two noisy points (fraction; the paper's 50 of 1000)."""
    inversion_steps: int = 5
    """Unconditional DDIM inversion steps from x0 to x_s (the paper's 5)."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.delta_t < 1:
            raise ValueError(f"delta_t must be in (0, 1), got {self.delta_t}")
        if self.inversion_steps < 1:
            raise ValueError(f"inversion_steps must be >= 1, got {self.inversion_steps}")


class ISM(ScoreDistillation):
    """Interval Score Matching (LucidDreamer, Liang et al. 2023): the clean render is DDIM-inverted
    with the null prompt to x_s (s = t - delta_t) in ``inversion_steps`` steps, then one more step to
    x_t; r = eps_hat(x_t; y) - eps(x_s; null). Matching two deterministic points of one trajectory,
    instead of a prediction against random noise, keeps the update free of SDS's averaging blur.
    The random noise only seeds the near-clean start x_0' = add_noise(x0, eps, 0).
    """

    cfg: ISMConfig

    def __init__(self, cfg: ISMConfig, prior: DiffusionPrior, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self._null = prompts.repeat("", 1)

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        prior, t = self.prior, batch.t
        null = self._null.expand(t.shape[0], -1, -1)
        zero = torch.zeros_like(t)
        s = (t - round(self.cfg.delta_t * prior.num_train_timesteps)).clamp_min(0)
        x_s = prior.ddim_invert(prior.add_noise(batch.x0, batch.noise, zero), zero, s, null, self.cfg.inversion_steps)
        eps_s = prior.noise_predictions(x_s, s, [null])[0]
        x_t = prior.ddim_step(x_s, eps_s, s, t)
        eps_hat, _, _ = self.guided(x_t, t, batch.text)
        return eps_hat - eps_s


# --------------------------------------------------------------------------- registry


GuidanceConfig = SDSConfig | NFSDConfig | VSDConfig | ISMConfig | Zero123Config
"""Every guidance config, told apart by ``kind`` (sds when absent)."""

GUIDANCE_CONFIGS: dict[str, type[ScoreConfig]] = {"sds": SDSConfig, "nfsd": NFSDConfig, "vsd": VSDConfig,
                                                  "ism": ISMConfig, "zero123": Zero123Config}
"""``kind`` -> config class, for building a config from a plain mapping."""

_RULES: dict[type[ScoreConfig], type[ScoreDistillation]] = {SDSConfig: SDS, NFSDConfig: NFSD, VSDConfig: VSD,
                                                             ISMConfig: ISM, Zero123Config: SDS}


def make_guidance(cfg: ScoreConfig, prior: DiffusionPrior, prompts: PromptProcessor,
                  generator: torch.Generator | None = None) -> ScoreDistillation:
    """The guidance object for ``cfg`` (dispatch on the config's class, i.e. its ``kind``)."""
    rule = _RULES.get(type(cfg))
    if rule is None:
        raise ThreedError(f"no guidance rule for {type(cfg).__name__}; known kinds: {', '.join(GUIDANCE_CONFIGS)}")
    return rule(cfg, prior, prompts, generator)
