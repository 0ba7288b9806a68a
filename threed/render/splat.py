"""Gaussian splatting: project 3D Gaussians, composite their 2D footprints front to back per pixel.

Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering" (SIGGRAPH 2023), after
Zwicker et al., "EWA Splatting" (2002). For each camera:

1. **Project.** A centre ``mu`` goes to the camera frame (OpenGL, looking down -Z, :mod:`threed.cameras`)
   and to pixel coordinates (column, row; row 0 at the top; pixel centres at +0.5). The covariance
   ``Sigma = R S S^T R^T`` becomes ``Sigma' = J W Sigma W^T J^T + 0.3 I``: ``W`` the world-to-camera
   rotation, ``J`` the Jacobian of the perspective projection at the centre (its x/z and y/z clamped to 1.3x
   the half field of view, as 3DGS and gsplat do), and ``0.3 I`` the low-pass filter that keeps every
   footprint at least about a pixel wide.
2. **Alpha.** At a pixel ``p``: ``alpha = min(0.99, opacity * exp(-1/2 d^T Sigma'^-1 d))`` with ``d = p - mu'``;
   contributions below 1/255 are dropped, as are Gaussians nearer than ``near`` to the camera plane.
3. **Composite**, sorted by view depth: ``T_i = prod_{j<i} (1 - alpha_j)``, ``C = sum_i T_i alpha_i c_i``.
   Colour, depth (view depth ``z_i``, turned into distance along the ray) and normals composite alike.

Two paths share :func:`splat` (``backend="auto"|"cuda"|"torch"``, :mod:`threed.backends`):

* **torch** (CPU and CUDA), differentiable in every Gaussian parameter through autograd. The image is cut
  into ``tile_size``-square tiles. A Gaussian is listed in the tiles that the box of its alpha >= 1/255
  ellipse touches (the box half-widths are ``sqrt(2 ln(255 opacity) Sigma'_kk)``, so no contribution the
  rule keeps is culled); the (tile, Gaussian) pairs are sorted by tile, then depth, and every pair is
  evaluated on its tile's pixels. Transmittance is an exclusive cumulative sum of ``log(1 - alpha)`` within
  each tile's run (in float64, so runs of thousands of Gaussians keep float32 accuracy). Tiles are processed
  in batches of at most ``max_evaluations`` (pixel, Gaussian) evaluations, which bounds memory without
  gradients. Unlike the CUDA kernels there is no early stop once transmittance falls below 1e-4.
* **cuda**: gsplat's ``rasterization`` (classic mode, the same 0.3 low-pass and 1/255 rule, tiles of 16),
  used when the tensors are on CUDA and ``gsplat`` imports. gsplat is imported only then, never on a CPU.

Shading (:class:`SplatRenderer`): DreamFusion's modes, per Gaussian. Gaussians carry no surface normal, so
each uses its shortest axis, turned toward the camera, as one (flat Gaussians are discs; as in
GaussianShader or 2D Gaussian splatting): ``lambertian`` and ``textureless`` light each Gaussian's colour
before compositing. The composited normal is returned too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from threed.backends import Backend, FastPath, use_fast_path
from threed.cameras import Cameras
from threed.geometry.densify import ViewGradients
from threed.geometry.gaussians import ALPHA_MIN, Gaussians, kernel_cutoff, quaternion_to_matrix
from threed.render.output import Renderer, RenderOut
from threed.render.shading import Shading, shade

ALPHA_MAX = 0.99
"""Largest alpha of one Gaussian at one pixel (3DGS): keeps ``log(1 - alpha)`` and its gradient finite."""
JACOBIAN_CLAMP = 1.3
"""x/z and y/z in the projection Jacobian are clamped to this times the half field of view (3DGS, gsplat)."""

_BLOCK = 16
"""Torch path: a tile's depth-sorted Gaussians are taken in blocks of this many; transmittance inside a block
is one small triangular matmul, across blocks a cumulative sum over far fewer rows (both fast on a CPU)."""

GSPLAT = FastPath("Gaussian splatting", "gsplat", "pip install gsplat; it compiles its CUDA kernels on first use",
                  "renderer.backend")


@dataclass
class SplatRendererConfig:
    """How Gaussians are splatted (projection filter, tiling, backend)."""

    low_pass: float = 0.3
    """Added to the diagonal of every 2D covariance (pixels^2), 3DGS's screen-space low-pass filter."""
    near: float = 0.01
    """Gaussians nearer than this to the camera plane are dropped (scene units)."""
    tile_size: int = 4
    """Torch path: tile side in pixels; 4 beat 8 and 16 at 64 and 128 px on a CPU (docs/gaussians.md)."""
    max_evaluations: int = 2 ** 23
    """Torch path: (pixel, Gaussian) pairs evaluated at once; bounds memory when gradients are off."""
    backend: Backend = "auto"
    """``auto``: gsplat when importable and on CUDA, else PyTorch; ``cuda`` insists on gsplat."""

    def __post_init__(self):
        if self.low_pass < 0 or self.near <= 0 or self.tile_size < 1 or self.max_evaluations < 1:
            raise ValueError("need low_pass >= 0, near > 0, tile_size >= 1 and max_evaluations >= 1")


