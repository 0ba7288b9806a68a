"""What a ray sees when it leaves the scene: a solid colour, a random one, or a learned environment.

DreamFusion (Poole et al., 2022, sec. 3.1 and appendix) renders over a background MLP on the view
direction so the prior can explain the surroundings without painting them onto the object; a random
solid colour per image (as in Magic3D / threestudio's ``random_aug``) keeps the object from
blending into a fixed backdrop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class BackgroundConfig:
    """The background behind the scene, as a function of the view direction."""

    kind: Literal["solid", "random", "mlp"] = "solid"
    """``solid``: ``color``; ``random``: a random colour per image in training, ``color`` at eval;
    ``mlp``: a small learned MLP on the view direction (DreamFusion)."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Solid colour (RGB in [0, 1]); also the evaluation colour of ``random``."""
    hidden_dim: int = 16
    """Width of the ``mlp`` background's hidden layers."""
    n_hidden_layers: int = 2
    """Hidden layers of the ``mlp`` background."""
    n_frequencies: int = 4
    """Frequency bands of the direction encoding: [d, sin(2^k pi d), cos(2^k pi d)] for k < n."""
    group: int = 1
    """``random``: consecutive images that share one colour (a multi-view recipe's views of one object, its
    ``cameras.views_per_object``, so the prior sees one object on one background)."""

    def __post_init__(self):
        if len(self.color) != 3 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"color must be 3 values in [0, 1], got {self.color}")
        if self.hidden_dim < 1 or self.n_hidden_layers < 0 or self.n_frequencies < 0 or self.group < 1:
            raise ValueError("need hidden_dim >= 1, n_hidden_layers >= 0, n_frequencies >= 0 and group >= 1")


def frequency_encoding(x: Float[Tensor, "*N D"], n_frequencies: int) -> Float[Tensor, "*N E"]:
    """NeRF's positional encoding (Mildenhall et al., 2020): x and sin/cos of 2^k pi x, k < n."""
    if n_frequencies == 0:
        return x
    freqs = (2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype)) * math.pi
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class Background(nn.Module):
    """``forward(dirs: B x H x W x 3 unit view directions, training) -> B x H x W x 3`` in [0, 1]."""

    color: Tensor
    """The solid colour (buffer)."""

    def __init__(self, cfg: BackgroundConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BackgroundConfig()
        self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32), persistent=False)
        self.mlp: nn.Sequential | None = None
        if cfg.kind == "mlp":
            layers: list[nn.Module] = []
            width = 3 + 6 * cfg.n_frequencies
            for _ in range(cfg.n_hidden_layers):
                layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU(inplace=True)]
                width = cfg.hidden_dim
            layers.append(nn.Linear(width, 3))
            self.mlp = nn.Sequential(*layers)

    def forward(self, dirs: Float[Tensor, "B H W 3"], training: bool | None = None) -> Float[Tensor, "B H W 3"]:
        """The background colour seen along ``dirs``; ``training`` defaults to ``self.training``."""
        training = self.training if training is None else training
        if self.mlp is not None:
            return torch.sigmoid(self.mlp(frequency_encoding(dirs, self.cfg.n_frequencies)))
        if self.cfg.kind == "random" and training:
            g = self.cfg.group if dirs.shape[0] % self.cfg.group == 0 else 1
            color = torch.rand(dirs.shape[0] // g, 1, 1, 3, device=dirs.device, dtype=dirs.dtype)
            color = color.repeat_interleave(g, 0)
        else:
            color = self.color.to(dirs)
        return color.expand(*dirs.shape[:-1], 3)
