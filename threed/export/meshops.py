"""Finishing a cleaned mesh for DCC tools: decimation to a face budget and a unit bounding box.

Decimation uses fast-simplification (a maintained wrapper of Sven Forstmann's quadric-error
simplifier, after Garland & Heckbert, SIGGRAPH 1997): marching cubes spends the same triangle density on
flat sides as on detail, so a quadric simplifier removes most of its faces with little visible loss.
It runs on the world-space mesh *before* texturing, so colours are baked onto the final geometry.

Normalisation recentres the mesh's bounding box on the origin and scales it so its longest side is 1
(the box fits ``[-0.5, 0.5]^3``). threed's world is already +Y up with the front toward +Z (glTF's
convention), so there is no rotation: the transform is ``export = scale * (world - centre)``, recorded in
``export.json`` so field renders and exported-mesh renders can be put in one frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import fast_simplification
import numpy as np
import trimesh

from threed.errors import ThreedError


def decimate(mesh: trimesh.Trimesh, faces: int, aggressiveness: float = 7.0) -> trimesh.Trimesh:
    """``mesh`` simplified to ``faces`` triangles (a copy; unchanged when it already has no more).

    Args:
        mesh: a triangle mesh; its visuals are dropped (decimate before colouring).
        faces: target face count, at least 4 (a tetrahedron).
        aggressiveness: fast-simplification's ``agg``: higher is faster and rougher (7 is its default).

    Returns:
        A mesh with at most ``faces`` faces (the simplifier stops at exactly ``faces``; a few collapsed or
        folded faces may be dropped afterwards), winding made consistent and normals outward. A closed
        input stays closed.
    """
    if faces < 4:
        raise ThreedError(f"the target face count must be at least 4, got {faces}")
    if len(mesh.faces) <= faces:
        return trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), process=False)
    vertices, triangles = fast_simplification.simplify(
        np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32), target_count=int(faces),
        agg=aggressiveness)
    out = trimesh.Trimesh(vertices, triangles.astype(np.int64), process=False)
    out.update_faces(_manifold_faces(out.faces))
    out.remove_unreferenced_vertices()
    if len(out.faces) == 0:
        raise ThreedError(f"decimating to {faces} faces left no surface; ask for more faces")
    # Edge collapses keep each face's orientation, but re-check: a flipped sliver would show as a hole.
    trimesh.repair.fix_normals(out, multibody=True)
    return out


def _manifold_faces(faces: np.ndarray) -> np.ndarray:
    """Mask of faces to keep after simplification: drop collapsed faces and both copies of duplicated ones.

    A collapse can leave a face with a repeated vertex, or fold two faces onto the same three vertices (a
    zero-volume fin); removing those keeps a closed input closed. Zero-area faces with three distinct
    vertices stay: removing them would open a (zero-width) hole.
    """
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    duplicated = trimesh.grouping.group_rows(np.sort(faces, axis=1), require_count=2)
    keep[np.asarray(duplicated, dtype=np.int64).reshape(-1)] = False
    return keep


@dataclass(frozen=True)
class UnitBoxTransform:
    """``export = scale * (world - centre)``: the similarity that puts a mesh in the unit box, no rotation."""

    centre: tuple[float, float, float]
    """World position of the bounding-box centre (it maps to the origin)."""
    scale: float
    """1 / the longest side of the world bounding box."""

    @property
    def matrix(self) -> np.ndarray:
        """The 4 x 4 homogeneous world-to-export matrix."""
        m = np.eye(4)
        m[:3, :3] *= self.scale
        m[:3, 3] = -self.scale * np.asarray(self.centre)
        return m

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Exported positions ``N x 3`` back to threed's world frame."""
        return np.asarray(points) / self.scale + np.asarray(self.centre)

    def to_json(self) -> dict:
        return {"centre": list(self.centre), "scale": self.scale, "world_to_export": self.matrix.tolist(),
                "rule": "export = scale * (world - centre); +Y up, front +Z, no rotation"}


def unit_box_transform(mesh: trimesh.Trimesh) -> UnitBoxTransform:
    """The transform that centres ``mesh``'s bounding box at the origin with its longest side 1."""
    lo, hi = mesh.bounds
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0.0:
        raise ThreedError("the mesh has no extent (a single point): nothing to normalise")
    return UnitBoxTransform(centre=tuple(float(c) for c in (lo + hi) / 2.0), scale=1.0 / extent)


def normalize_to_unit_box(mesh: trimesh.Trimesh, transform: UnitBoxTransform | None = None
                          ) -> tuple[trimesh.Trimesh, UnitBoxTransform]:
    """A copy of ``mesh`` in the unit box (visuals and UVs kept) and the transform that put it there.

    Pass ``transform`` to move a second mesh (e.g. the vertex-coloured twin of a textured one) identically.
    """
    transform = transform or unit_box_transform(mesh)
    normals = np.array(mesh.vertex_normals)
    out = mesh.copy()
    out.apply_transform(transform.matrix)
    # A uniform positive scale and a shift change no normal. Set them again: trimesh would recompute them
    # from the faces, which for a UV-split mesh puts a crease along every seam.
    out.vertex_normals = normals
    return out, transform
