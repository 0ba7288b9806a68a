"""The run directory: every path of one run, named once.

::

    RUN/
      .lock                       held (fcntl.flock) by the one process writing the run, naming its pid
      config.yaml                 the fully resolved recipe (what --resume and export read)
      input/                      threed texture: the user's mesh file as given, and mesh.npz, what the run reads
      source.pt                   an edit run's copy of the original asset's checkpoint (threed.source)
      stages/<i>-<name>/          one folder per stage, in recipe order
        last.pt                   the stage's newest checkpoint (threed.checkpoint)
        prev.pt                   the one before it, the fallback when last.pt is damaged
        progress.json             live progress for watchers in other processes (threed.progress)
        val/step-<step>.png       validation grids
      export/                     what the export writes (threed.export.pipeline)
        model.<glb|obj|ply>, model.mtl, model_albedo.png, views.png, export.json,
        turntable.mp4 (or .gif), gaussians.ply

Everything that reads or writes a run -- the stage loop, the recipe runner, the export pipeline, the
web app and the batch runner -- asks a :class:`RunLayout` for its paths instead of joining strings.
A layout names paths (it reads no file but to say whether one exists) and holds the run's lock: whoever
writes a run (a run or resume, an export, a turntable render, a batch job) holds it for as long as it
writes, and a second writer is refused with the holder's pid (:meth:`RunLayout.hold`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from threed.errors import ThreedError
from threed.files import LockedError, exclusive_lock, lock_holder, stale_temporaries

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "last.pt"
PREVIOUS_CHECKPOINT_FILE = "prev.pt"
PROGRESS_FILE = "progress.json"
LOCK_FILE = ".lock"
SOURCE_FILE = "source.pt"


@dataclass(frozen=True)
class StageDir:
    """The folder of stage ``index`` (named ``name``) of a run."""

    root: Path
    index: int
    name: str

    @property
    def run_root(self) -> Path:
        """The run directory this stage folder is in."""
        return self.root.parent.parent

    @property
    def checkpoint(self) -> Path:
        """The stage's newest checkpoint, rewritten atomically."""
        return self.root / CHECKPOINT_FILE

    @property
    def previous_checkpoint(self) -> Path:
        """The checkpoint before :attr:`checkpoint`: kept for when that one is damaged."""
        return self.root / PREVIOUS_CHECKPOINT_FILE

    @property
    def progress(self) -> Path:
        return self.root / PROGRESS_FILE

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    def val_image(self, step: int) -> Path:
        """The validation grid written after ``step`` steps."""
        return self.val_dir / f"step-{step:06d}.png"

    def val_images(self) -> list[Path]:
        """Validation grids written so far, oldest first."""
        return sorted(self.val_dir.glob("step-*.png"))

    @property
    def has_checkpoint(self) -> bool:
        """Whether the stage has written a checkpoint (the newest, or the one before it)."""
        return self.checkpoint.is_file() or self.previous_checkpoint.is_file()


@dataclass(frozen=True)
class ExportDir:
    """The files of a run's export."""

    root: Path

    def model(self, fmt: str, name: str = "model") -> Path:
        """``model.glb`` / ``model.obj`` / ``model.ply`` (the OBJ's MTL and texture are written beside it)."""
        return self.root / f"{name}.{fmt}"

    @property
    def views(self) -> Path:
        """Field-vs-asset contact sheet."""
        return self.root / "views.png"

    @property
    def report(self) -> Path:
        """``export.json``: what was exported, from which checkpoint, and how well it matches the field."""
        return self.root / "export.json"

    @property
    def turntable(self) -> Path:
        """The turntable video (a GIF with the same stem when ffmpeg is missing)."""
        return self.root / "turntable.mp4"

    def turntable_written(self) -> Path | None:
        """The turntable that exists, MP4 or its GIF fallback."""
        return next((p for p in (self.turntable, self.turntable.with_suffix(".gif")) if p.is_file()), None)

    @property
    def gaussians(self) -> Path:
        """The Gaussians of a Gaussian stage, 3DGS PLY layout."""
        return self.root / "gaussians.ply"

    @property
    def obj_zip(self) -> Path:
        """The OBJ with its material and textures in one archive (the web app's download)."""
        return self.root / "model-obj.zip"


@dataclass(frozen=True)
class RunLayout:
    """The paths of run directory ``root`` whose recipe has stages ``stage_names`` (in order).

    ``stage_names`` may be empty when only the run-level paths are needed (config, export).
    """

    root: Path
    stage_names: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "stage_names", tuple(self.stage_names))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def source(self) -> Path:
        """An edit run's copy of the checkpoint of the asset it edits (``threed edit``; :mod:`threed.source`)."""
        return self.root / SOURCE_FILE

    @property
    def is_run(self) -> bool:
        """Whether ``root`` holds a run (its ``config.yaml``)."""
        return self.config.is_file()

    def stage(self, index: int, name: str | None = None) -> StageDir:
        """Stage ``index``'s folder; ``name`` defaults to the layout's own name for that stage."""
        if name is None:
            name = self.stage_names[index]
        return StageDir(self.root / "stages" / f"{index}-{name}", index, name)

    @property
    def stages(self) -> list[StageDir]:
        """Every stage's folder, in recipe order."""
        return [self.stage(i, n) for i, n in enumerate(self.stage_names)]

    def stage_named(self, name: str) -> StageDir | None:
        """The folder of the stage called ``name``, or None when the recipe has no such stage."""
        return next((s for s in self.stages if s.name == name), None)

    def latest_checkpoint(self) -> StageDir | None:
        """The last stage (in recipe order) that has written a checkpoint, finished or not."""
        return next((s for s in reversed(self.stages) if s.has_checkpoint), None)

    @property
    def export(self) -> ExportDir:
        return ExportDir(self.root / "export")

    @property
    def inputs(self) -> Path:
        """Copies of the run's input files (``threed texture``'s mesh), so the run needs nothing outside it."""
        return self.root / "input"

    @property
    def input_mesh(self) -> Path:
        """The user's mesh as the run read it (:class:`threed.mesh_files.UserMesh`, exact arrays)."""
        return self.inputs / "mesh.npz"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @contextlib.contextmanager
    def hold(self, command: str) -> Iterator[None]:
        """Be the one writer of this run while the block runs (the folder is made if missing).

        ``command`` (``threed export``) is what a refused writer is told holds the run. Temporary files that
        a killed writer left in the stages' folders and the export are removed once the lock is held (only
        the holder writes there; the app's OBJ zip, packed from finished files without the lock, is left).
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(self.lock, command))
            except LockedError as exc:
                pid = re.match(r"pid (\d+)", exc.holder)
                stop = f", or stop it (kill {pid.group(1)})" if pid else ""
                raise ThreedError(f"{self.root} is in use: {exc.holder} is writing it. Wait for it to finish{stop}, "
                                  f"then run this again") from None
            zip_tmp = f".{self.export.obj_zip.stem}."  # the app packs that one without the lock
            for tmp in stale_temporaries(self.root / "stages") + stale_temporaries(self.export.root):
                if not tmp.name.startswith(zip_tmp):
                    tmp.unlink(missing_ok=True)
            yield

    def holder(self) -> str | None:
        """Who is writing the run now (``pid 123 (threed generate)``), or None."""
        return lock_holder(self.lock) if self.lock.is_file() else None
