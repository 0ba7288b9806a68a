"""SDS-Bridge: score distillation as a bridge between image distributions (McAllister et al. 2024,
"Rethinking Score Distillation as a Bridge Between Image Distributions")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from threed.guidance.core import Denoiser
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.registry import register
from threed.guidance.text import PromptProcessor

BRIDGE_SOURCE_SUFFIX = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"
"""The paper's description of the artefacts of the current (source) distribution, appended to the prompt."""


@dataclass
class SDSBridgeConfig(ScoreConfig):
    """SDS-Bridge (McAllister et al. 2024)."""

    kind: Literal["sds_bridge"] = "sds_bridge"
    """Selects this rule."""
    guidance_scale: float = 30.0
    """Scale s of the bridge s (eps(y) - eps(y_src)) (the reference code's 2D setting)."""
    sds_guidance_scale: float = 100.0
    """CFG scale of the SDS warm-up (``sds_fraction``)."""
    source_suffix: str = BRIDGE_SOURCE_SUFFIX
    """Appended to the prompt to describe the source distribution, the current renders' artefacts (before the
    view suffix, as the reference code builds it)."""
    sds_fraction: float = 0.0
    """Share of the stage run as plain SDS before the bridge takes over (the reference 3D setting: 0.8, 20k of
    25k steps, so the bridge refines a shape SDS has formed)."""

    def __post_init__(self):
        super().__post_init__()
        if not self.source_suffix.strip(" ,"):
            raise ValueError("source_suffix must describe the renders' artefacts; an empty one makes the source "
                             "prompt the prompt itself and the residual zero")
        if not 0 <= self.sds_fraction <= 1:
            raise ValueError(f"sds_fraction must be in [0, 1], got {self.sds_fraction}")


class SDSBridge(ScoreDistillation[Denoiser, PromptProcessor]):
    """SDS-Bridge (McAllister et al. 2024): SDS read as a Schroedinger bridge from the distribution of the
    current renders to the prompt's, whose source score SDS approximates by the unconditional
    prediction. The bridge calibrates it with a text description of the renders' artefacts instead:

        r = s (eps(x_t; y) - eps(x_t; y_src)),  y_src = prompt + ``source_suffix``,

    classifier-free guidance with the unconditional branch replaced by the source prompt (so Perp-Neg,
    when on, removes its negatives perpendicular to y - y_src). Both prompts are view dependent. No
    added-noise term appears: the two predictions share x_t, so the noise cancels. For the first
    ``sds_fraction`` of the stage the rule is plain SDS, eps_hat(x_t; y) - eps.
    """

    cfg: SDSBridgeConfig

    def __init__(self, cfg: SDSBridgeConfig, prior: Denoiser, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self.source = prompts.with_prompt(prompts.prompt + cfg.source_suffix)
        self.bridging = cfg.sds_fraction == 0

    def update(self, step: int, max_steps: int) -> None:
        super().update(step, max_steps)
        self.bridging = step >= self.cfg.sds_fraction * max_steps

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        if not self.bridging:
            eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text, scale=self.cfg.sds_guidance_scale)
            return eps_hat - batch.noise
        bridge = dataclasses.replace(batch.text, uncond=self.source.conditioning(batch.cameras).cond)
        eps_hat, eps_src, _ = self.guided(batch.x_t, batch.t, bridge)
        return eps_hat - eps_src


register(SDSBridgeConfig, SDSBridge)
