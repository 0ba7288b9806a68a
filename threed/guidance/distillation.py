"""Score distillation: the guidance core every rule runs, and the settings every rule shares.

Every rule follows one recipe, DreamFusion's (Poole et al. 2022, eq. 3):

    x0 = encode(render)                       differentiable (VAE encoder or resize)
    t ~ schedule,  eps ~ N(0, I),  x_t = noised(x0, eps, t)
    grad = w(t) * residual(x_t, t, eps, y)    the network runs under no_grad
    loss = 0.5 * sum((x0 - sg(x0 - grad))^2) / B,  so  d loss / d x0[b] = grad[b] / B

:class:`ScoreDistillation` does all of that, with the diffusion math in the prior
(:mod:`threed.guidance.core`) and the condition from a :class:`~threed.guidance.conditioning.Conditioner`.
A rule (:mod:`threed.guidance.rules`, one file each) only forms the residual; eps_hat is the
classifier-free guided prediction, Perp-Neg included when the prompt config asks for it.

A rule with trainable state (VSD's LoRA) adds its own losses through :meth:`~ScoreDistillation.auxiliary_losses`
and exposes parameters and checkpoint state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.conditioning import Conditioner, Conditioning
from threed.guidance.core import Denoiser, Weighting
from threed.guidance.timesteps import Anneal, DreamTimeConfig, Schedule, TimestepSampler
from threed.render.output import RenderOut

PriorKind = Literal["text", "view", "flow", "multiview"]
"""Which prior and condition a rule takes: a text-conditioned diffusion model and the prompt, a Zero123-family
model and the reference image, a text-conditioned flow-matching model and the prompt, or a multi-view diffusion
model (MVDream) with the prompt and the cameras (threed.guidance.build)."""


@dataclass
class ScoreConfig:
    """Settings every score rule shares: its weight and prior, timesteps, weighting, clipping."""

    weight: float = 1.0
    """Weight of this guidance's loss in the stage's sum of guidances (Magic123: 1 for the text prior, 40 for
    Zero123); 0 skips it."""
    model: str | None = None
    """Prior of this guidance: hub id, diffusers folder or a short name; None = the stage's ``model`` (text and
    flow rules) or the recipe's ``image_model`` (view-conditioned rules)."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
    t_min: float = 0.02
    """Smallest training timestep, as a fraction of the prior's training timesteps."""
    t_max: float = 0.98
    """Largest training timestep at the start of the stage (fraction)."""
    schedule: Schedule = "uniform"
    """uniform: t ~ U[t_min, t_max] per view, t_max moving as ``anneal`` says; dreamtime: one t per step,
    decreasing monotonically from t_max to t_min so that the steps spent at each t follow the
    ``dreamtime`` prior (DreamTime's time-prioritised schedule, Huang et al. 2023); linear: one t per step,
    falling linearly from t_max to t_min (SDI, Lukoianov et al. 2024)."""
    anneal: Anneal = "none"
    """How t_max moves toward ``t_max_end`` (uniform schedule): linear or sqrt in progress (HiFA, Zhu et al.
    2023), or one switch after ``anneal_steps`` (ProlificDreamer, Wang et al. 2023)."""
    t_max_end: float = 0.5
    """t_max at the end of the anneal (unused with anneal: none)."""
    anneal_steps: int | None = None
    """Steps over which t_max anneals, switches, or the dreamtime and linear schedules run; None = the whole stage."""
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
        if self.schedule != "uniform" and self.anneal != "none":
            raise ValueError(f"the {self.schedule} schedule sets t itself; use anneal: none with it")
        if self.anneal_steps is not None and self.anneal_steps < 1:
            raise ValueError(f"anneal_steps must be >= 1 or null, got {self.anneal_steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


@dataclass
class NoisyBatch:
    """What a score rule sees: the noised renders and their conditioning (all without gradient)."""

    x0: Float[Tensor, "B C h w"]
    x_t: Float[Tensor, "B C h w"]
    noise: Float[Tensor, "B C h w"]
    t: Int[Tensor, "B"]
    text: Conditioning
    cameras: Cameras
    source_x0: Float[Tensor, "B C h w"] | None = None
    """The original asset's render at the same cameras, encoded (editing rules; None otherwise)."""
    source_x_t: Float[Tensor, "B C h w"] | None = None
    """``source_x0`` noised with the same ``noise`` and ``t`` as ``x_t`` (DDS, Hertz et al. 2023)."""


@dataclass
class GuidanceOut:
    """A guidance step's loss and scalar terms for logging (``t``, ``t_max`` as fractions of T)."""

    loss: Float[Tensor, ""]
    terms: dict[str, float]


def distillation_loss(x0: Float[Tensor, "B C h w"], grad: Float[Tensor, "B C h w"]) -> Float[Tensor, ""]:
    """The stop-gradient target trick: 0.5 * sum((x0 - sg(x0 - grad))^2) / B has d/dx0 = grad / B exactly."""
    target = (x0 - grad).detach()
    return 0.5 * (x0 - target).square().sum() / x0.shape[0]


P = TypeVar("P", bound=Denoiser)
C = TypeVar("C", bound=Conditioner)


class ScoreDistillation(Generic[P, C]):
    """The guidance core: renders -> x0 -> noised x_t -> rule residual -> weighted, clamped -> loss.

    Each view of the batch gets its own timestep and noise; the loss is the batch mean of the
    per-view losses, so learning rates do not depend on the batch size. Subclasses implement
    :meth:`residual` and say which prior and condition they take (:attr:`prior_kind`); a rule with
    trainable state (VSD's LoRA) also overrides :meth:`auxiliary_losses`, :meth:`parameter_groups`,
    :meth:`state_dict` and :meth:`load_state_dict`.
    """

    prior_kind: ClassVar[PriorKind] = "text"
    """The prior and condition this rule is built with (:mod:`threed.guidance.build`)."""
    needs_source: ClassVar[bool] = False
    """Whether the rule compares with the original asset's render at the same cameras (editing rules: DDS,
    PDS); its caller then passes ``source`` to :meth:`__call__`."""

    def __init__(self, cfg: ScoreConfig, prior: P, conditioner: C, generator: torch.Generator | None = None):
        prior.check_weighting(cfg.weighting)
        self.cfg = cfg
        self.prior = prior
        self.conditioner = conditioner
        self.generator = generator
        self.timesteps = TimestepSampler(cfg, prior.num_train_timesteps)

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        """The rule's score residual r, before the weighting w(t)."""
        raise NotImplementedError

    def auxiliary_losses(self, batch: NoisyBatch) -> dict[str, Float[Tensor, ""]]:
        """Extra losses (with gradient) the rule trains besides the scene, added to the guidance loss."""
        return {}

    def guided(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], text: Conditioning,
               extra: list[Float[Tensor, "B L D"]] | tuple = (), raw: bool = False, scale: float | None = None
               ) -> tuple[Float[Tensor, "B C h w"], Float[Tensor, "B C h w"], list[Float[Tensor, "B C h w"]]]:
        """(eps_hat, eps_u, [eps(x_t; e) for e in extra]) from one batched network call, where eps_hat is
        the prior's classifier-free guidance at ``scale`` (default ``guidance_scale``) with ``text``'s Perp-Neg
        negatives. ``raw``: the model's own outputs (v, or the flow velocity) instead of noise predictions."""
        negatives = text.negatives
        embeddings = [text.cond, text.uncond, *(e for e, _ in negatives), *extra]
        concat = None if text.concat is None else [*text.concat, *[text.concat[0]] * (len(embeddings) - 2)]
        call = self.prior.model_outputs if raw else self.prior.noise_predictions
        preds = call(x_t, t, embeddings, class_labels=text.class_labels, concat=concat)
        k = 2 + len(negatives)
        eps_hat = self.prior.guide(preds[0], preds[1], self.cfg.guidance_scale if scale is None else scale,
                                   [(p, w) for p, (_, w) in zip(preds[2:k], negatives)])
        return eps_hat, preds[1], preds[k:]

    def sample_timesteps(self, batch: int) -> Int[Tensor, "B"]:
        """The timestep of each view of a batch (one per view; a multi-view rule shares one per object)."""
        return self.timesteps.sample(batch, self.generator)

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

    def __call__(self, out: RenderOut, cameras: Cameras, *, source: RenderOut | None = None,
                 t: Int[Tensor, "B"] | None = None, noise: Float[Tensor, "B C h w"] | None = None) -> GuidanceOut:
        """Score ``out.rgb``; ``t`` and ``noise`` override the random draws (tests, deterministic evaluation).

        ``source``: the original asset rendered at the same cameras and shading, which an editing rule
        (:attr:`needs_source`) compares with; the other rules ignore it."""
        prior = self.prior
        if self.needs_source and source is None:
            raise ThreedError(f"the {self.cfg.kind} guidance edits an asset: it needs the original's render at the "
                              f"same cameras; run it with threed edit RUN_DIR PROMPT")
        x0 = prior.encode_images(out.rgb)
        b = x0.shape[0]
        t = (self.sample_timesteps(b) if t is None else t).to(prior.device)
        noise = (self.randn(x0) if noise is None else noise).to(x0.device, torch.float32)
        text = self.conditioner.conditioning(cameras)
        with torch.no_grad():
            x0_ = x0.detach()
            batch = NoisyBatch(x0=x0_, x_t=prior.add_noise(x0_, noise, t), noise=noise, t=t, text=text,
                               cameras=cameras)
            if self.needs_source and source is not None:
                batch.source_x0 = prior.encode_images(source.rgb.detach()).to(x0_)
                batch.source_x_t = prior.add_noise(batch.source_x0, noise, t)
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
