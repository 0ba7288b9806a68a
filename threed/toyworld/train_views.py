"""Training of the embedded toy-world *view-conditioned* prior: a tiny pixel-space Zero-1-to-3.

It lets ``threed generate --image assets/examples/<toy>.png`` run offline on a CPU
(``image_model=toyworld``) and be scored against the toy world's ground truth. Same world, same
objective and same entry point as the text prior (``scripts/train_toyworld_prior.py --mode views``):

* Data: every toy-world scene (shapes x colours and the asymmetric "cube with a <colour> front"
  family, minus the held-out captions) sphere-traced from ``views_per_scene`` random cameras of
  :class:`threed.cameras.CameraSampler` over white, shaded albedo or lambertian at random. A training
  pair is two renders of one scene: the reference, framed exactly as image-to-3D frames a user's
  photo (:func:`threed.reference.image.frame_object`), and the target at its pose relative to the
  reference (:func:`threed.guidance.zero123.relative_pose`, the ``zero123`` convention). Pairs are
  mirrored left-right at random with the azimuth change negated (every scene is symmetric about x = 0).
* Model: Zero123's layout at toy size. A diffusers ``UNet2DConditionModel`` on 32 x 32 RGB taking
  [noisy target, reference] (6 channels) and one cross-attention token ``cc_projection([image
  embedding, pose])``, the image embedding from a tiny transformers ``CLIPVisionModelWithProjection``
  trained jointly (Zero123 uses a frozen CLIP; here nothing pretrained exists). The pose is also the
  UNet's class embedding (``class_embed_type="projection"``), which reaches every resolution. The
  first version had no image encoder: after 2,312 steps its samples did not depend on the reference
  at all (same noise, same sample for a red cube and a white pyramid; the denoising loss with a
  shuffled reference was within 5 % of the true one), so the global token is what carries identity.
* Objective: DDPM v-prediction, cosine schedule, x0 errors weighted by min(max(SNR, 1), 5) (the text
  prior's epsilon + Min-SNR-5 weighs the high-noise steps, where the reference decides colour and
  layout, by the SNR alone: see ``ViewTrainConfig.prediction_type``); the reference and the token are
  dropped together with probability 0.1 for classifier-free guidance on the image.
* Output: ``model_index.json``, ``unet/``, ``scheduler/``, ``cc_projection/``, ``image_encoder/``,
  ``feature_extractor/``, a model card and
  ``samples.png`` (per row: the reference, then ground truth and a sample at Δazimuth 0, 90, 180, 270).

Like the text prior it trains in the shared loop (:mod:`threed.toyworld.train_loop`), its configs, data,
networks and card in ``train_config``, ``train_data``, ``train_models`` and ``train_card``; this module is
its plug-in (:class:`ViewPrior`) and entry point (:func:`train_views`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from threed.guidance.zero123 import clip_pixels, clip_preprocessing
from threed.toyworld.scenes import catalogue
from threed.toyworld.train_card import view_model_card, view_sample_report
from threed.toyworld.train_config import ViewTrainConfig
from threed.toyworld.train_data import render_views, training_pairs
from threed.toyworld.train_loop import Log, ToyPrior, train_prior
from threed.toyworld.train_models import build_view_models, save_view_prior


class ViewPrior(ToyPrior):
    """The view prior's networks (UNet, pose projection, CLIP image encoder), view pairs and card."""

    cfg: ViewTrainConfig

    def __init__(self, cfg: ViewTrainConfig):
        self.cfg = cfg

    def build(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.scenes = catalogue(held_out=d.held_out, asymmetric=True, pairs=False)
        self.unet, self.projection, self.encoder, self.processor = build_view_models(cfg.model, d.image_size)
        # the saved processor's own size and statistics, which guidance reads back (ViewConditionedPrior)
        self.clip_size, mean, std = clip_preprocessing(self.processor)
        self.clip_mean, self.clip_std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.modules = {"unet": self.unet, "projection": self.projection, "image_encoder": self.encoder}

    def describe(self) -> tuple[str, dict[str, Any]]:
        n = sum(p.numel() for m in self.modules.values() for p in m.parameters())
        return (f"toy view prior: {n / 1e6:.2f} M params, {len(self.scenes)} training scenes",
                {"params": n, "scenes": len(self.scenes)})

    def load_data(self, generator: torch.Generator, log: Log) -> dict[str, Any]:
        self.cache = render_views(self.cfg.data, self.scenes, generator, log=log)
        return {"views": len(self.cache.images)}

    def batch(self, generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Target views, with (framed reference, relative pose, keep): keep is 0 where both are dropped (CFG)."""
        b = self.cfg.batch_size
        target, ref, pose = training_pairs(self.cache, self.cfg.data, b, generator)
        keep = (torch.rand(b, generator=generator) >= self.cfg.data.p_uncond).float()
        return target, (ref, pose, keep)

    def predict(self, noisy: Tensor, t: Tensor, condition: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        ref, pose, keep = condition
        emb = self.encoder(clip_pixels((ref + 1) / 2, self.clip_size, self.clip_mean, self.clip_std)).image_embeds
        tokens = self.projection(torch.cat([emb, pose], dim=-1))[:, None, :] * keep[:, None, None]
        x = torch.cat([noisy, ref * keep[:, None, None, None]], dim=1)
        return self.unet(x, t, tokens, class_labels=pose).sample

    def save(self, out: Path, scheduler: Any) -> None:
        save_view_prior(out, self.unet, self.projection, scheduler, self.encoder, self.processor)

    def evaluate(self, out: Path) -> list[dict[str, Any]]:
        return view_sample_report(self.cfg, out, out / "samples.png")

    def card(self, summary: dict[str, Any]) -> str:
        return view_model_card(summary)


def train_views(cfg: ViewTrainConfig, out: str | Path, resume: bool = False, log: Log = print) -> dict:
    """Train the view prior and write it to ``out`` (diffusers-like layout + README.md + samples.png)."""
    return train_prior(ViewPrior(cfg), out, resume, log)
