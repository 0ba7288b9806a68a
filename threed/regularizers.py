"""Regularisers: small typed loss terms of a render, each with its own config, summed by the stage.

A stage's ``loss`` section names each term once, as a field of :class:`LossConfig`; a recipe writes a
term's weight alone (``orient: 0.01``) or its whole config (``sparsity: {weight: 0.1, eps: 0.01}``). An
unknown term or setting is an error, and so is a non-zero weight on a term the stage's renderer does not
produce (DreamFusion's orientation term needs a volume renderer's normals), instead of the term silently
counting for nothing.

Terms, with the papers they come from:

* :class:`Orientation` -- DreamFusion (Poole et al., ICLR 2023, appendix): penalises normals that face
  away from the camera; the volume renderer computes it from its per-sample normals.
* :class:`Sparsity` -- mean of ``sqrt(opacity^2 + eps)`` (a smooth L1 on opacity, as DreamFusion's and
  threestudio's sparsity term): discourages fog and floaters.
* :class:`Opaque` -- binary entropy of opacity (Magic3D, Lin et al., CVPR 2023, and threestudio's
  ``opaque`` term): pushes each pixel to fully empty or fully opaque.
* :class:`Eikonal` -- ``(|grad sdf| - 1)^2`` at random points (Gropp et al., "Implicit Geometric
  Regularization", ICML 2020; NeuS and VolSDF train with it): keeps an SDF field a distance, so its
  VolSDF density has one sharp level; the volume renderer computes it over an SDF field.
* :class:`NormalConsistency` -- mean ``1 - cos`` between neighbouring face normals (a mesh Laplacian-style
  smoothness prior, as in Fantasia3D and Magic3D's refinement stages); the mesh renderer computes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from threed.config import Shorthand
from threed.errors import ThreedError
from threed.render.output import RenderOut


class Regularizer(Shorthand, ABC):
    """A weighted loss term of a render; a recipe may write the weight alone (``orient: 0.01``)."""

    SHORTHAND: ClassVar[str] = "weight"
    name: ClassVar[str]
    """The term's key in the ``loss`` section and in logs."""
    weight: float

    @abstractmethod
    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        """The unweighted term of ``out`` (a scalar with gradients)."""

    def _needs(self, value: Tensor | None, renderer: str) -> Tensor:
        if value is None:
            raise ThreedError(f"loss.{self.name} has weight {self.weight} but this stage's renderer does not "
                              f"compute it (only the {renderer} does, in training): set loss.{self.name}=0 for "
                              f"this stage")
        return value


@dataclass
class Orientation(Regularizer):
    """DreamFusion's orientation term (computed by the volume renderer)."""

    name: ClassVar[str] = "orient"
    weight: float = 0.01
    """Weight in the stage's loss; 0 turns the term off."""

    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        return self._needs(out.orient, "volume renderer (NeRF scenes)")


@dataclass
class Sparsity(Regularizer):
    """Mean of ``sqrt(opacity^2 + eps)``: discourages fog and floaters."""

    name: ClassVar[str] = "sparsity"
    weight: float = 0.0
    """Weight in the stage's loss; 0 turns the term off."""
    eps: float = 0.01
    """Smoothing of the L1 norm near 0."""

    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        opacity = out.opacity.clamp(OPACITY_CLAMP, 1 - OPACITY_CLAMP)
        return (opacity.square() + self.eps).sqrt().mean()


@dataclass
class Opaque(Regularizer):
    """Binary entropy of opacity: pushes each pixel to fully empty or fully opaque."""

    name: ClassVar[str] = "opaque"
    weight: float = 0.0
    """Weight in the stage's loss; 0 turns the term off."""

    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        opacity = out.opacity.clamp(OPACITY_CLAMP, 1 - OPACITY_CLAMP)
        return -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()


@dataclass
class Eikonal(Regularizer):
    """The eikonal term of an SDF field (computed by the volume renderer when ``geometry.field`` is sdf)."""

    name: ClassVar[str] = "eikonal"
    weight: float = 0.0
    """Weight in the stage's loss; 0 turns the term off. SDF stages use about 1."""

    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        return self._needs(out.eikonal, "volume renderer over an SDF field (geometry.field=sdf)")


