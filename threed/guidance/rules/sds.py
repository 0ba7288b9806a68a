"""SDS: Score Distillation Sampling (DreamFusion, Poole et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxtyping import Float
from torch import Tensor

from threed.guidance.conditioning import Conditioner
from threed.guidance.core import Denoiser
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register


@dataclass
class SDSConfig(ScoreConfig):
    """Score Distillation Sampling (Poole et al. 2022)."""

    kind: Literal["sds"] = "sds"
    """Selects this rule."""


class SDS(ScoreDistillation[Denoiser, Conditioner]):
    """Score Distillation Sampling (DreamFusion, Poole et al. 2022, eq. 3): r = eps_hat(x_t; y, t) - eps,
    with eps_hat the classifier-free guided prediction (large scale, ~100 for SD, ~20 for IF) and eps the
    noise that made x_t. It needs the large scale to escape the blurry mean image."""

    cfg: SDSConfig

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text)
        return eps_hat - batch.noise


register(SDSConfig, SDS)
