"""3D Gaussians: positions, anisotropic scales, rotations, opacities and colours, with adaptive density control.

Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering" (SIGGRAPH 2023) represent a
scene as Gaussians ``G_i(x) = exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` with ``Sigma_i = R_i S_i S_i^T R_i^T``
(a unit quaternion ``R_i`` and log-scales ``S_i``), an opacity ``sigmoid(o_i)`` and a colour; the splatting
renderer (:mod:`threed.render.splat`) composites their 2D projections front to back. DreamGaussian (Tang et
al., ICLR 2024) and GaussianDreamer (Yi et al., CVPR 2024) optimise them by score distillation, an order of
magnitude faster than a NeRF, and extract a mesh from the Gaussians' density for a texture-refinement stage.

Colours are spherical harmonics of degree 0 (view-independent albedo, what DreamFusion-style shading wants),
stored as logits: ``rgb = sigmoid(colour_logits)``, which keeps them in [0, 1] without the clamp (and dead
gradient) of ``0.5 + C0 * f_dc``; the 3DGS PLY writer converts (:mod:`threed.export.gaussian_ply`).

Starting points: random points in a ball (DreamGaussian), or the opaque region of a previous stage's NeRF
(:meth:`Gaussians.init_from_density`) -- never the toy world's ground truth. The density control of 3DGS
(sec. 5.2) is a strategy with its own state (:mod:`threed.geometry.densify`): Gaussians whose average
view-space positional gradient is large are cloned (small ones) or split in two (large ones), transparent or
huge ones are pruned, and the opacities are reset now and then. It makes new parameter tensors
(:meth:`Gaussians.replace_rows`), swaps them into the optimiser's
groups and carries the Adam state rows of the kept, cloned and split Gaussians over (the stage refreshes its
own parameter list). Loading a state dict with another count resizes the Gaussians first (in place, so an
optimiser built before the load stays valid), so a checkpoint written after densification resumes with the
right count.

``density(x)`` is the opacity-weighted sum of the kernels, scaled per Gaussian by
``1 / (sqrt(2 pi) * smallest scale)``: a ray through a Gaussian's centre along its thinnest axis then
accumulates an optical depth equal to its opacity, so the volume compositing that mesh export uses to judge
its automatic level (:mod:`threed.export.isosurface`) sees about what the splatting renderer draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from threed.geometry.base import Geometry, OptimizerConfig
from threed.geometry.densify import DensifyConfig

ALPHA_MIN = 1.0 / 255.0
"""Kernel contributions below this (times opacity) are dropped, by the renderer and by density queries (3DGS)."""

PointFn = Callable[[Float[Tensor, "N 3"]], Tensor]


@dataclass
class GaussiansConfig:
    """3D Gaussians inside a scene box ``[-radius, radius]^3``, started as random points in a ball."""

    radius: float = 1.0
    """Half side of the scene box: where density is sampled for mesh export and cameras frame the object."""
    count: int = 4096
    """Gaussians at the start (densification changes it)."""
    init_radius: float = 0.5
    """Initial centres are uniform in a ball of this radius (DreamGaussian)."""
    init_scale: float | None = None
    """Initial scale of every axis; None uses the mean spacing of the points, ``(volume / count)^(1/3)``."""
    init_opacity: float = 0.1
    """Initial opacity (DreamGaussian, 3DGS)."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Adaptive density control: its schedule and thresholds (:mod:`threed.geometry.densify`)."""

    def __post_init__(self):
        if self.radius <= 0 or not 0 < self.init_radius <= self.radius:
            raise ValueError(f"need radius > 0 and 0 < init_radius <= radius, got {self.radius}, {self.init_radius}")
        if self.count < 1 or (self.init_scale is not None and self.init_scale <= 0):
            raise ValueError("need count >= 1 and init_scale > 0 (or null)")
        if not 0 < self.init_opacity < 1:
            raise ValueError(f"init_opacity must lie in (0, 1), got {self.init_opacity}")


