"""Flow-matching priors: Stable Diffusion 3 / 3.5 (Esser et al. 2024) seen through what score distillation needs.

An SD3 folder (``stabilityai/stable-diffusion-3.5-medium``, ``stabilityai/stable-diffusion-3-medium-diffusers``,
or a local copy) holds, each loaded with its own class's ``from_pretrained``:

* ``transformer``: ``SD3Transformer2DModel``, the MMDiT that predicts the flow velocity v = eps - x0;
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler``, whose training sigmas (shifted, ``shift`` 3.0)
  give each timestep its noise level (:class:`~threed.guidance.core.FlowCore`);
* ``vae``: ``AutoencoderKL`` with 16 latent channels, shifted and scaled (:class:`~threed.guidance.images.LatentImages`);
* ``text_encoder``, ``text_encoder_2``: two ``CLIPTextModelWithProjection`` (CLIP ViT-L and OpenCLIP
  ViT-bigG) with ``tokenizer``, ``tokenizer_2``; ``text_encoder_3``: ``T5EncoderModel`` (T5-XXL) with
  ``tokenizer_3``, optional (SD3 runs without it on zeros).

The condition is built as the SD3 pipeline builds it (``StableDiffusion3Pipeline.encode_prompt``):
the penultimate hidden states of both CLIPs, concatenated along features and zero-padded to T5's
width, followed by T5's last hidden states along the sequence; the pooled projection is both CLIPs'
projected embeddings, concatenated. So that one tensor per prompt travels through the prompt
processor, the cache and classifier-free guidance like any text embedding, the pooled vector rides
as one extra, zero-padded token at the end (:meth:`SD3Prior.pack`) and is split off again at the
network call. Every operation the conditioning applies to embeddings (view interpolation, Perp-Neg's
negatives, repetition) is linear per token, so it treats the pooled vector exactly as the pipeline's
separate tensor would be treated.

A pixel-space flow model fits beside :class:`SD3Prior` as another :class:`~threed.guidance.core.FlowCore`
subclass with the pixel image map and its own network call; the flow rules only use FlowCore.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.cache import EmbeddingCache
from threed.guidance.core import FlowCore
from threed.guidance.images import LatentImages
from threed.guidance.loading import (PriorCache, cached, default_device_dtype, fingerprint, freeze, load_components,
                                     resolve_model)
from threed.guidance.text import TextEncoder, token_limit

FLOW_COMPONENTS = ("transformer", "scheduler", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
T5_COMPONENTS = ("text_encoder_3", "tokenizer_3")
T5_TOKENS = 256
"""The SD3 pipeline's default ``max_sequence_length`` for T5."""
EXAMPLE_FLOW_MODEL = "stabilityai/stable-diffusion-3.5-medium"


