"""A stage's live progress: one report, written to ``stages/<i>-<name>/progress.json`` and handed to callbacks.

The progress bar shows a person at a terminal where a stage is; the same report goes, as it is made, to the
Python API's progress callback (``threed.generate(..., progress=fn)``, where it is ``threed.Progress``), and
to this file, rewritten atomically, for a program watching the run directory from another process (the web
app, a script, ``watch cat``) without loading a checkpoint. It is a report, never an input: resuming reads
the checkpoint, not this.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from threed.files import write_bytes_atomic
from threed.run import StageDir


@dataclass
class Progress:
    """Where one stage of a run stands: what :func:`threed.generate`'s ``progress`` callback gets every
    ``log_every`` steps (and at a stage's first and last step), and what :meth:`threed.Run.progress` reads."""

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
    image: Path | None = None
    """The run's newest validation grid (albedo, shaded and opacity rows of turntable views) when the report
    was made; None before the first. Grids are written every ``val_every`` steps."""

    @classmethod
    def measure(cls, stage: str, index: int, step: int, total_steps: int, loss: float | None,
                steps_done: int, elapsed_s: float, image: Path | None = None) -> Progress:
        """The report after ``steps_done`` steps took ``elapsed_s`` seconds in this process."""
        rate = steps_done / elapsed_s if steps_done > 0 and elapsed_s > 0 else None
        eta = (total_steps - step) / rate if rate else None
        finite = loss if loss is not None and math.isfinite(loss) else None  # JSON has no NaN
        return cls(stage=stage, index=index, step=step, total_steps=total_steps, loss=finite, it_per_s=rate,
                   eta_s=eta, image=image)

    def write(self, stage: StageDir) -> Path:
        """Write the report into ``stage``'s folder (the image path relative to the run, which a reader in
        another folder joins to the run directory it sees)."""
        data = asdict(self)
        data["image"] = os.path.relpath(self.image, stage.run_root) if self.image is not None else None
        return write_bytes_atomic(stage.progress, json.dumps(data))

    @classmethod
    def read(cls, stage: StageDir) -> Progress | None:
        """The stage's latest report, or None when it has written none (or the file is not one)."""
        try:
            data = json.loads(stage.progress.read_text())
            image = data.pop("image", None)
            return cls(**data, image=stage.run_root / image if image else None)
        except (OSError, ValueError, TypeError, AttributeError):  # AttributeError: JSON that is not an object
            return None
