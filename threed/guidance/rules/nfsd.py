"""NFSD: Noise-Free Score Distillation (Katzir et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.core import Denoiser
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register
from threed.guidance.text import PromptProcessor

NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")
"""The negative prompt of Noise-Free Score Distillation (Katzir et al. 2024, sec. 4)."""


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


def negative_embedding(prompts: PromptProcessor, text: str, rule: str) -> Float[Tensor, "1 L D"]:
    """The embedding of a rule's own negative prompt ``guidance.negative_prompt``, with an error that names the
    key when the model does not know its words."""
    try:
        return prompts.repeat(text, 1)
    except ThreedError as exc:
        raise ThreedError(f"{exc}. {rule}'s negative prompt is guidance.negative_prompt; set it to words this "
                          f"model knows, or to \"\" to drop its term") from exc


class NFSD(ScoreDistillation[Denoiser, PromptProcessor]):
    """Noise-Free Score Distillation (Katzir et al. 2024): the noise prediction splits into a domain
    term delta_D, a condition term delta_C = eps(y) - eps(null) and noise delta_N; distilling
    delta_D + s delta_C (and never the noise) removes SDS's need for a huge guidance scale.

        delta_D = eps(x_t; null)                          if t < small_t
                  eps(x_t; null) - eps(x_t; p_neg)        otherwise

    The null branch is the unconditional one, so ``prompt.negative_prompt`` must be empty; NFSD's own
    negative prompt is ``guidance.negative_prompt``. No added-noise term appears in the residual.
    """

    cfg: NFSDConfig

    def __init__(self, cfg: NFSDConfig, prior: Denoiser, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        if prompts.cfg.negative_prompt:
            raise ThreedError(f"NFSD needs the empty prompt as its unconditional branch, but prompt.negative_prompt "
                              f"is {prompts.cfg.negative_prompt!r}; set NFSD's negative prompt with "
                              f"guidance.negative_prompt and leave prompt.negative_prompt empty")
        self._negative = negative_embedding(prompts, cfg.negative_prompt, "NFSD")

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        b = batch.t.shape[0]
        eps_hat, eps_null, (eps_neg,) = self.guided(batch.x_t, batch.t, batch.text,
                                                    [self._negative.expand(b, -1, -1)])
        small = (batch.t < self.cfg.small_t * self.prior.num_train_timesteps).view(-1, 1, 1, 1)
        delta_d = torch.where(small, eps_null, eps_null - eps_neg)
        return delta_d + (eps_hat - eps_null)  # eps_hat - eps_null = s delta_C (with Perp-Neg if on)


register(NFSDConfig, NFSD)
