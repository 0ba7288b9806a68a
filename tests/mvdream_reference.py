"""A plain-torch reimplementation of MVDream's ``MultiViewUNetModel`` and its camera code, for tests.

Written from the structure of the published code (bytedance/MVDream ``ldm/modules/diffusionmodules/
openaimodel.py``, ``ldm/modules/attention.py``, ``camera_utils.py``, and its diffusers-format port
ashawkey/mvdream_diffusers ``mv_unet.py``) with the same module tree, so ``state_dict()`` has the LDM key names
the published weights use. Attention is written out (softmax of scaled dot products), not taken from diffusers,
so the conversion is checked against an independent forward. Only what SD-2.1 MVDream uses is here: ResBlocks
without scale-shift norm, linear-projection spatial transformers, convolutional down/upsampling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

# ---- camera_utils.py ------------------------------------------------------------------------------------------


def create_camera_to_world_matrix(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's look-at camera on the unit sphere of a +Y-up OpenGL world (azimuth 0 on +Z, 90 on +X)."""
    elevation, azimuth = np.radians(elevation), np.radians(azimuth)
    x = np.cos(elevation) * np.sin(azimuth)
    y = np.sin(elevation)
    z = np.cos(elevation) * np.cos(azimuth)
    camera_pos = np.array([x, y, z])
    forward = -camera_pos / np.linalg.norm(camera_pos)
    right = np.cross(forward, np.array([0, 1, 0]))
    right /= np.linalg.norm(right)
    new_up = np.cross(right, forward)
    new_up /= np.linalg.norm(new_up)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.array([right, new_up, -forward]).T
    cam2world[:3, 3] = camera_pos
    return cam2world


def convert_opengl_to_blender(camera_matrix: np.ndarray) -> np.ndarray:
    """Left-multiplies the world by MVDream's ``flip_yz`` (x, y, z) -> (x, -z, y): Y-up to Blender's Z-up. The
    camera's own axes stay OpenGL's (columns right, up, back)."""
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return flip_yz @ camera_matrix


def normalize_camera(camera_matrix: Tensor) -> Tensor:
    """Camera positions scaled onto the unit sphere (``norm + 1e-8`` as MVDream divides), flattened to 16."""
    camera_matrix = camera_matrix.reshape(-1, 4, 4).clone()
    translation = camera_matrix[:, :3, 3]
    camera_matrix[:, :3, 3] = translation / (torch.norm(translation, dim=1, keepdim=True) + 1e-8)
    return camera_matrix.reshape(-1, 16)


def get_camera(num_frames: int, elevation: float = 15, azimuth_start: float = 0, azimuth_span: float = 360,
               blender_coord: bool = True) -> Tensor:
    """MVDream's cameras of one object: ``num_frames`` azimuths ``azimuth_span / num_frames`` apart from
    ``azimuth_start``, one elevation, as flattened camera-to-world matrices on the unit sphere (in float64 until
    the end: straight above, cos(90 deg) = 6e-17 keeps an azimuth-dependent roll where threed's float32 look-at
    falls back to right = +X)."""
    angle_gap = azimuth_span / num_frames
    cameras = []
    for azimuth in np.arange(azimuth_start, azimuth_span + azimuth_start, angle_gap):
        camera_matrix = create_camera_to_world_matrix(elevation, azimuth)
        if blender_coord:
            camera_matrix = convert_opengl_to_blender(camera_matrix)
        cameras.append(camera_matrix.flatten())
    return torch.tensor(np.stack(cameras, 0)).float()


# ---- openaimodel.py / attention.py ----------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000) -> Tensor:
    """Sinusoidal embedding, cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context

        def split(t: Tensor) -> Tensor:  # b n (h d) -> b h n d
            return t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dim_head), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Self-attention over the tokens of all ``num_frames`` views of an object, then cross-attention per view."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        bf, n, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * n, c)  # (b f) n c -> b (f n) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, n, c)  # b (f n) c -> (b f) n c
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    def __init__(self, in_channels: int, n_heads: int, d_head: int, context_dim: int, depth: int = 1):
        super().__init__()
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock3D(inner, n_heads, d_head, context_dim)
                                                 for _ in range(depth)])
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # b c h w -> b (h w) c
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        return self.proj_out(y).transpose(1, 2).reshape(b, c, h, w) + x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class CondSequential(nn.Sequential):
    """MVDream's ``TimestepEmbedSequential``: each layer gets what it takes."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor,  # pyright: ignore[reportIncompatibleMethodOverride]
                num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class MultiViewUNetModel(nn.Module):
    """MVDream's UNet: SD 2.1's with the camera MLP added to the timestep embedding and multi-view attn1.

    The constructor takes the keys of the published ``unet/config.json`` (:attr:`config` gives them back).
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: list[int], channel_mult: list[int],
                 num_head_channels: int, context_dim: int, camera_dim: int, transformer_depth: int = 1):
        super().__init__()
        self.config = dict(image_size=image_size, in_channels=in_channels, model_channels=model_channels,
                           out_channels=out_channels, num_res_blocks=num_res_blocks,
                           attention_resolutions=list(attention_resolutions), channel_mult=list(channel_mult),
                           num_head_channels=num_head_channels, transformer_depth=transformer_depth,
                           context_dim=context_dim, use_checkpoint=False, camera_dim=camera_dim)
        self.model_channels = model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb), nn.SiLU(), nn.Linear(emb, emb))

        def transformer(ch: int) -> SpatialTransformer3D:
            return SpatialTransformer3D(ch, ch // num_head_channels, num_head_channels, context_dim, transformer_depth)

        self.input_blocks = nn.ModuleList([CondSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(CondSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = CondSequential(ResBlock(ch, emb), transformer(ch), ResBlock(ch, emb))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(CondSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, camera: Tensor, num_frames: int = 1) -> Tensor:
        """``x``: (N*F) x C x H x W, the F views of each object adjacent; ``timesteps``, ``context`` and ``camera``
        per view."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        emb = emb + self.camera_embed(camera)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, num_frames)
        return self.out(h)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every weight random (MVDream zero-initialises its output convolutions and projections, which would hide
    them from a comparison): normalisation gains 1 + N(0, 0.1^2), matrices and kernels N(0, 1 / fan_in), biases
    N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            norm = isinstance(model.get_submodule(name.rsplit(".", 1)[0]), (nn.GroupNorm, nn.LayerNorm))
            if norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1 * noise)
    return model


def save_mvdream_unet(model: MultiViewUNetModel, folder: str | Path, state: dict[str, Tensor] | None = None,
                      name: str = "diffusion_pytorch_model.safetensors", config: dict | None = None) -> Path:
    """``folder`` as the diffusers-format conversion lays out MVDream's UNet: ``config.json`` (the class's
    constructor arguments) and the LDM-named weights. ``state`` / ``config`` override what is written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "MultiViewUNetModel", "_diffusers_version": "0.25.0", **(config or model.config)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.contiguous() for k, v in (model.state_dict() if state is None else state).items()}
    if name.endswith(".bin"):
        torch.save(state, folder / name)
    else:
        save_file(state, folder / name)
    return folder
