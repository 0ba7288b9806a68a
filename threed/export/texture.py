"""UV textures: an xatlas unwrap, the field's albedo baked into an image, and padding across seams.

1. **Unwrap.** xatlas (Young, after Thekla's atlas generator) cuts the mesh into charts of low
   distortion and packs them into a square atlas of ``texture_size`` texels, ``padding`` texels apart.
   Vertices on a seam are split (one copy per chart), so the textured mesh has more vertices than the
   input but the same faces, in the same order. Its normals are the *input's* smooth vertex normals,
   so shading shows no crease along the seams.
2. **Rasterise the layout.** For every texel centre, find the UV triangle that contains it and its
   barycentric coordinates there (:func:`rasterize_uv`, vectorised over ``face x texel`` candidates in
   each face's bounding box). The UV map of a triangle is affine, so the same barycentrics interpolate
   the triangle's 3D corners to the texel's surface point.
3. **Bake.** The albedo field is read at each texel's surface point, moved inside along the interpolated
   normal exactly as vertex colours are (:func:`threed.export.isosurface.albedo_inside`).
4. **Pad.** Texels outside every chart take the colour of the nearest covered texel (a Euclidean distance
   transform, :func:`fill_empty`). Bilinear filtering and mip-mapping near a chart's edge read those
   texels; without the fill, seams would show the background as dark lines.

The image is stored as sRGB-encoded albedo, which is what glTF's ``baseColorTexture`` and OBJ's
``map_Kd`` expect, and it goes into a PBR metallic-roughness material with metallic 0 and roughness 1:
a score-distilled field has albedo only (DreamFusion shades it Lambertian), so the asset is a matte
dielectric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from threed.errors import ThreedError
from threed.export.isosurface import AlbedoFn, albedo_inside, default_inset
from threed.export.xatlas_process import parametrize

MATERIAL_NAME = "albedo"


@dataclass
class UVLayout:
    """A mesh cut along xatlas seams with one UV per (split) vertex."""

    vertices: np.ndarray
    """``V' x 3`` positions (input vertices, seam vertices repeated)."""
    faces: np.ndarray
    """``F x 3`` indices into ``vertices``; face ``i`` is the input's face ``i``."""
    uv: np.ndarray
    """``V' x 2`` texture coordinates in [0, 1], OpenGL convention (v = 0 at the image's bottom row)."""
    source_vertex: np.ndarray
    """``V'`` index of each vertex in the input mesh."""
    charts: int
    """Number of charts xatlas cut the surface into (0: a layout given with the mesh)."""


