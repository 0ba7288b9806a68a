"""Shading modes: DreamFusion's albedo, lambertian under a point light and textureless, and normal maps.

Poole et al., "DreamFusion: Text-to-3D using 2D Diffusion" (2022), sec. 3.1: random shading forces
geometry to explain the image, since a flat painted texture looks wrong once it is lit. Fantasia3D
(Chen et al., ICCV 2023, sec. 3.2) instead feeds the prior the surface normal map, ``(n + 1) / 2`` of the
world-space normal as RGB, to learn geometry with no appearance at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

Shading = Literal["albedo", "lambertian", "textureless", "normal"]
SHADINGS: tuple[Shading, ...] = ("albedo", "lambertian", "textureless", "normal")


@dataclass
class ShadingConfig:
    """How each training step shades its renders."""

    ambient: float = 0.3
    """Ambient light fraction; lambertian = albedo * (ambient + (1 - ambient) * max(0, n.l))."""
    albedo_only_steps: int = 0
    """Steps at the start that use plain albedo (geometry is still a blob)."""
    p_albedo: float = 0.5
    """Probability of albedo shading after the warm-up; the rest is split below."""
    p_textureless: float = 0.25
    """Probability of textureless (white, lit) shading; the remainder is lambertian."""
    p_normal: float = 0.0
    """Probability of a normal-map render (Fantasia3D's geometry stage uses 1 with p_albedo 0)."""

    def __post_init__(self):
        p = (self.p_albedo, self.p_textureless, self.p_normal)
        if min(p) < 0 or sum(p) > 1 + 1e-9:
            raise ValueError(f"need p_albedo, p_textureless, p_normal >= 0 summing to at most 1, got {p}")


def choose_shading(cfg: ShadingConfig, step: int, rng: random.Random) -> Shading:
    """The shading mode for one training step."""
    if step < cfg.albedo_only_steps:
        return "albedo"
    u = rng.random()
    if cfg.p_normal and u >= 1.0 - cfg.p_normal:
        return "normal"
    if u < cfg.p_albedo:
        return "albedo"
    if u < cfg.p_albedo + cfg.p_textureless:
        return "textureless"
    return "lambertian"


def shade(albedo: Float[Tensor, "*N 3"], normal: Float[Tensor, "*N 3"] | None, points: Float[Tensor, "*N 3"],
          light: Float[Tensor, "*N 3"], mode: Shading, ambient: float) -> Float[Tensor, "*N 3"]:
    """Shade surface samples. ``normal`` must be unit length (outward); ``light`` is the light position."""
    if mode == "albedo":
        return albedo
    if normal is None:
        raise ValueError(f"shading mode {mode!r} needs normals")
    if mode == "normal":
        return (normal + 1.0) * 0.5
    to_light = torch.nn.functional.normalize(light - points, dim=-1)
    diffuse = (normal * to_light).sum(-1, keepdim=True).clamp(min=0.0)
    lum = ambient + (1.0 - ambient) * diffuse
    if mode == "textureless":
        return lum.expand_as(albedo)
    if mode == "lambertian":
        return albedo * lum
    raise ValueError(f"unknown shading mode {mode!r}; choose one of {', '.join(SHADINGS)}")
