"""The dense splatting reference: every Gaussian against every pixel, the same math as threed.render.splat.

No tiles, no culling beyond the near plane and the 1/255 rule, transmittance by ``cumprod`` instead of the
tiled path's float64 log-sum: what the tiled renderer must reproduce. ``scripts/bench.py --splat`` times it.
Pixels are processed ``chunk`` at a time under activation checkpointing (recomputed in backward), so 10k
Gaussians at 128 px fit in memory; a single chunk is plain autograd.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from threed.cameras import Cameras
from threed.render.splat import SplatRendererConfig, gaussian_alpha, project_gaussians


def _composite(pixels, means2d, conics, opacity, values):
    alpha = gaussian_alpha(pixels[None], means2d[:, None], conics[:, None], opacity[:, None]).T  # P N
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
    weight = alpha * transmittance
    return torch.cat([weight @ values, weight.sum(1, keepdim=True)], dim=1)


def dense_splat(means, quats, scales, opacity, features, cameras: Cameras, cfg: SplatRendererConfig | None = None,
                chunk: int | None = None):
    """(features B x H x W x C, depth B x H x W x 1, alpha B x H x W x 1), composited densely."""
    cfg = cfg or SplatRendererConfig()
    H, W = cameras.height, cameras.width
    proj = project_gaussians(means, quats, scales, opacity, cameras, cfg.near, cfg.low_pass)
    rows, cols = torch.meshgrid(torch.arange(H, dtype=means.dtype), torch.arange(W, dtype=means.dtype), indexing="ij")
    pixels = torch.stack([cols, rows], dim=-1).reshape(-1, 2).to(means.device) + 0.5
    chunk = chunk or len(pixels)
    out = []
    for b in range(len(cameras)):
        front = proj.depths[b] > cfg.near
        order = proj.depths[b].detach().masked_fill(~front, float("inf")).argsort()[: int(front.sum())]
        values = torch.cat([features[b], proj.depths[b, :, None]], dim=-1)[order]
        args = (proj.means2d[b, order], proj.conics[b, order], opacity[order], values)
        if chunk >= len(pixels):
            image = _composite(pixels, *args)
        else:
            image = torch.cat([checkpoint(_composite, pixels[s:s + chunk], *args, use_reentrant=False)
                               for s in range(0, len(pixels), chunk)])
        out.append(image.view(H, W, -1))
    image = torch.stack(out)
    return image[..., :-2], image[..., -2:-1], image[..., -1:]
