"""Multi-view SDS: score distillation through a multi-view prior (MVDream, Shi et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.distillation import NoisyBatch, PriorKind, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register


@dataclass
class MVDreamConfig(ScoreConfig):
    """Multi-view score distillation (MVDream, Shi et al. 2023): the V renders of an object scored together."""

    kind: Literal["mvdream"] = "mvdream"
    """Selects this rule."""
    guidance_scale: float = 50.0
    """MVDream's classifier-free guidance scale (its threestudio recipe)."""
    rescale: float = 0.5
    """CFG rescale (Lin et al. 2024, as MVDream uses it): the guided x0 estimate's standard deviation is pulled
    toward the conditional one's by this share, which keeps a large scale from over-saturating; 0 = plain CFG."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"rescale must be in [0, 1], got {self.rescale}")


class MVDream(ScoreDistillation):
    """SDS on a batch of whole objects (V views each, views of one object adjacent): the prior denoises the
    views of an object together, each with its camera, and all of them share one timestep (each its own
    noise), as MVDream trains and distils. The residual is SDS's, eps_hat - eps, with eps_hat from
    classifier-free guidance rescaled in x0: x0_hat's per-view standard deviation is moved toward the
    conditional x0's by ``rescale`` (MVDream's ``recon_std_rescale``). MVDream's own x0 reconstruction loss,
    ||x0 - sg(x0_hat)||^2, is this residual under ``weighting: ism``."""

    cfg: MVDreamConfig
    prior_kind: ClassVar[PriorKind] = "multiview"

    def sample_timesteps(self, batch: int) -> Int[Tensor, "B"]:
        v = self.prior.num_views  # pyright: ignore[reportAttributeAccessIssue]
        if batch % v:
            raise ThreedError(f"{self.prior.name} denoises {v} views of an object together, but the batch has "
                              f"{batch} views; set cameras.views_per_object={v} and a batch_size that is a multiple "
                              f"of {v}")
        return super().sample_timesteps(batch // v).repeat_interleave(v)

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        prior, text = self.prior, batch.text
        eps_c, eps_u = prior.noise_predictions(batch.x_t, batch.t, [text.cond, text.uncond],
                                               class_labels=text.class_labels)
        eps_hat = prior.guide(eps_c, eps_u, self.cfg.guidance_scale)
        if self.cfg.rescale > 0:
            abar = prior.alphas_cumprod[batch.t].view(-1, 1, 1, 1)  # pyright: ignore[reportAttributeAccessIssue]
            a, s = abar.sqrt(), (1 - abar).sqrt()
            x0_hat, x0_c = (batch.x_t - s * eps_hat) / a, (batch.x_t - s * eps_c) / a
            ratio = x0_c.flatten(1).std(1) / x0_hat.flatten(1).std(1).clamp_min(1e-8)
            x0 = torch.lerp(x0_hat, x0_hat * ratio.view(-1, 1, 1, 1), self.cfg.rescale)
            eps_hat = (batch.x_t - a * x0) / s
        return eps_hat - batch.noise


register(MVDreamConfig, MVDream)
