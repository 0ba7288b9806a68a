"""Typed checkpoints: how a stage saves itself, resumes, and hands its geometry to the next stage.

A checkpoint file is written atomically (:mod:`threed.files`), so the last good
checkpoint survives a crash, a NaN, or Ctrl-C in the middle of a save. A stage keeps the checkpoint
before it too (``prev.pt`` beside ``last.pt``): :func:`read_stage_checkpoint` falls back to it, with a
warning naming its step, when ``last.pt`` is damaged later (a disk error, a copy cut short).
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from threed.errors import ThreedError
from threed.files import save_torch_atomic
from threed.run import StageDir

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Everything needed to resume a stage, or to start the next one from its geometry."""

    stage: str
    """Name of the stage that wrote it."""
    step: int
    """Optimisation steps completed."""
    total_steps: int
    """Steps the stage runs in all (after the recipe's ``max_steps`` cap)."""
    scene_kind: str
    """Representation (``nerf``, ...): what ``scene`` holds."""
    scene: dict[str, Any]
    """Scene state_dict (geometry, background, renderer buffers)."""
    scene_config: dict[str, Any]
    """The scene's config as plain data, so the next stage (or an export) rebuilds this scene without the
    recipe (:meth:`threed.scene.Scene.from_checkpoint`)."""
    optimizer: dict[str, Any] | None = None
    guidance: dict[str, Any] = field(default_factory=dict)
    """Trainable state of each guidance of the stage, by position ``"0"``, ``"1"``, ... (VSD's LoRA adapters;
    empty for SDS)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Random states to resume exactly: ``global`` (torch's), ``stage`` (shading draws), ``cameras`` and
    ``guidance`` (the stage's own generators of cameras and of the guidances' timesteps and noise)."""
    loss: float | None = None
    format: int = FORMAT_VERSION

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def save(self, path: str | Path, previous: str | Path | None = None) -> None:
        """Write atomically to ``path``; ``previous`` keeps the checkpoint it replaces (``prev.pt``)."""
        save_torch_atomic(asdict(self), path, previous)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise ThreedError(f"no checkpoint at {path}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ThreedError(f"checkpoint {path} cannot be read ({exc.strerror})") from exc
        return cls.read(data, path, map_location)

    @classmethod
    def read(cls, raw: bytes, path: str | Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
        """The checkpoint whose file holds ``raw`` (read already: an edit hashes and copies the same bytes);
        ``path`` names it in errors."""
        try:
            data = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=False)
        except Exception as exc:
            raise ThreedError(f"checkpoint {path} cannot be read ({exc}); it may be truncated") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or "scene_config" not in data:
            raise ThreedError(f"{path} is not a threed checkpoint of format {FORMAT_VERSION} (with its scene's "
                              f"config); rerun its stage to write one")
        return cls(**data)


def read_stage_checkpoint(stage: StageDir, map_location: str | torch.device = "cpu") -> tuple[Checkpoint, Path]:
    """The newest readable checkpoint of ``stage`` and the file it came from.

    ``last.pt``; when that one cannot be read (or is missing) but ``prev.pt`` can, ``prev.pt``, with a
    warning that names its step. When neither can, the error names both.
    """
    try:
        return Checkpoint.load(stage.checkpoint, map_location), stage.checkpoint
    except ThreedError as last_error:
        if not stage.previous_checkpoint.is_file():
            raise
        try:
            ckpt = Checkpoint.load(stage.previous_checkpoint, map_location)
        except ThreedError as prev_error:
            raise ThreedError(f"{last_error}; and the previous checkpoint cannot be used either: {prev_error}. "
                              f"Rerun the stage (move {stage.root} away)") from prev_error
        log.warning("warning: %s; using the previous checkpoint %s instead, from step %d of %d: the steps after "
                    "step %d are lost (a resume runs them again)", last_error, stage.previous_checkpoint, ckpt.step,
                    ckpt.total_steps, ckpt.step)
        return ckpt, stage.previous_checkpoint


def capture_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
