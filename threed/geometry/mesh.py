"""A triangle mesh as tensors: what the rasterizer draws and what DMTet extracts.

``Mesh`` is deliberately small: vertex positions, triangle indices and optional per-vertex colours,
all on one device, differentiable in the positions and colours. Conversions to and from
:class:`trimesh.Trimesh` connect it to export and to file formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Mesh:
    """Triangles ``faces`` (``F x 3`` vertex indices, counter-clockwise seen from outside) over ``vertices``."""

    vertices: Float[Tensor, "V 3"]
    faces: Int[Tensor, "F 3"]
    colors: Float[Tensor, "V 3"] | None = None
    """Per-vertex colour in [0, 1] (e.g. an exported mesh); None when colour comes from a field."""

    def __post_init__(self):
        if self.vertices.ndim != 2 or self.vertices.shape[-1] != 3:
            raise ValueError(f"vertices must be V x 3, got {tuple(self.vertices.shape)}")
        if self.faces.ndim != 2 or self.faces.shape[-1] != 3:
            raise ValueError(f"faces must be F x 3, got {tuple(self.faces.shape)}")
        if self.faces.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"faces must be an integer tensor, got {self.faces.dtype}")
        if self.colors is not None and self.colors.shape != self.vertices.shape:
            raise ValueError(f"colors must be V x 3 like vertices {tuple(self.vertices.shape)}, "
                             f"got {tuple(self.colors.shape)}")

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device) -> "Mesh":
        return Mesh(self.vertices.to(device), self.faces.to(device),
                    None if self.colors is None else self.colors.to(device))

    def face_normals(self) -> Float[Tensor, "F 3"]:
        """Unit normals of the faces (right-hand rule over the vertex order)."""
        return torch.nn.functional.normalize(_face_cross(self.vertices, self.faces), dim=-1, eps=1e-20)

    def vertex_normals(self) -> Float[Tensor, "V 3"]:
        """Area-weighted average of the adjacent face normals, unit length, differentiable."""
        cross = _face_cross(self.vertices, self.faces)  # |cross| = 2 * area
        acc = torch.zeros_like(self.vertices)
        for k in range(3):
            acc = acc.index_add(0, self.faces[:, k].long(), cross)
        return torch.nn.functional.normalize(acc, dim=-1, eps=1e-20)

    def edge_face_pairs(self) -> Int[Tensor, "E 2"]:
        """Pairs of faces that share an edge (each interior edge of a manifold mesh once)."""
        faces = self.faces.long()
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
        owner = torch.arange(len(faces), device=faces.device).repeat(3)
        key = edges[:, 0] * len(self.vertices) + edges[:, 1]
        key, order = key.sort()
        owner = owner[order]
        shared = key[1:] == key[:-1]
        return torch.stack([owner[:-1][shared], owner[1:][shared]], dim=1)

    def normal_consistency(self) -> Float[Tensor, ""]:
        """Mean ``1 - cos`` between the normals of faces that share an edge: 0 for a plane, small for a
        smooth surface, large for a spiky one. The mesh regulariser of Magic3D-style refinement stages
        (threestudio's ``lambda_normal_consistency``)."""
        pairs = self.edge_face_pairs()
        cross = _face_cross(self.vertices, self.faces)
        size = cross.norm(dim=-1)
        # Near-degenerate faces (marching tets puts some there) have no stable normal: 1/|cross| would
        # blow up their gradient, so pairs that touch one are left out.
        solid = size > 1e-4 * size.detach().mean()
        pairs = pairs[solid[pairs].all(dim=1)]
        if len(pairs) == 0:
            return self.vertices.sum() * 0.0
        n = cross / size.clamp(min=1e-12)[:, None]
        return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()

    def area(self) -> Tensor:
        """Total surface area."""
        return 0.5 * _face_cross(self.vertices, self.faces).norm(dim=-1).sum()

    def to_trimesh(self):
        """A :class:`trimesh.Trimesh` (no vertex merging, so indices stay as they are)."""
        import trimesh

        colors = None
        if self.colors is not None:
            colors = (self.colors.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return trimesh.Trimesh(self.vertices.detach().cpu().numpy(), self.faces.cpu().numpy(),
                               vertex_colors=colors, process=False)

    @classmethod
    def from_trimesh(cls, mesh, device=None, dtype: torch.dtype = torch.float32) -> "Mesh":
        """Tensors of a :class:`trimesh.Trimesh`, with its vertex colours when it has them."""
        vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=dtype, device=device)
        faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long, device=device)
        colors = None
        visual = getattr(mesh, "visual", None)
        if visual is not None and getattr(visual, "kind", None) == "vertex":
            colors = torch.as_tensor(np.asarray(visual.vertex_colors)[:, :3] / 255.0, dtype=dtype, device=device)
        return cls(vertices, faces, colors)


def _face_cross(vertices: Tensor, faces: Tensor) -> Tensor:
    v = vertices[faces.long()]
    return torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
