"""From a scene (or a run's checkpoint) to files on disk: mesh, texture, comparison views, turntable.

The order matters and is the same for every run:

1. **Surface**, in the field's world frame: marching cubes at the automatic level for a NeRF
   (:mod:`threed.export.isosurface`), the explicit surface for a DMTet stage.
2. **Clean**: floaters removed, vertices merged, winding consistent, normals outward.
3. **Decimate** to ``export.faces`` when the mesh has more (:mod:`threed.export.meshops`).
4. **Colour**: vertex colours always (the PLY and the ``vertex`` option) and, for ``texture: uv``, an
   xatlas unwrap with the albedo baked into a texture (:mod:`threed.export.texture`). Both read the
   field in world coordinates, which is why they come before normalisation.
5. **Normalise** to the unit box (optional); the transform goes into ``export.json``.
6. **Write**: everything above is computed before the first file is written, and every file is
   written atomically, so a failure leaves the previous export intact instead of a mix.
7. **Views**: the asset as written, rendered beside the field from the same cameras (a contact sheet
   with per-view PSNR in ``export.json``; the turntable side by side), so a user sees what the export lost.

A ``mesh`` scene (``threed texture``) skips steps 1-3 and 5: its asset is the user's own mesh, vertices and faces
as read, in the file's coordinates (:func:`user_mesh_assets`), with the albedo read through the frame that
placed it in the scene.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import trimesh

from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.errors import ThreedError
from threed.export.formats import FORMATS, MeshFormat, write_mesh
from threed.export.gaussian_ply import write_gaussians_ply
from threed.export.isosurface import clean_mesh, color_vertices, extract_mesh
from threed.export.meshops import UnitBoxTransform, decimate, normalize_to_unit_box, unit_box_transform
from threed.export.texture import bake_albedo
from threed.export.video import write_turntable
from threed.export.views import AssetRenderer, side_by_side, view_cameras, write_contact_sheet
from threed.files import write_bytes_atomic
from threed.geometry.gaussians import Gaussians
from threed.mesh_files import SceneFrame, UserMesh
from threed.render.output import RenderOut
from threed.render.shading import Shading
from threed.run import ExportDir
from threed.scene import Scene

Format = MeshFormat
TextureMode = Literal["uv", "vertex"]


@dataclass
class ExportConfig:
    """What ``threed generate`` writes at the end, and ``threed export`` by default."""

    formats: list[Format] = ("glb", "obj", "ply")  # type: ignore[assignment]
    """Mesh formats to write into ``export/``."""
    grid_size: int = 128
    """Points per axis of the marching-cubes grid."""
    level: float | None = None
    """Isosurface density level; None chooses it automatically (see threed.export.isosurface)."""
    min_component_fraction: float = 0.05
    """Drop connected pieces smaller than this fraction of the largest (floaters)."""
    faces: int | None = 50_000
    """Decimate meshes with more faces to this many (quadric simplification); None keeps every face.
    50k keeps a marching-cubes surface's shape (the texture carries the colour detail) and keeps the
    xatlas unwrap near 10 s on a CPU; it is a no-op for grids up to about 128^3."""
    normalize: bool = True
    """Recentre on the origin and scale the longest side to 1; the transform is saved in export.json."""
    texture: TextureMode = "uv"
    """``uv``: xatlas unwrap + albedo baked into a PNG (GLB/OBJ), colour detail independent of the face
    count and colour-exact in glTF viewers. ``vertex``: per-vertex colours only, no unwrap (fast)."""
    texture_size: int = 1024
    """Width and height of the baked texture, in texels."""
    views: int = 8
    """Views in the field-vs-mesh contact sheet (views.png); 0 writes none."""
    view_resolution: int = 128
    """Pixels per side of each contact-sheet view."""
    video: bool = True
    """Write a turntable video (turntable.mp4, or .gif without ffmpeg)."""
    video_shows: Literal["both", "field", "asset"] = "both"
    """What the turntable shows: ``both`` side by side (field left, the asset as written right: a user sees
    what the export lost), the volume-rendered ``field``, or only the ``asset`` (rasterised: on a CPU a few
    seconds where volume-rendering the field's frames takes a minute or more)."""
    video_frames: int = 60
    video_resolution: int = 128
    video_shading: Shading = "lambertian"
    """Shading of the turntable: lambertian (headlight) shows the shape, albedo the exported colours."""

    def __post_init__(self):
        if self.faces is not None and self.faces < 4:
            raise ValueError(f"faces must be at least 4 (or null for no decimation), got {self.faces}")
        if self.texture_size < 16:
            raise ValueError(f"texture_size must be at least 16, got {self.texture_size}")
        if self.views < 0:
            raise ValueError(f"views must be >= 0, got {self.views}")


@dataclass
class Assets:
    """Everything an export writes, computed before any file is touched."""

    mesh: trimesh.Trimesh
    """The finished surface in the field's world frame, before colours and normalisation."""
    shaded: trimesh.Trimesh
    """What GLB and OBJ get: textured (``uv``) or vertex-coloured, normalised."""
    colored: trimesh.Trimesh
    """Vertex-coloured, normalised: what PLY gets."""
    transform: UnitBoxTransform | SceneFrame
    """Its ``to_world`` maps the written vertices to the field's frame: ``export = scale * (world - centre)``
    (identity when not normalising), or a user's mesh's :class:`SceneFrame`."""
    info: dict[str, Any] = field(default_factory=dict)
    """Report for export.json: level, IoU, counts, texture coverage, seconds per phase."""


@torch.no_grad()
def surface_mesh(scene: Scene, export: ExportConfig, device: torch.device) -> tuple[trimesh.Trimesh, dict]:
    """The scene's surface in world coordinates: marching cubes for a density (NeRF, Gaussians), else the mesh."""
    if scene.has_density:
        mesh, info = extract_mesh(scene.density, radius=scene.radius, resolution=export.grid_size,
                                  level="auto" if export.level is None else export.level, device=device)
        return mesh, {"level": float(info["level"]), "silhouette_iou": float(info["iou"])}
    mesh = scene.mesh().to_trimesh()
    if len(mesh.faces) == 0:
        raise ThreedError(f"the {scene.cfg.kind} surface is empty: nothing to export")
    return mesh, {}


@torch.no_grad()
def build_assets(scene: Scene, export: ExportConfig, device: torch.device) -> Assets:
    """Surface, clean-up, decimation, colours and normalisation (see the module docstring); writes nothing."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    mesh, info = surface_mesh(scene, export, device)
    lap("surface")
    mesh = clean_mesh(mesh, export.min_component_fraction)
    lap("clean")
    if export.faces is not None and len(mesh.faces) > export.faces:
        info["faces_before_decimation"] = len(mesh.faces)
        mesh = decimate(mesh, export.faces)
    lap("decimate")
    colored = color_vertices(mesh.copy(), scene.albedo, device=device)
    lap("vertex_colors")
    shaded = colored
    if export.texture == "uv":
        shaded, texture_info = bake_albedo(mesh, scene.albedo, export.texture_size, device=device)
        info["texture"] = texture_info
        lap("texture")
    transform = unit_box_transform(mesh) if export.normalize else UnitBoxTransform((0.0, 0.0, 0.0), 1.0)
    colored, _ = normalize_to_unit_box(colored, transform)
    shaded = colored if export.texture == "vertex" else normalize_to_unit_box(shaded, transform)[0]
    info.update(vertices=len(shaded.vertices), faces=len(shaded.faces), texture_mode=export.texture,
                transform=transform.to_json(), seconds=seconds)
    return Assets(mesh=mesh, shaded=shaded, colored=colored, transform=transform, info=info)


@torch.no_grad()
def user_mesh_assets(scene: Scene, user: UserMesh, export: ExportConfig, device: torch.device) -> Assets:
    """A ``mesh`` scene's asset: the user's mesh as read (its vertices, faces and order; its UVs when it has
    usable ones, else an xatlas unwrap), coloured by the scene's albedo field through the frame that placed
    it in the scene. ``export``'s texture settings apply; its surface settings (grid, level, clean-up,
    ``faces``, ``normalize``) do not: the geometry is the user's."""
    started = time.perf_counter()
    frame = user.frame(getattr(scene.cfg.geometry, "extent"))
    matrix = torch.tensor(frame.to_json()["file_to_scene"], dtype=torch.float32, device=device)

    def albedo(points: torch.Tensor) -> torch.Tensor:
        return scene.albedo(points @ matrix[:3, :3].T + matrix[:3, 3])

    mesh = user.to_trimesh()
    colored = color_vertices(mesh.copy(), albedo, device=device)
    info: dict[str, Any] = {"input": user.facts(), "geometry": "the input's vertices and faces as read, in the "
                            "file's coordinates", "seconds": {"vertex_colors": round(time.perf_counter() - started, 3)}}
    shaded = colored
    if export.texture == "uv":
        shaded, info["texture"] = bake_albedo(mesh, albedo, export.texture_size, device=device, uv=user.uv)
        info["uv_source"] = user.uv_source
    info.update(vertices=len(shaded.vertices), faces=len(shaded.faces), texture_mode=export.texture,
                transform=frame.to_json())
    return Assets(mesh=mesh, shaded=shaded, colored=colored, transform=frame, info=info)


def write_assets(assets: Assets, out_dir: Path, formats: tuple[Format, ...] | list[Format], name: str = "model"
                 ) -> dict[str, Path]:
    """``out_dir/<name>.<format>`` for each format (PLY from the vertex-coloured mesh); returns the paths."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ThreedError(f"unknown mesh format(s) {unknown}; choose from {', '.join(FORMATS)}")
    out = ExportDir(Path(out_dir))
    return {f: write_mesh(assets.colored if f == "ply" else assets.shaded, out.model(f, name), f) for f in formats}


def export_scene(scene: Scene, out_dir: Path, export: ExportConfig, device: torch.device,
                 report: dict[str, Any] | None = None, video: bool | None = None,
                 user: UserMesh | None = None) -> dict[str, Path]:
    """Export ``scene`` into ``out_dir``; returns the written files by kind.

    Files: ``model.<format>`` (+ ``model.mtl``, ``model_albedo.png`` for OBJ), ``views.png`` (field vs
    asset, :mod:`threed.export.views`), ``export.json`` (``report``, e.g. the checkpoint's stage and step,
    merged with the assets' info and the views' PSNR) and the turntable when ``video`` (default
    ``export.video``). ``user``: the user's mesh a ``mesh`` scene painted, written back as
    :func:`user_mesh_assets` describes.
    """
    out = ExportDir(Path(out_dir))
    out.root.mkdir(parents=True, exist_ok=True)
    assets = build_assets(scene, export, device) if user is None else user_mesh_assets(scene, user, export, device)
    files = write_assets(assets, out.root, tuple(export.formats))
    info = {**(report or {}), **assets.info}

    def render_field(cams: Cameras, shading: Shading = "albedo") -> RenderOut:
        return scene.render_eval(cams.to(device), shading)

    asset = AssetRenderer(assets.shaded, assets.transform.to_world, lambda dirs: scene.background(dirs, training=False),
                          device, ambient=scene.renderer.shading.ambient)
    if export.views:
        started = time.perf_counter()
        cameras = view_cameras(export.views, export.view_resolution, scene.radius)
        info["views"] = write_contact_sheet(render_field, asset, cameras, out.views)
        info["seconds"]["views"] = round(time.perf_counter() - started, 3)
        files["views"] = out.views
    if isinstance(scene.geometry, Gaussians):
        files["gaussians"] = write_gaussians_ply(scene.geometry, out.gaussians)
        info["gaussians"] = scene.geometry.count
    write_bytes_atomic(out.report, json.dumps(info, indent=2).encode())
    files["report"] = out.report
    if export.video if video is None else video:
        def field_frames(cams: Cameras) -> RenderOut:
            return render_field(cams, export.video_shading)

        def asset_frames(cams: Cameras) -> RenderOut:
            return asset(cams, export.video_shading)

        render = {"both": side_by_side(field_frames, asset_frames), "field": field_frames,
                  "asset": asset_frames}[export.video_shows]
        started = time.perf_counter()
        files["video"] = Path(write_turntable(render, out.turntable, n_frames=export.video_frames,
                                              resolution=export.video_resolution, device=device))
        info["seconds"]["video"] = round(time.perf_counter() - started, 3)
        write_bytes_atomic(out.report, json.dumps(info, indent=2).encode())  # again, with the video's time
    return files


def export_checkpoint(ckpt: Checkpoint, out: ExportDir, export: ExportConfig, device: torch.device,
                      video: bool | None = None, gaussians: Checkpoint | None = None,
                      user: UserMesh | None = None, origin: dict[str, Any] | None = None) -> dict[str, Path]:
    """Export the scene of a stage's checkpoint into ``out``; returns the written files by kind.

    ``gaussians``: the checkpoint of an earlier Gaussian stage that ``ckpt``'s mesh was refined from
    (DreamGaussian); its Gaussians are written beside the mesh as ``gaussians.ply``. ``user``: the user's mesh
    of a ``mesh`` scene (``threed texture``), which is what gets written. ``origin``: recorded in ``export.json``
    as it is (an edit's source run, stage, step and checkpoint hash, under ``edit``).
    """
    scene = Scene.from_checkpoint(ckpt, device)
    report = {"stage": ckpt.stage, "step": ckpt.step, "total_steps": ckpt.total_steps, **(origin or {})}
    files = export_scene(scene, out.root, export, device, report, video, user)
    source = Scene.from_checkpoint(gaussians, device).geometry if gaussians is not None else None
    if "gaussians" not in files and isinstance(source, Gaussians):
        files["gaussians"] = write_gaussians_ply(source, out.gaussians)
    return files