@dataclass
class NormalConsistency(Regularizer):
    """Mean ``1 - cos`` between neighbouring face normals (computed by the mesh renderer)."""

    name: ClassVar[str] = "normal_consistency"
    weight: float = 0.0
    """Weight in the stage's loss; 0 turns the term off. Mesh stages use 1e3-1e4 (the term is small)."""

    def __call__(self, out: RenderOut) -> Float[Tensor, ""]:
        return self._needs(out.normal_consistency, "mesh renderer (DMTet scenes)")


@dataclass
class Preservation:
    """An edit's preservation term: mean squared difference of the edited render and the original asset's at
    the same cameras and shading, ``rgb * mean |rgb - rgb_src|^2 + opacity * mean |alpha - alpha_src|^2``: it
    holds what the prompt leaves alone (an editing stage of ``threed edit`` only: nothing else has an original)."""

    rgb: float = 0.0
    """Weight of the colour difference; 0 turns it off."""
    opacity: float = 0.0
    """Weight of the opacity (silhouette) difference; 0 turns it off."""

    @property
    def active(self) -> bool:
        return self.rgb != 0 or self.opacity != 0

    def __call__(self, out: RenderOut, source: RenderOut) -> Float[Tensor, ""]:
        """The weighted term (a scalar with gradients through ``out``)."""
        loss = torch.zeros((), device=out.rgb.device)
        if self.rgb:
            loss = loss + self.rgb * (out.rgb - source.rgb.detach()).square().mean()
        if self.opacity:
            loss = loss + self.opacity * (out.opacity - source.opacity.detach()).square().mean()
        return loss


OPACITY_CLAMP = 1e-5
"""Opacity is clamped to [this, 1 - this] before the sparsity and entropy terms (finite logs and gradients)."""


@dataclass
class LossConfig:
    """The terms summed into a step's loss: the guidance, then each regulariser times its weight."""

    guidance: float = 1.0
    """Weight of the score-distillation term: the weighted sum of the stage's guidances."""
    orient: Orientation = field(default_factory=Orientation)
    """DreamFusion orientation loss: penalises normals facing away from the camera (NeRF stages)."""
    sparsity: Sparsity = field(default_factory=Sparsity)
    """Discourages fog and floaters."""
    opaque: Opaque = field(default_factory=Opaque)
    """Pushes each pixel to fully empty or fully opaque."""
    eikonal: Eikonal = field(default_factory=Eikonal)
    """SDF fields: keeps the network a signed distance."""
    normal_consistency: NormalConsistency = field(default_factory=NormalConsistency)
    """Mesh stages: keeps a refined surface smooth."""
    preserve: Preservation = field(default_factory=Preservation)
    """Edits (``threed edit``): holds the edited renders near the original asset's at the same cameras."""

    @property
    def regularizers(self) -> list[Regularizer]:
        """The regularisers with a non-zero weight, in the order they are summed."""
        terms: list[Regularizer] = [self.sparsity, self.opaque, self.orient, self.eikonal,
                                    self.normal_consistency]
        return [t for t in terms if t.weight != 0]

    def total(self, guidance: Tensor, out: RenderOut, source: RenderOut | None = None) -> Tensor:
        """``w_guidance * guidance + sum_i w_i * term_i(out)`` over the terms with a non-zero weight, plus the
        preservation term against ``source`` (the original asset's render at the same cameras) when it is on."""
        loss = self.regularized(self.guidance * guidance if self.guidance != 0 else torch.zeros_like(guidance), out)
        if self.preserve.active:
            if source is None:
                raise ThreedError("loss.preserve compares with the original asset, which only an edit has "
                                  "(threed edit RUN_DIR PROMPT): set loss.preserve.rgb=0 loss.preserve.opacity=0")
            loss = loss + self.preserve(out, source)
        return loss

    def regularized(self, loss: Tensor, out: RenderOut) -> Tensor:
        """``loss + sum_i w_i * term_i(out)``: the regularisers added to a loss other than the guidance's (the
        ceiling fit's photometric loss, :mod:`threed.toyworld.ceiling`), in the order :meth:`total` adds them."""
        for term in self.regularizers:
            loss = loss + term.weight * term(out)
        return loss
