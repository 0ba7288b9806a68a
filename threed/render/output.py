"""RenderOut: what every renderer returns, so guidance never cares which renderer made an image; and
Renderer, what every renderer holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor, nn

from threed.geometry.densify import ViewGradients

if TYPE_CHECKING:
    from threed.cameras import Cameras
    from threed.render.background import Background
    from threed.render.shading import Shading, ShadingConfig


@dataclass
class RenderOut:
    """A batch of rendered images, all ``B x H x W x C``.

    ``rgb`` is composited over the background, in [0, 1]. ``opacity`` is the accumulated alpha.
    ``depth`` is the expected distance along the ray (0 where empty). ``normal`` is the composited
    world-space normal (zero where empty) when the renderer computes it. The scalar fields are
    regulariser terms only a renderer can compute, present in training renders of the renderers
    that compute them (:mod:`threed.regularizers` weighs them).
    """

    rgb: Float[Tensor, "B H W 3"]
    opacity: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    normal: Float[Tensor, "B H W 3"] | None = None
    orient: Float[Tensor, ""] | None = None
    """DreamFusion's orientation term (volume renderer): opacity-weighted squared normals facing away from
    the camera, summed along each ray and averaged over rays."""
    eikonal: Float[Tensor, ""] | None = None
    """Mean ``(|grad sdf| - 1)^2`` at random points of the box (volume renderer over an SDF field)."""
    normal_consistency: Float[Tensor, ""] | None = None
    """Mean ``1 - cos`` between the normals of neighbouring faces (mesh renderer)."""
    view_gradients: ViewGradients | None = None
    """Training renders of Gaussians: the projected centres, whose gradient drives densification."""


class Renderer(nn.Module):
    """Base of the volume, mesh and splat renderers: its config, the geometry it draws, the background it
    composites over and the shading settings; ``forward(cameras, shading)`` returns a :class:`RenderOut`."""

    def __init__(self, cfg: Any, geometry: nn.Module, background: "Background",
                 shading: "ShadingConfig | None" = None):
        from threed.render.shading import ShadingConfig

        super().__init__()
        self.cfg = cfg
        self.geometry = geometry
        self.background = background
        self.shading = shading or ShadingConfig()

    def forward(self, cameras: "Cameras", shading: "Shading" = "albedo") -> RenderOut:
        """Render ``cameras`` (B cameras, H x W) with DreamFusion ``shading``; outputs are B x H x W x C."""
        raise NotImplementedError
