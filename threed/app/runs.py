"""The web app's view of its output folder: run names, what each run holds, and nothing outside it.

Every request from a page names a run by its folder name. :func:`run_dir` is the one gate from such
a name to a path: a name that is not a plain folder name (``../../etc``, ``/etc``, ``a/b``) or that
resolves outside the output folder (a symlink) is refused with a :class:`ThreedError`, so no endpoint
reads or writes outside it.
"""

from __future__ import annotations

import json
import re
import stat
import time
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from threed.api import Run
from threed.errors import ThreedError
from threed.files import atomic_path
from threed.progress import Progress
from threed.recipe import RecipeConfig, load_run_config, slugify
from threed.run import RunLayout

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run's folder name: letters, digits, ``.``, ``_``, ``-``; not starting with a dot (no ``..``)."""
JOB_FILE = "job.json"
"""Written by the app's job queue into each run it starts: state and message (see :mod:`threed.app.jobs`)."""
LOG_FILE = "log.txt"
"""The job's terminal output (progress bars, messages)."""

RunState = Literal["queued", "running", "cancelling", "done", "failed", "cancelled", "unfinished"]


def run_dir(root: Path, name: str, must_exist: bool = True) -> Path:
    """The folder of run ``name`` inside ``root``; a :class:`ThreedError` for any name that leaves it."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise ThreedError(f"{name!r} is not a run name: a run is named by its folder in the output folder "
                          f"(letters, digits, '.', '_' and '-', not starting with '.')")
    root = Path(root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ThreedError(f"run {name!r} is outside the output folder {root}")
    if must_exist and not RunLayout(path).is_run:
        raise ThreedError(f"there is no run {name!r} in {root}")
    return path


def new_run_name(root: Path, text: str) -> str:
    """A fresh name ``<slug>-<timestamp>`` that no folder in ``root`` has yet (``-2``, ``-3``... on clashes)."""
    base = f"{slugify(text)}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (Path(root) / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def list_runs(root: Path) -> list[str]:
    """Names of the runs in ``root`` (folders holding a ``config.yaml``), newest first."""
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    runs = {}
    for p in root.iterdir():
        if RUN_NAME.fullmatch(p.name) and p.resolve().parent == root:
            try:
                st = RunLayout(p).config.stat()
            except OSError:  # not a run, or removed while the folder was read
                continue
            if stat.S_ISREG(st.st_mode):
                runs[p.name] = st.st_mtime
    return sorted(runs, key=runs.get, reverse=True)


@dataclass
class RunView:
    """What a page shows of one run, read from its folder."""

    path: Path
    """The run folder."""
    prompt: str
    """The run's prompt ("" for image-only runs)."""
    stages: list[str]
    """Stage names in recipe order."""
    job: dict = field(default_factory=dict)
    """The job file's content (state, message, times); empty for runs the app did not start."""
    progress: Progress | None = None
    """The latest report of the furthest stage that has written one."""
    preview: Path | None = None
    """The newest validation grid."""
    glb: Path | None = None
    ply: Path | None = None
    obj: Path | None = None
    video: Path | None = None
    views: Path | None = None
    """Field-vs-asset contact sheet of the export."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def exported(self) -> bool:
        return self.glb is not None or self.obj is not None or self.ply is not None

    @property
    def state(self) -> RunState:
        """The job file's state; for runs without one, ``done`` when exported, else ``unfinished``."""
        return self.job.get("state") or ("done" if self.exported else "unfinished")


@lru_cache(maxsize=1024)
def _run_config(run: str, signature: tuple[int, int]) -> RecipeConfig | None:
    """The resolved recipe of a run's ``config.yaml``, read once per version of the file.

    Every page listing reads every run: parsing each YAML each time cost 13 ms a run, so twenty pages
    following twenty runs kept the server busy (docs/reliability.md). ``signature`` (mtime, size) is
    the cache key that tells a rewritten file (a resume with overrides) from the one read before. A config
    this version cannot read (or one removed meanwhile) gives None: the run is still listed, with what its
    folder holds.
    """
    try:
        return load_run_config(run)
    except (ThreedError, OSError):
        return None


def view_run(path: Path) -> RunView:
    """Read run folder ``path`` (already checked by :func:`run_dir`) into a :class:`RunView`.

    The live progress and the preview are the Python API's (:meth:`threed.api.Run.progress`): the report
    a ``progress`` callback gets, as the run's job process wrote it."""
    try:
        st = RunLayout(path).config.stat()
        cfg = _run_config(str(path), (st.st_mtime_ns, st.st_size))
    except OSError:
        cfg = None
    view = RunView(path=path, prompt=cfg.prompt if cfg else "", stages=[s.name for s in cfg.stages] if cfg else [],
                   job=read_job(path))
    if cfg is not None:
        view.progress = Run(path, cfg).progress()
        view.preview = view.progress.image if view.progress else None
    export = RunLayout(path).export
    for kind in ("glb", "ply", "obj"):
        if export.model(kind).is_file():
            setattr(view, kind, export.model(kind))
    view.video = export.turntable_written()
    view.views = export.views if export.views.is_file() else None
    return view


def read_job(path: Path) -> dict:
    try:
        job = json.loads((path / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return job if isinstance(job, dict) else {}


def obj_zip(path: Path) -> Path | None:
    """``export/model-obj.zip``: the OBJ with its material and textures, one download (rebuilt when stale)."""
    export = RunLayout(path).export
    obj = export.model("obj")
    if not obj.is_file():
        return None
    members = [obj] + [p for p in sorted(export.root.iterdir()) if p.name.startswith("model") and
                       (p.suffix == ".mtl" or p.name.startswith("model_") and p.suffix == ".png")]
    out = export.obj_zip
    if out.is_file() and out.stat().st_mtime >= max(p.stat().st_mtime for p in members):
        return out
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in members:
            zf.write(p, p.name)
    return out
