"""A tiny NeRF scene whose density and albedo are analytic: an export test case that needs no training.

The field is a real :class:`threed.scene.Scene` (volume renderer, background, shading) whose geometry's
``forward`` is replaced by closed-form functions: the union of a ball and a box, with a smooth density
edge (sharp enough that the render has a crisp outline) and a colour that varies along every axis.
"""

from __future__ import annotations

import torch

from threed.geometry.encoding import HashGridConfig
from threed.geometry.nerf import NeRFField, NeRFFieldConfig
from threed.render.background import BackgroundConfig
from threed.render.volume import VolumeRendererConfig
from threed.scene import NeRFSceneConfig, Scene

BALL_RADIUS = 0.45
BOX_CENTRE = (0.3, 0.25, 0.1)
BOX_HALF = 0.22


def sdf(p: torch.Tensor) -> torch.Tensor:
    """Signed distance (N) to the union of a ball at the origin and an axis-aligned box."""
    ball = p.norm(dim=-1) - BALL_RADIUS
    q = (p - torch.tensor(BOX_CENTRE, device=p.device)).abs() - BOX_HALF
    box = q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)
    return torch.minimum(ball, box)


def albedo(p: torch.Tensor) -> torch.Tensor:
    """Colour (N x 3) in [0.05, 0.95] that changes along x, y and z."""
    return torch.stack([0.5 + 0.45 * torch.sin(4.0 * p[:, 0]), 0.5 + 0.45 * torch.cos(3.0 * p[:, 1]),
                        0.5 + 0.45 * torch.tanh(2.0 * p[:, 2])], dim=-1)


class AnalyticField(NeRFField):
    """Density ``peak * sigmoid(-sdf * sharpness)`` and :func:`albedo`; the hash grid is unused (tiny)."""

    def __init__(self, peak: float = 400.0, sharpness: float = 150.0):
        tiny = HashGridConfig(n_levels=1, log2_hashmap_size=4, base_resolution=2, max_resolution=2)
        super().__init__(NeRFFieldConfig(encoding=tiny))
        self.peak, self.sharpness = peak, sharpness

    def forward(self, points):
        density = self.peak * torch.sigmoid(-sdf(points) * self.sharpness)[:, None]
        return density, albedo(points)

    def normal(self, points):
        with torch.enable_grad():
            x = points.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(sdf(x).sum(), x)
        return torch.nn.functional.normalize(grad, dim=-1)


def analytic_scene(num_samples: int = 256) -> Scene:
    """The analytic field in a Scene rendered over white, evaluation mode."""
    cfg = NeRFSceneConfig(renderer=VolumeRendererConfig(num_samples=num_samples, orientation_loss=False),
                          background=BackgroundConfig(kind="solid", color=(1.0, 1.0, 1.0)))
    scene = Scene(cfg)
    scene.renderer.geometry = AnalyticField()
    return scene.eval()
