"""threed: text or image to 3D assets by score distillation.

The public Python API (docs/api.md)::

    import threed
    run = threed.generate("a red cube", overrides={"max_steps": 300})
    run.export("glb", faces=5000)
    run = threed.texture("chair.obj", "a red chair")
    blue = threed.edit(run.path, "a blue chair")

Importing this package never compiles anything, never needs CUDA, and imports neither torch nor the rest of
threed: :func:`generate`, :func:`texture`, :func:`edit`, :class:`Run` and :class:`Progress` load :mod:`threed.api`
on first use, so the command line can tune the CPU runtime before torch loads (:mod:`threed.runtime`).
"""

import typing as _typing

from threed.errors import ThreedError
from threed.version import __version__

if _typing.TYPE_CHECKING:
    from threed.api import Progress, Run, edit, generate, texture

__all__ = ["Progress", "Run", "ThreedError", "__version__", "edit", "generate", "texture"]

_API = ("Progress", "Run", "edit", "generate", "texture")


def __getattr__(name: str) -> _typing.Any:
    if name in _API:
        import threed.api

        return getattr(threed.api, name)
    raise AttributeError(f"module 'threed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