def unwrap(mesh: trimesh.Trimesh, texture_size: int = 1024, padding: int = 4,
           timeout: float | None = None) -> UVLayout:
    """xatlas charts of ``mesh`` packed for a ``texture_size``-texel square image, ``padding`` texels apart.

    xatlas runs in a child process (:mod:`threed.export.xatlas_process`): a crash or a run over
    ``timeout`` seconds becomes a :class:`ThreedError`.
    """
    if len(mesh.faces) == 0:
        raise ThreedError("cannot unwrap a mesh without faces")
    source_vertex, faces, uv, charts = parametrize(mesh.vertices, mesh.faces, texture_size, padding, timeout)
    return UVLayout(vertices=np.asarray(mesh.vertices)[source_vertex], faces=faces, uv=np.clip(uv, 0.0, 1.0),
                    source_vertex=source_vertex, charts=charts)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, height: int, width: int, max_pairs: int = 2**22
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre of an ``height x width`` image, and the barycentrics there.

    Texel ``(row, col)`` has its centre at ``u = (col + 0.5) / width``, ``v = 1 - (row + 0.5) / height``.
    Each face is tested against the texel centres inside its bounding box, ``max_pairs`` (face, texel)
    pairs at a time; a centre on an edge shared by two faces goes to either.

    Returns:
        ``face_index`` (``H x W`` int64, -1 where no face covers the centre) and ``bary`` (``H x W x 3``
        float64, the weights of the face's three corners; zeros where uncovered).
    """
    xy = np.stack([uv[:, 0] * width, (1.0 - uv[:, 1]) * height], axis=-1)
    tri = xy[faces]  # F 3 2
    # Texel centres c + 0.5 inside [min, max]: c from ceil(min - 0.5) to floor(max - 0.5).
    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, [width, height]).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5), -1, [width - 1, height - 1]).astype(np.int64)
    span = np.maximum(hi - lo + 1, 0)  # F 2: columns, rows
    count = span[:, 0] * span[:, 1]
    face_index = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3), np.float64)
    ends = np.cumsum(count)
    start_face = 0
    while start_face < len(faces):
        base = ends[start_face - 1] if start_face else 0
        stop_face = max(int(np.searchsorted(ends, base + max_pairs, side="right")), start_face + 1)
        f_ids = np.arange(start_face, stop_face)
        n = count[f_ids]
        f = np.repeat(f_ids, n)
        local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        cols = lo[f, 0] + local % np.maximum(span[f, 0], 1)
        rows = lo[f, 1] + local // np.maximum(span[f, 0], 1)
        p = np.stack([cols + 0.5, rows + 0.5], axis=-1)
        a, e1, e2 = tri[f, 0], tri[f, 1] - tri[f, 0], tri[f, 2] - tri[f, 0]
        d = p - a
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        ok = np.abs(det) > 1e-12
        safe = np.where(ok, det, 1.0)
        w1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / safe
        w2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / safe
        w0 = 1.0 - w1 - w2
        eps = -1e-9  # centres exactly on an edge count as inside
        inside = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
        face_index[rows[inside], cols[inside]] = f[inside]
        bary[rows[inside], cols[inside]] = np.stack([w0, w1, w2], axis=-1)[inside]
        start_face = stop_face
    return face_index, bary


def fill_empty(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``image`` (``H x W x C``) with every uncovered texel set to its nearest covered texel's value."""
    if not covered.any():
        raise ThreedError("no texel of the texture is covered by the mesh; raise the texture size")
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


@torch.no_grad()
def bake_albedo(mesh: trimesh.Trimesh, albedo_fn: AlbedoFn, texture_size: int = 1024, padding: int = 4,
                inset: float | None = None, chunk: int = 2**17, device: str | torch.device = "cpu",
                uv: np.ndarray | None = None) -> tuple[trimesh.Trimesh, dict]:
    """``mesh`` unwrapped, with ``albedo_fn`` baked into a ``texture_size``-square PBR base-colour texture.

    With ``uv`` (``V x 2`` in [0, 1], the mesh's own layout: ``threed texture`` on a mesh that has UVs) there is
    no unwrap: the texture is baked into that layout and the mesh keeps its vertices, faces and order.

    Args:
        mesh: a cleaned, world-space mesh (the field's frame; normalise after baking).
        albedo_fn: world points ``N x 3`` to albedo ``N x 3`` in [0, 1].
        texture_size: width and height of the texture in texels.
        padding: texels between charts (xatlas); the rest of the gap is filled by :func:`fill_empty`.
        inset: how far inside the surface the albedo is read; default :func:`default_inset`.
        chunk: points per ``albedo_fn`` call.
        device: where ``albedo_fn`` computes.
        uv: the mesh's own texture coordinates to bake into, or None to unwrap new ones.

    Returns:
        The textured mesh (``TextureVisuals`` with a ``PBRMaterial`` named ``albedo``: the texture as
        ``baseColorTexture``, metallic 0, roughness 1; the input's vertex normals) and ``info`` with the
        atlas ``coverage`` (fraction of texels inside a chart), the ``charts`` count and the ``seconds``
        spent in the unwrap and in rasterising + baking.
    """
    if texture_size < 16:
        raise ThreedError(f"texture size must be at least 16 texels, got {texture_size}")
    inset = default_inset(mesh) if inset is None else inset
    started = time.perf_counter()
    if uv is None:
        layout = unwrap(mesh, texture_size, padding)
    else:
        layout = UVLayout(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces), uv=np.asarray(uv),
                          source_vertex=np.arange(len(mesh.vertices)), charts=0)
    unwrapped = time.perf_counter()
    face_index, bary = rasterize_uv(layout.uv, layout.faces, texture_size, texture_size)
    covered = face_index >= 0
    corners = layout.faces[face_index[covered]]  # T 3
    weights = bary[covered][..., None]  # T 3 1
    points = (weights * layout.vertices[corners]).sum(axis=1)
    vertex_normals = np.asarray(mesh.vertex_normals)[layout.source_vertex]
    normals = (weights * vertex_normals[corners]).sum(axis=1)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    image = np.zeros((texture_size, texture_size, 3), np.float32)
    image[covered] = albedo_inside(points, normals, albedo_fn, inset, chunk, device)
    image = fill_empty(image, covered)
    texture = Image.fromarray((image * 255.0).round().astype(np.uint8), mode="RGB")
    material = trimesh.visual.material.PBRMaterial(name=MATERIAL_NAME, baseColorTexture=texture,
                                                   metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False)
    textured = trimesh.Trimesh(layout.vertices, layout.faces, vertex_normals=vertex_normals, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=layout.uv, material=material))
    info = {"texture_size": texture_size, "coverage": float(covered.mean()), "charts": layout.charts,
            "seconds": {"unwrap": round(unwrapped - started, 3), "bake": round(time.perf_counter() - unwrapped, 3)}}
    return textured, info

