"""Tiny random-weight diffusion priors saved in the real diffusers folder layouts.

Built from the real diffusers/transformers classes and written with ``save_pretrained`` (the SD and
IF layouts through their pipelines, so ``model_index.json`` is exactly what real repos ship), so
``load_prior`` reads them through the same code as real weights. Nothing is downloaded: the CLIP
tokenizer is built from a ``vocab.json``/``merges.txt`` written here, the others are word-level.
Each builder takes well under a second.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

WORDS = ("a an the of on with red green blue yellow white black small large wooden chair table cube sphere "
         "dog cat car house tree front side back overhead view").split()
"""The vocabulary of the word-level tokenizers (plus ',' and the special tokens)."""

_SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     set_alpha_to_one=False, steps_offset=1)
"""Stable Diffusion's training noise schedule, as its scheduler_config.json ships it."""


def _clip_tokenizer(folder: Path):
    """A byte-level BPE CLIPTokenizer from a vocab.json/merges.txt of letters plus a few merged words."""
    from transformers import CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz,.")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in ("red", "chair", "view"):  # merge left to right: "r e" -> "re", "re d</w>" -> "red</w>"
        prefix = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{prefix} {piece}")
            prefix += piece
            vocab.setdefault(prefix, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def word_level_tokenizer(eos: bool = True, model_max_length: int = 77):
    """A lower-casing word-level tokenizer over :data:`WORDS` (unknown words -> ``<unk>``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(special + list(WORDS) + [","])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos:
        tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                   model_max_length=model_max_length)


def _clip_text_model(vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))


def _cross_attn_unet(channels: int, out_channels: int, sample_size: int, cross_dim: int = 32, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size, in_channels=channels, out_channels=out_channels,
                                block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_dim, attention_head_dim=8, **extra)


def _tiny_vae(**extra):
    """An AutoencoderKL of factor 2 for 16 px images (4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, sample_size=16, **extra)


def _save_parts(path: Path, parts: dict, index: dict) -> None:
    """Each component saved to its subfolder and entered in ``index`` as (library, class name)."""
    for name, part in parts.items():
        part.save_pretrained(path / name)
        library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(part).__name__]


def make_tiny_sd(path: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A Stable-Diffusion-layout folder: UNet (8x8 latents) + AutoencoderKL (factor 2) + CLIP, 16 px.

    ``prediction_type="v_prediction"`` ships a DDIMScheduler like SD 2.1; otherwise a PNDMScheduler like SD 1.x.
    """
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as src:
            tokenizer = _clip_tokenizer(Path(src))
        vae = _tiny_vae()
        if prediction_type == "v_prediction":
            scheduler = DDIMScheduler(**_SD_SCHEDULER, clip_sample=False, prediction_type="v_prediction")
        else:
            scheduler = PNDMScheduler(**_SD_SCHEDULER, skip_prk_steps=True, prediction_type=prediction_type)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=_clip_text_model(len(tokenizer)), tokenizer=tokenizer,
                                       unet=_cross_attn_unet(4, 4, 8), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(path)
    return path


def sentencepiece_model(folder: Path, words: tuple[str, ...] = WORDS) -> Path:
    """A tiny T5-style sentencepiece model (``spiece.model``: pad 0, eos 1, unk 2, no bos) trained here on
    ``words``, in ``folder``."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    sentences = [" ".join(words) + ", " + ", ".join(words)] * 20 + list(words)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=80,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder / "spiece.model"


def sentencepiece_tokenizer_folder(folder: Path) -> Path:
    """A tokenizer folder as DeepFloyd IF ships it: ``spiece.model`` and ``tokenizer_config.json`` (T5Tokenizer),
    no ``tokenizer.json``, so transformers must convert it with sentencepiece and protobuf."""
    sentencepiece_model(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                              "model_max_length": 77}))
    return folder


