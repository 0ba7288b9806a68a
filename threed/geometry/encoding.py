"""Multiresolution hash encoding (Müller et al., "Instant Neural Graphics Primitives", SIGGRAPH 2022).

A point in [0, 1]^3 is looked up in ``n_levels`` grids whose resolutions grow geometrically from
``base_resolution`` to ``max_resolution``. Each level trilinearly interpolates ``n_features_per_level``
trainable features stored at the 8 surrounding grid vertices; coarse levels index their vertices
densely, levels too fine for the table use a spatial hash. The level features are concatenated.

Two paths share one module, one signature (``N x 3 -> N x n_levels * F``) and one parameter
tensor: pure PyTorch (CPU and CUDA, differentiable twice so analytic normals can be trained) and
tiny-cuda-nn's fused kernel, used when the input is on CUDA and tiny-cuda-nn imports. The PyTorch
path reproduces tiny-cuda-nn's indexing exactly (resolution rule, +0.5 vertex offset, dense
strides, coherent prime hash, 8-aligned per-level table sizes, level-major parameter layout), so
either path can train or load the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from threed.backends import Backend, FastPath, use_fast_path

_PRIMES = (1, 2654435761, 805459861)
"""tiny-cuda-nn's coherent prime hash factors for x, y, z (x keeps factor 1 for cache coherence)."""


@dataclass
class HashGridConfig:
    """Hyper-parameters of the multiresolution hash grid (Instant-NGP, table 1).

    CPU-sized defaults: 16 levels x 2^19 entries costs seconds per step in pure PyTorch (the dense
    table gradient and optimiser update dominate), 8 x 2^16 about a tenth of a second.
    """

    n_levels: int = 8
    """Number of resolution levels."""
    n_features_per_level: int = 2
    """Trainable features stored per grid vertex."""
    log2_hashmap_size: int = 16
    """Log2 of the maximum number of table entries per level."""
    base_resolution: int = 16
    """Grid vertices per axis at the coarsest level."""
    max_resolution: int = 512
    """Grid vertices per axis at the finest level; the per-level scale is derived from it."""
    backend: Backend = "auto"
    """``auto``: tiny-cuda-nn when importable and on CUDA, else PyTorch; ``cuda`` insists on it."""

    def __post_init__(self):
        if self.n_levels < 1 or self.n_features_per_level < 1:
            raise ValueError("need n_levels >= 1 and n_features_per_level >= 1")
        if not 2 <= self.base_resolution <= self.max_resolution:
            raise ValueError(f"need 2 <= base_resolution <= max_resolution, got {self.base_resolution} "
                             f"and {self.max_resolution}")
        if not 4 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must lie in [4, 30], got {self.log2_hashmap_size}")

    @property
    def per_level_scale(self) -> float:
        """Growth factor b with base * b^(L-1) = max (Instant-NGP eq. 3)."""
        if self.n_levels == 1:
            return 1.0
        return math.exp(math.log(self.max_resolution / self.base_resolution) / (self.n_levels - 1))

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level


@dataclass(frozen=True)
class _Level:
    scale: float
    resolution: int
    size: int
    offset: int
    hashed: bool


