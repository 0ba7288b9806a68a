"""Text-to-image diffusion priors: a frozen UNet with its noise schedule and text encoder.

A prior is loaded from a diffusers folder (``model_index.json`` plus one subfolder per component)
given as a hub id, a local path or a short name (``toyworld``), by :func:`load_prior`
(:mod:`threed.guidance.loading`). Two kinds share one interface:

* :class:`LatentPrior` (a ``vae`` is present): Stable Diffusion 1.x/2.x, epsilon or v-prediction.
  ``x0`` is the VAE latent of the image, scaled by the VAE's ``scaling_factor`` (Rombach et al. 2022).
* :class:`PixelPrior` (no ``vae``): DeepFloyd IF stage I and the embedded toy-world prior. ``x0`` is
  the image itself in [-1, 1] at the UNet's ``sample_size``; a UNet with learned variance (twice the
  input channels out, Nichol & Dhariwal 2021) keeps the first half, the noise prediction.

The diffusion math is :class:`~threed.guidance.core.DiffusionCore`'s, the image maps are
:mod:`threed.guidance.images`' and the text side is :class:`~threed.guidance.text.TextEncoder`'s: one
text encoder (CLIP for SD and the toy world, T5 for IF), its last hidden states as the condition.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.cache import EmbeddingCache
from threed.guidance.core import DiffusionCore
from threed.guidance.images import LatentImages, PixelImages
from threed.guidance.loading import (PriorCache, cached, default_device_dtype, fingerprint, freeze, load_components,
                                     read_index, resolve_model)
from threed.guidance.text import TextEncoder, token_limit

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

PRIOR_ALIASES: dict[str, str] = {"toyworld": "priors/toyworld"}
"""Short model names -> folders relative to the package root."""

REQUIRED_COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer")
OPTIONAL_COMPONENTS = ("vae",)


class DiffusionPrior(DiffusionCore, TextEncoder):
    """A frozen text-conditioned diffusion model seen through what score distillation needs."""

    def __init__(self, name: str, unet: torch.nn.Module, scheduler: Any, text_encoder: torch.nn.Module,
                 tokenizer: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 cache_key: str | None = None):
        """``cache_key`` identifies the text encoder for the on-disk embedding cache; None disables it."""
        super().__init__(name, unet, scheduler, device, dtype)
        self.text_encoder = freeze(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_length: int = token_limit(tokenizer, text_encoder)
        self.lowercase = getattr(text_encoder.config, "model_type", "") == "t5"
        """DeepFloyd IF (a T5 text encoder) saw lower-cased prompts: diffusers' IFPipeline lower-cases and strips
        every prompt before tokenizing (``_text_preprocessing``), so threed does too."""
        key = None if cache_key is None else json.dumps([cache_key, self.max_length, str(dtype)])
        self.text_cache = EmbeddingCache(name, key)

    @property
    def tokenizers(self) -> list[Any]:
        return [self.tokenizer]

    def preprocess_prompt(self, prompt: str) -> str:
        return prompt.lower().strip() if self.lowercase else prompt

    def _embed(self, prompts: list[str]) -> Float[Tensor, "B L D"]:
        """The text encoder's last hidden states, prompts padded to :attr:`max_length` (T5: with its mask)."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        full = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for p, ids in zip(prompts, full):
            if len(ids) > self.max_length:
                log.warning("prompt %r is longer than %d tokens; the end is cut off", p, self.max_length)
        cfg = self.text_encoder.config
        use_mask = getattr(cfg, "use_attention_mask", getattr(cfg, "model_type", "") != "clip_text_model")
        mask = tok["attention_mask"].to(self.device) if use_mask else None
        return self.text_encoder(tok["input_ids"].to(self.device), attention_mask=mask)[0]

    def predict_noise(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], text_emb: Float[Tensor, "B L D"],
                      uncond_emb: Float[Tensor, "B L D"] | None = None,
                      guidance_scale: float = 1.0) -> Float[Tensor, "B C h w"]:
        """Classifier-free guided noise prediction (:meth:`guide`) from one batched UNet call.
        Without ``uncond_emb`` it is the conditional prediction."""
        if uncond_emb is None:
            return self.noise_predictions(x_t, t, [text_emb])[0]
        eps_c, eps_u = self.noise_predictions(x_t, t, [text_emb, uncond_emb])
        return self.guide(eps_c, eps_u, guidance_scale)

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int = 50, guidance_scale: float = 5.0,
               generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
        """Images for ``prompts`` by DDIM with classifier-free guidance, in [0, 1] (:meth:`ddim_sample`)."""
        cond = self.encode_text(list(prompts))
        uncond = self.encode_text([""] * len(prompts))
        return self.ddim_sample(len(prompts), lambda x, t: self.predict_noise(x, t, cond, uncond, guidance_scale),
                                steps, generator)


class LatentPrior(LatentImages, DiffusionPrior):
    """A latent diffusion model (Stable Diffusion 1.x/2.x): ``x0`` is the scaled VAE latent."""

    def __init__(self, name: str, unet, scheduler, text_encoder, tokenizer, vae: AutoencoderKL,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, cache_key: str | None = None):
        super().__init__(name, unet, scheduler, text_encoder, tokenizer, device, dtype, cache_key)
        self._set_vae(vae)


class PixelPrior(PixelImages, DiffusionPrior):
    """A pixel-space diffusion model (DeepFloyd IF stage I, the toy-world prior): ``x0`` = image in [-1, 1]."""


def load_prior(model: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
               cache: PriorCache | None = None) -> DiffusionPrior:
    """A frozen text-to-image prior from a hub id, folder or short name; once per ``cache`` (else a fresh load).

    ``dtype`` defaults to float16 on CUDA and float32 elsewhere. A ``vae`` component makes it a
    :class:`LatentPrior`, otherwise a :class:`PixelPrior`.
    """
    device, dtype = default_device_dtype(device, dtype)
    folder = resolve_model(model, PRIOR_ALIASES, REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS, fp16=dtype == torch.float16)

    def load() -> DiffusionPrior:
        if "transformer" in read_index(folder) and "unet" not in read_index(folder):
            raise ThreedError(f"{folder} is a flow-matching model (a transformer, no UNet), not a diffusion prior: "
                              "guide with it through guidance kind rfds")
        parts = load_components(folder, REQUIRED_COMPONENTS, OPTIONAL_COMPONENTS, dtype, "a text-to-image prior")
        cls = LatentPrior if "vae" in parts else PixelPrior
        key = fingerprint(model, folder, ("text_encoder", "tokenizer"))
        return cls(name=model, device=device, dtype=dtype, cache_key=key, **parts)

    return cached(cache, ("text", str(folder.resolve()), str(device), dtype), load)
