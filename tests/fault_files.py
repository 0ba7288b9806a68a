"""Faults in threed's own file writes (:mod:`threed.files`), for tests: a write that stores half its bytes,
then fails as on a full disk, or then kills the process.

Every file threed replaces atomically is first written under a temporary name (``.<stem>.<token>.tmp<suffix>``)
opened by :mod:`threed.files`; put :func:`half_writes` in the place of that module's ``open`` and it hands
back a :class:`HalfWrite` for the destinations chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class HalfWrite:
    """A file whose first write stores half its bytes (flushed), then calls ``fail`` (which raises or kills)."""

    def __init__(self, f, fail: Callable[[], None]):
        self._f, self._fail = f, fail

    def write(self, data) -> int:
        data = bytes(data)
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        self._fail()
        raise AssertionError("fail() must raise or end the process")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def destination(temporary: Path) -> Path:
    """The file a temporary name stands for: ``.last.1a2b3c4d.tmp.pt`` -> ``last.pt``."""
    return temporary.with_name(temporary.name[1:].split(".")[0] + temporary.suffix)


def half_writes(broken: Callable[[Path], bool], fail: Callable[[], None]) -> Callable[..., Any]:
    """An ``open`` for :mod:`threed.files` under which each write of a destination for which
    ``broken(destination)`` is true is a :class:`HalfWrite` that ends with ``fail``."""
    def opener(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)  # noqa: SIM115 - handed to the caller, which closes it
        return HalfWrite(f, fail) if "w" in mode and broken(destination(Path(file))) else f
    return opener
