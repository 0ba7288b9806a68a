"""What the editing rules share: the original asset's prompt and render, beside the edit's.

An editing rule (DDS, PDS: :mod:`threed.guidance.rules.dds`, :mod:`threed.guidance.rules.pds`) scores a
render of the asset being edited against the original asset's render at the same camera: the edit under the
new prompt, the original under its own. Guidance knows nothing of where the original comes from: its caller
(``threed edit``'s stage) renders it at the step's cameras and shading and passes it as ``source``; the
guidance core encodes it and noises it with the same noise and timestep as the edit
(:attr:`NoisyBatch.source_x0`, :attr:`NoisyBatch.source_x_t`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.conditioning import Conditioning
from threed.guidance.core import DiffusionCore
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.text import PromptProcessor


@dataclass
class EditConfig(ScoreConfig):
    """Settings every editing rule shares (besides :class:`ScoreConfig`'s)."""

    source_prompt: str = ""
    """The original asset's prompt: ``threed edit`` sets it to the source run's (or ``--source-prompt``)."""


@dataclass
class SourceBatch:
    """The original asset's side of a :class:`NoisyBatch`: its encoded render, noised alike, and its condition."""

    x0: Float[Tensor, "B C h w"]
    x_t: Float[Tensor, "B C h w"]
    text: Conditioning


class EditDistillation(ScoreDistillation[DiffusionCore, PromptProcessor]):
    """Base of the editing rules: the source prompt's per-view condition (view-dependent like the edit's) and
    the original's render from the batch."""

    cfg: EditConfig
    needs_source = True

    def __init__(self, cfg: EditConfig, prior: DiffusionCore, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        if not cfg.source_prompt.strip():
            raise ThreedError(f"the {cfg.kind} guidance needs source_prompt, the original asset's prompt "
                              f"(threed edit sets it from the source run)")
        self.source = prompts.with_prompt(cfg.source_prompt)

    def source_batch(self, batch: NoisyBatch) -> SourceBatch:
        """The original's render at the batch's cameras, noised with the batch's noise and t, and its condition."""
        if batch.source_x0 is None or batch.source_x_t is None:
            raise ThreedError(f"the {self.cfg.kind} guidance was given no render of the original asset")
        return SourceBatch(batch.source_x0, batch.source_x_t, self.source.conditioning(batch.cameras))