class SD3Prior(LatentImages, FlowCore, TextEncoder):
    """A frozen Stable Diffusion 3 / 3.5: MMDiT velocity, flow-matching schedule, VAE latents, three text encoders.

    ``resolution`` is the square render size encoded by the VAE (None: the transformer's native
    ``sample_size`` times the VAE factor, 1024 for SD3); it must be a multiple of the VAE factor times
    the patch size.
    """

    def __init__(self, name: str, transformer: torch.nn.Module, scheduler: Any, vae: torch.nn.Module,
                 text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module, tokenizer: Any, tokenizer_2: Any,
                 text_encoder_3: torch.nn.Module | None = None, tokenizer_3: Any = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, cache_key: str | None = None,
                 resolution: int | None = None):
        cfg = transformer.config
        super().__init__(name, scheduler, device, dtype, int(cfg.out_channels), int(cfg.sample_size))
        if int(cfg.in_channels) != self.channels:
            raise ThreedError(f"{name}: the transformer takes {cfg.in_channels} channels but predicts {cfg.out_channels}")
        self.transformer = freeze(transformer, self.device, dtype)
        self._set_vae(vae)
        self.clips = [(tokenizer, freeze(text_encoder, self.device, dtype)),
                      (tokenizer_2, freeze(text_encoder_2, self.device, dtype))]
        self.t5 = None if text_encoder_3 is None else (tokenizer_3, freeze(text_encoder_3, self.device, dtype))
        self.width = int(cfg.joint_attention_dim)
        self.pooled_dim = int(cfg.pooled_projection_dim)
        if self.pooled_dim > self.width:
            raise ThreedError(f"{name}: the pooled projection ({self.pooled_dim}) is wider than the text tokens "
                              f"({self.width}); threed carries it as one more token")
        self.clip_length = token_limit(tokenizer, text_encoder)
        self.t5_length = T5_TOKENS if self.t5 is None else token_limit(tokenizer_3, text_encoder_3, T5_TOKENS)
        step = self.vae_scale_factor * int(cfg.patch_size)
        self._resolution = resolution or self.sample_size * self.vae_scale_factor
        if self._resolution % step:
            raise ThreedError(f"{name}: resolution {self._resolution} is not a multiple of {step} (the VAE factor "
                              "times the transformer's patch size)")
        key = None if cache_key is None else json.dumps([cache_key, self.clip_length, self.t5_length, str(dtype)])
        self.text_cache = EmbeddingCache(name, key)

    @property
    def resolution(self) -> int:
        return self._resolution

    # ----------------------------------------------------------------- text

    @property
    def tokenizers(self) -> list[Any]:
        return [tok for tok, _ in self.clips] + ([] if self.t5 is None else [self.t5[0]])

    def pack(self, hidden: Float[Tensor, "B L D"], pooled: Float[Tensor, "B P"]) -> Float[Tensor, "B L+1 D"]:
        """The pooled projection appended as one zero-padded token (see the module docstring)."""
        return torch.cat([hidden, F.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1]))[:, None]], dim=1)

    def unpack(self, emb: Float[Tensor, "B T D"]) -> tuple[Float[Tensor, "B T-1 D"], Float[Tensor, "B P"]]:
        """(token states, pooled projection) of a packed embedding (``T`` = the ``L`` token states + 1)."""
        return emb[:, :-1], emb[:, -1, : self.pooled_dim]

    def _embed(self, prompts: list[str]) -> Float[Tensor, "B T D"]:
        """SD3's prompt embedding and pooled projection (``encode_prompt``'s construction), packed (:meth:`pack`)."""
        hidden, pooled = [], []
        for tokenizer, encoder in self.clips:
            ids = tokenizer(prompts, padding="max_length", max_length=self.clip_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        if self.t5 is None:
            t5 = torch.zeros(len(prompts), self.t5_length, self.width, device=self.device, dtype=clip.dtype)
        else:
            tokenizer, encoder = self.t5
            ids = tokenizer(prompts, padding="max_length", max_length=self.t5_length, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids
            t5 = encoder(ids.to(self.device))[0]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return self.pack(torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1))

    # ----------------------------------------------------------------- the network

    def _network(self, model_in, t, emb, unet, class_labels):
        if unet is not None or class_labels is not None:
            raise ValueError(f"{self.name}: an SD3 prior takes no replacement network and no class labels")
        hidden, pooled = self.unpack(emb)
        return self.transformer(hidden_states=model_in, timestep=self.network_time(t), encoder_hidden_states=hidden,
                                pooled_projections=pooled).sample


def load_flow_prior(model: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    resolution: int | None = None, cache: PriorCache | None = None) -> SD3Prior:
    """A frozen Stable Diffusion 3 / 3.5 from a hub id or folder; once per ``cache`` (else a fresh load).

    ``dtype`` defaults to float16 on CUDA and float32 elsewhere; ``resolution`` as :class:`SD3Prior`'s.
    """
    device, dtype = default_device_dtype(device, dtype)
    folder = resolve_model(model, {}, FLOW_COMPONENTS + T5_COMPONENTS, example=EXAMPLE_FLOW_MODEL,
                           fp16=dtype == torch.float16)

    def load() -> SD3Prior:
        parts = load_components(folder, FLOW_COMPONENTS, T5_COMPONENTS, dtype,
                                "a flow-matching prior (Stable Diffusion 3)")
        return SD3Prior(name=model, device=device, dtype=dtype, resolution=resolution,
                        cache_key=fingerprint(model, folder, [c for c in FLOW_COMPONENTS if "text" in c or "tok" in c]
                                              + list(T5_COMPONENTS)),
                        **parts)

    return cached(cache, ("flow", str(folder.resolve()), str(device), dtype, resolution), load)
