"""Volume rendering of a density + albedo field (Mildenhall et al., "NeRF", ECCV 2020; Max, 1995).

Each pixel's ray is clipped to the scene box and sampled; the field's density sigma_i and colour c_i
at the samples are composited front to back::

    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = prod_{j<i} (1 - alpha_j),   w_i = T_i alpha_i
    rgb = sum_i w_i c_i + (1 - sum_i w_i) * background

Two samplers share one signature. The PyTorch path (CPU and CUDA) draws ``num_samples`` stratified
samples per ray inside the ray-box segment, drops those in empty cells of an occupancy grid
(Instant-NGP, Müller et al. 2022; nerfacc, Li et al. 2023) and those behind an opaque surface, and
evaluates the field only on the rest, so every gradient is exact for the samples it keeps. The CUDA
path uses nerfacc's ``OccGridEstimator`` (grid traversal with packed samples) on the same grid.
DreamFusion's shading (albedo / lambertian / textureless) and orientation loss (Poole et al. 2022,
eq. 6 of the appendix) are applied on top of either.

A geometry is anything with ``radius``, ``density(x)``, ``forward(x) -> (density, albedo)`` and
``normal(x) -> unit outward normal`` on ``N x 3`` world points, like
:class:`threed.geometry.nerf.NeRFField`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from threed.backends import Backend, FastPath, use_fast_path
from threed.cameras import Cameras
from threed.render.background import Background
from threed.render.output import Renderer, RenderOut
from threed.render.shading import SHADINGS, Shading, ShadingConfig, shade


@dataclass
class VolumeRendererConfig:
    """Ray sampling, empty-space skipping and evaluation chunking of the volume renderer."""

    num_samples: int = 64
    """Samples per ray, stratified over the ray's segment inside the scene box."""
    occupancy_resolution: int = 32
    """Cells per axis of the occupancy grid over the scene box."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when its opacity 1 - exp(-sigma * step) exceeds this (or the mean, if lower)."""
    occupancy_update_every: int = 16
    """Refresh the occupancy grid every this many steps."""
    occupancy_warmup_steps: int = 64
    """No empty-space skipping before this step (the field is still moving fast)."""
    occupancy_decay: float = 0.95
    """EMA decay of each cell's density between refreshes."""
    early_stop_eps: float = 0.0
    """Skip samples whose transmittance falls below this, found by an extra gradient-free density pass;
    0 = off. Pays once the object is opaque and lit shading makes each kept sample costly."""
    orientation_loss: bool = True
    """Compute DreamFusion's orientation loss in training (needs normals for every shading mode)."""
    normal_weight_threshold: float = 1e-4
    """Normals are computed only where a sample's compositing weight exceeds this: with albedo shading
    (the orientation loss, which weighs each sample by that weight, is all that wants them) and in every
    rendering outside training (a lit pixel then differs by at most this weight's share; the gradient pass
    behind each normal is most of an evaluation render's time). Lit training renders need them at every
    sample, for the gradient."""
    eikonal_samples: int = 2048
    """Training renders of an SDF field: points drawn uniformly in the box for its eikonal term."""
    eval_chunk: int = 4096
    """Rays rendered at once when gradients are off (bounded memory for large turntable frames)."""
    backend: Backend = "auto"
    """``auto``: nerfacc when importable and on CUDA, else PyTorch; ``cuda`` insists on nerfacc."""

    def __post_init__(self):
        if self.num_samples < 1 or self.occupancy_resolution < 1 or self.occupancy_update_every < 1:
            raise ValueError("num_samples, occupancy_resolution and occupancy_update_every must be >= 1")
        if not 0.0 <= self.occupancy_decay <= 1.0:
            raise ValueError(f"occupancy_decay must lie in [0, 1], got {self.occupancy_decay}")
        if self.eval_chunk < 1:
            raise ValueError(f"eval_chunk must be >= 1, got {self.eval_chunk}")