@dataclass
class Projection:
    """Gaussians seen by ``B`` cameras."""

    means2d: Float[Tensor, "B N 2"]
    """Projected centres, (column, row) pixels; differentiable (its gradient drives densification)."""
    conics: Float[Tensor, "B N 3"]
    """Inverse 2D covariance ``[[a, b], [b, c]]`` as (a, b, c)."""
    depths: Float[Tensor, "B N"]
    """View depth (distance along the camera axis)."""
    opacity: Float[Tensor, "N"]
    extents: Float[Tensor, "B N 2"]
    """Half-sizes (pixels) of the box outside which alpha < 1/255; not differentiable."""
    visible: Bool[Tensor, "B N"]
    """In front of the near plane, opaque enough, and overlapping the image."""


@dataclass
class SplatOut:
    """What :func:`splat` composites, ``B x H x W x C``, plus the projected centres for densification."""

    features: Float[Tensor, "B H W C"]
    """``sum_i T_i alpha_i f_i`` of the per-Gaussian features."""
    depth: Float[Tensor, "B H W 1"]
    """``sum_i T_i alpha_i z_i`` (view depth, not normalised by opacity)."""
    alpha: Float[Tensor, "B H W 1"]
    """Accumulated opacity ``sum_i T_i alpha_i``."""
    means2d: Float[Tensor, "B N 2"]
    visible: Bool[Tensor, "B N"]


