"""Training of the embedded toy-world prior: a tiny pixel-space text-to-image diffusion model.

The prior lets ``threed generate "a red cube"`` run offline on a CPU and be scored against the toy
world's ground truth. Its parts, each in its own file:

* networks and saved layout (:mod:`threed.toyworld.train_models`): a diffusers ``UNet2DConditionModel``
  on 32 x 32 RGB images in [-1, 1] (no VAE: pixel space, like DeepFloyd IF stage I), conditioned by
  cross-attention on a small transformers ``CLIPTextModel`` trained jointly from scratch on a word-level
  tokenizer; a standard diffusers component folder (``model_index.json``, ``unet/``, ``scheduler/``,
  ``text_encoder/``, ``tokenizer/``) with the EMA weights;
* data (:mod:`threed.toyworld.train_data`): sphere-traced renders of toy-world scenes with DreamFusion's
  view suffixes on the captions, random shading, backgrounds and left-right flips; captions dropped with
  probability 0.1 for classifier-free guidance (Ho & Salimans, 2022);
* objective (:mod:`threed.toyworld.train_objective`): DDPM (Ho et al., 2020) with epsilon prediction by
  default (``prediction_type: v_prediction`` trains v, and the saved scheduler says so), the cosine
  schedule of Nichol & Dhariwal (2021) -- the linear schedule wastes most steps on near-pure noise at
  32 x 32 -- and the Min-SNR-5 loss weighting of Hang et al. (2023), which speeds convergence;
* the loop (:mod:`threed.toyworld.train_loop`, shared with the view prior) and the model card with its
  judged sample grid (:mod:`threed.toyworld.train_card`).

This module is the text prior's plug-in (:class:`TextPrior`) and its entry point (:func:`train`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from threed.config import to_dict
from threed.errors import ThreedError
from threed.toyworld.scenes import catalogue
from threed.toyworld.train_card import model_card, sample_report, samples_section
from threed.toyworld.train_config import ToyworldTrainConfig
from threed.toyworld.train_data import caption_table, render_cache, vocabulary
from threed.toyworld.train_loop import Log, ToyPrior, train_prior
from threed.toyworld.train_models import build_models, build_tokenizer, save_prior, tokenize


class TextPrior(ToyPrior):
    """The text-to-image prior's networks (UNet + text encoder + tokenizer), captioned renders and card."""

    cfg: ToyworldTrainConfig

    def __init__(self, cfg: ToyworldTrainConfig):
        self.cfg = cfg

    def build(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.scenes = catalogue(held_out=d.held_out, asymmetric=d.p_asymmetric > 0, pairs=d.p_pair > 0)
        self.words = vocabulary(self.scenes)
        self.tokenizer = build_tokenizer(self.words, cfg.model.max_tokens)
        self.captions = caption_table(self.tokenizer, self.scenes)
        if (self.captions == self.tokenizer.unk_token_id).any():
            raise ThreedError("a training caption tokenizes to [UNK]; the vocabulary is incomplete")
        self.uncond = tokenize(self.tokenizer, [""])[0]
        unet, self.text_encoder = build_models(cfg.model, len(self.words), d.image_size)
        self.unet = unet.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
        self.modules = {"unet": self.unet, "text_encoder": self.text_encoder}

    def describe(self) -> tuple[str, dict[str, Any]]:
        n_unet = sum(p.numel() for p in self.unet.parameters())
        n_text = sum(p.numel() for p in self.text_encoder.parameters())
        return (f"toy prior: UNet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.3f} M, "
                f"{len(self.scenes)} training scenes, vocabulary {len(self.words)} tokens",
                {"unet_params": n_unet, "text_params": n_text, "scenes": len(self.scenes),
                 "vocabulary": len(self.words)})

    def load_data(self, generator: torch.Generator, log: Log) -> dict[str, Any]:
        self.cache = render_cache(self.cfg.data, self.scenes, generator, log=log)
        return {"cache_size": len(self.cache.images)}

    def batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Cached renders, flipped at random, with their captions (bare, view-suffixed or empty)."""
        b, d, cache = self.cfg.batch_size, self.cfg.data, self.cache
        idx = torch.randint(0, len(cache.images), (b,), generator=generator)
        x = cache.images[idx].float() / 127.5 - 1.0
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).contiguous(memory_format=torch.channels_last)
        u = torch.rand(b, generator=generator)
        slot = torch.where(u < d.p_no_suffix, 0, 1 + cache.label[idx])
        ids = self.captions[cache.scene[idx], slot]
        ids = torch.where((torch.rand(b, generator=generator) < d.p_uncond)[:, None], self.uncond, ids)
        return x, ids

    def predict(self, noisy: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        return self.unet(noisy, t, self.text_encoder(condition).last_hidden_state).sample

    def save(self, out: Path, scheduler: Any) -> None:
        self.unet.to(memory_format=torch.contiguous_format)  # pyright: ignore[reportCallIssue]
        self.scheduler = scheduler
        save_prior(out, self.unet, self.text_encoder, self.tokenizer, scheduler)

    def evaluate(self, out: Path) -> list[dict[str, Any]]:
        return sample_report(self.cfg, self.unet, self.text_encoder, self.tokenizer, self.scheduler,
                             out / "samples.png")

    def card(self, summary: dict[str, Any]) -> str:
        return model_card(summary)


def train(cfg: ToyworldTrainConfig, out: str | Path, resume: bool = False, log: Log = print) -> dict:
    """Train the toy prior and write it to ``out`` (diffusers layout + README.md + samples.png).

    Checkpoints go to ``<out>-train-ckpt`` next to ``out`` every ``cfg.ckpt_minutes``; ``resume``
    continues from there (the render cache is rebuilt from the seed). Returns the run summary.
    """
    return train_prior(TextPrior(cfg), out, resume, log)


def refresh_samples(cfg: ToyworldTrainConfig, out: str | Path) -> list[dict]:
    """Redo ``samples.png`` and the card's samples section of a saved prior (e.g. at another guidance
    scale) without retraining; the rest of its README.md is kept."""
    from threed.guidance.prior import load_prior

    out = Path(out)
    card = out / "README.md"
    if not card.is_file() or "## Samples" not in card.read_text():
        raise ThreedError(f"{out} has no model card with a '## Samples' section; is it a trained toy prior?")
    prior = load_prior(str(out))
    report = sample_report(cfg, prior.unet, prior.text_encoder, prior.tokenizer, prior.scheduler, out / "samples.png")
    head = card.read_text().split("## Samples")[0]
    head = re.sub(r"Guidance scale about [0-9.]+\.", f"Guidance scale about {cfg.cfg_scale}.", head)
    card.write_text(head + samples_section(to_dict(cfg), report))
    return report