def ray_box(origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], radius: float
            ) -> tuple[Float[Tensor, "R"], Float[Tensor, "R"], Tensor]:
    """Entry and exit distances of rays through the box [-radius, radius]^3 (slab method), and a hit mask.

    Rays starting inside the box enter at 0.
    """
    tiny = torch.full_like(dirs, 1e-12)
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.where(dirs < 0, -tiny, tiny), dirs)
    t0, t1 = (-radius - origins) * inv, (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


NERFACC = FastPath("volume renderer", "nerfacc", "pip install nerfacc", "renderer.backend")


@dataclass
class _Samples:
    """Packed samples, sorted by ray then distance."""

    ray: Tensor
    """Ray index of each sample (P,)."""
    t: Tensor
    """Distance of the sample point along its ray (P,)."""
    delta: Tensor
    """Length of the interval the sample stands for (P,)."""
    flat: Tensor | None = None
    """Torch path: position of each sample in the (rays x num_samples) table, for the per-ray scan."""


class VolumeRenderer(Renderer):
    """Renders a density + albedo field over a background into a :class:`RenderOut`.

    ``forward(cameras, shading)`` returns rgb (composited over the background), opacity, depth
    (expected distance along the ray, 0 where empty), normal (composited world normals, when
    computed) and ``orient`` in training. ``update(step)`` keeps the occupancy grid in sync
    with the field.
    """

    occupancy: Tensor
    """EMA of the maximum density seen in each cell (buffer)."""
    occupancy_active: Tensor
    """Whether empty-space skipping is on yet (buffer)."""

    def __init__(self, cfg: VolumeRendererConfig, geometry: nn.Module, background: Background,
                 shading: ShadingConfig | None = None):
        super().__init__(cfg, geometry, background, shading)
        res = cfg.occupancy_resolution
        # EMA of the maximum density seen in each cell (x, y, z order), and whether skipping is on yet;
        # both are saved with the model so a loaded field renders as it trained.
        self.register_buffer("occupancy", torch.zeros(res, res, res))
        self.register_buffer("occupancy_active", torch.tensor(False))
        self.__dict__["_estimator"] = None  # nerfacc's grid, built lazily on CUDA

    @property
    def radius(self) -> float:
        return float(self.geometry.radius)

    @property
    def step_size(self) -> float:
        """Longest sample interval: the box diagonal over ``num_samples``."""
        return 2.0 * math.sqrt(3.0) * self.radius / self.cfg.num_samples

    def occupied(self) -> Tensor:
        """Boolean occupancy grid (x, y, z), all True until skipping is active."""
        if not bool(self.occupancy_active):
            return torch.ones_like(self.occupancy, dtype=torch.bool)
        opacity = 1.0 - torch.exp(-self.occupancy * self.step_size)
        threshold = min(self.cfg.occupancy_threshold, float(opacity.mean()))
        return opacity > threshold

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Refresh the occupancy grid every ``occupancy_update_every`` steps; start skipping after warm-up.

        Each refresh evaluates the density at one jittered point per cell and keeps
        ``max(decay * old, new)`` (nerfacc's ``OccGridEstimator._update``).
        """
        active = step >= self.cfg.occupancy_warmup_steps
        if step % self.cfg.occupancy_update_every == 0 or (active and not bool(self.occupancy_active)):
            res = self.cfg.occupancy_resolution
            cells = torch.stack(torch.meshgrid(*[torch.arange(res, device=self.occupancy.device)] * 3,
                                               indexing="ij"), dim=-1).reshape(-1, 3)
            points = ((cells + torch.rand(cells.shape, device=cells.device)) / res * 2.0 - 1.0) * self.radius
            density = self._density_chunked(points).view(res, res, res)
            self.occupancy.copy_(torch.maximum(self.occupancy * self.cfg.occupancy_decay, density))
        if active:
            self.occupancy_active.fill_(True)

    def forward(self, cameras: Cameras, shading: Shading = "albedo") -> RenderOut:
        """Render ``cameras`` (B cameras, H x W) with DreamFusion ``shading``; outputs are B x H x W x C.

        With gradients off the rays are rendered ``eval_chunk`` at a time, so memory stays bounded.
        """
        return self._render(cameras, shading, None if torch.is_grad_enabled() else self.cfg.eval_chunk)

    def _render(self, cameras: Cameras, shading: Shading, chunk: int | None) -> RenderOut:
        if shading not in SHADINGS:
            raise ValueError(f"unknown shading mode {shading!r}; choose one of {', '.join(SHADINGS)}")
        B, H, W = len(cameras), cameras.height, cameras.width
        origins, dirs = cameras.rays()
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        light = cameras.light.to(o).repeat_interleave(H * W, dim=0)
        need_normals = shading != "albedo" or (self.training and self.cfg.orientation_loss)
        chunk = chunk or o.shape[0]
        parts = [self._render_rays(o[i:i + chunk], d[i:i + chunk], light[i:i + chunk], shading, need_normals)
                 for i in range(0, o.shape[0], chunk)]
        fg, opacity, depth, normal, orient = (
            torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in range(5))
        bg = self.background(dirs, training=self.training)
        opacity, depth = opacity.view(B, H, W, 1), depth.view(B, H, W, 1)
        rgb = fg.view(B, H, W, 3) + (1.0 - opacity) * bg
        eikonal = None
        if self.training and getattr(self.geometry, "signed_distance", False):
            points = (torch.rand(self.cfg.eikonal_samples, 3, device=o.device) * 2.0 - 1.0) * self.radius
            eikonal = self.geometry.eikonal(points)
        return RenderOut(rgb=rgb, opacity=opacity, depth=depth,
                         normal=normal.view(B, H, W, 3) if normal is not None else None,
                         orient=orient.sum() / o.shape[0] if orient is not None and self.training else None,
                         eikonal=eikonal)

    def _render_rays(self, o: Tensor, d: Tensor, light: Tensor, shading: Shading, need_normals: bool):
        """Foreground rgb (premultiplied), opacity, depth, normal (R x C) and per-sample orientation terms."""
        n_rays = o.shape[0]
        near, far, hit = ray_box(o, d, self.radius)
        if use_fast_path(self.cfg.backend, o, NERFACC):
            samples = self._march_nerfacc(o, d, near, far, hit)
        else:
            samples = self._march_torch(o, d, near, far, hit)
        ray = samples.ray
        points = o[ray] + samples.t[:, None] * d[ray]
        density, albedo = self.geometry(points)
        weights = self._weights(density.reshape(-1), samples, n_rays)
        normal = None
        if need_normals and (shading == "albedo" or not self.training):
            normal = torch.zeros_like(points)
            chosen = (weights.detach() > self.cfg.normal_weight_threshold).nonzero().squeeze(1)
            if chosen.numel() > 0:
                normal = normal.index_put((chosen,), self.geometry.normal(points[chosen]).to(points))
        elif need_normals:
            normal = self.geometry.normal(points).to(points)
        colour = shade(albedo, normal, points, light[ray], shading, self.shading.ambient)

        def accumulate(values: Tensor) -> Tensor:
            return torch.zeros(n_rays, values.shape[1], device=o.device, dtype=values.dtype).index_add(
                0, ray, weights[:, None] * values)

        fg = accumulate(colour)
        opacity = accumulate(torch.ones_like(samples.t)[:, None])
        depth = accumulate(samples.t[:, None])
        normal_map = orient = None
        if normal is not None:
            normal_map = accumulate(normal)
            facing = (normal * d[ray]).sum(-1).clamp(min=0.0)
            orient = weights.detach() * facing.square()
        return fg, opacity, depth, normal_map, orient

    def _weights(self, density: Tensor, samples: _Samples, n_rays: int) -> Tensor:
        """Compositing weights w_i = T_i alpha_i of packed samples."""
        if samples.flat is None:  # nerfacc's packed scan
            import nerfacc

            weights, _, _ = nerfacc.render_weight_from_density(
                samples.t - 0.5 * samples.delta, samples.t + 0.5 * samples.delta, density,
                ray_indices=samples.ray, n_rays=n_rays)
            return weights
        return _weights_dense(density, samples, n_rays, self.cfg.num_samples)

    def _march_torch(self, o: Tensor, d: Tensor, near: Tensor, far: Tensor, hit: Tensor) -> _Samples:
        """Stratified samples in each ray's box segment, minus empty cells and occluded samples."""
        n_rays, S = o.shape[0], self.cfg.num_samples
        delta = torch.where(hit, far - near, torch.zeros_like(near)) / S
        if self.training:
            jitter = torch.rand(n_rays, S, device=o.device)
        else:
            jitter = torch.full((n_rays, S), 0.5, device=o.device)
        t = near[:, None] + (torch.arange(S, device=o.device) + jitter) * delta[:, None]  # R S
        keep = hit[:, None].expand(n_rays, S)
        if bool(self.occupancy_active):
            keep = keep & self._in_occupied(o[:, None] + t[..., None] * d[:, None])
        flat = keep.reshape(-1).nonzero().squeeze(1)
        ray = torch.div(flat, S, rounding_mode="floor")
        samples = _Samples(ray=ray, t=t.reshape(-1)[flat], delta=delta[ray], flat=flat)
        if self.cfg.early_stop_eps > 0 and flat.numel() > 0:
            samples = self._drop_occluded(o, d, samples, n_rays)
        return samples

    @torch.no_grad()
    def _drop_occluded(self, o: Tensor, d: Tensor, samples: _Samples, n_rays: int) -> _Samples:
        """Keep samples whose transmittance, from a gradient-free density pass, is >= ``early_stop_eps``."""
        density = self._density_chunked(o[samples.ray] + samples.t[:, None] * d[samples.ray])
        trans = _transmittance(density * samples.delta, samples.flat, n_rays, self.cfg.num_samples)
        visible = trans >= self.cfg.early_stop_eps
        return _Samples(ray=samples.ray[visible], t=samples.t[visible], delta=samples.delta[visible],
                        flat=samples.flat[visible])

    @torch.no_grad()
    def _density_chunked(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        return torch.cat([self.geometry.density(p).reshape(-1).float() for p in points.split(self.cfg.eval_chunk * 16)])

    def _in_occupied(self, points: Float[Tensor, "... 3"]) -> Tensor:
        res = self.cfg.occupancy_resolution
        cell = ((points + self.radius) / (2.0 * self.radius) * res).long().clamp(0, res - 1)
        index = (cell[..., 0] * res + cell[..., 1]) * res + cell[..., 2]
        return self.occupied().reshape(-1)[index]

    def _march_nerfacc(self, o: Tensor, d: Tensor, near: Tensor, far: Tensor, hit: Tensor) -> _Samples:
        """nerfacc grid traversal with step ``step_size``, skipping empty and (optionally) occluded space."""
        import nerfacc

        est = self.__dict__["_estimator"]
        if est is None or est.aabbs.device != o.device:
            r, res = self.radius, self.cfg.occupancy_resolution
            est = nerfacc.OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=res, levels=1).to(o.device)
            self.__dict__["_estimator"] = est
        est.binaries = self.occupied()[None].contiguous()

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            mid = (t_starts + t_ends)[:, None] / 2.0
            return self.geometry.density(o[ray_indices] + mid * d[ray_indices]).reshape(-1)

        far = torch.where(hit, far, near)
        ray, t_starts, t_ends = est.sampling(
            o.contiguous(), d.contiguous(), sigma_fn=sigma_fn if self.cfg.early_stop_eps > 0 else None,
            t_min=near.contiguous(), t_max=far.contiguous(), render_step_size=self.step_size,
            stratified=self.training, early_stop_eps=self.cfg.early_stop_eps, alpha_thre=0.0)
        return _Samples(ray=ray.long(), t=(t_starts + t_ends) / 2.0, delta=t_ends - t_starts)


def _transmittance(optical_depth: Tensor, flat: Tensor, n_rays: int, num_samples: int) -> Tensor:
    """T_i = prod_{j<i}(1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j) of packed samples, scanned per ray.

    The packed sigma * delta are scattered into a (rays x samples) table at ``flat`` (skipped samples
    stay 0) so the exclusive sum runs along each row; the exp-of-sum form of the product has a stable
    gradient even where 1 - alpha underflows.
    """
    table = optical_depth.new_zeros(n_rays * num_samples).index_put((flat,), optical_depth).view(n_rays, num_samples)
    before = torch.cat([table.new_zeros(n_rays, 1), torch.cumsum(table[:, :-1], dim=1)], dim=1)  # no inf - inf
    return torch.exp(-before).reshape(-1)[flat]


def _weights_dense(density: Tensor, samples: _Samples, n_rays: int, num_samples: int) -> Tensor:
    """Compositing weights w_i = T_i (1 - exp(-sigma_i delta_i)) of the torch path's packed samples."""
    optical_depth = density.float() * samples.delta
    return _transmittance(optical_depth, samples.flat, n_rays, num_samples) * (1.0 - torch.exp(-optical_depth))
