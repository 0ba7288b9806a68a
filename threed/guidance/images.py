"""Image maps: renders in [0, 1] <-> the diffusion variable ``x0`` of a latent or a pixel-space prior.

* :class:`LatentImages` (a ``vae`` is present): ``x0`` is the VAE posterior mean of the image in
  [-1, 1], shifted and scaled by the VAE's ``shift_factor`` and ``scaling_factor`` (Rombach et al.
  2022; SD3's VAE also shifts). Stable Diffusion, Zero-1-to-3, Stable Diffusion 3.
* :class:`PixelImages` (no ``vae``): ``x0`` is the image itself in [-1, 1] at the network's
  ``sample_size``. DeepFloyd IF stage I and the embedded toy-world priors.

Renders are resized to :attr:`resolution` bilinearly without antialiasing, so the map stays local and
its gradient reaches the pixels that made each value. Both are mixins of a
:class:`threed.guidance.core.Denoiser` (they read its ``device``, ``dtype`` and ``sample_size``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from threed.guidance.loading import freeze

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


def square(rgb: Float[Tensor, "B H W 3"], size: int) -> Float[Tensor, "B 3 S S"]:
    """Channels-first at ``size`` x ``size``, bilinear (antialias off: gradients stay local)."""
    x = rgb.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x


class LatentImages:
    """Images <-> x0 of a latent diffusion model: ``x0`` is the VAE latent, shifted and scaled (Rombach et al. 2022)."""

    latent = True

    def _set_vae(self, vae: AutoencoderKL) -> None:
        self.vae = freeze(vae, self.device, self.dtype)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def resolution(self) -> int:
        return self.sample_size * self.vae_scale_factor

    def vae_mean(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Posterior mean of the VAE encoder (deterministic, unscaled) of renders in [0, 1]."""
        x = square(rgb, self.resolution) * 2 - 1
        return self.vae.encode(x.to(self.dtype)).latent_dist.mean.float()

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Posterior mean of the VAE encoder, shifted and scaled: (z - shift) * scaling_factor."""
        return (self.vae_mean(rgb) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B H W 3"]:
        z = x0 / self.scaling_factor + self.shift_factor
        img = self.vae.decode(z.to(self.dtype)).sample.float()
        return ((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


class PixelImages:
    """Images <-> x0 of a pixel-space diffusion model: ``x0`` = the image in [-1, 1] at ``sample_size``."""

    @property
    def resolution(self) -> int:
        return self.sample_size

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 3 R R"]:
        return (square(rgb, self.resolution) * 2 - 1).float()

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B 3 R R"]) -> Float[Tensor, "B R R 3"]:
        return ((x0.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