def project_gaussians(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                      opacity: Float[Tensor, "N"], cameras: Cameras, near: float = 0.01, low_pass: float = 0.3
                      ) -> Projection:
    """Step 1 of the module docstring: centres, inverse 2D covariances, depths and culling for every camera."""
    H, W = cameras.height, cameras.width
    c2w = cameras.c2w.to(means)
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    cam = torch.einsum("bni,bij->bnj", means[None] - pos[:, None], rot)  # R^T (x - t)
    depth = -cam[..., 2]
    safe = torch.where(depth > near, depth, torch.full_like(depth, near))
    f = cameras.focal.to(means)[:, None]
    x, y = cam[..., 0] / safe, cam[..., 1] / safe
    means2d = torch.stack([f * x + 0.5 * W, -f * y + 0.5 * H], dim=-1)
    lim_x, lim_y = JACOBIAN_CLAMP * 0.5 * W / f, JACOBIAN_CLAMP * 0.5 * H / f
    u, v = torch.maximum(torch.minimum(x, lim_x), -lim_x), torch.maximum(torch.minimum(y, lim_y), -lim_y)
    zero = torch.zeros_like(safe)
    jac = torch.stack([f / safe, zero, f * u / safe, zero, -f / safe, -f * v / safe], dim=-1).view(*safe.shape, 2, 3)
    m = quaternion_to_matrix(quats) * scales[:, None, :]
    cov3 = m @ m.transpose(1, 2)
    jw = torch.einsum("bnij,bkj->bnik", jac, rot)  # J W with W = R^T
    cov2 = torch.einsum("bnij,njk,bnlk->bnil", jw, cov3, jw)
    a, b, c = cov2[..., 0, 0] + low_pass, cov2[..., 0, 1], cov2[..., 1, 1] + low_pass
    det = (a * c - b * b).clamp(min=1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        k = kernel_cutoff(opacity.detach()).sqrt()[None, :, None]
        extents = k * torch.stack([a, c], dim=-1).detach().sqrt()
        centre = means2d.detach()
        visible = ((depth > near) & (k[..., 0] > 0)
                   & (centre[..., 0] + extents[..., 0] > 0) & (centre[..., 0] - extents[..., 0] < W)
                   & (centre[..., 1] + extents[..., 1] > 0) & (centre[..., 1] - extents[..., 1] < H))
    return Projection(means2d=means2d, conics=conics, depths=depth, opacity=opacity, extents=extents,
                      visible=visible)


def gaussian_alpha(pixels: Float[Tensor, "*#M 2"], means2d: Float[Tensor, "*#M 2"], conics: Float[Tensor, "*#M 3"],
                   opacity: Float[Tensor, "*#M"]) -> Float[Tensor, "*#M"]:
    """Step 2: ``min(0.99, opacity * exp(-1/2 d^T Sigma'^-1 d))``, 0 below 1/255; the leading dimensions broadcast
    (e.g. pixels ``... 1 P``, Gaussians ``... K 1``, alpha ``... K P``)."""
    d = pixels - means2d
    dx, dy = d[..., 0], d[..., 1]
    power = -0.5 * (conics[..., 0] * dx * dx + conics[..., 2] * dy * dy) - conics[..., 1] * dx * dy
    alpha = (opacity * torch.exp(power)).clamp(max=ALPHA_MAX)
    return torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))


