"""Frozen diffusion priors: what score distillation needs from a text-to-image diffusion model, once.

A prior is loaded from a diffusers folder (``model_index.json`` plus one subfolder per component)
given as a hub id, a local path or a short name (``toyworld``). Every component is loaded with its
own class's ``from_pretrained`` and frozen. Two kinds share one interface:

* :class:`LatentPrior` (a ``vae`` is present): Stable Diffusion 1.x/2.x, epsilon or v-prediction.
  ``x0`` is the VAE latent of the image, scaled by the VAE's ``scaling_factor`` (Rombach et al. 2022).
* :class:`PixelPrior` (no ``vae``): DeepFloyd IF stage I and the embedded toy-world prior. ``x0`` is
  the image itself in [-1, 1] at the UNet's ``sample_size``; a UNet with learned variance (twice the
  input channels out, Nichol & Dhariwal 2021) keeps the first half, the noise prediction.

The diffusion plumbing lives here and nowhere else, in :class:`DiffusionCore`: encode images, add
noise, predict noise (one batched UNet call for several conditionings, optionally through VSD's LoRA
copy, optionally with condition channels concatenated to the input), classifier-free guidance
(:meth:`DiffusionCore.guide`, the one CFG formula), the weighting w(t), and deterministic DDIM steps.
Text priors (:class:`DiffusionPrior`) and view-conditioned priors (:mod:`threed.guidance.zero123`)
build on it; the latent/pixel image maps are the mixins :class:`LatentImages` and :class:`PixelImages`.
Score rules (``score.py``) only form residuals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from threed.errors import ThreedError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

Weighting = Literal["sds", "uniform", "fantasia", "ism"]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``threed`` package folder: the embedded priors ship inside it as package data (``threed/priors/``)."""

PRIOR_ALIASES: dict[str, str] = {"toyworld": "priors/toyworld"}
"""Short model names -> folders relative to :data:`PACKAGE_ROOT`."""

REQUIRED_COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer")
OPTIONAL_COMPONENTS = ("vae",)
MAX_TEXT_TOKENS = 77
"""Both CLIP (SD) and IF's T5 were trained on 77-token prompts."""

_EXAMPLE_ID = "stabilityai/stable-diffusion-2-1-base"


# --------------------------------------------------------------------------- text-embedding cache


