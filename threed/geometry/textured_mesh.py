"""A fixed triangle mesh with a trainable albedo field: what ``threed texture`` optimises on a user's mesh.

The surface never moves; only the albedo field does: a hash grid and a small MLP over the scene box, the same
field the DMTet stages paint (:class:`threed.geometry.dmtet.DMTet`), so a texture stage on a user's mesh is
Magic3D's and Fantasia3D's texture stage on a surface someone else made. The field is read at the rasterized
surface points during optimisation and at the texels' surface points when the export bakes it
(:mod:`threed.export.texture`).

The surface is a pair of buffers saved with the scene (``surface_vertices``, ``surface_faces``), so a checkpoint
holds everything its scene needs: :meth:`threed.scene.Scene.from_checkpoint` rebuilds it without the user's
file. A new scene has an empty surface until :meth:`TexturedMesh.set_surface` (the stage's fresh start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.errors import ThreedError
from threed.geometry.base import Geometry, OptimizerConfig, field_groups, mlp
from threed.geometry.encoding import HashGridConfig, make_encoding
from threed.geometry.mesh import Mesh


@dataclass
class TexturedMeshConfig:
    """A user's mesh placed in the box ``[-radius, radius]^3``, and the albedo field painted on it."""

    radius: float = 1.0
    """Half side of the scene box (the albedo field's domain)."""
    extent: float = 0.9
    """Longest side of the mesh's bounding box once placed in the scene (scene units); the toy world's objects
    are 0.76 (cube) to 1.04 (sphere) across, and the cameras frame a radius-1 box."""
    max_faces: int = 100_000
    """Faces rasterized during optimisation: a larger mesh is decimated (fast-simplification) for the
    optimisation only, and the export bakes the texture onto every original face."""
    encoding: HashGridConfig = field(default_factory=lambda: HashGridConfig(max_resolution=256))
    """Hash grid of the albedo field."""
    hidden_dim: int = 32
    """Width of the albedo MLP."""
    n_hidden_layers: int = 1
    """Hidden layers of the albedo MLP."""

    def __post_init__(self):
        if self.radius <= 0 or not 0 < self.extent < 2 * self.radius:
            raise ValueError(f"need radius > 0 and 0 < extent < 2 radius, got {self.radius} and {self.extent}")
        if self.max_faces < 4:
            raise ValueError(f"max_faces must be at least 4, got {self.max_faces}")


class TexturedMesh(Geometry):
    """``mesh() -> Mesh`` (fixed, no gradient) and ``albedo(points) -> N x 3`` in [0, 1]."""

    surface = "mesh"
    surface_vertices: Tensor
    """``V x 3`` scene-space positions of the optimisation surface (buffer, saved)."""
    surface_faces: Tensor
    """``F x 3`` int64 faces of the optimisation surface (buffer, saved)."""

    def __init__(self, cfg: TexturedMeshConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TexturedMeshConfig()
        self.register_buffer("surface_vertices", torch.zeros(0, 3))
        self.register_buffer("surface_faces", torch.zeros(0, 3, dtype=torch.long))
        self.albedo_encoding = make_encoding(cfg.encoding, n_input_dims=3)
        self.albedo_mlp = mlp(self.albedo_encoding.n_output_dims, 3, cfg.hidden_dim, cfg.n_hidden_layers)

    @property
    def radius(self) -> float:
        return self.cfg.radius

    def set_surface(self, vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"]) -> None:
        """Make ``vertices``/``faces`` (scene coordinates, inside the box) the surface that is painted."""
        if len(faces) == 0 or vertices.abs().max() > self.cfg.radius:
            raise ThreedError(f"the surface must have faces and lie inside the box of radius {self.cfg.radius}")
        dev = self.surface_vertices.device
        self.surface_vertices = vertices.detach().to(dev, torch.float32).clone()
        self.surface_faces = faces.to(dev, torch.long).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """The surface buffers take the checkpoint's shapes (a new scene starts with an empty surface)."""
        for name in ("surface_vertices", "surface_faces"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def parameter_groups(self, opt: OptimizerConfig) -> list[dict]:
        """The hash-grid table and the MLP, each at its rate."""
        return field_groups(self, opt)

    def mesh(self) -> Mesh:
        if len(self.surface_faces) == 0:
            raise ThreedError("the textured mesh has no surface yet: the stage sets it from the run's input mesh")
        return Mesh(self.surface_vertices, self.surface_faces)

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        unit = ((points + self.cfg.radius) / (2.0 * self.cfg.radius)).clamp(0.0, 1.0)
        return torch.sigmoid(self.albedo_mlp(self.albedo_encoding(unit)).float())
