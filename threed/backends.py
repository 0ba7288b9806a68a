"""Which path a hot kernel takes: the CUDA library when it can be used, else the PyTorch reference.

Every kernel with a fast path (hash grid, ray marching, rasterization, splatting) has a config field
``backend: auto | cuda | torch`` and asks :func:`use_fast_path` with it. ``auto`` takes the fast path
exactly when the input is on CUDA and the library imports; ``cuda`` insists and says what is missing;
``torch`` never takes it. Libraries are imported lazily, so ``import threed`` never needs CUDA.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from threed.errors import ThreedError

Backend = Literal["auto", "cuda", "torch"]


@dataclass(frozen=True)
class FastPath:
    """A CUDA library that accelerates one kernel."""

    what: str
    """The kernel, as errors name it (e.g. "hash grid")."""
    module: str
    """The module to import (e.g. "tinycudann")."""
    install: str
    """How a user gets it, for the error message."""
    config_key: str
    """The config field that selects the backend, for the error message."""

    def available(self) -> bool:
        return importable(self.module)


@functools.cache
def import_error(module: str) -> str | None:
    """Why ``module`` does not import (the exception's type and first line), or None when it does; a CUDA
    extension may also fail with a non-ImportError without a GPU."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return None


def importable(module: str) -> bool:
    """Whether ``module`` imports (:func:`import_error`)."""
    return import_error(module) is None


def use_fast_path(backend: Backend, x: Tensor, fast: FastPath) -> bool:
    """True when ``fast`` should run on ``x``; raises a clear error when ``backend='cuda'`` cannot be honoured."""
    if backend not in ("auto", "cuda", "torch"):
        raise ValueError(f"unknown {fast.what} backend {backend!r}; choose auto, cuda or torch")
    if backend == "torch":
        return False
    if backend == "cuda":
        if not x.is_cuda:
            raise ThreedError(f"{fast.what} backend 'cuda' needs a CUDA device; set device=cuda or "
                              f"{fast.config_key}=auto")
        if not fast.available():
            raise ThreedError(f"{fast.what} backend 'cuda' needs {fast.module} ({fast.install}); or set "
                              f"{fast.config_key}=auto to use the PyTorch path")
        return True
    return x.is_cuda and fast.available()