def cache_root() -> Path:
    """``$THREED_CACHE``, else ``$XDG_CACHE_HOME/threed``, else ``~/.cache/threed``."""
    if os.environ.get("THREED_CACHE"):
        return Path(os.environ["THREED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "threed"


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a unique temporary file then rename, so concurrent writers never leave a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- priors


class DiffusionCore:
    """A frozen diffusion UNet and its noise schedule: the plumbing every prior shares, whatever conditions it.

    Text-to-image priors (:class:`DiffusionPrior`) add a text encoder; view-conditioned priors
    (:mod:`threed.guidance.zero123`) add an image condition. ``concat_channels`` is the width of a
    condition concatenated to the UNet input (Zero123's reference latent); ``channels`` is what
    remains, the diffusion variable's own channels. Subclasses differ in how images map to ``x0``
    and back (:meth:`encode_images`, :meth:`decode`, :attr:`resolution`).
    """

    latent: bool = False

    def __init__(self, name: str, unet: torch.nn.Module, scheduler: Any, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, concat_channels: int = 0):
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = _freeze(unet, self.device, dtype)
        self.scheduler = scheduler
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ThreedError(f"{name}: scheduler {type(scheduler).__name__} has no alphas_cumprod; "
                              "use a DDPM/DDIM/PNDM-style scheduler config")
        self.num_train_timesteps: int = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod: Float[Tensor, "T"] = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type: str = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ThreedError(f"{name}: prediction_type {self.prediction_type!r} is not supported "
                              "(epsilon or v_prediction)")
        self.concat_channels = concat_channels
        self.channels: int = int(unet.config.in_channels) - concat_channels
        out_channels = int(unet.config.out_channels)
        if self.channels < 1 or out_channels not in (self.channels, 2 * self.channels):
            raise ThreedError(f"{name}: UNet has {unet.config.in_channels} input channels ({concat_channels} of "
                              f"them a concatenated condition) but {out_channels} output channels")
        self.learned_variance = out_channels == 2 * self.channels
        self.sample_size: int = int(unet.config.sample_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, resolution={self.resolution}, "
                f"prediction={self.prediction_type}, device={self.device}, dtype={self.dtype})")

    # ----------------------------------------------------------------- images <-> x0

    @property
    def resolution(self) -> int:
        """Square pixel size renders are resized to before encoding."""
        raise NotImplementedError

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Differentiable map from renders in [0, 1] to the diffusion variable ``x0`` (float32)."""
        raise NotImplementedError

    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B H W 3"]:
        """``x0`` back to images in [0, 1], for logs (no gradient)."""
        raise NotImplementedError

    def _resized(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 3 R R"]:
        """Channels-first at :attr:`resolution`, bilinear (antialias off: gradients stay local)."""
        x = rgb.permute(0, 3, 1, 2)
        r = self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=False)
        return x

    # ----------------------------------------------------------------- diffusion

    def alpha_bar(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B 1 1 1"]:
        """Cumulative signal fraction abar_t of the forward process, shaped to broadcast over images."""
        return self.alphas_cumprod[t.to(self.device)].view(-1, 1, 1, 1)

    def add_noise(self, x0: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"],
                  t: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """Forward process q(x_t | x0): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020)."""
        a = self.alpha_bar(t)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def model_outputs(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"],
                      embeddings: Sequence[Float[Tensor, "B L D"]], unet: torch.nn.Module | None = None,
                      class_labels: Tensor | None = None, concat: Sequence[Float[Tensor, "B K h w"]] | None = None
                      ) -> list[Float[Tensor, "B C h w"]]:
        """The model's own predictions (epsilon or v), one per conditioning, from one batched UNet call.

        ``unet`` replaces the prior's UNet (VSD's LoRA copy, which also takes ``class_labels``, one row
        per view). ``concat`` (one tensor per conditioning, :attr:`concat_channels` wide) is concatenated
        to x_t along channels, as Zero123 conditions on its reference latent. A learned-variance output
        keeps its first half. Returns float32; gradients flow if the caller enables them.
        """
        k = len(embeddings)
        if (concat is None) != (self.concat_channels == 0) or (concat is not None and len(concat) != k):
            raise ValueError(f"{self.name}: the UNet takes {self.concat_channels} concatenated condition channels; "
                             f"give one concat tensor per conditioning ({k}), or none for an unconcatenated UNet")
        model_in = torch.cat([x_t] * k)
        if concat is not None:
            model_in = torch.cat([model_in, torch.cat(list(concat)).to(model_in)], dim=1)
        model_in = model_in.to(self.dtype)
        emb = torch.cat(list(embeddings)).to(self.device, self.dtype)
        if class_labels is not None and class_labels.is_floating_point():
            class_labels = class_labels.to(self.device, self.dtype)
        kwargs = {} if class_labels is None else {"class_labels": torch.cat([class_labels] * k)}
        out = (unet or self.unet)(model_in, torch.cat([t] * k).to(self.device), encoder_hidden_states=emb,
                                  **kwargs).sample
        return list(out[:, : self.channels].float().chunk(k))

    def noise_predictions(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"],
                          embeddings: Sequence[Float[Tensor, "B L D"]], unet: torch.nn.Module | None = None,
                          class_labels: Tensor | None = None, concat: Sequence[Float[Tensor, "B K h w"]] | None = None
                          ) -> list[Float[Tensor, "B C h w"]]:
        """Noise predictions eps(x_t; y, t), one per conditioning, from one batched UNet call.

        v-predictions become noise predictions via eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
        (Salimans & Ho 2022). ``unet``, ``class_labels`` and ``concat`` as in :meth:`model_outputs`. Returns
        float32. Gradients flow if the caller enables them (the guidance core runs this under ``no_grad``).
        """
        outs = self.model_outputs(x_t, t, embeddings, unet, class_labels, concat)
        if self.prediction_type == "v_prediction":
            a = self.alpha_bar(t)
            outs = [a.sqrt() * v + (1 - a).sqrt() * x_t.float() for v in outs]
        return outs

    def training_target(self, x0: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"],
                        t: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """What the model is trained to predict for x_t = add_noise(x0, noise, t): the noise, or the
        velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 for a v-prediction model."""
        if self.prediction_type == "v_prediction":
            a = self.alpha_bar(t)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return noise

    @staticmethod
    def guide(eps_c: Float[Tensor, "B C h w"], eps_u: Float[Tensor, "B C h w"], guidance_scale: float,
              negatives: Sequence[tuple[Float[Tensor, "B C h w"], Float[Tensor, "B"]]] = ()
              ) -> Float[Tensor, "B C h w"]:
        """Classifier-free guidance (Ho & Salimans 2022), in diffusers' convention, the one place it is formed:

            eps_hat = eps_u + s [ (eps_c - eps_u) - sum_i w_i perp(eps_i - eps_u, eps_c - eps_u) ]

        ``negatives`` are Perp-Neg's (Armandpour et al. 2023) negative-prompt predictions eps_i with
        per-view weights w_i >= 0; only the part of each negative direction perpendicular to the
        positive direction is removed, so a negative that overlaps the prompt cannot cancel it.
        Without negatives this is eps_u + s (eps_c - eps_u).
        """
        positive = eps_c - eps_u
        delta = positive
        if negatives:
            norm2 = positive.flatten(1).square().sum(1).clamp_min(1e-20)
            for eps_n, weight in negatives:
                neg = eps_n - eps_u
                along = (neg * positive).flatten(1).sum(1) / norm2
                perp = neg - along.view(-1, 1, 1, 1) * positive
                delta = delta - weight.to(delta).view(-1, 1, 1, 1) * perp
        return eps_u + guidance_scale * delta

    def ddim_step(self, x: Float[Tensor, "B C h w"], eps: Float[Tensor, "B C h w"], t_from: Int[Tensor, "B"],
                  t_to: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """Deterministic DDIM move (Song et al. 2021, eta = 0) of x from timestep t_from to t_to with the
        noise prediction ``eps`` made at (x, t_from): x_to = sqrt(abar_to) x0_hat + sqrt(1 - abar_to) eps.

        Works both ways: t_to < t_from denoises, t_to > t_from is one step of DDIM inversion.
        """
        a_from, a_to = self.alpha_bar(t_from), self.alpha_bar(t_to)
        x0_hat = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps

    def ddim_invert(self, x: Float[Tensor, "B C h w"], t_from: Int[Tensor, "B"], t_to: Int[Tensor, "B"],
                    embedding: Float[Tensor, "B L D"], steps: int) -> Float[Tensor, "B C h w"]:
        """DDIM inversion of x from t_from up to t_to in ``steps`` equal steps per view, each predicting
        the noise with ``embedding`` (LucidDreamer, Liang et al. 2023, use the unconditional one)."""
        t_from, t_to = t_from.to(self.device), t_to.to(self.device)
        grid = [t_from + torch.div((t_to - t_from) * k, steps, rounding_mode="floor") for k in range(steps)] + [t_to]
        for a, b in zip(grid[:-1], grid[1:]):
            eps = self.noise_predictions(x, a, [embedding])[0]
            x = self.ddim_step(x, eps, a, b)
        return x

    def weighting(self, t: Int[Tensor, "B"], kind: Weighting) -> Float[Tensor, "B"]:
        """w(t) multiplying the score residual.

        * ``sds``: 1 - abar_t, DreamFusion's sigma_t^2 (Poole et al. 2022, eq. 3).
        * ``uniform``: 1.
        * ``fantasia``: sqrt(abar_t) (1 - abar_t), Fantasia3D (Chen et al. 2023), as in threestudio.
        * ``ism``: sqrt((1 - abar_t) / abar_t), LucidDreamer's interval score matching (Liang et al. 2023).
        """
        a = self.alpha_bar(t).view(-1)
        if kind == "sds":
            return 1 - a
        if kind == "uniform":
            return torch.ones_like(a)
        if kind == "fantasia":
            return a.sqrt() * (1 - a)
        if kind == "ism":
            return ((1 - a) / a).sqrt()
        raise ValueError(f"unknown weighting {kind!r}; choose sds, uniform, fantasia or ism")

    @torch.no_grad()
    def ddim_sample(self, n: int, eps: Callable[[Tensor, Tensor], Tensor], steps: int = 50,
                    generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
        """``n`` images by DDIM (Song et al. 2021), in [0, 1], with ``eps(x_t, t)`` the (guided) noise prediction.

        For looking at a prior and testing it; score distillation itself never samples. The noise is
        drawn on the CPU from ``generator`` so a seed gives the same images on every device.
        """
        from diffusers import DDIMScheduler

        # eps returns epsilon, whatever the model predicts (noise_predictions converts).
        ddim = DDIMScheduler.from_config(self.scheduler.config, prediction_type="epsilon")
        ddim.set_timesteps(steps)
        x = torch.randn(n, self.channels, self.sample_size, self.sample_size, generator=generator).to(self.device)
        for t in ddim.timesteps:
            x = ddim.step(eps(x, t.expand(n).to(self.device)).float(), t, x).prev_sample
        return self.decode(x)


class DiffusionPrior(DiffusionCore):
    """A frozen text-conditioned diffusion model seen through what score distillation needs."""

    def __init__(self, name: str, unet: torch.nn.Module, scheduler: Any, text_encoder: torch.nn.Module,
                 tokenizer: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 cache_key: str | None = None):
        """``cache_key`` identifies the text encoder for the on-disk embedding cache; None disables it."""
        super().__init__(name, unet, scheduler, device, dtype)
        self.text_encoder = _freeze(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        self.cache_key = cache_key
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        limits = [MAX_TEXT_TOKENS, getattr(tokenizer, "model_max_length", MAX_TEXT_TOKENS),
                  getattr(text_encoder.config, "max_position_embeddings", MAX_TEXT_TOKENS)]
        self.max_length: int = int(min(limits))
        self._text_memory: dict[str, Tensor] = {}

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

    # ----------------------------------------------------------------- text

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` that the tokenizer can only map to its unknown token."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return []
        words = [(m.start(), m.end()) for m in re.finditer(r"[^\s,.;:!?]+", prompt)]  # "dragon," names "dragon"
        try:
            enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
            spans = [s for i, s in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
        except NotImplementedError:  # a slow tokenizer: no offsets, test word by word
            spans = [(a, b) for a, b in words
                     if unk in self.tokenizer(prompt[a:b], add_special_tokens=False)["input_ids"]]
        found: list[str] = []
        for start, end in spans:
            word = next((prompt[a:b] for a, b in words if a <= start < b), prompt[start:end])
            if word not in found:
                found.append(word)
        return found

    def _vocabulary_hint(self) -> str:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or type(backend.model).__name__ != "WordLevel" or len(self.tokenizer) >= 2000:
            return ""
        special = set(self.tokenizer.all_special_tokens)
        words = sorted(w for w in self.tokenizer.get_vocab() if w not in special)
        return f"; it knows: {', '.join(words)}"

    def check_prompt(self, prompt: str) -> None:
        """Raise :class:`ThreedError` naming the words this prior's tokenizer does not know."""
        unknown = self.unknown_words(prompt)
        if unknown:
            raise ThreedError(f"the prompt {prompt!r} has word(s) that model {self.name!r} does not know: "
                              f"{', '.join(repr(w) for w in unknown)}{self._vocabulary_hint()}")

    def _cache_file(self, prompt: str) -> Path:
        key = json.dumps([self.cache_key, prompt, self.max_length, str(self.dtype)])
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")[-40:] or "model"
        return cache_root() / "text_embeddings" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"

    def _read_cache(self, prompt: str) -> Tensor | None:
        if self.cache_key is None:
            return None
        path = self._cache_file(prompt)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or foreign file: recompute and overwrite
            log.warning("ignoring unreadable text-embedding cache %s: %s", path, exc)
            return None

    def _write_cache(self, prompt: str, emb: Tensor) -> None:
        if self.cache_key is None:
            return
        try:
            _atomic_save(emb, self._cache_file(prompt))
        except OSError as exc:
            log.warning("cannot write the text-embedding cache under %s: %s", cache_root(), exc)

    @torch.no_grad()
    def _run_text_encoder(self, prompts: list[str]) -> Float[Tensor, "B L D"]:
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

    def encode_text(self, prompts: list[str]) -> Float[Tensor, "B L D"]:
        """Text-encoder hidden states for each prompt, cached in memory and on disk (model + prompt).

        Every prompt is checked against the vocabulary first. The empty string is allowed: it is the
        unconditional prompt of classifier-free guidance.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_memory]
        for p in missing:
            if (hit := self._read_cache(p)) is not None:
                self._text_memory[p] = hit
        todo = [p for p in missing if p not in self._text_memory]
        for p in todo:
            self.check_prompt(p)
        if todo:
            embs = self._run_text_encoder(todo).float().cpu()
            for p, e in zip(todo, embs):
                self._text_memory[p] = e[None].clone()
                self._write_cache(p, self._text_memory[p])
        return torch.cat([self._text_memory[p] for p in prompts]).to(self.device, self.dtype)


class LatentImages:
    """Images <-> x0 of a latent diffusion model: ``x0`` is the VAE latent, scaled (Rombach et al. 2022)."""

    latent = True

    def _set_vae(self, vae: AutoencoderKL) -> None:
        self.vae = _freeze(vae, self.device, self.dtype)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def resolution(self) -> int:
        return self.sample_size * self.vae_scale_factor

    def vae_mean(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 4 h w"]:
        """Posterior mean of the VAE encoder (deterministic, unscaled) of renders in [0, 1]."""
        x = self._resized(rgb) * 2 - 1
        return self.vae.encode(x.to(self.dtype)).latent_dist.mean.float()

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 4 h w"]:
        """Posterior mean of the VAE encoder, scaled: (z - shift) * scaling_factor."""
        return (self.vae_mean(rgb) - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B 4 h w"]) -> Float[Tensor, "B H W 3"]:
        z = x0 / self.scaling_factor + self.shift_factor
        img = self.vae.decode(z.to(self.dtype)).sample.float()
        return ((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


class PixelImages:
    """Images <-> x0 of a pixel-space diffusion model: ``x0`` = the image in [-1, 1] at ``sample_size``."""

    @property
    def resolution(self) -> int:
        return self.sample_size

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B 3 R R"]:
        return (self._resized(rgb) * 2 - 1).float()

    @torch.no_grad()
    def decode(self, x0: Float[Tensor, "B 3 R R"]) -> Float[Tensor, "B R R 3"]:
        return ((x0.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


class LatentPrior(LatentImages, DiffusionPrior):
    """A latent diffusion model (Stable Diffusion 1.x/2.x): ``x0`` is the scaled VAE latent."""

    def __init__(self, name: str, unet, scheduler, text_encoder, tokenizer, vae: AutoencoderKL,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, cache_key: str | None = None):
        super().__init__(name, unet, scheduler, text_encoder, tokenizer, device, dtype, cache_key)
        self._set_vae(vae)


class PixelPrior(PixelImages, DiffusionPrior):
    """A pixel-space diffusion model (DeepFloyd IF stage I, the toy-world prior): ``x0`` = image in [-1, 1]."""


def _freeze(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen, eval mode, on ``device``; cast only floating weights not already in ``dtype``."""
    module.requires_grad_(False).eval()
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)
    return module.to(device=device)


