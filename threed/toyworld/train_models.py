"""The toy priors' networks, built fresh, and their saved layouts (diffusers / transformers folders).

* text-to-image: a diffusers ``UNet2DConditionModel`` on 32 x 32 RGB in [-1, 1] (no VAE: pixel space,
  like DeepFloyd IF stage I), cross-attention on a small transformers ``CLIPTextModel`` trained jointly
  from scratch on a word-level tokenizer;
* view-conditioned (Zero123's layout at toy size): the UNet takes [noisy view, reference] and one token
  ``cc_projection([image embedding, pose])`` from a tiny ``CLIPVisionModelWithProjection``, with the pose
  also as its class embedding.

Each saver writes through :func:`threed.files.atomic_folder`, so a failed write leaves the previous prior whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from threed.files import atomic_folder
from threed.guidance.zero123 import save_projection
from threed.toyworld.train_config import PriorModelConfig, UNetSizes, ViewModelConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
"""Token ids 0-3: padding, unknown word, begin and end of text."""


def toy_unet(cfg: UNetSizes, resolution: int, in_channels: int, cross_attention_dim: int, **extra):
    """A fresh toy ``UNet2DConditionModel`` (3 output channels), cross-attention only at the lowest resolution."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=in_channels, out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups, **extra)


def build_tokenizer(words: Sequence[str], max_tokens: int):
    """Word-level tokenizer: lowercase, split on whitespace and punctuation, unknown words -> [UNK].

    Wrapped as a transformers ``PreTrainedTokenizerFast`` with [BOS] ... [EOS] around every text.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_tokens)


def tokenize(tokenizer, texts: Sequence[str]) -> Tensor:
    """Token ids ``B x max_tokens``, padded like Stable Diffusion pipelines (no attention mask)."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_models(cfg: PriorModelConfig, vocab_size: int, resolution: int):
    """A fresh UNet2DConditionModel and CLIPTextModel of the configured sizes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = toy_unet(cfg, resolution, 3, cfg.text_hidden)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    return unet, text_encoder


def save_prior(out: Path, unet, text_encoder, tokenizer, scheduler) -> None:
    """Write the diffusers component layout: ``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``."""
    import diffusers

    with atomic_folder(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        scheduler.save_pretrained(tmp / "scheduler")
        index = {"_class_name": "ToyworldPixelPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "unet": ["diffusers", "UNet2DConditionModel"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_view_models(cfg: ViewModelConfig, resolution: int):
    """Fresh components: UNet2DConditionModel (6 channels in, pose class embedding), the projection
    ``Linear(image_dim + 4, token_dim)``, a CLIPVisionModelWithProjection and its CLIPImageProcessor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = toy_unet(cfg, resolution, 6, cfg.token_dim, class_embed_type="projection",
                    projection_class_embeddings_input_dim=4)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=cfg.encoder_width, intermediate_size=2 * cfg.encoder_width, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=max(1, cfg.encoder_width // 16), image_size=resolution, patch_size=cfg.encoder_patch,
        projection_dim=cfg.image_dim))
    processor = CLIPImageProcessor(size={"shortest_edge": resolution},
                                   crop_size={"height": resolution, "width": resolution})
    return unet, torch.nn.Linear(cfg.image_dim + 4, cfg.token_dim), encoder, processor


def save_view_prior(out: Path, unet, projection: torch.nn.Linear, scheduler, encoder, processor) -> None:
    """Write ``unet/``, ``scheduler/``, ``cc_projection/``, ``image_encoder/``, ``feature_extractor/`` and
    ``model_index.json`` (via a sibling folder, so a failed write leaves the previous prior whole)."""
    import diffusers

    with atomic_folder(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        save_projection(projection, tmp / "cc_projection")
        encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        processor.save_pretrained(tmp / "feature_extractor")
        index = {"_class_name": "ToyworldZero123", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                 "feature_extractor": ["transformers", "CLIPImageProcessor"], "cc_projection": ["threed", "CCProjection"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
