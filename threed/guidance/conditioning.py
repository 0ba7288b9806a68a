"""What conditions a prior, per training camera: the :class:`Conditioner` protocol and its output.

A score rule asks its conditioner for the condition of a batch of cameras and hands the
:class:`Conditioning` to the prior's batched network call. Two conditioners implement it:

* :class:`threed.guidance.text.PromptProcessor`: text, with DreamFusion's view-dependent prompts and
  Perp-Neg's negatives;
* :class:`threed.guidance.zero123.ImageConditioning`: a reference image at each camera's pose relative
  to the reference camera (Zero-1-to-3).

A multi-view prior (MVDream: four cameras denoised jointly, the camera matrices as a condition) fits
the same shape: its conditioner returns per-view embeddings and the camera features in
``class_labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras


@dataclass
class Conditioning:
    """The condition of a batch of cameras (text, or a reference image), as the guidance core consumes it."""

    cond: Float[Tensor, "B L D"]
    """Condition embedding of each view (its view prompt's, interpolated by azimuth, or the image token)."""
    uncond: Float[Tensor, "B L D"]
    """Unconditional branch of classifier-free guidance (the negative prompt, "" by default; a zero token)."""
    negatives: tuple[tuple[Float[Tensor, "B L D"], Float[Tensor, "B"]], ...] = ()
    """Perp-Neg negative prompt embeddings with per-view weights (empty when perp_neg is off)."""
    concat: tuple[Float[Tensor, "B K h w"], Float[Tensor, "B K h w"]] | None = None
    """Channels concatenated to the network input, conditional and unconditional (a view-conditioned prior's
    reference, :mod:`threed.guidance.zero123`); None for text priors."""
    class_labels: Float[Tensor, "B N"] | None = None
    """The network's class-embedding input of each view, the same in every branch (the toy view prior's pose)."""


@runtime_checkable
class Conditioner(Protocol):
    """Anything that turns a batch of cameras into the prior's condition."""

    def conditioning(self, cameras: Cameras) -> Conditioning:
        """The condition of each camera of the batch."""
        ...