# --------------------------------------------------------------------------- loading


def _download_hint(target: str, key: str = "model") -> str:
    return (f"download the weights into a folder, e.g. `hf download {target} --local-dir DIR` "
            f"(`huggingface-cli download` on older huggingface_hub; gated models such as DeepFloyd IF also need "
            f"`hf auth login` and the license accepted on huggingface.co), then pass {key}=DIR")


def _looks_like_hub_id(model: str) -> bool:
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None
            and not model.startswith(".") and ".." not in model)


def _from_hub(repo_id: str, components: Sequence[str], key: str, allow_bin: bool) -> Path:
    """The local snapshot of a hub repo (its ``components``): from the HF cache, else downloaded unless offline.
    ``allow_bin`` also fetches PyTorch ``.bin`` weights (repos converted before safetensors ship only those)."""
    from huggingface_hub import snapshot_download

    allow = ["model_index.json"] + [f"{c}/*" for c in components]
    ignore = ["*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ot", "*fp16*", "*non_ema*"]
    ignore += [] if allow_bin else ["*.bin"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow))
    except Exception:
        pass
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    local = f"If you meant a local folder, {Path(repo_id).resolve()} does not exist. Otherwise "
    if offline:
        raise ThreedError(f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                          + local + _download_hint(repo_id, key))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ThreedError(f"model {repo_id!r} is not in the local Hugging Face cache and could not be downloaded "
                          f"({type(exc).__name__}: {reason}). " + local + _download_hint(repo_id, key)) from exc


