"""Atomic writes: a file (or a folder) appears whole under its name, or not at all.

Everything threed writes that another process or a later run reads -- checkpoints, ``config.yaml``,
``progress.json``, exported meshes, job and batch indexes, trained priors -- is written to a temporary
name beside its destination and moved into place with ``os.replace`` (atomic on POSIX within one file
system), so a crash, Ctrl-C or a full disk mid-write leaves the previous file (or none), never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success it replaces ``path``, on error it goes.

    The suffix is kept because some writers (ffmpeg, Pillow) choose the container from it. The temporary
    name starts with a dot so file browsers hide it while it is being written, and carries a random token
    so concurrent writers of one destination never share a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
    # O_EXCL: never clobber another writer's file; mode 0o666 so the umask applies as for any new file.
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, flushed to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return path


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (checkpoints, training states)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling folder ``<name>.partial``; on success it replaces the folder ``path``.

    A folder cannot be swapped in one rename while the old one exists, so the old folder is removed just
    before the rename: a crash in that instant leaves ``<name>.partial`` whole, never a mix of old and new.
    On error the partial folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.parent / f"{path.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
