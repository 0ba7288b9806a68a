"""Density field to triangle mesh: grid sampling, marching cubes, the automatic level, clean-up, colours.

Marching cubes (Lorensen & Cline, SIGGRAPH 1987) runs on a ``resolution^3`` grid of densities over the
field's box ``[-radius, radius]^3``. We use PyMCubes rather than scikit-image: it is already a declared
dependency (scikit-image is not), it is one small compiled function, it shares each edge vertex between
neighbouring cubes (an indexed mesh, no merge pass needed) and its case table is crack-free, so a closed
level set gives a watertight mesh. The grid is padded with one layer of empty cells so surfaces touching
the box are closed too.

The automatic level
-------------------
A NeRF's density has no natural surface value: DreamFusion-style fields put their visible surface at
densities anywhere from 1 to 1000, so any fixed level is wrong for some run. ``level="auto"`` therefore picks
the level whose mesh *looks like the render*:

1. Take a few views of the object (default: 8 cameras around it at 15 degrees elevation plus 2 from 60
   degrees above, distance ``2.75 * radius``, 32 x 32 pixels).
2. For every pixel ray, composite the field as the volume renderer does (Mildenhall et al., NeRF, ECCV
   2020): ``opacity = 1 - exp(-sum(sigma * delta))``, with ``resolution`` evenly spaced samples across
   the box (a sample every 1 to 1.7 grid cells: the ray's path through the box is 1 to sqrt(3) sides long).
   The renderer's silhouette is ``opacity > 0.5``.
3. The mesh at level ``tau`` covers a pixel exactly when the (trilinearly interpolated) density grid exceeds
   ``tau`` somewhere along its ray, so its silhouette is ``max density along the ray > tau`` (read at twice
   the field's samples, so that a feature one cell thin is not missed).
4. Try candidate levels log-spaced between the grid's density range (``max(min, 1e-4 max)`` to ``max``) and
   keep the one with the largest intersection-over-union of the two silhouettes, pooled over all views.
   Candidates within ``1e-3`` IoU of the best count as tied; the middle one (median) of the tied run wins.

The result is reported as ``info["level"]``, ``info["iou"]`` (how well the mesh silhouettes agree with the
render, 1 is perfect; computed for a fixed level too) and ``info["candidates"]`` / ``info["ious"]``. A field
whose render is empty (no ray reaches opacity 0.5) raises :class:`ThreedError`: there is nothing to export.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import mcubes
import numpy as np
import torch
import trimesh
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError

DensityFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 1"]]
AlbedoFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 3"]]

EMPTY_FIELD = "the field is empty: nothing to export; the optimisation probably diverged or ran too few steps"


def default_views(radius: float, resolution: int = 32) -> Cameras:
    """The views the automatic level is judged on: 8 around at 15 degrees elevation + 2 from 60 degrees above.

    Distance ``2.75 * radius`` with a 45 degree field of view, so the bounding sphere fits in every image.
    """
    elevation = [15.0] * 8 + [60.0, 60.0]
    azimuth = [45.0 * i for i in range(8)] + [45.0, 225.0]
    return Cameras.orbit(elevation, azimuth, 2.75 * radius, 45.0, resolution)


@torch.no_grad()
def sample_grid(density_fn: DensityFn, radius: float, resolution: int, chunk: int = 2**17,
                device: str | torch.device = "cpu") -> Float[Tensor, "R R R"]:
    """Density at the ``resolution^3`` grid points spanning ``[-radius, radius]^3`` (corners included).

    ``grid[i, j, k]`` is the density at ``(x_i, y_j, z_k)`` with ``x_i = -radius + 2 radius i / (resolution - 1)``.
    The field is queried ``chunk`` points at a time so memory stays bounded at any resolution.
    """
    if resolution < 2:
        raise ThreedError(f"isosurface resolution must be at least 2, got {resolution}")
    axis = torch.linspace(-radius, radius, resolution, device=device)
    total = resolution**3
    out = torch.empty(total, device=device)
    for start in range(0, total, chunk):
        index = torch.arange(start, min(start + chunk, total), device=device)
        i, rest = index // resolution**2, index % resolution**2
        points = torch.stack([axis[i], axis[rest // resolution], axis[rest % resolution]], dim=-1)
        out[start:start + len(index)] = density_fn(points).reshape(-1).float()
    return out.reshape(resolution, resolution, resolution)


def _ray_box(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the box ``[-radius, radius]^3`` (exit <= entry: a miss)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) / safe, (radius - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


@torch.no_grad()
def silhouettes(density_fn: DensityFn, grid: Float[Tensor, "R R R"], radius: float, views: Cameras,
                samples: int, chunk: int = 2**17, peak_samples: int | None = None
                ) -> tuple[Float[Tensor, "P"], Float[Tensor, "P"]]:
    """Per pixel of ``views``: the rendered opacity of ``density_fn`` and the max of ``grid`` along the ray.

    The opacity is NeRF's compositing ``1 - exp(-sum(sigma * delta))`` over ``samples`` midpoints per ray,
    evenly spaced across the box; the max reads ``peak_samples`` midpoints (default ``2 * samples``: the
    grid is cheap to read, the field is not) by trilinear interpolation of ``grid``, the same field marching
    cubes sees, so ``max > tau`` is the silhouette of the level-``tau`` mesh.
    """
    device = grid.device
    origins, dirs = views.to(device).rays()
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    near, far = _ray_box(origins, dirs, radius)
    hit = far > near
    opacity = torch.zeros(len(origins), device=device)
    peak = torch.full((len(origins),), -torch.inf, device=device)
    volume = grid[None, None]  # 1 1 X Y Z: grid_sample reads (z, y, x) from the last axis
    peak_samples = peak_samples or 2 * samples
    rays_per_chunk = max(1, chunk // max(samples, peak_samples))
    steps = (torch.arange(samples, device=device) + 0.5) / samples
    peak_steps = (torch.arange(peak_samples, device=device) + 0.5) / peak_samples
    hit_index = hit.nonzero().squeeze(-1)
    for start in range(0, len(hit_index), rays_per_chunk):
        idx = hit_index[start:start + rays_per_chunk]
        t_near, t_far = near[idx, None], far[idx, None]
        points = origins[idx, None] + dirs[idx, None] * (t_near + (t_far - t_near) * steps)[..., None]  # r s 3
        sigma = density_fn(points.reshape(-1, 3)).reshape(len(idx), samples).float().clamp(min=0.0)
        opacity[idx] = 1.0 - torch.exp(-(sigma * (t_far - t_near) / samples).sum(-1))
        points = origins[idx, None] + dirs[idx, None] * (t_near + (t_far - t_near) * peak_steps)[..., None]
        coords = (points.reshape(-1, 3) / radius).flip(-1).reshape(1, 1, 1, -1, 3)
        interp = torch.nn.functional.grid_sample(volume, coords, mode="bilinear", align_corners=True)
        peak[idx] = interp.reshape(len(idx), peak_samples).amax(-1)
    return opacity, peak


def silhouette_iou(opacity: Float[Tensor, "P"], peak: Float[Tensor, "P"],
                   levels: Float[Tensor, "C"]) -> Float[Tensor, "C"]:
    """IoU of the rendered silhouette ``opacity > 0.5`` and the mesh silhouette ``peak > level``, per level.

    Raises ThreedError when nothing renders (no pixel reaches opacity 0.5).
    """
    rendered = opacity > 0.5
    if not bool(rendered.any()):
        raise ThreedError(EMPTY_FIELD)
    mesh_sil = peak[None, :] > levels[:, None]  # C P
    return (mesh_sil & rendered).sum(-1).double() / (mesh_sil | rendered).sum(-1).double()


def choose_level(opacity: Float[Tensor, "P"], peak: Float[Tensor, "P"], grid_min: float, grid_max: float,
                 n_candidates: int = 48, tie_tolerance: float = 1e-3) -> dict[str, Any]:
    """The level whose silhouette ``peak > level`` best matches ``opacity > 0.5`` (see the module docstring)."""
    low = max(grid_min, grid_max * 1e-4)
    low = grid_max * 1e-4 if low >= grid_max else low  # a constant field: the box itself
    candidates = torch.logspace(np.log10(low), np.log10(grid_max), n_candidates + 2, dtype=torch.float64)[1:-1]
    candidates = candidates.to(peak.device, torch.float32)
    ious = silhouette_iou(opacity, peak, candidates)
    tied = (ious >= float(ious.max()) - tie_tolerance).nonzero().squeeze(-1)
    pick = int(tied[len(tied) // 2])
    return {"level": float(candidates[pick]), "iou": float(ious[pick]),
            "candidates": candidates.tolist(), "ious": ious.tolist()}


def extract_mesh(density_fn: DensityFn, radius: float, resolution: int = 128,
                 level: float | Literal["auto"] = "auto", chunk: int = 2**17, views: Cameras | None = None,
                 *, ray_samples: int | None = None, device: str | torch.device = "cpu",
                 ) -> tuple[trimesh.Trimesh, dict[str, Any]]:
    """Marching-cubes mesh of ``density_fn`` over ``[-radius, radius]^3``, in world coordinates.

    Args:
        density_fn: points ``N x 3`` (world) to densities ``N x 1`` (or ``N``); called under no_grad.
        radius: half-size of the field's box.
        resolution: grid points per axis.
        level: the density of the surface, or ``"auto"`` (the rule in the module docstring).
        chunk: points per ``density_fn`` call.
        views: cameras the automatic level is judged on; default :func:`default_views`.
        ray_samples: samples per ray for the silhouettes; default ``resolution``, about one per grid cell (at
            48 px and ``2 * resolution`` the silhouettes cost four times the grid itself and chose the same level).
        device: where query points are made; must be where ``density_fn`` computes.

    Returns:
        The mesh (faces wound counter-clockwise seen from outside) and ``info`` with ``level``, ``iou``
        (silhouette agreement with the render, also for a fixed level), ``candidates`` and their ``ious``
        (just ``[level]`` for a fixed level), ``grid_min``, ``grid_max``, ``resolution``.

    Raises:
        ThreedError: the field is empty (nothing renders, or no density exceeds ``level``).
    """
    grid = sample_grid(density_fn, radius, resolution, chunk, device)
    grid_min, grid_max = float(grid.min()), float(grid.max())
    if not np.isfinite(grid_min) or not np.isfinite(grid_max):
        raise ThreedError("the density field has NaN or infinite values: the optimisation diverged; "
                          "export an earlier checkpoint")
    if grid_max <= 0.0 or (level != "auto" and grid_max <= float(level)):
        detail = "" if level == "auto" else f" (no density exceeds the level {level}; the largest is {grid_max:.4g})"
        raise ThreedError(EMPTY_FIELD + detail)
    views = default_views(radius) if views is None else views
    opacity, peak = silhouettes(density_fn, grid, radius, views, ray_samples or resolution, chunk)
    if level == "auto":
        info = choose_level(opacity, peak, grid_min, grid_max)
    else:
        iou = float(silhouette_iou(opacity, peak, torch.tensor([float(level)], device=peak.device))[0])
        info = {"level": float(level), "iou": iou, "candidates": [float(level)], "ious": [iou]}
    info.update(grid_min=grid_min, grid_max=grid_max, resolution=resolution)
    level_value = float(info["level"])
    # One layer of empty cells around the box closes surfaces that touch it.
    padded = np.pad(grid.cpu().numpy(), 1, constant_values=min(grid_min, level_value) - 1.0)
    vertices, faces = mcubes.marching_cubes(padded, level_value)
    if len(faces) == 0:
        raise ThreedError(f"{EMPTY_FIELD} (marching cubes found no surface at level {level_value:.4g})")
    cell = 2.0 * radius / (resolution - 1)
    vertices = np.clip((vertices - 1.0) * cell - radius, -radius, radius)
    # PyMCubes winds faces outward for a field that is larger inside, which density is.
    mesh = trimesh.Trimesh(vertices, faces.astype(np.int64), process=False)
    return mesh, info


def clean_mesh(mesh: trimesh.Trimesh, min_component_fraction: float = 0.05) -> trimesh.Trimesh:
    """Drop floaters, merge vertices, remove degenerate faces and make normals point outward.

    A connected component survives when it has at least ``min_component_fraction`` of the largest
    component's faces: NeRF floaters are small blobs of density far from the object, while real parts
    of an object are rarely under 5% of its main body.
    """
    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    parts = mesh.split(only_watertight=False)
    if len(parts) == 0:
        raise ThreedError(EMPTY_FIELD)
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_component_fraction * largest]
    mesh = trimesh.util.concatenate(kept) if len(kept) > 1 else kept[0]
    mesh.merge_vertices()
    trimesh.repair.fix_normals(mesh, multibody=True)
    return mesh


def default_inset(mesh: trimesh.Trimesh) -> float:
    """How far inside the surface albedo is read: 0.5% of the bounding-box diagonal, about one grid cell."""
    return 0.005 * float(mesh.scale)


@torch.no_grad()
def albedo_inside(points: np.ndarray, normals: np.ndarray, albedo_fn: AlbedoFn, inset: float,
                  chunk: int = 2**17, device: str | torch.device = "cpu") -> np.ndarray:
    """``albedo_fn`` at ``points - inset * normals`` (``N x 3`` each) as an ``N x 3`` float32 array in [0, 1].

    The field learns colour where the renderer's weights peak, which is just inside the level set, while
    just outside it is untrained; reading ``inset`` inside along the outward normal lands there.
    """
    query = torch.as_tensor(np.asarray(points) - inset * np.asarray(normals), dtype=torch.float32, device=device)
    colors = [albedo_fn(query[s:s + chunk]).reshape(-1, 3).float() for s in range(0, len(query), chunk)]
    if not colors:
        return np.zeros((0, 3), np.float32)
    return torch.cat(colors).clamp(0.0, 1.0).cpu().numpy()


def color_vertices(mesh: trimesh.Trimesh, albedo_fn: AlbedoFn, inset: float | None = None, chunk: int = 2**17,
                   device: str | torch.device = "cpu") -> trimesh.Trimesh:
    """Store ``albedo_fn`` at each vertex as RGBA uint8 vertex colours (alpha 255), in place; returns ``mesh``.

    The albedo is read ``inset`` inside the surface along the vertex normal (default :func:`default_inset`),
    see :func:`albedo_inside`.
    """
    inset = default_inset(mesh) if inset is None else inset
    colors = albedo_inside(mesh.vertices, mesh.vertex_normals, albedo_fn, inset, chunk, device)
    rgb = (colors * 255.0).round().astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh
