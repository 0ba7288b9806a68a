"""ISM: Interval Score Matching (LucidDreamer, Liang et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from threed.guidance.core import DiffusionCore, Weighting
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register
from threed.guidance.text import PromptProcessor


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


class ISM(ScoreDistillation[DiffusionCore, PromptProcessor]):
    """Interval Score Matching (LucidDreamer, Liang et al. 2023): the clean render is DDIM-inverted
    with the null prompt to x_s (s = t - delta_t) in ``inversion_steps`` steps, then one more step to
    x_t; r = eps_hat(x_t; y) - eps(x_s; null). Matching two deterministic points of one trajectory,
    instead of a prediction against random noise, keeps the update free of SDS's averaging blur.
    The random noise only seeds the near-clean start x_0' = add_noise(x0, eps, 0). A step costs
    ``inversion_steps + 1`` unconditional network calls plus the CFG call.
    """

    cfg: ISMConfig

    def __init__(self, cfg: ISMConfig, prior: DiffusionCore, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self._null = prompts.repeat("", 1)

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        prior, t = self.prior, batch.t
        null = self._null.expand(t.shape[0], -1, -1)
        zero = torch.zeros_like(t)
        s = (t - round(self.cfg.delta_t * prior.num_train_timesteps)).clamp_min(0)
        x_s = prior.ddim_invert(prior.add_noise(batch.x0, batch.noise, zero), zero, s, self.cfg.inversion_steps,
                                lambda x, k: prior.noise_predictions(x, k, [null])[0])
        eps_s = prior.noise_predictions(x_s, s, [null])[0]
        x_t = prior.ddim_step(x_s, eps_s, s, t)
        eps_hat, _, _ = self.guided(x_t, t, batch.text)
        return eps_hat - eps_s


register(ISMConfig, ISM)
