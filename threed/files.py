"""Atomic writes: a file (or a folder) appears whole under its name, or not at all.

Everything threed writes that another process or a later run reads -- checkpoints, ``config.yaml``,
``progress.json``, exported meshes, job and batch indexes, trained priors -- is written to a temporary
name beside its destination and moved into place with ``os.replace`` (atomic on POSIX within one file
system), so a crash, Ctrl-C or a full disk mid-write leaves the previous file (or none), never a torn one.
A write that fails for want of space raises :class:`DiskFullError`, which names the file and says that the
previous one is kept.

:func:`exclusive_lock` is the one lock of threed (a run directory, a batch folder): an ``fcntl.flock`` that
the kernel releases when its process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from threed.errors import ThreedError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full disk (or a full quota)."""


class DiskFullError(ThreedError):
    """A write found no space left; the file it was replacing (if any) is unchanged."""

    def __init__(self, path: Path, exc: OSError):
        self.path = path
        kept = f"the previous {path.name} is kept unchanged" if path.exists() else f"no {path.name} was written"
        super().__init__(f"no space left on the device to write {path} ({exc.strerror}): {kept}; "
                         f"free some space and run the command again")


def _temporary(path: Path) -> Path:
    """A new hidden name beside ``path`` with its suffix (``.last.1a2b3c4d.tmp.pt``)."""
    return path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"


def _keep_as(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path``, atomically: a hard link (no data copied), or a copy where the file
    system has no links. ``path`` itself is not touched, so at every moment both names hold a whole file."""
    tmp = _temporary(previous)
    try:
        try:
            os.link(path, tmp)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise
            shutil.copy2(path, tmp)
        os.replace(tmp, previous)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, previous: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success it replaces ``path``, on error it goes.

    ``previous``: keep the file being replaced under this name (``last.pt`` -> ``prev.pt``), so one damaged
    file never loses everything. The old file becomes ``previous`` before the new one takes its name, so a
    crash at any instant leaves ``path`` whole (old or new) and ``previous`` whole.

    The suffix is kept because some writers (ffmpeg, Pillow) choose the container from it. The temporary
    name starts with a dot so file browsers hide it while it is being written, and carries a random token
    so concurrent writers of one destination never share a temporary file. A full disk raises
    :class:`DiskFullError` and leaves ``path`` and ``previous`` as they were.
    """
    path = Path(path)
    tmp_path = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never clobber another writer's file; mode 0o666 so the umask applies as for any new file.
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp_path
        if previous is not None and path.is_file():
            _keep_as(path, Path(previous))
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise DiskFullError(path, exc) from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files under ``folder`` that a killed writer left (what :func:`atomic_path` names)."""
    return sorted(p for p in Path(folder).rglob(".*.tmp*") if p.is_file() and ".tmp" in p.name)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, flushed to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return path


def save_torch_atomic(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> Path:
    """``torch.save(obj, path)``, atomically and flushed to disk (checkpoints, training states); ``previous``
    keeps the file it replaces (:func:`atomic_path`).

    The bytes go through a Python file, so a full disk is an ``OSError`` (ENOSPC) and a clear
    :class:`DiskFullError`, where torch's own writer would raise a bare ``RuntimeError``.
    """
    import torch

    path = Path(path)
    with atomic_path(path, previous) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
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


class LockedError(ThreedError):
    """Another process holds the lock; ``holder`` is what it wrote there (``pid 123 (threed export)``)."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {holder}")


def _read_holder(f) -> str:
    f.seek(0)
    return f.read().strip() or "another process"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, owner: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (made if missing) while the block runs.

    ``owner`` (e.g. ``threed export``) is written into the file with this process's id, so a process that is
    refused can say who holds it (:class:`LockedError`). The kernel drops the lock when the holder exits or
    is killed, so a crash never leaves a run locked. Each call opens the file anew, so a second call -- from
    another process or from this one -- is refused while the first holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(path, _read_holder(f)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({owner})\n")
        f.flush()
        yield


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock at ``path`` (as :class:`LockedError` says it), or None when nobody does."""
    try:
        f = open(path)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(f)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None