def _levels(cfg: HashGridConfig) -> list[_Level]:
    """Per-level layout, computed in float32 exactly as tiny-cuda-nn's ``grid_scale`` does."""
    log2_b = np.log2(np.float32(cfg.per_level_scale), dtype=np.float32)
    levels, offset = [], 0
    for i in range(cfg.n_levels):
        scale = np.exp2(np.float32(i) * log2_b, dtype=np.float32) * np.float32(cfg.base_resolution) - np.float32(1.0)
        resolution = int(math.ceil(float(scale))) + 1
        dense = resolution ** 3
        size = min(-(-dense // 8) * 8, 2 ** cfg.log2_hashmap_size)
        levels.append(_Level(float(scale), resolution, size, offset, hashed=dense > size))
        offset += size
    return levels



class HashGrid(nn.Module):
    """Multiresolution hash encoding; ``forward(x: N x 3 in [0, 1]) -> N x n_output_dims``.

    ``params`` is one flat table, level-major with ``n_features_per_level`` features per entry: the
    layout of tiny-cuda-nn's parameter vector, so both backends train the same tensor and checkpoints
    do not care which one ran. The PyTorch path computes all levels' corner rows with contiguous
    integer ops and gathers them in one ``index_select``; gradients reach the table (nonzero only
    at touched entries) and the input (through the interpolation weights), and are themselves
    differentiable (analytic normals).
    """

    _scale: Tensor
    _size: Tensor
    _offset: Tensor
    _strides: Tensor
    _primes: Tensor
    _01: Tensor

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3):
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"HashGrid encodes 3-D points, got n_input_dims={n_input_dims}")
        self.cfg = cfg
        self.levels = _levels(cfg)
        self.n_input_dims = n_input_dims
        self.n_output_dims = cfg.n_output_dims
        self.n_entries = self.levels[-1].offset + self.levels[-1].size
        self.params = nn.Parameter(torch.empty(self.n_entries * cfg.n_features_per_level).uniform_(-1e-4, 1e-4))
        # Only the low log2_hashmap_size bits of a hash survive, so the primes are reduced first; int32
        # indices then suffice whenever no product reaches 2^31, and halve the memory traffic.
        self._hash_mask = 2 ** cfg.log2_hashmap_size - 1
        fits = (max(lv.resolution for lv in self.levels) + 2) * self._hash_mask < 2 ** 31 and self.n_entries < 2 ** 31
        idx = torch.int32 if fits else torch.int64
        self._index_dtype = idx
        buffers = {"_scale": ([lv.scale for lv in self.levels], torch.float32),
                   "_size": ([lv.size for lv in self.levels], idx),
                   "_offset": ([lv.offset for lv in self.levels], idx),
                   "_strides": ([[1, lv.resolution, lv.resolution ** 2] for lv in self.levels], idx),
                   "_primes": ([p & self._hash_mask for p in _PRIMES], idx),
                   "_01": ([0, 1], idx)}
        for name, (values, dtype) in buffers.items():
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)
        n_dense = sum(not lv.hashed for lv in self.levels)  # coarse levels are dense, fine ones hashed
        self._groups = [(a, b, h) for a, b, h in ((0, n_dense, False), (n_dense, cfg.n_levels, True)) if b > a]
        self.__dict__["_tcnn"] = None  # built lazily on CUDA; kept out of the module tree and state_dict

    @property
    def table(self) -> Float[Tensor, "E F"]:
        """``params`` viewed as one row of ``n_features_per_level`` features per table entry."""
        return self.params.view(self.n_entries, self.cfg.n_features_per_level)

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        if use_fast_path(self.cfg.backend, x, TCNN):
            return self._forward_tcnn(x)
        return self._forward_torch(x)

    def _forward_torch(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        n, L, F = x.shape[0], self.cfg.n_levels, self.cfg.n_features_per_level
        # Corner-major layout (vertex bits, level, point): points innermost keeps every op contiguous.
        pos = x.to(torch.float32).T.contiguous()[:, None, :] * self._scale[None, :, None] + 0.5  # 3 L N
        cell = torch.floor(pos.detach())
        frac = pos - cell  # carries the input gradient
        cell = cell.to(self._index_dtype)
        w = torch.stack([1.0 - frac, frac], dim=1)  # 3 2 L N: linear weights of the two vertices per axis
        weights = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]  # 2 2 2 L N, corner 4bx+2by+bz
        rows = torch.empty(2, 2, 2, L, n, dtype=self._index_dtype, device=x.device)
        for start, stop, hashed in self._groups:
            lv = slice(start, stop)
            vert = cell[:, None, lv] + self._01[:, None, None]  # 3 2 k N
            out = rows[:, :, :, lv]
            if hashed:  # low log2_hashmap_size bits of x ^ y p1 ^ z p2: mask the primes and each term first
                t = (vert * self._primes[:, None, None, None]).bitwise_and_(self._hash_mask)
                torch.bitwise_xor((t[0][:, None] ^ t[1][None, :])[:, :, None], t[2][None, None], out=out)
            else:
                t = vert * self._strides[lv].T[:, None, :, None]
                torch.add((t[0][:, None] + t[1][None, :])[:, :, None], t[2][None, None], out=out)
                torch.remainder(out, self._size[lv, None], out=out)
            out.add_(self._offset[lv, None])
        feats = _interpolate(self.table, rows.view(8, L * n), weights.view(8, L * n).to(self.table.dtype))
        return feats.view(L, n, F).permute(1, 0, 2).reshape(n, L * F)

    def _forward_tcnn(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        enc = self.__dict__["_tcnn"]
        if enc is None or enc.params.device != x.device:
            import tinycudann as tcnn  # lazy: optional CUDA dependency

            with torch.cuda.device(x.device):
                enc = tcnn.Encoding(self.n_input_dims, tcnn_config(self.cfg), dtype=torch.float32)
            if enc.params.numel() != self.params.numel():
                raise RuntimeError(f"tiny-cuda-nn hash grid has {enc.params.numel()} parameters, the PyTorch "
                                   f"layout {self.params.numel()}; their level layouts disagree")
            self.__dict__["_tcnn"] = enc
        # tcnn reads its ``params`` attribute at every call: point it at ours (one tensor, both paths).
        enc._parameters["params"] = self.params
        return enc(x.to(torch.float32).contiguous()).float()

    def extra_repr(self) -> str:
        return (f"levels={self.cfg.n_levels}, features={self.cfg.n_features_per_level}, "
                f"resolutions={[lv.resolution for lv in self.levels]}, entries={self.n_entries}, "
                f"backend={self.cfg.backend}")


_WIDE = {4: torch.float32, 8: torch.float64, 16: torch.complex128}
"""A dtype as wide as one table row, by bytes: gathering rows as single items is ~5x faster on CPU."""


def _gather(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` (rows of any shape) -> ``rows.shape + (F,)``; differentiable when grad mode is on."""
    F = table.shape[1]
    wide = _WIDE.get(F * table.element_size())
    if wide is None or not table.is_contiguous() or (torch.is_grad_enabled() and table.requires_grad):
        return table.index_select(0, rows.reshape(-1)).view(*rows.shape, F)
    items = table.view(wide).view(-1).index_select(0, rows.reshape(-1))
    return items.view(table.dtype).view(*rows.shape, F)


class _Interpolate(torch.autograd.Function):
    """``out[m] = sum_c weights[c, m] * table[rows[c, m]]`` over the 8 corners c: gather + weighted sum.

    The table gradient is a 1-D ``index_add`` per feature, with int64 rows (PyTorch's int32 and 2-D
    paths there are several times slower). The backward is written in differentiable ops, so double
    backward (analytic normals trained through the orientation loss) works.
    """

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, rows, weights)
        return torch.einsum("cm,cmf->mf", weights, _gather(table, rows))

    @staticmethod
    def backward(ctx, grad: Tensor):
        table, rows, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:  # one 1-D scatter per feature: several times faster than a 2-D one
            flat = rows.reshape(-1).long()
            zeros = table.new_zeros(table.shape[0])
            grad_table = torch.stack([zeros.index_add(0, flat, (weights * grad[:, f]).reshape(-1))
                                      for f in range(table.shape[1])], dim=1)
        if ctx.needs_input_grad[2]:
            grad_weights = torch.einsum("cmf,mf->cm", _gather(table, rows), grad)
        return grad_table, None, grad_weights


def _interpolate(table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    return _Interpolate.apply(table, rows, weights)


def tcnn_config(cfg: HashGridConfig) -> dict:
    """The tiny-cuda-nn encoding config with ``cfg``'s hyper-parameters."""
    return {"otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features_per_level,
            "log2_hashmap_size": cfg.log2_hashmap_size, "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale, "interpolation": "Linear"}


TCNN = FastPath("hash grid", "tinycudann",
                "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
                "encoding.backend")


def make_encoding(cfg: HashGridConfig, n_input_dims: int = 3) -> HashGrid:
    """The position encoding for ``cfg``: ``N x n_input_dims`` in [0, 1] -> ``N x n_output_dims``.

    One module for both backends: it runs tiny-cuda-nn's fused kernel when ``cfg.backend`` allows,
    tiny-cuda-nn imports and the input is on CUDA, else the PyTorch path, on the same parameters.
    """
    return HashGrid(cfg, n_input_dims)
