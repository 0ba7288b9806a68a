"""CSD: Classifier Score Distillation (Yu et al. 2023, "Text-to-3D with Classifier Score Distillation")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from threed.guidance.core import Denoiser
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register
from threed.guidance.rules.nfsd import negative_embedding
from threed.guidance.text import PromptProcessor


@dataclass
class CSDConfig(ScoreConfig):
    """Classifier Score Distillation (Yu et al. 2023)."""

    kind: Literal["csd"] = "csd"
    """Selects this rule."""
    negative_prompt: str = ""
    """The annealed negative prompt's text; "" = none, the residual is the classifier score alone."""
    negative_scale: float = 1.0
    """w_neg, the weight of the negative classifier score once annealed in (the reference code's 1)."""
    negative_steps: int = 0
    """Steps over which w_neg grows linearly from 0 to ``negative_scale`` (the reference code's 5000); 0 = at once."""

    def __post_init__(self):
        super().__post_init__()
        if self.negative_scale < 0 or self.negative_steps < 0:
            raise ValueError(f"need negative_scale >= 0 and negative_steps >= 0, got {self.negative_scale}, "
                             f"{self.negative_steps}")


class CSD(ScoreDistillation[Denoiser, PromptProcessor]):
    """Classifier Score Distillation (Yu et al. 2023): the classifier term of SDS alone,

        r = s (eps(x_t; y) - eps(x_t; null)) - w_neg (eps(x_t; y_neg) - eps(x_t; null)),

    i.e. eps_hat - eps_u of classifier-free guidance (Perp-Neg included), without SDS's generative
    term eps(x_t; null) - eps. The paper reads eps(y) - eps(null) as the gradient of an implicit
    classifier log p(y | x_t) and shows it alone drives text-to-3D; its annealed negative classifier
    score (sec. 4.2) pushes away from ``negative_prompt`` with a weight that grows over the first
    ``negative_steps`` steps. ``prompt.negative_prompt`` replaces null in both terms when set. The
    reference code runs this at ``weighting: uniform`` and rescales each step's gradient to unit norm;
    threed keeps SDS's weighting and scale conventions, so CSD and SDS are compared at equal settings.
    """

    cfg: CSDConfig

    def __init__(self, cfg: CSDConfig, prior: Denoiser, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self._negative = negative_embedding(prompts, cfg.negative_prompt, "CSD") if cfg.negative_prompt else None
        self.negative_weight = 0.0 if cfg.negative_steps else cfg.negative_scale

    def update(self, step: int, max_steps: int) -> None:
        super().update(step, max_steps)
        ramp = min(step / self.cfg.negative_steps, 1.0) if self.cfg.negative_steps else 1.0
        self.negative_weight = self.cfg.negative_scale * ramp

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        extra = [] if self._negative is None else [self._negative.expand(batch.t.shape[0], -1, -1)]
        eps_hat, eps_u, negative = self.guided(batch.x_t, batch.t, batch.text, extra)
        r = eps_hat - eps_u
        if negative:
            r = r - self.negative_weight * (negative[0] - eps_u)
        return r


register(CSDConfig, CSD)
