"""Reference-view losses of image-to-3D: the scene, rendered from the reference camera, must show the photo.

Every step the stage renders the reference camera once and adds (Magic123, Qian et al. 2023, sec. 3;
threestudio's zero123 system):

* ``rgb``: mean squared colour error over the object's mask;
* ``mask``: the rendered opacity against the mask (MSE, or binary cross-entropy);
* ``depth`` (only with a depth map, ``depth=PATH``): the depth map is known only up to scale and shift
  (monocular estimators), so the loss is 1 - Pearson correlation over the mask (Magic123's and
  threestudio's ``depth_rel``), or the MSE after the least-squares scale and shift.

Magic123's joint 2D + 3D prior is not a reference loss: the stage lists both guidances, text SDS and
Zero123-SDS, each with its weight (``guidance: [{kind: sds}, {kind: zero123, weight: 40}]``).

Each weight is a :class:`Ramp`, so a term can warm up; weights multiply the terms here, and the stage
adds the weighted sum to its loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from threed.reference.image import ReferenceViewConfig, load_reference
from threed.render.output import RenderOut
from threed.render.shading import Shading

if TYPE_CHECKING:
    from threed.scene import Scene


@dataclass
class Ramp:
    """A weight moving linearly from ``start`` to ``end`` over the first ``steps`` steps, then staying at ``end``."""

    end: float = 0.0
    """The weight after the ramp (and throughout when ``steps`` is 0)."""
    start: float = 0.0
    """The weight at step 0."""
    steps: int = 0
    """Length of the ramp in steps; 0 = constant ``end``."""

    def __post_init__(self):
        if self.steps < 0 or self.end < 0 or self.start < 0:
            raise ValueError(f"need steps >= 0 and non-negative weights, got {self}")

    def __call__(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.steps


@dataclass
class ReferenceConfig:
    """The reference view of an image-to-3D stage: its camera and framing, and the weights of its losses."""

    view: ReferenceViewConfig = field(default_factory=ReferenceViewConfig)
    """Reference camera (elevation, azimuth, distance, fovy), framing (fill ratio) and render resolution."""
    rgb: Ramp = field(default_factory=lambda: Ramp(end=1000.0))
    """Weight of the colour MSE over the mask."""
    mask: Ramp = field(default_factory=lambda: Ramp(end=100.0))
    """Weight of the opacity-vs-mask loss."""
    depth: Ramp = field(default_factory=lambda: Ramp(end=0.0))
    """Weight of the depth loss (used only when the run has a depth map)."""
    mask_loss: Literal["mse", "bce"] = "mse"
    """Opacity against mask: squared error, or binary cross-entropy."""
    depth_loss: Literal["pearson", "scale_shift"] = "pearson"
    """1 - Pearson correlation over the mask, or MSE after the least-squares scale and shift."""
    depth_kind: Literal["depth", "disparity"] = "disparity"
    """What the depth map holds: distance (larger = farther) or disparity (larger = nearer; most monocular
    estimators). Disparity is compared with the render's 1 / depth."""
    shading: Shading = "albedo"
    """Shading of the reference render (albedo: the photo's colours become the albedo)."""


def masked_mse(pred: Float[Tensor, "B H W C"], target: Float[Tensor, "B H W C"],
               mask: Float[Tensor, "B H W 1"]) -> Float[Tensor, ""]:
    """Mean over mask-weighted pixels of the squared error, per channel."""
    w = mask.expand_as(pred)
    return ((pred - target).square() * w).sum() / w.sum().clamp_min(1e-6)


def pearson_loss(pred: Float[Tensor, "N"], target: Float[Tensor, "N"]) -> Float[Tensor, ""]:
    """1 - Pearson correlation: invariant to the scale and shift of either side."""
    p, t = pred - pred.mean(), target - target.mean()
    return 1 - (p * t).sum() / (p.norm() * t.norm()).clamp_min(1e-8)


def scale_shift_mse(pred: Float[Tensor, "N"], target: Float[Tensor, "N"]) -> Float[Tensor, ""]:
    """MSE between ``pred`` and the least-squares fit s * target + b to it (the fit itself without gradient)."""
    a = torch.stack([target, torch.ones_like(target)], dim=-1)
    sol = torch.linalg.lstsq(a, pred.detach()[:, None]).solution
    return (pred - (a @ sol)[:, 0]).square().mean()


class ReferenceLosses:
    """The reference-view piece of a stage: the framed photo, its camera, and the weighted losses each step."""

    def __init__(self, cfg: ReferenceConfig, image: str | Path | None, device: torch.device,
                 mask: str | Path | None = None, depth: str | Path | None = None):
        """``image`` (and its optional ``mask`` and ``depth`` map) are the run's; the photo is framed by ``cfg.view``."""
        self.cfg = cfg
        self.reference = load_reference(image, cfg.view, mask, depth).to(device)
        self.camera = cfg.view.camera().to(device)

    def render(self, scene: "Scene") -> RenderOut:
        """The scene from the reference camera (with gradient)."""
        return scene(self.camera, self.cfg.shading)

    def terms(self, out: RenderOut) -> dict[str, Float[Tensor, ""]]:
        """Unweighted reference losses of a reference-camera render ``out``."""
        ref, cfg = self.reference, self.cfg
        terms = {"ref_rgb": masked_mse(out.rgb, ref.rgb, (ref.mask > 0.5).float())}
        opacity = out.opacity.clamp(1e-5, 1 - 1e-5)
        terms["ref_mask"] = (F.binary_cross_entropy(opacity, ref.mask) if cfg.mask_loss == "bce"
                             else F.mse_loss(opacity, ref.mask))
        if ref.depth is not None:
            sel = (ref.mask[..., 0] > 0.5) & (out.opacity[..., 0].detach() > 0.5)
            if int(sel.sum()) >= 16:
                pred = out.depth[..., 0][sel]
                target = ref.depth[..., 0][sel]
                if cfg.depth_kind == "disparity":
                    pred = 1.0 / pred.clamp_min(1e-3)
                fn = pearson_loss if cfg.depth_loss == "pearson" else scale_shift_mse
                terms["ref_depth"] = fn(pred, target)
        return terms

    def __call__(self, scene: "Scene", step: int) -> dict[str, Float[Tensor, ""]]:
        """Weighted loss terms of this step, from a render of the reference camera."""
        cfg = self.cfg
        weights = {"ref_rgb": cfg.rgb(step), "ref_mask": cfg.mask(step), "ref_depth": cfg.depth(step)}
        return {k: weights[k] * v for k, v in self.terms(self.render(scene)).items() if weights[k] > 0}
