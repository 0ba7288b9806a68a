"""The original asset of an edit run (``threed edit``): where it came from, and the checkpoint it starts from.

An edit run records its source in its recipe (``edit:`` in ``config.yaml``: the source run, its stage and
step, the SHA-256 of the checkpoint) and keeps a copy of that checkpoint's bytes as ``RUN/source.pt``, so it
resumes, exports and re-renders the original without reading the source run again (which may since have
moved, or been resumed). The source run itself is only ever read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from threed.checkpoint import Checkpoint
from threed.errors import ThreedError
from threed.files import write_bytes_atomic
from threed.run import RunLayout
from threed.scene import Scene


@dataclass
class EditSource:
    """Where an edit run's asset came from (the ``edit`` section of its recipe; absent for other runs)."""

    run: str = ""
    """The source run directory, absolute, as it was when the edit started."""
    prompt: str = ""
    """The source run's prompt (the editing rules' ``source_prompt`` unless ``--source-prompt`` changed it)."""
    stage: str = ""
    """The stage of the source run whose final checkpoint the edit starts from."""
    step: int = 0
    """That checkpoint's step (the stage's last)."""
    checkpoint: str = ""
    """That checkpoint file (absolute)."""
    sha256: str = ""
    """SHA-256 of the checkpoint file's bytes; the edit run's ``source.pt`` holds the same bytes."""


@dataclass
class LoadedSource:
    """The original asset's checkpoint, read once: its bytes (copied into the edit run) and its contents."""

    data: bytes
    checkpoint: Checkpoint

    def scene(self, device: torch.device | str) -> Scene:
        """The original scene, frozen (eval mode, no gradients): what an edit step renders as the source."""
        scene = Scene.from_checkpoint(self.checkpoint, device)
        return scene.requires_grad_(False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(edit: EditSource, layout: RunLayout) -> LoadedSource:
    """The checkpoint an edit run starts from: its own copy (``source.pt``) once it has one, else the source run's
    file. Either must have the recorded SHA-256: a changed original is refused rather than silently edited."""
    path = layout.source if layout.source.is_file() else Path(edit.checkpoint)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ThreedError(f"cannot read the original asset's checkpoint {path} ({exc.strerror}): the edit run "
                          f"{layout.root} needs it") from exc
    if edit.sha256 and sha256(data) != edit.sha256:
        raise ThreedError(f"{path} is not the checkpoint this edit started from (its SHA-256 differs from the "
                          f"recorded {edit.sha256[:12]}...): the source run changed; start a new edit")
    return LoadedSource(data, Checkpoint.read(data, path))


def keep_source(source: LoadedSource, layout: RunLayout) -> None:
    """Copy the original's checkpoint into the edit run (``source.pt``), atomically."""
    write_bytes_atomic(layout.source, source.data)