def resolve_model(model: str, aliases: dict[str, str] | None = None,
                  components: Sequence[str] = REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS, key: str = "model",
                  example: str = _EXAMPLE_ID, allow_bin: bool = False) -> Path:
    """The diffusers folder for a short name, local path or hub id (raising an actionable ThreedError).

    ``aliases`` (default :data:`PRIOR_ALIASES`) maps short names to folders under the package root;
    ``components`` are the subfolders fetched from the hub; ``key`` and ``example`` word the errors.
    """
    aliases = PRIOR_ALIASES if aliases is None else aliases
    if not model or not model.strip():
        raise ThreedError(f"no model given: pass {key}=<hub id or diffusers folder>, e.g. "
                          f"{key}={example} or {key}=toyworld")
    if model in aliases:
        folder = PACKAGE_ROOT / aliases[model]
        if not (folder / "model_index.json").is_file():
            raise ThreedError(f"the embedded {model!r} prior was looked for at {folder} and is missing; it ships "
                              "inside the threed package (threed/priors/), so reinstall threed "
                              "or train it again with scripts/train_toyworld_prior.py")
        return folder
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ThreedError(f"model {path} is a file; give a diffusers folder (with model_index.json) or a hub id")
        return path
    if _looks_like_hub_id(model):
        return _from_hub(model, components, key, allow_bin)
    raise ThreedError(f"model folder {path.resolve()} does not exist; "
                      + _download_hint(example, key).replace("DIR", model))