def quaternion_to_matrix(quaternions: Float[Tensor, "*N 4"]) -> Float[Tensor, "*N 3 3"]:
    """Rotation matrices of (w, x, y, z) quaternions, normalised first (3DGS's order)."""
    w, x, y, z = nn.functional.normalize(quaternions, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                       dim=-1).reshape(*quaternions.shape[:-1], 3, 3)


def kernel_cutoff(opacity: Float[Tensor, "N"]) -> Float[Tensor, "N"]:
    """Squared Mahalanobis radius beyond which ``opacity * exp(-m^2 / 2) < 1/255`` (0 if never above)."""
    return 2.0 * torch.log((opacity / ALPHA_MIN).clamp(min=1.0))


@dataclass
class CellIndex:
    """Which Gaussians can reach each cell of a uniform grid: the Gaussians registered in every cell that
    their axis-aligned box ``mean +- extent`` touches, listed cell by cell."""

    lo: Tensor
    """Grid corner (3,)."""
    cell: float
    """Cell side."""
    dims: Tensor
    """Cells per axis (3,)."""
    gaussians: Tensor
    """Gaussian indices, grouped by cell."""
    start: Tensor
    """Per cell: where its group starts in ``gaussians``."""
    count: Tensor
    """Per cell: size of its group."""

    @classmethod
    @torch.no_grad()
    def build(cls, means: Float[Tensor, "N 3"], extents: Float[Tensor, "N 3"], live: Tensor) -> "CellIndex":
        dev = means.device
        lo = (means[live] - extents[live]).amin(0)
        hi = (means[live] + extents[live]).amax(0)
        span = float((hi - lo).max().clamp(min=1e-6))
        # Half a typical box half-width per cell: a point then meets few Gaussians that cannot reach it.
        cell = max(0.5 * float(extents[live].amax(1).median()), span / 128.0)
        while True:
            dims = ((hi - lo) / cell).floor().long() + 1
            if int(dims.prod()) <= 2 ** 21:
                break
            cell *= 1.5
        c0 = ((means[live] - extents[live] - lo) / cell).floor().long().clamp(min=0)
        c1 = torch.minimum(((means[live] + extents[live] - lo) / cell).floor().long(), dims - 1)
        sizes = c1 - c0 + 1
        counts = sizes.prod(1)
        owner = torch.repeat_interleave(torch.arange(len(live), device=dev), counts)
        offset = torch.arange(int(counts.sum()), device=dev) - (torch.cumsum(counts, 0) - counts)[owner]
        sz = sizes[owner]
        ix = c0[owner, 0] + offset // (sz[:, 1] * sz[:, 2])
        iy = c0[owner, 1] + (offset // sz[:, 2]) % sz[:, 1]
        iz = c0[owner, 2] + offset % sz[:, 2]
        key = (ix * dims[1] + iy) * dims[2] + iz
        count = torch.bincount(key, minlength=int(dims.prod()))
        return cls(lo=lo, cell=cell, dims=dims, gaussians=live[owner[torch.argsort(key)]],
                   start=torch.cumsum(count, 0) - count, count=count)

    @torch.no_grad()
    def cells(self, points: Float[Tensor, "P 3"]) -> tuple[Tensor, Tensor]:
        """Each point's cell (0 outside the grid) and how many Gaussians that cell lists (0 outside)."""
        pc = ((points - self.lo) / self.cell).floor().long()
        inside = ((pc >= 0) & (pc < self.dims)).all(1)
        key = (pc[:, 0] * self.dims[1] + pc[:, 1]) * self.dims[2] + pc[:, 2]
        key = torch.where(inside, key, torch.zeros_like(key))
        return key, torch.where(inside, self.count[key], torch.zeros_like(key))


def mixture_sums(points: Float[Tensor, "P 3"], means: Float[Tensor, "N 3"], precisions: Float[Tensor, "N 3 3"],
                 weights: Float[Tensor, "N"], cutoff: Float[Tensor, "N"], index: CellIndex | None,
                 values: Float[Tensor, "N C"] | None = None, max_pairs: int = 2 ** 21
                 ) -> tuple[Float[Tensor, "P"], Float[Tensor, "P C"] | None]:
    """``sum_i w_i exp(-m_i^2 / 2)`` at each point (and the same sum of ``w_i exp(.) v_i``) over Gaussians with
    ``m_i^2 <= cutoff_i``, where ``m_i`` is the Mahalanobis distance under ``precisions[i]``.

    A point is tested only against the Gaussians its cell of ``index`` lists (None: no Gaussian reaches
    anywhere), ``max_pairs`` (point, Gaussian) pairs at a time. Differentiable in every Gaussian input.
    """
    dev = points.device
    total = points.new_zeros(points.shape[0])
    weighted = None if values is None else points.new_zeros(points.shape[0], values.shape[-1])
    if index is None or len(points) == 0:
        return total, weighted
    with torch.no_grad():
        pkey, per_point = index.cells(points)
        query = per_point.nonzero().squeeze(1)
        ends = torch.cumsum(per_point[query], 0)
    upper = precisions[:, [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]  # the 6 distinct entries
    # One table row per Gaussian, so each (point, Gaussian) pair costs one row gather.
    table = torch.cat([means, upper, weights[:, None], cutoff[:, None]] + ([] if values is None else [values]), 1)
    start, i = 0, 0
    while i < len(query):
        j = max(int(torch.searchsorted(ends, start + max_pairs, right=True)), i + 1)
        q, cnt = query[i:j], per_point[query[i:j]]
        with torch.no_grad():
            pt = torch.repeat_interleave(q, cnt)
            local = torch.arange(int(cnt.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            g = index.gaussians[index.start[pkey[pt]] + local]
        col = table.index_select(0, g).T.contiguous()  # column-major: contiguous element-wise ops below
        dx, dy, dz = points.index_select(0, pt).T.contiguous() - col[:3]
        m2 = (col[3] * dx * dx + col[4] * dy * dy + col[5] * dz * dz
              + 2.0 * (col[6] * dx * dy + col[7] * dx * dz + col[8] * dy * dz))
        kernel = torch.where(m2 <= col[10], col[9] * torch.exp(-0.5 * m2), torch.zeros_like(m2))
        total = total.index_add(0, pt, kernel)
        if values is not None:
            weighted = weighted.index_add(0, pt, (kernel * col[11:]).T)
        start, i = int(ends[j - 1]), j
    return total, weighted


class Gaussians(Geometry):
    """``N`` Gaussians: ``positions`` (N x 3), ``log_scales`` (N x 3), ``quaternions`` (N x 4, w x y z),
    ``opacity_logits`` (N), ``color_logits`` (N x 3). Densification (:mod:`threed.geometry.densify`) keeps
    its statistics apart and calls :meth:`replace_rows` and :meth:`clamp_opacity`.

    Queries for export and hand-offs: ``density(points)`` (N x 1) and ``albedo(points)`` (N x 3).
    Parameters are initialised from torch's global RNG, so ``torch.manual_seed`` fixes them.
    """

    ATTRIBUTES = ("positions", "log_scales", "quaternions", "opacity_logits", "color_logits")
    surface = "density"

    def __init__(self, cfg: GaussiansConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GaussiansConfig()
        n = cfg.count
        self.positions = nn.Parameter(torch.zeros(n, 3))
        self.log_scales = nn.Parameter(torch.zeros(n, 3))
        self.quaternions = nn.Parameter(torch.zeros(n, 4))
        self.opacity_logits = nn.Parameter(torch.zeros(n))
        self.color_logits = nn.Parameter(torch.zeros(n, 3))
        self.init_ball()

    @property
    def radius(self) -> float:
        return self.cfg.radius

    @property
    def count(self) -> int:
        return self.positions.shape[0]

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        return torch.exp(self.log_scales)

    @property
    def opacity(self) -> Float[Tensor, "N"]:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self.color_logits)

    def rotations(self) -> Float[Tensor, "N 3 3"]:
        return quaternion_to_matrix(self.quaternions)

    def covariances(self) -> Float[Tensor, "N 3 3"]:
        """``Sigma = R S S^T R^T``."""
        m = self.rotations() * self.scales[:, None, :]
        return m @ m.transpose(1, 2)

    def precisions(self) -> Float[Tensor, "N 3 3"]:
        """``Sigma^-1 = R S^-2 R^T``, exact (no matrix inverse)."""
        m = self.rotations() / self.scales[:, None, :]
        return m @ m.transpose(1, 2)

    def axis_normals(self) -> Float[Tensor, "N 3"]:
        """Each Gaussian's shortest axis (unit, unoriented): the normal of a flat Gaussian."""
        rot = self.rotations()
        index = self.log_scales.argmin(-1)
        return rot.gather(2, index[:, None, None].expand(-1, 3, 1)).squeeze(2)

    def _mixture(self, points: Tensor, weights: Tensor, values: Tensor | None = None):
        cutoff = kernel_cutoff(self.opacity)
        return mixture_sums(points, self.positions, self.precisions(), weights, cutoff, self._cell_index(cutoff),
                            values)

    def _cell_index(self, cutoff: Tensor) -> CellIndex | None:
        """The cell index of the current parameters, cached while they do not change (export queries it
        thousands of times); None when no Gaussian is opaque enough to count."""
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        cached = self.__dict__.get("_index_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        live = (cutoff > 0).nonzero().squeeze(1)
        index = None
        if len(live):
            extents = cutoff.sqrt()[:, None] * torch.diagonal(self.covariances(), dim1=1, dim2=2).sqrt()
            index = CellIndex.build(self.positions.detach(), extents.detach(), live)
        self.__dict__["_index_cache"] = (key, index)
        return index

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 1"]:
        """Opacity-weighted kernel sum, each kernel scaled by 1 / (sqrt(2 pi) smallest scale) (module docstring)."""
        scale = 1.0 / (math.sqrt(2.0 * math.pi) * self.scales.amin(-1))
        return self._mixture(points, self.opacity * scale)[0][:, None]

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Kernel-weighted mean colour at ``points`` (mid grey where no Gaussian reaches)."""
        opacity = self.opacity
        total, weighted = self._mixture(points, opacity, self.colors)
        return (weighted + 1e-6 * 0.5) / (total[:, None] + 1e-6)

    # --- initialisation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _set(self, positions: Tensor, scale: float | Tensor, colors: Tensor | None = None) -> None:
        n = positions.shape[0]
        self._resize(n)
        self.positions.copy_(positions)
        scale = torch.as_tensor(scale, dtype=positions.dtype, device=positions.device)
        self.log_scales.copy_(torch.log(scale).reshape(-1, 1).expand(n, 3))
        self.quaternions.zero_()
        self.quaternions[:, 0] = 1.0
        self.opacity_logits.fill_(math.log(self.cfg.init_opacity / (1.0 - self.cfg.init_opacity)))
        if colors is None:
            self.color_logits.zero_()
        else:
            self.color_logits.copy_(torch.logit(colors.clamp(1e-4, 1 - 1e-4)))

    @torch.no_grad()
    def init_ball(self) -> None:
        """``count`` centres uniform in the ball of ``init_radius``; isotropic, grey, ``init_opacity``."""
        cfg, dev = self.cfg, self.positions.device
        n = cfg.count
        direction = nn.functional.normalize(torch.randn(n, 3, device=dev), dim=-1)
        r = cfg.init_radius * torch.rand(n, 1, device=dev) ** (1.0 / 3.0)
        spacing = cfg.init_radius * (4.0 * math.pi / (3.0 * n)) ** (1.0 / 3.0)
        self._set(direction * r, cfg.init_scale or spacing)

    @torch.no_grad()
    def init_from_density(self, density_fn: PointFn, albedo_fn: PointFn, level: float, chunk: int = 2 ** 16) -> int:
        """Start from another geometry's region ``density > level`` (e.g. a NeRF's, at its mesh-export level).

        ``count`` centres are drawn uniformly from that region (rejection sampling in the box, up to 64 x
        ``count`` candidates), each with the spacing of the region ``(volume / count)^(1/3)`` as scale and
        ``albedo_fn`` there as colour. Returns the count. Raises ValueError when the region is empty.
        """
        cfg, dev = self.cfg, self.positions.device
        n, r = cfg.count, cfg.radius
        accepted, drawn = [], 0
        while drawn < 64 * n and sum(len(a) for a in accepted) < n:
            candidates = (torch.rand(8 * n, 3, device=dev) * 2.0 - 1.0) * r
            density = torch.cat([density_fn(p).reshape(-1).float() for p in candidates.split(chunk)])
            accepted.append(candidates[density > level])
            drawn += len(candidates)
        points = torch.cat(accepted)
        if len(points) == 0:
            raise ValueError(f"the density never exceeds level {level:.4g} in the box: nothing to start from")
        volume = len(points) / drawn * (2.0 * r) ** 3
        spacing = (volume / n) ** (1.0 / 3.0)
        pick = torch.randperm(len(points), device=dev)[:n] if len(points) >= n else \
            torch.randint(len(points), (n,), device=dev)
        positions = points[pick]
        if len(points) < n:  # repeated picks must not coincide, or they would stay identical forever
            positions = positions + 0.5 * spacing * torch.randn_like(positions)
        colors = torch.cat([albedo_fn(p).float() for p in positions.split(chunk)])
        self._set(positions, cfg.init_scale or spacing, colors)
        return n

    def start_from(self, previous: Geometry, level: float) -> dict:
        """:meth:`init_from_density` inside ``previous``'s isosurface at ``level``, coloured by its albedo."""
        if previous.surface != "density" or isinstance(previous, Gaussians):
            return super().start_from(previous, level)
        return {"count": self.init_from_density(previous.density, previous.albedo, level)}

    # --- optimisation -----------------------------------------------------------------------------------

    def parameter_groups(self, opt: OptimizerConfig) -> list[dict]:
        """One Adam group per attribute, named after it, at ``opt.gaussian``'s rates."""
        lr = opt.gaussian
        rates = {"positions": lr.position, "log_scales": lr.scale, "quaternions": lr.rotation,
                 "opacity_logits": lr.opacity, "color_logits": lr.color}
        return [{"params": [getattr(self, name)], "lr": rates[name], "name": name} for name in self.ATTRIBUTES]

    @torch.no_grad()
    def clamp_opacity(self, value: float, optimizer: torch.optim.Optimizer | None) -> None:
        """Clamp opacities to at most ``value`` and zero their Adam moments (3DGS's opacity reset)."""
        self.opacity_logits.copy_(torch.minimum(self.opacity_logits,
                                                torch.full_like(self.opacity_logits, math.log(value / (1 - value)))))
        state = optimizer.state.get(self.opacity_logits, {}) if optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].zero_()

    @torch.no_grad()
    def replace_rows(self, keep: Bool[Tensor, "N"], extra: dict[str, Tensor],
                      optimizer: torch.optim.Optimizer | None) -> None:
        """Every attribute becomes a new parameter ``cat(old[keep], extra[name])``, swapped into ``optimizer``'s
        groups; its Adam moments become ``cat(moment[keep], zeros)``.

        New tensors rather than resized ones: autograd remembers a leaf's shape once a gradient has flowed.
        """
        for name in self.ATTRIBUTES:
            old = getattr(self, name)
            new = nn.Parameter(torch.cat([old.detach()[keep], extra[name].to(old)]), requires_grad=old.requires_grad)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["params"] = [new if p is old else p for p in group["params"]]
                state = optimizer.state.pop(old, None)
                if state is not None:
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            moment = state[key]
                            state[key] = torch.cat([moment[keep], moment.new_zeros(len(extra[name]), *moment.shape[1:])])
                    optimizer.state[new] = state
            setattr(self, name, new)

    def _resize(self, n: int) -> None:
        """Give every attribute ``n`` rows (uninitialised when the count changes).

        The parameters keep their identity (an optimiser built on them stays valid), which is safe only
        before a gradient has flowed through them: at construction and when loading a checkpoint.
        """
        if n == self.count:
            return
        for name in self.ATTRIBUTES:
            param = getattr(self, name)
            param.data = param.data.new_empty(n, *param.shape[1:])
            param.grad = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Take the count of the checkpoint (it changes with densification), then load as usual."""
        key = prefix + "positions"
        if key in state_dict and state_dict[key].ndim == 2:
            self._resize(state_dict[key].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
