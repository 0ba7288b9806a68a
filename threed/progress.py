"""A stage's live progress on disk: ``stages/<i>-<name>/progress.json``, rewritten atomically as it runs.

The progress bar shows a person at a terminal where a stage is; this file tells the same to a program
watching the run directory from another process (the web app, a script, ``watch cat``) without loading
a checkpoint. It is a report, never an input: resuming reads the checkpoint, not this.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from threed.files import write_bytes_atomic
from threed.run import StageDir


@dataclass
class StageProgress:
    """Where one stage stands."""

    stage: str
    """Stage name (its folder is ``<index>-<stage>``)."""
    index: int
    """Position of the stage in the recipe, from 0."""
    step: int
    """Steps completed."""
    total_steps: int
    """Steps the stage runs in all (after the recipe's ``max_steps`` cap)."""
    loss: float | None = None
    """Loss of the latest logged step."""
    it_per_s: float | None = None
    """Steps per second since this process started (or resumed) the stage."""
    eta_s: float | None = None
    """Seconds left in this stage at that rate."""
    updated: float = field(default_factory=time.time)
    """Unix time of this report."""

    @classmethod
    def measure(cls, stage: str, index: int, step: int, total_steps: int, loss: float | None,
                steps_done: int, elapsed_s: float) -> StageProgress:
        """The report after ``steps_done`` steps took ``elapsed_s`` seconds in this process."""
        rate = steps_done / elapsed_s if steps_done > 0 and elapsed_s > 0 else None
        eta = (total_steps - step) / rate if rate else None
        finite = loss if loss is not None and math.isfinite(loss) else None  # JSON has no NaN
        return cls(stage=stage, index=index, step=step, total_steps=total_steps, loss=finite, it_per_s=rate,
                   eta_s=eta)

    def write(self, stage: StageDir) -> Path:
        return write_bytes_atomic(stage.progress, json.dumps(asdict(self)))

    @classmethod
    def read(cls, stage: StageDir) -> StageProgress | None:
        """The stage's latest report, or None when it has written none (or the file is not one)."""
        try:
            return cls(**json.loads(stage.progress.read_text()))
        except (OSError, ValueError, TypeError):
            return None