def _read_index(folder: Path) -> dict[str, tuple[str, str]]:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ThreedError(f"{folder} is not a diffusers model folder: {index_file} is missing")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise ThreedError(f"{index_file} is not valid JSON: {exc}") from exc
    return {k: (v[0], v[1]) for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] and v[1]}


def _weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when a component folder only holds fp16-variant weights, else None."""
    names = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if ".fp16" not in n]
    return "fp16" if names and not plain else None


def _load_component(folder: Path, name: str, library: str, class_name: str, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers

    modules = {"diffusers": diffusers, "transformers": transformers}
    if library not in modules:
        raise ThreedError(f"{folder}: component {name!r} comes from library {library!r}; threed loads diffusers "
                          "and transformers components only")
    cls = getattr(modules[library], class_name, None)
    if cls is None and name == "tokenizer":
        cls = transformers.AutoTokenizer
    if cls is None:
        raise ThreedError(f"{folder}: component {name!r} needs {library}.{class_name}, which the installed "
                          f"{library} {modules[library].__version__} lacks; upgrade {library}")
    kwargs: dict[str, Any] = {}
    if name not in ("tokenizer", "scheduler", "feature_extractor"):
        if variant := _weights_variant(folder / name):
            kwargs["variant"] = variant
        new_kwarg = library == "transformers" and int(transformers.__version__.split(".")[0]) >= 5
        kwargs["dtype" if new_kwarg else "torch_dtype"] = dtype
    try:
        return cls.from_pretrained(folder, subfolder=name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ThreedError(f"cannot load component {name!r} ({class_name}) from {folder / name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def load_components(folder: Path, required: Sequence[str], optional: Sequence[str], dtype: torch.dtype,
                    what: str) -> dict[str, Any]:
    """Every listed component of the diffusers folder that ``model_index.json`` names, each loaded with its
    own class's ``from_pretrained``; a missing required one is an error saying what ``what`` needs."""
    index = _read_index(folder)
    parts: dict[str, Any] = {}
    for name in [*required, *optional]:
        if name not in index:
            if name in required:
                raise ThreedError(f"{folder} has no {name!r} component in model_index.json; {what} "
                                  f"needs {', '.join(required)}")
            continue
        if not (folder / name).is_dir():
            raise ThreedError(f"{folder} lists component {name!r} but the folder {folder / name} is missing; "
                              "download the model again")
        parts[name] = _load_component(folder, name, *index[name], dtype)
    return parts


