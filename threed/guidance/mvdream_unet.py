"""MVDream's own UNet (``MultiViewUNetModel``, Shi et al. 2023) as a diffusers ``UNet2DConditionModel``.

The public diffusers-format conversion of MVDream (``ashawkey/mvdream-sd2.1-diffusers``) keeps MVDream's
class: ``unet/config.json`` holds its constructor arguments (``model_channels``, ``channel_mult``,
``attention_resolutions``, ``num_head_channels``, ``camera_dim``, ...) and the weights keep the LDM/OpenAI key
names (``time_embed.0``, ``camera_embed.2``, ``input_blocks.N.M...``, ``middle_block...``, ``out.2``). Its
layers are Stable Diffusion 2.1's: ResBlocks, linear-projection spatial transformers with GEGLU feed-forwards,
the camera through an MLP added to the timestep embedding. The only new operation, self-attention across the
views of an object, is :class:`threed.guidance.multiview.MultiViewAttnProcessor`'s job once the UNet is loaded.

So the config becomes an SD-2.1-style diffusers config with a projection class embedding for the camera, and
the weights go through diffusers' own LDM -> diffusers key conversion (``convert_ldm_unet_checkpoint``, the code
``from_single_file`` uses), ``camera_embed`` standing in for the LDM class embedding ``label_emb.0`` it maps to
``class_embedding``. Every source weight must be used and every target weight filled with its shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.loading import weights_variant

WEIGHTS_NAME = "diffusion_pytorch_model"

SUPPORTED: dict[str, Any] = {
    "dims": 2, "conv_resample": True, "num_classes": None, "use_scale_shift_norm": False, "resblock_updown": False,
    "n_embed": None, "adm_in_channels": None, "num_attention_blocks": None, "disable_self_attentions": None,
    "disable_middle_self_attn": False, "use_new_attention_order": False, "use_spatial_transformer": True,
    "ip_dim": 0,
}
"""``MultiViewUNetModel`` options with no diffusers counterpart here -> the only value accepted (their default,
or SD 2.1's). ``ip_dim`` > 0 is ImageDream (an image-prompt resampler in the cross-attention)."""

IGNORED = ("dropout", "use_checkpoint", "use_fp16", "use_bf16", "legacy", "num_heads_upsample", "ip_weight",
           "_class_name", "_diffusers_version", "_name_or_path")
"""Options that change nothing at inference (``legacy`` and ``num_heads_upsample`` only matter for the
non-transformer attention blocks MVDream does not use)."""

USED = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
        "channel_mult", "num_heads", "num_head_channels", "transformer_depth", "context_dim", "camera_dim",
        "use_linear_in_transformer")

CAMERA_KEYS = {"camera_embed.0": "label_emb.0.0", "camera_embed.2": "label_emb.0.2"}
"""MVDream's camera MLP -> the LDM class-embedding MLP, which diffusers' converter maps to ``class_embedding``."""


def _config_error(folder: Path, what: str) -> ThreedError:
    return ThreedError(f"{folder / 'config.json'}: {what}; threed converts MVDream's MultiViewUNetModel as "
                       "published (ashawkey/mvdream-sd2.1-diffusers)")