def make_tiny_if(path: str | Path, seed: int = 0, sentencepiece: bool = False) -> Path:
    """A DeepFloyd-IF-stage-I-layout folder: T5 encoder + word-level tokenizer + 16 px UNet with learned variance.

    ``sentencepiece``: the tokenizer is a T5Tokenizer from a sentencepiece model trained here, in IF's own
    tokenizer layout (:func:`sentencepiece_tokenizer_folder`)."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if sentencepiece:
            with tempfile.TemporaryDirectory() as src:
                tokenizer = T5Tokenizer.from_pretrained(sentencepiece_tokenizer_folder(Path(src)))
        else:
            tokenizer = word_level_tokenizer()
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
            addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift", act_fn="gelu")
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", thresholding=True,
                                  dynamic_thresholding_ratio=0.95, sample_max_value=1.0, prediction_type="epsilon",
                                  variance_type="learned_range")
        pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None,
                          requires_safety_checker=False)
        pipe.save_pretrained(path)
        if sentencepiece:  # IF's layout: the sentencepiece model itself, not a converted tokenizer.json
            for f in (path / "tokenizer").iterdir():
                f.unlink()
            sentencepiece_tokenizer_folder(path / "tokenizer")
    return path


def make_tiny_toy(path: str | Path, seed: int = 0, num_views: int = 0) -> Path:
    """The toy-world prior's layout: pixel UNet + CLIPTextModel + word-level tokenizer + DDPMScheduler, 16 px.

    There is no pipeline class for it, so ``model_index.json`` is written by hand, as the toy-world
    trainer does. ``num_views`` > 0: the toy multi-view prior's layout instead (a camera class embedding,
    a random non-zero one, and ``multiview.json`` for that many views, view prompts on).
    """
    from diffusers import DDPMScheduler

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = word_level_tokenizer(eos=False, model_max_length=16)
        camera = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": 16} if num_views else {}
        parts = {"unet": _cross_attn_unet(3, 3, 16, **camera), "text_encoder": _clip_text_model(len(tokenizer)),
                 "tokenizer": tokenizer, "scheduler": DDPMScheduler(num_train_timesteps=1000)}
        index = {"_class_name": "ToyWorldPrior", "_diffusers_version": "0.42.1"}
        for name, part in parts.items():
            part.save_pretrained(path / name)
            library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
            index[name] = [library, "PreTrainedTokenizerFast" if name == "tokenizer" else type(part).__name__]
        (path / "model_index.json").write_text(json.dumps(index, indent=2))
        if num_views:
            (path / "multiview.json").write_text(json.dumps({"num_views": num_views, "camera_frame": "threed",
                                                            "view_prompts": True}))
    return path


TINY_MVDREAM_UNET: dict[str, Any] = dict(
    image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2, attention_resolutions=[1, 2],
    channel_mult=[1, 2, 2], num_head_channels=16, context_dim=32, camera_dim=16, transformer_depth=1)
"""A tiny MultiViewUNetModel shaped like SD-2.1 MVDream's: two res blocks a level, attention at every level but the
last, heads of fixed width, 8x8 latents (32 channels: its GroupNorms have 32 groups)."""


def make_tiny_mvdream(path: str | Path, seed: int = 0) -> Path:
    """The diffusers-format conversion of MVDream (ashawkey/mvdream-sd2.1-diffusers): MVDream's own UNet class
    (``unet/config.json`` of MultiViewUNetModel arguments, LDM-named random weights from
    ``mvdream_reference``), AutoencoderKL (factor 2, 16 px), CLIP text encoder (width 32) and tokenizer, DDIMScheduler
    (epsilon, SD's schedule); ``model_index.json`` as that repo writes it (the UNet's library is the remote-code
    file ``mv_unet``, no image encoder), no ``multiview.json``."""
    from diffusers import DDIMScheduler
    from mvdream_reference import MultiViewUNetModel, randomize, save_mvdream_unet

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as src:
            tokenizer = _clip_tokenizer(Path(src))
        parts = {"vae": _tiny_vae(), "text_encoder": _clip_text_model(len(tokenizer)), "tokenizer": tokenizer,
                 "scheduler": DDIMScheduler(**_SD_SCHEDULER, clip_sample=False, prediction_type="epsilon")}
        index = {"_class_name": "MVDreamPipeline", "_diffusers_version": "0.25.0", "feature_extractor": [None, None],
                 "image_encoder": [None, None], "requires_safety_checker": False,
                 "unet": ["mv_unet", "MultiViewUNetModel"]}
        _save_parts(path, parts, index)
        save_mvdream_unet(randomize(MultiViewUNetModel(**TINY_MVDREAM_UNET), seed), path / "unet")
        (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


class KnownDenoiser(torch.nn.Module):
    """A stand-in UNet with the UNet2DConditionModel call signature and a known output:

    eps(x_t, t, y) = scale * x_t + mean(y) + t / 1000 (per sample), followed by a junk "variance"
    half when ``learned_variance`` (as IF's UNet). ``grad_enabled`` records autograd's state during
    the last call, so tests can check the UNet ran under no_grad.
    """

    def __init__(self, channels: int, sample_size: int, learned_variance: bool = False, scale: float = 0.5):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(in_channels=channels, out_channels=channels * (2 if learned_variance else 1),
                                      sample_size=sample_size)
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.grad_enabled: bool | None = None

    @staticmethod
    def formula(x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
        return scale * x_t + emb.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 1000

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        self.grad_enabled = torch.is_grad_enabled()
        eps = self.formula(sample, timestep.to(sample.dtype), encoder_hidden_states, self.scale)
        if self.config.out_channels == 2 * self.config.in_channels:
            eps = torch.cat([eps, torch.full_like(eps, 1e3)], dim=1)
        return UNet2DConditionOutput(sample=eps)


class ProjectingDenoiser(torch.nn.Module):
    """A stand-in UNet whose text conditioning acts per pixel, with a known output:

    eps(x_t, t, y) = 0.5 x_t + t / 1000 + reshape(mean_L(y) @ P), with P a fixed random D x (C h w)
    matrix, so different prompts push along different, non-parallel directions (what Perp-Neg's
    projections need to be tested; :class:`KnownDenoiser`'s prompt term is a constant per image).
    """

    def __init__(self, channels: int, sample_size: int, text_dim: int, seed: int = 0):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(in_channels=channels, out_channels=channels, sample_size=sample_size)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(text_dim, channels * sample_size**2, generator=g))

    def formula(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        text = (emb.mean(dim=1).to(self.projection) @ self.projection).view(x_t.shape).to(x_t)
        return 0.5 * x_t + t.view(-1, 1, 1, 1) / 1000 + text

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=self.formula(sample, timestep.to(sample.dtype), encoder_hidden_states))


class FixedOutput(torch.nn.Module):
    """A stand-in UNet that returns ``value`` for every conditioning of a batched call."""

    def __init__(self, value: torch.Tensor, sample_size: int):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(in_channels=value.shape[1], out_channels=value.shape[1], sample_size=sample_size)
        self.register_buffer("value", value)

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=self.value.repeat(sample.shape[0] // self.value.shape[0], 1, 1, 1))


def with_unet(prior, unet: torch.nn.Module):
    """A prior of the same kind sharing ``prior``'s text encoder, tokenizer, scheduler (and VAE), with ``unet``.

    Its text-embedding disk cache is off (it is not a model anyone could load).
    """
    kwargs = dict(name=f"{prior.name}+{type(unet).__name__}", unet=unet, scheduler=prior.scheduler,
                  text_encoder=prior.text_encoder, tokenizer=prior.tokenizer, device=prior.device, dtype=prior.dtype)
    if prior.latent:
        kwargs["vae"] = prior.vae
    return type(prior)(**kwargs)


def make_tiny_zero123(path: str | Path, seed: int = 0, projection_name: str = "cc_projection") -> Path:
    """A Zero-1-to-3 diffusers-conversion layout: UNet (8 = 4 noisy + 4 reference latent channels in, 4 out,
    8x8 latents), AutoencoderKL (factor 2, 16 px), CLIPVisionModelWithProjection (16-d image embeddings) with
    its CLIPImageProcessor, DDIMScheduler, and the camera projection Linear(16 + 4 -> 32) under
    ``projection_name`` (``cc_projection`` as diffusers' community Zero1to3 pipeline names it, ``clip_camera_projection``
as bennyguo's and ashawkey's conversions do).

    ``model_index.json`` names the projection's remote pipeline class, as the real repos do.
    """
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from threed.guidance.zero123 import save_projection

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = _tiny_vae()
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        parts = {"unet": _cross_attn_unet(8, 4, 8), "vae": vae, "image_encoder": encoder,
                 "feature_extractor": processor,
                 "scheduler": DDIMScheduler(**_SD_SCHEDULER, clip_sample=False, prediction_type="epsilon")}
        index = {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                 projection_name: ["pipeline_zero1to3", "CCProjection"]}
        _save_parts(path, parts, index)
        save_projection(torch.nn.Linear(16 + 4, 32), path / projection_name)
        (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def make_tiny_toy_zero123(path: str | Path, seed: int = 0) -> Path:
    """The embedded toy-world view prior's layout at a tiny size (16 px: UNet, CLIP vision encoder, projection),
    written by its own trainer's saver."""
    from threed.toyworld.train_config import ToyworldTrainConfig, ViewModelConfig
    from threed.toyworld.train_models import build_view_models, save_view_prior
    from threed.toyworld.train_objective import build_scheduler

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        parts = build_view_models(ViewModelConfig(block_out_channels=(16, 32), norm_num_groups=8, token_dim=16,
                                                  image_dim=8, encoder_width=16, encoder_layers=1), 16)
        save_view_prior(path, *parts[:2], build_scheduler(ToyworldTrainConfig()), *parts[2:])
    return path


def make_tiny_sd3(path: str | Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-3-layout folder, written by ``StableDiffusion3Pipeline.save_pretrained``:
    SD3Transformer2DModel (8x8 latents, patch 1, joint width 32, pooled 32), AutoencoderKL (factor 2, 16 px,
    SD3's shift and scale), FlowMatchEulerDiscreteScheduler (shift 3, as SD3 ships it), two
    CLIPTextModelWithProjection (width 16, projection 16: concatenated, 32 = the joint width) with CLIP
    tokenizers, and a T5EncoderModel (d_model 32) with a word-level tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as src:
            tokenizer = _clip_tokenizer(Path(src) / "1")
            tokenizer_2 = _clip_tokenizer(Path(src) / "2")

        def clip():
            return CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=16, projection_dim=16, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0,
                eos_token_id=1, pad_token_id=1))

        tokenizer_3 = word_level_tokenizer()
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                     num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0))
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                            attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                            caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=16)
        vae = _tiny_vae(shift_factor=0.0609, scaling_factor=1.5305)
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        vae=vae, text_encoder=clip(), tokenizer=tokenizer, text_encoder_2=clip(),
                                        tokenizer_2=tokenizer_2, text_encoder_3=t5, tokenizer_3=tokenizer_3)
        pipe.save_pretrained(path)
    return path


def hub_cache_snapshot(cache: Path, repo_id: str, folder: Path) -> Path:
    """``folder`` laid out as huggingface_hub's cache holds a snapshot of ``repo_id`` under ``cache`` (refs/main ->
    snapshots/<revision>), so that offline resolution finds it; returns the snapshot folder."""
    import shutil

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    rev = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return repo / "snapshots" / rev