def _fingerprint(model: str, folder: Path) -> str:
    """Identifies the text side of a prior: its folder and the size/mtime of the tokenizer and encoder files."""
    parts = [model, str(folder.resolve())]
    for sub in ("text_encoder", "tokenizer"):
        for f in sorted((folder / sub).rglob("*")):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


_LOADED: dict[tuple[str, str, torch.dtype], DiffusionPrior] = {}


def load_prior(model: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> DiffusionPrior:
    """Load (once per process, per model/device/dtype) a frozen prior from a hub id, folder or short name.

    ``dtype`` defaults to float16 on CUDA and float32 elsewhere. A ``vae`` component makes it a
    :class:`LatentPrior`, otherwise a :class:`PixelPrior`.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    folder = resolve_model(model)
    key = (str(folder.resolve()), str(device), dtype)
    if key in _LOADED:
        return _LOADED[key]
    parts = load_components(folder, REQUIRED_COMPONENTS, OPTIONAL_COMPONENTS, dtype, "a text-to-image prior")
    cls = LatentPrior if "vae" in parts else PixelPrior
    prior = cls(name=model, device=device, dtype=dtype, cache_key=_fingerprint(model, folder), **parts)
    _LOADED[key] = prior
    return prior


def release_priors() -> None:
    """Forget every loaded prior (and free its GPU memory once nothing else holds it)."""
    _LOADED.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
