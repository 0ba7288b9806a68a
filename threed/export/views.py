"""What the export lost: the exported asset rendered beside the field from the same cameras.

The asset is drawn with threed's rasterizer (:mod:`threed.render.raster`: z-buffer, perspective-correct
barycentrics, analytic antialiasing) exactly as it was written: positions taken back to the field's frame
with the export transform, colour from the baked texture (bilinear lookup at the interpolated UV, as a
GPU samples it) or from the vertex colours. Both sides use the scene's background and the same shading.

* :func:`write_contact_sheet`: a PNG with the field's renders in the top row, the asset's below, and
  ``4 x |difference|`` in the third row; it returns the PSNR of each view (asset vs field), which
  ``export.json`` records. Views go around the object at alternating 15 and 40 degrees elevation.
* :func:`side_by_side`: a render function whose frames are field | asset, for the turntable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.export.video import RenderFn, write_grid
from threed.geometry.mesh import Mesh
from threed.render.output import RenderOut
from threed.render.raster import RasterContexts, antialias, interpolate, rasterize
from threed.render.shading import Shading, shade

BackgroundFn = Callable[[Float[Tensor, "B H W 3"]], Float[Tensor, "B H W 3"]]


class AssetRenderer:
    """Renders an exported (textured or vertex-coloured) trimesh with threed's rasterizer.

    Args:
        mesh: the asset as written, in the export frame.
        to_world: maps its ``N x 3`` vertices back to the field's frame (the export transform's inverse).
        background: view directions ``B x H x W x 3`` to colours, e.g. the scene's background; None: black.
        device: where to rasterize.
        ambient: ambient term of lambertian shading (the scene's ``shading.ambient``).
    """

    def __init__(self, mesh: trimesh.Trimesh, to_world: Callable[[np.ndarray], np.ndarray] | None = None,
                 background: BackgroundFn | None = None, device: str | torch.device = "cpu", ambient: float = 0.3):
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        vertices = to_world(vertices) if to_world is not None else vertices
        faces = np.asarray(mesh.faces, dtype=np.int64)
        # Weld the copies a UV seam made of one vertex: antialiasing finds silhouettes from the topology,
        # and a seam must not look like an open boundary. UVs stay per face corner.
        welded, first, inverse = np.unique(vertices, axis=0, return_index=True, return_inverse=True)
        self.device = torch.device(device)
        tensor = lambda a, dtype=torch.float32: torch.tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        self.mesh = Mesh(tensor(welded), tensor(inverse.reshape(-1)[faces], torch.long))
        self.normals = tensor(np.asarray(mesh.vertex_normals)[first])
        self.background, self.ambient = background, ambient
        self.contexts = RasterContexts()
        self.corner_uv = self.texture = self.colors = None
        visual = mesh.visual
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            material = visual.material
            image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
            if image is None:
                raise ValueError("the textured mesh's material has no image")
            texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            self.texture = tensor(texture).permute(2, 0, 1)[None]  # 1 3 H W
            self.corner_uv = tensor(np.asarray(visual.uv)[faces])  # F 3 2
        else:
            colors = visual.vertex_colors if visual.kind == "vertex" else visual.to_color().vertex_colors
            self.colors = tensor(np.asarray(colors)[first, :3] / 255.0)

    def _albedo(self, frags) -> Float[Tensor, "B H W 3"]:
        if self.texture is None:
            return interpolate(self.colors, frags)
        corners = self.corner_uv[frags.face_id.clamp(min=0)]  # B H W 3 2
        uv = (frags.bary[..., None] * corners).sum(-2)  # v = 0 is the image's bottom row
        grid = torch.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], dim=-1)
        B, H, W = frags.shape
        rgb = torch.nn.functional.grid_sample(self.texture, grid.reshape(1, B * H, W, 2), mode="bilinear",
                                              padding_mode="border", align_corners=False)
        return rgb[0].permute(1, 2, 0).reshape(B, H, W, 3)

    @torch.no_grad()
    def __call__(self, cameras: Cameras, shading: Shading = "albedo") -> RenderOut:
        """Render ``cameras`` (``B x H x W`` outputs, as :class:`RenderOut`) with DreamFusion ``shading``."""
        cameras = cameras.to(self.device)
        frags = rasterize(self.mesh.vertices, self.mesh.faces, cameras, contexts=self.contexts)
        covered = frags.covered[..., None]
        points = interpolate(self.mesh.vertices, frags)
        normal = torch.nn.functional.normalize(interpolate(self.normals, frags), dim=-1)
        light = cameras.light.to(points)[:, None, None, :].expand_as(points)
        colour = shade(self._albedo(frags), normal, points, light, shading, self.ambient)
        image = torch.cat([colour, covered.to(colour)], dim=-1) * covered
        fg, opacity = antialias(image, frags).split([3, 1], dim=-1)
        _, dirs = cameras.rays()
        bg = self.background(dirs) if self.background is not None else torch.zeros_like(fg)
        depth = (points - cameras.position[:, None, None, :]).norm(dim=-1, keepdim=True) * covered
        return RenderOut(rgb=fg + (1.0 - opacity) * bg, opacity=opacity, depth=depth, normal=normal * covered)


def view_cameras(n: int, resolution: int, radius: float = 1.0, fovy: float = 40.0) -> Cameras:
    """``n`` cameras around the object (azimuth ``360 i / n``), alternating 15 and 40 degrees elevation."""
    elevation = [15.0 if i % 2 == 0 else 40.0 for i in range(n)]
    azimuth = [360.0 * i / n for i in range(n)]
    return Cameras.orbit(elevation, azimuth, 2.75 * radius, fovy, resolution)


def psnr(a: Float[Tensor, "... 3"], b: Float[Tensor, "... 3"]) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when identical)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def write_contact_sheet(field_fn: RenderFn, asset_fn: RenderFn, cameras: Cameras, path: str | os.PathLike,
                        chunk: int = 4) -> dict:
    """Render ``cameras`` with both functions and write field / asset / 4x difference rows as a PNG.

    Returns ``{"file": name, "psnr": [per view], "mean_psnr": ...}`` (JSON-ready: an exact match, PSNR
    infinite, is None). PSNR compares the full frames, so a missing or extra part of the object counts as
    much as a colour error.
    """
    field_frames, asset_frames = [], []
    for start in range(0, len(cameras), chunk):
        cams = cameras[start:start + chunk]
        with torch.no_grad():
            field_frames.append(field_fn(cams).rgb.clamp(0, 1).cpu())
            asset_frames.append(asset_fn(cams).rgb.clamp(0, 1).cpu())
    field, asset = torch.cat(field_frames), torch.cat(asset_frames)
    values = [psnr(f, a) for f, a in zip(field, asset)]
    difference = ((field - asset).abs() * 4.0).clamp(0, 1)
    write_grid(torch.cat([field, asset, difference]), path, ncols=len(cameras))
    finite = [v for v in values if math.isfinite(v)]
    return {"file": Path(path).name, "psnr": [round(v, 2) if math.isfinite(v) else None for v in values],
            "mean_psnr": round(float(np.mean(finite)), 2) if finite else None}


def side_by_side(field_fn: RenderFn, asset_fn: RenderFn) -> RenderFn:
    """A render function whose images are the field's and the asset's next to each other (field left)."""
    def render(cameras: Cameras) -> RenderOut:
        a, b = field_fn(cameras), asset_fn(cameras)
        cat = lambda x, y: torch.cat([x, y.to(x)], dim=2)  # noqa: E731
        return RenderOut(rgb=cat(a.rgb, b.rgb), opacity=cat(a.opacity, b.opacity), depth=cat(a.depth, b.depth))

    return render

