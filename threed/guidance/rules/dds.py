"""DDS: Delta Denoising Score (Hertz et al. 2023, "Delta Denoising Score")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxtyping import Float
from torch import Tensor

from threed.guidance.distillation import NoisyBatch
from threed.guidance.editing import EditConfig, EditDistillation
from threed.guidance.registry import register


@dataclass
class DDSConfig(EditConfig):
    """Delta Denoising Score (Hertz et al. 2023)."""

    kind: Literal["dds"] = "dds"
    """Selects this rule."""


class DDS(EditDistillation):
    """Delta Denoising Score (Hertz et al. 2023, eq. 5): the SDS residual of the edit under the new prompt minus
    that of the original under its own prompt, at the same noise eps and timestep t,

        r = eps_hat(x_t; y) - eps_hat(x_t^src; y_src),   x_t^src = noised(original render, eps, t),

    so eps cancels, and with it the part of SDS's residual that does not depend on the prompt: the noisy,
    blurring direction that SDS applies everywhere. What the two prompts agree on (the shape, when only the
    colour changes) gets a residual near zero and stays; the residual is exactly zero where the edit still
    equals the original and the prompts are equal. Both predictions use classifier-free guidance.
    """

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        source = self.source_batch(batch)
        eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text)
        eps_src, _, _ = self.guided(source.x_t, batch.t, source.text)
        return eps_hat - eps_src


register(DDSConfig, DDS)
