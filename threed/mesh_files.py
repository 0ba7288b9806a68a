"""A user's mesh file (``threed texture``): read it, refuse what cannot be textured, place it in the scene box.

:func:`read_user_mesh` loads OBJ, GLB/glTF, PLY or STL with trimesh, flattens a scene graph into one mesh with
each node's transform applied (so the result is in the file's own world coordinates), and refuses, with a
:class:`ThreedError` that says what to do, a missing file, an unsupported suffix, a file trimesh cannot read, an
empty mesh, a point cloud, non-finite coordinates, a mesh without extent, and a mesh too large to unwrap
(:data:`UNWRAP_FACE_LIMIT`, only when it has no UVs of its own). Non-manifold and open meshes are accepted:
texturing needs triangles, not a closed surface.

**Coordinates.** threed's world is +Y up with the front toward +Z (glTF's convention). ``up="z"`` reads a Z-up
source (CAD, many threestudio exports, Blender's world) as Blender's glTF exporter converts it:
``(x, y, z) -> (x, z, -y)``, so Blender's front (-Y) faces threed's front (+Z). :class:`SceneFrame` is the
similarity ``scene = scale * R_up (user - centre)`` that puts the mesh in the optimisation box; the asset is
written back with the file's own vertices and faces, never through the inverse of that map.

**UVs.** A single mesh whose UVs cover every vertex and lie in [0, 1] keeps them (``uv_source: "input"``); a
mesh without UVs, with UVs outside [0, 1] (tiling) or made of several meshes (trimesh repacks their UVs when it
joins them) gets a new xatlas unwrap (``"xatlas"``), and :attr:`UserMesh.uv_note` says why.

The run keeps what it read as ``input/mesh.npz`` (:meth:`UserMesh.to_bytes`), exact float64 arrays, so a resume and
an export read neither the user's file again nor any format's parser.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh

from threed.errors import ThreedError

UpAxis = Literal["y", "z"]
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".glb", ".gltf", ".ply", ".stl")
"""The mesh files ``threed texture`` reads."""
UNWRAP_FACE_LIMIT = 500_000
"""A mesh without UVs of its own and with more faces than this is refused: threed would unwrap it with xatlas,
which takes minutes per 100k faces on a CPU. A mesh with UVs has no limit here (the optimisation runs on a
decimated copy, the texture is baked onto every original face)."""
_UV_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SceneFrame:
    """``scene = scale * R_up (user - centre)``: where a user's mesh sits while its texture is optimised."""

    centre: tuple[float, float, float]
    """Centre of the mesh's bounding box, in the file's coordinates (it maps to the origin)."""
    scale: float
    """Scene units per file unit: the longest side of the bounding box becomes the geometry's ``extent``."""
    up: UpAxis
    """The file's up axis; ``z`` is rotated to threed's +Y up (``(x, y, z) -> (x, z, -y)``)."""

    @property
    def rotation(self) -> np.ndarray:
        """``R_up``, 3 x 3."""
        if self.up == "y":
            return np.eye(3)
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """File coordinates ``N x 3`` to the scene's (the field's world frame)."""
        return self.scale * (np.asarray(points, np.float64) - np.asarray(self.centre)) @ self.rotation.T

    def to_json(self) -> dict:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = -m[:3, :3] @ np.asarray(self.centre)
        return {"centre": list(self.centre), "scale": self.scale, "up": self.up, "file_to_scene": m.tolist(),
                "rule": "scene = scale * R_up (file - centre); the asset is written in the file's coordinates"}


@dataclass
class UserMesh:
    """A user's mesh as read: one triangle mesh in the file's coordinates (scene graph flattened)."""

    vertices: np.ndarray
    """``V x 3`` float64 positions, the file's coordinates."""
    faces: np.ndarray
    """``F x 3`` int64 indices, the file's order."""
    uv: np.ndarray | None
    """``V x 2`` texture coordinates to reuse, or None: the export unwraps new ones."""
    up: UpAxis
    """The file's up axis."""
    source: str
    """The file name as given."""
    uv_note: str
    """Why the UVs are (not) reused, for ``export.json``."""
    meshes: int = 1
    """How many meshes the file's scene graph held (joined into this one)."""

    @property
    def uv_source(self) -> Literal["input", "xatlas"]:
        return "input" if self.uv is not None else "xatlas"

    def frame(self, extent: float) -> SceneFrame:
        """The frame that centres the bounding box and scales its longest side to ``extent`` scene units."""
        used = self.vertices[np.unique(self.faces)]
        lo, hi = used.min(axis=0), used.max(axis=0)
        return SceneFrame(tuple(float(c) for c in (lo + hi) / 2.0), extent / float((hi - lo).max()), self.up)

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as written back (no merging: vertices and faces as read), UVs without a texture yet."""
        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def facts(self) -> dict:
        """What ``export.json`` says about the input."""
        mesh = self.to_trimesh()
        return {"file": self.source, "vertices": len(self.vertices), "faces": len(self.faces), "meshes": self.meshes,
                "up": self.up, "uv_source": self.uv_source, "uv_note": self.uv_note,
                "watertight": bool(mesh.is_watertight), "winding_consistent": bool(mesh.is_winding_consistent)}

    def to_bytes(self) -> bytes:
        """The arrays and facts as an ``.npz`` file's bytes, exactly (:meth:`load` reads them)."""
        meta = {"up": self.up, "source": self.source, "uv_note": self.uv_note, "meshes": self.meshes}
        arrays = {"vertices": self.vertices, "faces": self.faces, "meta": np.array(json.dumps(meta))}
        if self.uv is not None:
            arrays["uv"] = self.uv
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> UserMesh:
        """What :meth:`to_bytes` made, from file ``path``."""
        if not Path(path).is_file():
            raise ThreedError(f"the run's copy of its mesh, {path}, is missing: the run cannot be continued or "
                              f"exported; start again with threed texture")
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(vertices=data["vertices"], faces=data["faces"], uv=data["uv"] if "uv" in data else None,
                       up=meta["up"], source=meta["source"], uv_note=meta["uv_note"], meshes=meta["meshes"])


def _flatten(loaded, path: Path) -> tuple[trimesh.Trimesh, int]:
    """One mesh from what trimesh loaded: a scene's meshes joined with their node transforms applied."""
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        clouds = [g for g in loaded.geometry.values() if isinstance(g, trimesh.PointCloud) and len(g.vertices)]
        if not meshes:
            if clouds:
                _point_cloud(path, sum(len(c.vertices) for c in clouds))
            raise ThreedError(f"{path} holds no triangle mesh (trimesh read an empty scene): the file is empty, damaged "
                              f"or not a {path.suffix} mesh; open it in Blender or MeshLab and export it again")
        count = sum(1 for node in loaded.graph.nodes_geometry
                    if isinstance(loaded.geometry[loaded.graph[node][1]], trimesh.Trimesh))
        return loaded.to_mesh() if count > 1 else _single(loaded), count
    if isinstance(loaded, trimesh.PointCloud):
        _point_cloud(path, len(loaded.vertices))
    if not isinstance(loaded, trimesh.Trimesh):
        raise ThreedError(f"{path} holds a {type(loaded).__name__}, not a triangle mesh")
    return loaded, 1


def _single(scene: trimesh.Scene) -> trimesh.Trimesh:
    """The one mesh instance of a scene, moved by its node's transform (its UVs untouched)."""
    node = next(n for n in scene.graph.nodes_geometry if isinstance(scene.geometry[scene.graph[n][1]], trimesh.Trimesh))
    transform, name = scene.graph[node]
    mesh = scene.geometry[name].copy()
    if not np.allclose(transform, np.eye(4)):
        mesh.apply_transform(transform)
    return mesh


def _point_cloud(path: Path, points: int) -> None:
    raise ThreedError(f"{path} is a point cloud ({points} points, no faces): texturing needs a triangle mesh; "
                      f"reconstruct a surface first (e.g. Poisson reconstruction in MeshLab or Open3D), or make an "
                      f"asset from the prompt alone with threed generate")


def _reusable_uv(mesh: trimesh.Trimesh, meshes: int) -> tuple[np.ndarray | None, str]:
    uv = getattr(mesh.visual, "uv", None)
    if uv is None or len(uv) != len(mesh.vertices):
        return None, "the input has no UVs: new ones were unwrapped with xatlas"
    if meshes > 1:
        return None, f"the input joins {meshes} meshes, whose UVs trimesh repacks: new ones were unwrapped with xatlas"
    uv = np.asarray(uv, np.float64)
    if not np.isfinite(uv).all() or uv.min() < -_UV_TOLERANCE or uv.max() > 1.0 + _UV_TOLERANCE:
        return None, "the input's UVs leave [0, 1] (a tiling texture): new ones were unwrapped with xatlas"
    return uv.copy(), "the input's UVs are kept: the texture is baked into its layout"


def read_user_mesh(path: str | Path, up: UpAxis = "y") -> UserMesh:
    """Read and check a user's mesh file (see the module docstring); writes nothing."""
    path = Path(path).expanduser()
    if up not in ("y", "z"):
        raise ThreedError(f"--up must be y or z, got {up!r}")
    if not path.exists():
        raise ThreedError(f"mesh file {path} does not exist")
    if not path.is_file():
        raise ThreedError(f"{path} is a folder, not a mesh file")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ThreedError(f"cannot read {path.suffix or 'a file without a suffix'} meshes ({path}); give one of "
                          f"{', '.join(MESH_SUFFIXES)} (Blender or MeshLab convert the others)")
    try:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    except Exception as exc:  # trimesh raises anything from ValueError to struct.error on a damaged file
        raise ThreedError(f"trimesh cannot read {path} ({type(exc).__name__}: {exc}); check that it is a valid "
                          f"{path.suffix} file (open it in Blender or MeshLab and export it again)") from exc
    mesh, meshes = _flatten(loaded, path)
    if len(mesh.faces) == 0:
        if len(mesh.vertices):
            _point_cloud(path, len(mesh.vertices))
        raise ThreedError(f"{path} holds an empty mesh (no faces): there is nothing to texture")
    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    if not np.isfinite(vertices).all():
        raise ThreedError(f"{path} has vertices at NaN or infinity: repair the mesh first")
    extent = float((vertices[faces].reshape(-1, 3).max(axis=0) - vertices[faces].reshape(-1, 3).min(axis=0)).max())
    if not math.isfinite(extent) or extent <= 0.0:
        raise ThreedError(f"{path} has no extent (every face collapses to one point): there is nothing to texture")
    uv, note = _reusable_uv(mesh, meshes)
    if uv is None and len(faces) > UNWRAP_FACE_LIMIT:
        raise ThreedError(f"{path} has {len(faces):,} faces and no usable UVs ({note.split(':')[0]}); threed unwraps "
                          f"new UVs only up to {UNWRAP_FACE_LIMIT:,} faces. Decimate it first (e.g. Blender's Decimate "
                          f"modifier) or give it UVs in [0, 1]; a mesh with UVs of its own has no face limit")
    return UserMesh(vertices=vertices, faces=faces, uv=uv, up=up, source=path.name, uv_note=note, meshes=meshes)