def rasterize_tiles(proj: Projection, features: Float[Tensor, "B N C"], height: int, width: int,
                    tile_size: int = 8, max_evaluations: int = 2 ** 23
                    ) -> tuple[Float[Tensor, "B H W C"], Float[Tensor, "B H W 1"]]:
    """Steps 2-3 on tiles (the torch path of the module docstring): composited features and opacity."""
    B, N = proj.depths.shape
    C, T, dev = features.shape[-1], tile_size, features.device
    ntx, nty = math.ceil(width / T), math.ceil(height / T)
    n_tiles = B * nty * ntx
    with torch.no_grad():
        vis = proj.visible.reshape(-1).nonzero().squeeze(1)
        centre = proj.means2d.detach().reshape(-1, 2)[vis]
        ext = proj.extents.reshape(-1, 2)[vis]
        x0 = torch.ceil(centre[:, 0] - ext[:, 0] - 0.5).clamp(min=0).long()
        x1 = torch.floor(centre[:, 0] + ext[:, 0] - 0.5).clamp(max=width - 1).long()
        y0 = torch.ceil(centre[:, 1] - ext[:, 1] - 0.5).clamp(min=0).long()
        y1 = torch.floor(centre[:, 1] + ext[:, 1] - 0.5).clamp(max=height - 1).long()
        ok = (x1 >= x0) & (y1 >= y0)
        vis, x0, x1, y0, y1 = vis[ok], x0[ok], x1[ok], y0[ok], y1[ok]
        tx0, ty0 = x0 // T, y0 // T
        nx = x1 // T - tx0 + 1
        counts = nx * (y1 // T - ty0 + 1)
        owner = torch.repeat_interleave(torch.arange(len(vis), device=dev), counts)
        offset = torch.arange(int(counts.sum()), device=dev) - (torch.cumsum(counts, 0) - counts)[owner]
        tile = ((vis[owner] // N) * nty + ty0[owner] + offset // nx[owner]) * ntx + tx0[owner] + offset % nx[owner]
        rank = torch.empty_like(vis)
        rank[proj.depths.detach().reshape(-1)[vis].argsort()] = torch.arange(len(vis), device=dev)
        order = torch.argsort(tile * max(len(vis), 1) + rank[owner])
        pair_gaussian, pair_tile = vis[owner[order]], tile[order]
        tiles, per_tile = torch.unique_consecutive(pair_tile, return_counts=True)
        tile_end = torch.cumsum(per_tile, 0)
        local = torch.arange(T * T, device=dev)
        pixel_offset = torch.stack([local % T, local // T], dim=-1).to(features) + 0.5  # P 2
    means2d, conics = proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3)
    opacity = proj.opacity.repeat(B)
    flat_features = features.reshape(-1, C)
    image = features.new_zeros(n_tiles, T * T, C)
    alpha_sum = features.new_zeros(n_tiles, T * T)
    K = _BLOCK
    strictly_lower = torch.ones(K, K, device=dev, dtype=features.dtype).tril(-1)
    first_tile = 0
    while first_tile < len(tiles):
        # Whole tiles, at most about max_evaluations (pixel, Gaussian) pairs (at least one tile).
        start = int(tile_end[first_tile - 1]) if first_tile else 0
        last = int(torch.searchsorted(tile_end, start + max(1, max_evaluations // (T * T)), right=True))
        last = max(last, first_tile + 1)
        with torch.no_grad():
            # Each tile's run of pairs, padded to whole blocks of K (padding: Gaussian -1).
            run = per_tile[first_tile:last]
            blocks = (run + K - 1) // K
            slot = torch.arange(int(run.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(run, 0) - run, run)
            dest = torch.repeat_interleave((torch.cumsum(blocks, 0) - blocks) * K, run) + slot
            g = torch.full((int(blocks.sum()) * K,), -1, dtype=torch.long, device=dev)
            g[dest] = pair_gaussian[start:start + len(slot)]
            block_tile = torch.repeat_interleave(tiles[first_tile:last], blocks)
            first_block = torch.repeat_interleave(torch.cumsum(blocks, 0) - blocks, blocks)
            origin = torch.stack([(block_tile % ntx) * T, ((block_tile // ntx) % nty) * T], dim=-1).to(features)
            pixels = origin[:, None, None, :] + pixel_offset  # nb 1 P 2
            keep = (g >= 0).view(-1, K, 1) & ((pixels[..., 0] < width) & (pixels[..., 1] < height))
            g = g.clamp(min=0)
        nb = len(block_tile)
        alpha = gaussian_alpha(pixels, means2d[g].view(nb, K, 1, 2), conics[g].view(nb, K, 1, 3),
                               opacity[g].view(nb, K, 1)) * keep  # nb K P
        log_t = torch.log1p(-alpha)
        within = strictly_lower @ log_t  # exclusive prefix inside each block, by a small matmul
        block_sum = log_t.sum(1).double()  # nb P
        block_prefix = torch.cumsum(block_sum, 0) - block_sum  # float64: long runs keep their precision
        block_prefix = (block_prefix - block_prefix[first_block]).to(alpha)
        weight = alpha * torch.exp(within + block_prefix[:, None, :])
        image = image.index_add(0, block_tile, weight.transpose(1, 2) @ flat_features[g].view(nb, K, C))
        alpha_sum = alpha_sum.index_add(0, block_tile, weight.sum(1))
        first_tile = last

    def untile(x: Tensor) -> Tensor:
        x = x.view(B, nty, ntx, T, T, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, nty * T, ntx * T, -1)
        return x[:, :height, :width]

    return untile(image), untile(alpha_sum[..., None])


def splat(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
          opacity: Float[Tensor, "N"], features: Float[Tensor, "B N C"], cameras: Cameras,
          cfg: SplatRendererConfig | None = None) -> SplatOut:
    """Composite per-camera Gaussian ``features`` (e.g. colour) into ``B`` images; gsplat or the torch tiles."""
    cfg = cfg or SplatRendererConfig()
    if features.ndim != 3 or features.shape[:2] != (len(cameras), means.shape[0]):
        raise ValueError(f"features must be B x N x C with B = {len(cameras)} cameras and N = {means.shape[0]} "
                         f"Gaussians, got {tuple(features.shape)}")
    if use_fast_path(cfg.backend, means, GSPLAT):
        return _splat_gsplat(means, quats, scales, opacity, features, cameras, cfg)
    proj = project_gaussians(means, quats, scales, opacity, cameras, cfg.near, cfg.low_pass)
    values = torch.cat([features, proj.depths[..., None]], dim=-1)
    image, alpha = rasterize_tiles(proj, values, cameras.height, cameras.width, cfg.tile_size, cfg.max_evaluations)
    return SplatOut(features=image[..., :-1], depth=image[..., -1:], alpha=alpha, means2d=proj.means2d,
                    visible=proj.visible)


def _splat_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacity: Tensor, features: Tensor,
                  cameras: Cameras, cfg: SplatRendererConfig) -> SplatOut:
    """gsplat's CUDA rasterizer on the same cameras (OpenCV view matrices, pixel-centre intrinsics)."""
    from gsplat import rasterization

    B, H, W = len(cameras), cameras.height, cameras.width
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=means.device, dtype=means.dtype))
    viewmats = flip @ torch.linalg.inv(cameras.c2w.to(means))  # OpenGL -> OpenCV camera frame
    f = cameras.focal.to(means)
    Ks = torch.zeros(B, 3, 3, device=means.device, dtype=means.dtype)
    Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = f, f, 0.5 * W, 0.5 * H, 1.0
    render, alpha, meta = rasterization(means, quats, scales, opacity, features.contiguous(), viewmats, Ks, W, H,
                                        near_plane=cfg.near, eps2d=cfg.low_pass, render_mode="RGB+D",
                                        packed=False, rasterize_mode="classic")
    radii = meta["radii"]
    visible = (radii > 0).all(-1) if radii.ndim == 3 else radii > 0
    return SplatOut(features=render[..., :-1], depth=render[..., -1:], alpha=alpha, means2d=meta["means2d"],
                    visible=visible)


class SplatRenderer(Renderer):
    """Renders :class:`threed.geometry.gaussians.Gaussians` over a background into a :class:`RenderOut`.

    Outputs follow the other renderers: rgb composited over the background, opacity, depth (distance along
    the ray times opacity, 0 where empty) and the composited normal. A training render also returns its
    projected centres, which keep their gradient (``view_gradients``: 3DGS's densification statistic,
    read after backward by :class:`threed.geometry.densify.DensifyStrategy`).
    """

    geometry: Gaussians

    def forward(self, cameras: Cameras, shading: Shading = "albedo") -> RenderOut:
        """Render ``cameras`` (B cameras, H x W) with DreamFusion ``shading``; outputs are B x H x W x C."""
        if shading not in ("albedo", "lambertian", "textureless"):
            raise ValueError(f"unknown shading mode {shading!r}; choose albedo, lambertian or textureless")
        g = self.geometry
        B, N = len(cameras), g.count
        means = g.positions
        eye = cameras.position.to(means)[:, None]
        normals = g.axis_normals()[None].expand(B, N, 3)
        normals = torch.where(((eye - means) * normals).sum(-1, keepdim=True) < 0, -normals, normals)
        light = cameras.light.to(means)[:, None].expand(B, N, 3)
        colour = shade(g.colors[None].expand(B, N, 3), normals, means[None].expand(B, N, 3), light, shading,
                       self.shading.ambient)
        out = splat(means, g.quaternions, g.scales, g.opacity, torch.cat([colour, normals], dim=-1), cameras,
                    self.cfg)
        views = None
        if self.training and torch.is_grad_enabled() and out.means2d.requires_grad:
            out.means2d.retain_grad()
            views = ViewGradients(out.means2d, out.visible, cameras.width, cameras.height)
        _, dirs = cameras.rays()
        dirs = dirs.to(means)
        forward_axis = -cameras.c2w.to(means)[:, None, None, :3, 2]
        ray_per_depth = 1.0 / (dirs * forward_axis).sum(-1, keepdim=True).clamp(min=1e-6)
        fg, normal = out.features.split([3, 3], dim=-1)
        rgb = fg + (1.0 - out.alpha) * self.background(dirs, training=self.training)
        return RenderOut(rgb=rgb, opacity=out.alpha, depth=out.depth * ray_per_depth, normal=normal,
                         view_gradients=views)

    def update(self, step: int) -> None:
        """Nothing to refresh before a step (densification runs after it: :meth:`threed.scene.Scene.post_step`)."""
