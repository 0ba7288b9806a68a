"""DMTet: a signed distance on a deformable tetrahedral grid, turned into a mesh by marching tetrahedra.

Shen et al., "Deep Marching Tetrahedra" (NeurIPS 2021), used for text-to-3D refinement by Magic3D
(Lin et al., CVPR 2023) and Fantasia3D (Chen et al., ICCV 2023). Every grid vertex carries an SDF value
(negative inside) and a bounded offset; marching tetrahedra places a mesh vertex on each tet edge whose
ends change sign, at the zero of the linear interpolation,

    p = a + (b - a) * s_a / (s_a - s_b),

so the mesh is differentiable in the SDF values and the (deformed) grid positions, and a rasterizer's
gradients reach both.

The grid is generated here, not downloaded: the cube ``[-radius, radius]^3`` is cut into
``resolution^3`` cells and each cell into the 6 tetrahedra of Kuhn's (Freudenthal's) subdivision
around its main diagonal. The subdivision is the same in every cell, so neighbouring cells split
their shared square faces along the same diagonal: the grid is conforming, and marching tetrahedra on
it gives a closed, consistently oriented mesh wherever the zero level set stays inside the box. All
tets are stored positively oriented, which lets one case table orient every triangle outward.

The SDF and offsets are either free per-vertex parameters (``sdf: grid``, Magic3D/threestudio's
default) or the output of a hash-grid MLP at the grid vertices (``sdf: field``). The albedo is a
separate hash-grid field queried at surface points (the rasterizer's pixels), as in Magic3D's
texture stage.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from threed.geometry.base import Geometry, OptimizerConfig, field_groups, mlp
from threed.geometry.encoding import HashGridConfig, make_encoding
from threed.geometry.mesh import Mesh

SDFFn = Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N"]]

_TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
"""The 6 edges of a tetrahedron as pairs of its local vertex indices."""


def _case_table() -> tuple[Tensor, Tensor]:
    """Triangles per inside/outside case: (16 x 2 x 3 local edge indices, -1 padded) and counts (16,).

    Built from the geometry of a positively oriented reference tet: each triangle joins the crossing
    edges in cyclic order and is flipped where its normal points from outside to inside.
    """
    ref = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    edge_of = {frozenset(e): k for k, e in enumerate(_TET_EDGES)}
    table = -np.ones((16, 2, 3), dtype=np.int64)
    counts = np.zeros(16, dtype=np.int64)
    for case in range(16):
        inside = [i for i in range(4) if case >> i & 1]
        outside = [i for i in range(4) if not case >> i & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            polygons = [[edge_of[frozenset((lone, o))] for o in others]]
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            quad = [edge_of[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]
            polygons = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        else:
            continue
        outward = ref[outside].mean(0) - ref[inside].mean(0)
        for t, tri in enumerate(polygons):
            q = np.array([ref[list(_TET_EDGES[k])].mean(0) for k in tri])
            if np.cross(q[1] - q[0], q[2] - q[0]) @ outward < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[case, t] = tri
        counts[case] = len(polygons)
    return torch.from_numpy(table), torch.from_numpy(counts)


_TRI_TABLE, _TRI_COUNT = _case_table()


def tet_grid(resolution: int, radius: float = 1.0) -> tuple[Float[Tensor, "V 3"], Int[Tensor, "T 4"]]:
    """A conforming tetrahedral grid of the cube ``[-radius, radius]^3``: ``(resolution + 1)^3`` vertices
    and ``6 * resolution^3`` positively oriented tets (Kuhn's subdivision of each cell)."""
    if resolution < 1 or radius <= 0:
        raise ValueError(f"need resolution >= 1 and radius > 0, got {resolution} and {radius}")
    n = resolution + 1
    axis = torch.linspace(-radius, radius, n)
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    corners = []
    for perm in itertools.permutations(range(3)):
        step, path = np.zeros(3, dtype=np.int64), [np.zeros(3, dtype=np.int64)]
        for axis_k in perm:
            step = step.copy()
            step[axis_k] = 1
            path.append(step)
        p = np.array(path, dtype=np.float64)
        if np.linalg.det(p[1:] - p[0]) < 0:
            path[2], path[3] = path[3], path[2]
        corners.append(path)
    offsets = torch.tensor(np.array(corners))  # 6 tets x 4 corners x 3 (cell-local)
    cell = torch.arange(resolution)
    origin = torch.stack(torch.meshgrid(cell, cell, cell, indexing="ij"), dim=-1).reshape(-1, 1, 1, 3)
    ijk = origin + offsets[None]  # C x 6 x 4 x 3
    tets = (ijk[..., 0] * n + ijk[..., 1]) * n + ijk[..., 2]
    return vertices, tets.reshape(-1, 4)


def marching_tets(vertices: Float[Tensor, "V 3"], tets: Int[Tensor, "T 4"], sdf: Float[Tensor, "V"]) -> Mesh:
    """The zero level set of ``sdf`` (negative inside) on a tet mesh, as a triangle mesh with outward normals.

    Tets must be positively oriented (as :func:`tet_grid` makes them). One mesh vertex per sign-changing
    grid edge, shared by every tet around that edge, so a closed level set gives a watertight mesh.
    Differentiable with respect to ``vertices`` and ``sdf``. An empty level set gives an empty mesh.
    """
    if sdf.shape != vertices.shape[:1]:
        raise ValueError(f"sdf must have one value per vertex ({vertices.shape[0]}), got {tuple(sdf.shape)}")
    dev = vertices.device
    V = vertices.shape[0]
    with torch.no_grad():
        inside = sdf < 0
        occ = inside[tets]  # T x 4
        count = occ.sum(1)
        active = (count > 0) & (count < 4)
        tets = tets[active]
        case = (occ[active].long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(1)
        ends = tets[:, torch.tensor(_TET_EDGES, device=dev)]  # A x 6 x 2
        lo, hi = ends.min(-1).values, ends.max(-1).values
        crossing = inside[lo] != inside[hi]
        key = lo * V + hi
        unique, inverse = torch.unique(key[crossing], return_inverse=True)
        edge_vertex = torch.full_like(key, -1)
        edge_vertex[crossing] = inverse
        table, counts = _TRI_TABLE.to(dev)[case], _TRI_COUNT.to(dev)[case]  # A x 2 x 3, A
        local = torch.cat([table[counts >= 1, 0], table[counts == 2, 1]])
        owner = torch.cat([torch.nonzero(counts >= 1).squeeze(1), torch.nonzero(counts == 2).squeeze(1)])
        faces = edge_vertex[owner[:, None], local]
        a, b = torch.div(unique, V, rounding_mode="floor"), unique % V
    sa, sb = sdf[a], sdf[b]
    w = (sa / (sa - sb))[:, None]
    points = vertices[a] + w * (vertices[b] - vertices[a])
    return Mesh(points, faces)


@dataclass
class DMTetConfig:
    """A deformable tetrahedral grid with an SDF, and an albedo field, inside ``[-radius, radius]^3``."""

    radius: float = 1.0
    """Half side of the grid's cube."""
    grid_size: int = 32
    """Grid cells per axis (6 tets per cell); 32 suits a CPU, 64-128 a GPU."""
    sdf: Literal["grid", "field"] = "grid"
    """``grid``: free SDF and offset parameters per grid vertex; ``field``: a hash-grid MLP gives both."""
    deform: bool = True
    """Learn a per-vertex offset of the grid (DMTet's deformation)."""
    deform_scale: float = 0.25
    """Largest offset along each axis, in grid cells (tanh-bounded); below 0.5 no tet can flip."""
    init: Literal["sphere", "ellipsoid"] = "sphere"
    """Starting shape when there is no previous stage to start from."""
    init_radii: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Semi-axes of the starting sphere/ellipsoid (x, y, z); a sphere uses the first."""
    encoding: HashGridConfig = field(default_factory=lambda: HashGridConfig(max_resolution=256))
    """Hash grid of the albedo field (and of the SDF field when ``sdf: field``)."""
    hidden_dim: int = 32
    """Width of the MLPs after the encodings."""
    n_hidden_layers: int = 1
    """Hidden layers of those MLPs."""

    def __post_init__(self):
        if self.radius <= 0 or self.grid_size < 2:
            raise ValueError(f"need radius > 0 and grid_size >= 2, got {self.radius} and {self.grid_size}")
        if not 0 <= self.deform_scale < 0.5:
            raise ValueError(f"deform_scale must lie in [0, 0.5) cells, got {self.deform_scale}")
        if len(self.init_radii) != 3 or min(self.init_radii) <= 0 or max(self.init_radii) >= self.radius:
            raise ValueError(f"init_radii must be 3 positive semi-axes below radius {self.radius}, got {self.init_radii}")


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def ellipsoid_sdf(radii: tuple[float, float, float]) -> SDFFn:
    """An approximate SDF of an axis-aligned ellipsoid (exact for a sphere): ``(|x / r| - 1) * min(r)``."""
    r = torch.tensor(radii, dtype=torch.float32)
    return lambda x: ((x / r.to(x)).norm(dim=-1) - 1.0) * float(r.min())


class DMTet(Geometry):
    """``mesh() -> Mesh`` (differentiable in the SDF, offsets) and ``albedo(points) -> N x 3`` in [0, 1].

    Every parameter is initialised from torch's global RNG and the starting shape, so
    ``torch.manual_seed`` fixes the geometry.
    """

    grid: Tensor
    """Tet-grid vertices (buffer)."""
    tets: Tensor
    """Tetrahedra as vertex indices (buffer)."""

    surface = "mesh"

    def __init__(self, cfg: DMTetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DMTetConfig()
        grid, tets = tet_grid(cfg.grid_size, cfg.radius)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        n = grid.shape[0]
        if cfg.sdf == "grid":
            self.sdf_param = nn.Parameter(torch.zeros(n))
            self.deform_param = nn.Parameter(torch.zeros(n, 3)) if cfg.deform else None
            self.sdf_encoding = self.sdf_mlp = None
        else:
            self.sdf_param = self.deform_param = None
            self.sdf_encoding = make_encoding(cfg.encoding, n_input_dims=3)
            self.sdf_mlp = mlp(self.sdf_encoding.n_output_dims, 4, cfg.hidden_dim, cfg.n_hidden_layers)
        self.albedo_encoding = make_encoding(cfg.encoding, n_input_dims=3)
        self.albedo_mlp = mlp(self.albedo_encoding.n_output_dims, 3, cfg.hidden_dim, cfg.n_hidden_layers)
        self._frozen_mesh: Mesh | None = None
        self.register_load_state_dict_post_hook(self._forget_mesh)
        self.init_shape(ellipsoid_sdf(cfg.init_radii if cfg.init == "ellipsoid" else (cfg.init_radii[0],) * 3))

    @property
    def radius(self) -> float:
        return self.cfg.radius

    def parameter_groups(self, opt: OptimizerConfig) -> list[dict]:
        """Per-vertex SDF and offsets (grid SDF), hash-grid tables and MLPs, each at its own rate."""
        return field_groups(self, opt)

    def start_from(self, previous: Geometry, level: float) -> dict:
        """The SDF from ``previous``'s isosurface at ``level``; the albedo copied or fitted (:meth:`init_albedo_from`)."""
        if previous.surface != "density":
            return super().start_from(previous, level)
        with torch.enable_grad():
            self.init_from_density(previous.density, level)
        return {"albedo": self.init_albedo_from(previous)}

    @property
    def cell(self) -> float:
        """Grid spacing in world units."""
        return 2.0 * self.cfg.radius / self.cfg.grid_size

    def _unit(self, points: Tensor) -> Tensor:
        return ((points + self.cfg.radius) / (2.0 * self.cfg.radius)).clamp(0.0, 1.0)

    def sdf_and_positions(self) -> tuple[Float[Tensor, "V"], Float[Tensor, "V 3"]]:
        """SDF values at the grid vertices and the deformed vertex positions."""
        if self.sdf_param is not None:
            sdf, raw = self.sdf_param, self.deform_param
        else:
            out = self.sdf_mlp(self.sdf_encoding(self._unit(self.grid))).float()
            sdf, raw = out[:, 0], out[:, 1:] if self.cfg.deform else None
        positions = self.grid
        if raw is not None:
            positions = positions + self.cfg.deform_scale * self.cell * torch.tanh(raw)
        return sdf, positions

    def geometry_parameters(self) -> list[nn.Parameter]:
        """What shapes the surface: SDF and deformation (grid values, or their field)."""
        return [p for name, p in self.named_parameters() if name.startswith(("sdf_", "deform_"))]

    def texture_parameters(self) -> list[nn.Parameter]:
        """The albedo field."""
        return [p for name, p in self.named_parameters() if name.startswith("albedo_")]

    def mesh(self) -> Mesh:
        """The current surface (marching tetrahedra of the deformed grid).

        When no geometry parameter requires grad (a texture-only stage), the surface cannot change, so it
        is extracted once and reused until the weights are loaded again.
        """
        frozen = not any(p.requires_grad for p in self.geometry_parameters())
        if frozen and self._frozen_mesh is not None:
            return self._frozen_mesh
        sdf, positions = self.sdf_and_positions()
        mesh = marching_tets(positions, self.tets, sdf)
        if frozen:
            self._frozen_mesh = Mesh(mesh.vertices.detach(), mesh.faces)
            return self._frozen_mesh
        return mesh

    def _forget_mesh(self, *_) -> None:
        self._frozen_mesh = None

    def _apply(self, fn, recurse=True):  # .to(device) moves the cached surface too: rebuild it
        self._frozen_mesh = None
        return super()._apply(fn, recurse)

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self.albedo_mlp(self.albedo_encoding(self._unit(points))).float())

    def init_shape(self, target: SDFFn | Float[Tensor, "V"], steps: int = 300, lr: float = 0.01) -> float:
        """Make the SDF approximate ``target`` (a function of world points, or values at ``grid``).

        ``grid`` SDFs are assigned directly (and the offsets reset); ``field`` SDFs are fitted by Adam on
        the grid vertices for ``steps`` steps (Magic3D / threestudio's shape initialisation). Returns
        the final mean absolute error at the grid vertices.
        """
        with torch.no_grad():
            values = target(self.grid) if callable(target) else target.to(self.grid)
            values = values.reshape(-1).float()
            if values.shape[0] != self.grid.shape[0]:
                raise ValueError(f"target SDF must have {self.grid.shape[0]} values, got {values.shape[0]}")
        if self.sdf_param is not None:
            with torch.no_grad():
                self.sdf_param.copy_(values)
                if self.deform_param is not None:
                    self.deform_param.zero_()
            return 0.0
        params = list(self.sdf_encoding.parameters()) + list(self.sdf_mlp.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        unit = self._unit(self.grid)
        # Weight the band around the surface, where the sign matters, above the far field.
        weight = 1.0 + 10.0 * (values.abs() < 2.0 * self.cell).float()
        for _ in range(steps):
            opt.zero_grad()
            with torch.enable_grad():
                out = self.sdf_mlp(self.sdf_encoding(unit)).float()
                loss = (weight * (out[:, 0] - values).square()).mean() + out[:, 1:].square().mean()
                loss.backward()
            opt.step()
        with torch.no_grad():
            return float((self.sdf_and_positions()[0] - values).abs().mean())

    def init_albedo_from(self, source: nn.Module, steps: int = 200, lr: float = 0.01) -> str:
        """Take the albedo of another field (e.g. :class:`threed.geometry.nerf.NeRFField`).

        When ``source`` has the same box, hash grid and MLP shape (its MLP's outputs 1-3 being albedo
        logits, as NeRFField's are), its weights are copied and the albedo is identical: ``"copied"``.
        Otherwise this field is fitted to ``source.albedo`` by Adam at points near the current surface
        and across the box: ``"fitted"``.
        """
        mine = self.albedo_mlp
        theirs = getattr(source, "mlp", None)
        cfg = getattr(source, "cfg", None)
        same = (cfg is not None and getattr(cfg, "radius", None) == self.cfg.radius
                and getattr(cfg, "encoding", None) == self.cfg.encoding
                and isinstance(theirs, nn.Sequential) and len(theirs) == len(mine)
                and isinstance(theirs[-1], nn.Linear) and theirs[-1].out_features == 4
                and theirs[-1].in_features == mine[-1].in_features
                and _shapes(theirs[:-1]) == _shapes(mine[:-1]))
        with torch.no_grad():
            if same:
                self.albedo_encoding.load_state_dict(source.encoding.state_dict())
                mine[:-1].load_state_dict(theirs[:-1].state_dict())
                mine[-1].weight.copy_(theirs[-1].weight[1:4])
                mine[-1].bias.copy_(theirs[-1].bias[1:4])
                return "copied"
            surface = self.mesh().vertices.detach()
        params = list(self.albedo_encoding.parameters()) + list(mine.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        r = self.cfg.radius
        for _ in range(steps):
            with torch.no_grad():
                box = (torch.rand(1024, 3, device=self.grid.device) * 2 - 1) * r
                if len(surface):
                    near = surface[torch.randint(len(surface), (3072,), device=surface.device)]
                    box = torch.cat([box, near + 0.5 * self.cell * torch.randn_like(near)]).clamp(-r, r)
                target = source.albedo(box).float()
            opt.zero_grad()
            with torch.enable_grad():
                (self.albedo(box) - target).square().mean().backward()
            opt.step()
        return "fitted"

    @torch.no_grad()
    def init_from_density(self, density_fn: Callable[[Tensor], Tensor], level: float, chunk: int = 2 ** 16,
                          steps: int = 300) -> float:
        """Start from another geometry's density isosurface ``density = level`` (NeRF -> DMTet hand-off).

        The density is sampled at the grid vertices; inside is ``density > level``. The SDF target is the
        signed Euclidean distance transform of that inside/outside grid (scipy), shifted by half a cell
        so the zero level falls between inside and outside vertices, and corrected near the surface by
        the linear zero crossing of ``level - density`` along the grid axes, so the surface starts where
        the density crosses the level rather than on the grid lines. Returns what :meth:`init_shape` does.
        """
        from scipy import ndimage

        n = self.cfg.grid_size + 1
        density = torch.cat([density_fn(p).reshape(-1).float() for p in self.grid.split(chunk)])
        inside = (density > level).view(n, n, n).cpu().numpy()
        if not inside.any() or inside.all():
            raise ValueError(f"the density never crosses level {level} on the grid: nothing to start from")
        outside_dist = ndimage.distance_transform_edt(~inside)  # distance to the nearest inside vertex
        inside_dist = ndimage.distance_transform_edt(inside)
        sdf = np.where(inside, -(inside_dist - 0.5), outside_dist - 0.5) * self.cell
        sdf = torch.from_numpy(sdf).float().to(self.grid.device).reshape(-1)
        sdf = self._refine_near_surface(sdf, (level - density).view(n, n, n))
        return self.init_shape(sdf, steps=steps)

    def _refine_near_surface(self, sdf: Tensor, g: Tensor) -> Tensor:
        """Replace the SDF next to a sign change by the distance to the linear zero crossing along the axes."""
        n = g.shape[0]
        best = torch.full_like(g, float("inf"))
        for axis in range(3):
            a = g.narrow(axis, 0, n - 1)
            b = g.narrow(axis, 1, n - 1)
            change = (a > 0) != (b > 0)
            t = (a / (a - b)).clamp(0.0, 1.0)  # crossing, as a fraction of the edge from a
            dist_a = torch.where(change, t, torch.full_like(t, float("inf")))
            dist_b = torch.where(change, 1.0 - t, torch.full_like(t, float("inf")))
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis) + 1] = 1  # torch pads the last axis first
            best = torch.minimum(best, nn.functional.pad(dist_a, pad, value=float("inf")))
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = 1
            best = torch.minimum(best, nn.functional.pad(dist_b, pad, value=float("inf")))
        near = torch.isfinite(best).reshape(-1)
        signed = torch.where(g.reshape(-1) > 0, 1.0, -1.0) * best.reshape(-1) * self.cell
        return torch.where(near, signed, sdf)