def diffusers_config(mv: dict[str, Any], folder: Path = Path(".")) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config equivalent to a ``MultiViewUNetModel`` config (``unet/config.json``)."""
    unknown = sorted(set(mv) - set(SUPPORTED) - set(IGNORED) - set(USED))
    if unknown:
        raise _config_error(folder, f"unknown MultiViewUNetModel options {unknown}")
    unsupported = {k: mv[k] for k, v in SUPPORTED.items() if k in mv and mv[k] != v}
    if unsupported:
        supported = ", ".join(f"{k}={SUPPORTED[k]}" for k in unsupported)
        raise _config_error(folder, f"options {unsupported} have no diffusers UNet2DConditionModel counterpart here "
                                    f"(supported: {supported})")
    missing = [k for k in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
                           "context_dim", "camera_dim") if mv.get(k) is None]
    if missing:
        why = " (a MultiViewUNetModel without a camera embedding is not a multi-view prior)" * ("camera_dim" in missing)
        raise _config_error(folder, f"{', '.join(missing)} not set{why}")
    base, mult = int(mv["model_channels"]), [int(m) for m in mv.get("channel_mult", (1, 2, 4, 8))]
    channels = [base * m for m in mult]
    blocks = mv["num_res_blocks"]
    if not isinstance(blocks, int):
        if len(set(blocks)) != 1:
            raise _config_error(folder, f"num_res_blocks {blocks} differs between levels (diffusers' converter "
                                        "takes one number)")
        blocks = int(blocks[0])
    depth = mv.get("transformer_depth", 1)
    if not isinstance(depth, int) or not isinstance(mv["context_dim"], int):
        raise _config_error(folder, "transformer_depth and context_dim must be single numbers")
    head_channels, num_heads = int(mv.get("num_head_channels", -1)), int(mv.get("num_heads", -1))
    if head_channels == -1 and num_heads == -1:
        raise _config_error(folder, "neither num_head_channels nor num_heads is set")
    heads = [ch // head_channels if head_channels != -1 else num_heads for ch in channels]
    attention = [2 ** level in mv["attention_resolutions"] for level in range(len(mult))]
    for level, ch in enumerate(channels):
        if (attention[level] or level == len(mult) - 1) and ch % heads[level]:
            raise _config_error(folder, f"{ch} channels do not split into {heads[level]} attention heads")
    return {
        "sample_size": mv.get("image_size", 32), "in_channels": mv["in_channels"], "out_channels": mv["out_channels"],
        "block_out_channels": channels, "layers_per_block": blocks,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "attention_head_dim": heads,  # diffusers' name for the number of heads (SD 2.1's [5, 10, 20, 20])
        "cross_attention_dim": mv["context_dim"], "transformer_layers_per_block": depth,
        "use_linear_projection": bool(mv.get("use_linear_in_transformer", True)),
        "class_embed_type": "projection", "projection_class_embeddings_input_dim": mv["camera_dim"],
        "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
        "downsample_padding": 1,
    }


def read_weights(folder: Path, fp16: bool) -> dict[str, Tensor]:
    """The UNet folder's state dict: safetensors before ``.bin``, the fp16 variant when ``fp16`` and present
    (or when it is all there is)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    variant = weights_variant(names, fp16)
    stem = WEIGHTS_NAME + (f".{variant}" if variant else "")
    if (folder / f"{stem}.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / f"{stem}.safetensors")
    if (folder / f"{stem}.bin").is_file():
        return torch.load(folder / f"{stem}.bin", map_location="cpu", weights_only=True)
    raise ThreedError(f"{folder} holds no MVDream UNet weights ({stem}.safetensors or {stem}.bin; found "
                      f"{sorted(names) or 'nothing'}); download the model again")


def _names(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def convert_weights(state: dict[str, Tensor], config: dict[str, Any], target: dict[str, torch.Size],
                    folder: Path = Path(".")) -> dict[str, Tensor]:
    """MVDream's state dict (LDM key names) -> ``UNet2DConditionModel`` keys; ``target`` the shapes it must fill.

    A source weight the conversion leaves unused, a target weight it does not fill, or one of another shape is a
    :class:`ThreedError` that names them."""
    try:
        from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint
    except ImportError as exc:
        import diffusers

        raise ThreedError("loading MVDream needs diffusers' LDM UNet conversion (diffusers.loaders.single_file_utils), "
                          f"which diffusers {diffusers.__version__} lacks; upgrade diffusers") from exc
    camera = [f"{k}.{p}" for k in CAMERA_KEYS for p in ("weight", "bias")]
    if absent := [k for k in camera if k not in state]:
        raise ThreedError(f"{folder}: MVDream's camera embedding weights {_names(absent)} are missing")
    if labels := sorted(k for k in state if k.startswith("label_emb.")):
        raise ThreedError(f"{folder}: class-label weights {_names(labels)} (num_classes) have no place beside the "
                          "camera embedding")
    renamed = {}
    for key, value in state.items():
        for old, new in CAMERA_KEYS.items():
            key = new + key[len(old):] if key.startswith(old + ".") else key
        renamed[LDM_UNET_KEY + key] = value
    converted = {k: v for k, v in convert_ldm_unet_checkpoint(renamed, config).items() if v is not None}
    source = {id(v): k for k, v in state.items()}
    fitting = {id(v) for k, v in converted.items() if k in target}
    unused = [k for k, v in state.items() if id(v) not in fitting]
    renamed_as = {source.get(id(v)): k for k, v in converted.items() if k not in target}
    problems = []
    if unused:
        problems.append("weights no UNet2DConditionModel key receives: "
                        + _names([f"{k} (as {renamed_as[k]})" if k in renamed_as else k for k in unused]))
    if unfilled := sorted(set(target) - set(converted)):
        problems.append(f"UNet weights nothing fills: {_names(unfilled)}")
    if wrong := [f"{k} {tuple(converted[k].shape)} != {tuple(s)}" for k, s in target.items()
                 if k in converted and converted[k].shape != s]:
        problems.append(f"shapes that differ from the config's: {_names(wrong)}")
    if problems:
        raise ThreedError(f"{folder}: MVDream's weights do not fit the UNet its config.json describes: "
                          + "; ".join(problems))
    return converted


def load_mvdream_unet(folder: Path, dtype: torch.dtype) -> Any:
    """A diffusers ``UNet2DConditionModel`` (with a 16-number projection class embedding for the camera) from a
    ``MultiViewUNetModel`` folder (``config.json`` + weights); cross-view attention is installed by the caller
    (:func:`threed.guidance.multiview.make_multiview`)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    try:
        mv = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ThreedError(f"{folder / 'config.json'}: not a readable MultiViewUNetModel config ({exc})") from exc
    config = diffusers_config(mv, folder)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    weights = convert_weights(read_weights(folder, fp16=dtype == torch.float16), config,
                              {k: v.shape for k, v in unet.state_dict().items()}, folder)
    unet.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
    return unet.eval()
