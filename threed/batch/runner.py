"""The batch runner: hand jobs to workers (local processes or Ray tasks), retry crashes, keep the index.

One asset fits one GPU, so a batch scales by running many jobs at once, each in its own run directory
``OUT/<id>/``. The runner is the only writer of ``OUT/index.json`` and holds ``OUT/.batch.lock`` while it
runs, so two batches never write the same folder. A job that crashes, or whose worker dies, is retried
(``retries`` times), resuming from its last checkpoint; bad input (a :class:`ThreedError`) is recorded as
``invalid`` and not retried; neither stops the other jobs. Ctrl-C stops the workers, marks their jobs
``interrupted`` and leaves everything resumable: rerun the same command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm import tqdm

from threed.batch.index import BatchIndex, Entry
from threed.batch.jobs import Job
from threed.batch.worker import LOG_NAME, Task
from threed.errors import ThreedError
from threed.files import LockedError, exclusive_lock

LOCK_NAME = ".batch.lock"


@dataclass
class BatchConfig:
    """How a batch runs (the jobs themselves come from :func:`threed.batch.jobs.read_jobs`)."""

    recipe: str = "quickstart"
    """Recipe name or YAML path, used for every job."""
    overrides: list[str] = field(default_factory=list)
    """``KEY=VALUE`` recipe overrides for every job (as for ``threed generate``)."""
    out: str = "outputs/batch"
    """Folder of the batch: ``<out>/<job id>/`` per job and ``<out>/index.json``."""
    workers: int | None = None
    """Jobs at once. Local default: one per GPU, or ``min(4, cores // 2)`` CPU workers; Ray default: as
    many as the cluster's GPUs (GPU jobs) or CPUs / ``cpus_per_job`` can run."""
    retries: int = 2
    """Extra attempts for a job that crashes or whose worker dies (bad input is never retried)."""
    ray: str | None = None
    """``None``: local worker processes; ``auto`` (the running cluster), ``local`` (start one on this machine)
    or a cluster address (``HOST:PORT``, ``ray://HOST:10001``)."""
    cpus_per_job: int = 1
    """CPUs each Ray task asks for."""

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ThreedError(f"--workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ThreedError(f"--retries must be 0 or more, got {self.retries}")
        if self.cpus_per_job < 1:
            raise ThreedError(f"cpus_per_job must be at least 1, got {self.cpus_per_job}")


@runtime_checkable
class Pool(Protocol):
    """What the runner needs from its workers (:class:`~threed.batch.local.LocalPool`, ``RayPool``)."""

    slots: int
    """Jobs it runs at once."""

    @property
    def busy(self) -> int: ...

    def submit(self, task: Task) -> str: ...

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out/.batch.lock`` (released by the kernel if this process dies) or say who holds it."""
    if out.exists() and not out.is_dir():
        raise ThreedError(f"--out {out} is a file; the batch needs a folder")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(out / LOCK_NAME, "threed batch"))
        except LockedError as exc:
            raise ThreedError(f"another threed batch ({exc.holder}) is running in {out}; wait for it to finish or "
                              f"choose another --out") from None
        yield


def _image_problem(job: Job, recipe_cfg, recipe: str) -> str | None:
    """Why an image job cannot run with this recipe (``None`` if it can)."""
    if job.image is None or recipe_cfg.image_model is not None:
        return None
    from threed.recipes import recipe_summaries

    image_recipes = [r.name for r in recipe_summaries() if r.image_model]
    hint = (f"use an image recipe: --recipe {' or '.join(image_recipes)}" if image_recipes else
            "this version of threed ships no image-to-3D recipe yet (see docs/batch.md)")
    return (f"{job.source}: image-to-3D is not available with recipe {recipe!r}: it has no image_model "
            f"(a view-conditioned prior) to use {Path(job.image).name} with; {hint}")


def _make_pool(cfg: BatchConfig, device: str, jobs: int) -> Pool:
    if cfg.ray is not None:
        from threed.batch.cluster import RayPool

        return RayPool(cfg.ray, gpu={"cuda": True, "cpu": False}.get(device), cpus_per_job=cfg.cpus_per_job,
                       slots=cfg.workers)
    import torch

    from threed.batch.local import LocalPool

    gpus = list(range(torch.cuda.device_count())) if device != "cpu" else []
    workers = cfg.workers or len(gpus) or max(1, min(4, (os.cpu_count() or 1) // 2))
    return LocalPool(min(workers, jobs), gpus or None)


def _record(entry: Entry, result: dict[str, Any], out: Path) -> None:
    def rel(path: str) -> str:
        return os.path.relpath(path, out)

    entry.files = {kind: rel(p) for kind, p in result.get("files", {}).items()}
    entry.error = result.get("error")
    entry.wall_s = result.get("wall_s", entry.wall_s)
    entry.worker = result.get("worker", entry.worker)
    entry.resumed_from = result.get("resumed_from")


def _progress(index: BatchIndex, ids: list[str]) -> dict[str, int]:
    counts = index.counts(ids)
    return {k: counts.get(k, 0) for k in ("done", "failed", "invalid", "running", "pending")}


def run_batch(cfg: BatchConfig, jobs: list[Job]) -> BatchIndex:
    """Run every job that is not already done; return the index (also written to ``<out>/index.json``)."""
    from threed.recipe import load_recipe
    from threed.recipes import available_recipes, recipe_path

    out = Path(cfg.out).resolve()
    recipe_cfg = load_recipe(cfg.recipe, cfg.overrides)  # a bad recipe or override: one error, before any job
    path = recipe_path(cfg.recipe)  # a recipe file by absolute path, for workers with another working directory
    recipe = cfg.recipe if available_recipes().get(cfg.recipe) == path else str(path.resolve())
    with _locked(out):
        index = BatchIndex.load(out)
        index.settings = {"recipe": cfg.recipe, "overrides": list(cfg.overrides), "retries": cfg.retries,
                          "ray": cfg.ray}
        ids = [job.id for job in jobs]
        todo: deque[Task] = deque()
        skipped = 0
        for job in jobs:
            entry = index.add(job)
            if index.finished(job.id):
                skipped += 1
                continue
            problem = job.problem or _image_problem(job, recipe_cfg, cfg.recipe)
            entry.status, entry.error, entry.attempts = ("invalid", problem, 0) if problem else ("pending", None, 0)
            entry.crashes = []
            if not problem:
                todo.append(Task(job, recipe, tuple(cfg.overrides), str(out / job.id)))
        index.save(ids)
        if skipped:
            tqdm.write(f"batch: {skipped} of {len(jobs)} jobs already done in {out} (skipped)", file=sys.stderr)
        if todo:
            _run(cfg, index, ids, todo, recipe_cfg.device)
        return index


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a cluster scheduler's pre-emption) like Ctrl-C: stop cleanly, stay resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: BatchConfig, index: BatchIndex, ids: list[str], todo: deque[Task], device: str) -> None:
    with _terminate_as_interrupt():
        _schedule(cfg, index, ids, todo, _make_pool(cfg, device, len(todo)))


def _schedule(cfg: BatchConfig, index: BatchIndex, ids: list[str], todo: deque[Task], pool: Pool) -> None:
    bar = tqdm(total=len(todo), desc="batch", unit="job", dynamic_ncols=True)
    shown, live = None, sys.stderr.isatty()
    try:
        while todo or pool.busy:
            while todo and pool.busy < pool.slots:
                task = todo.popleft()
                entry = index.entries[task.job.id]
                entry.attempts += 1
                entry.status, entry.run_dir, entry.log = "running", task.job.id, f"{task.job.id}/{LOG_NAME}"
                entry.worker = pool.submit(task)
                index.save(ids)
            for task, result in pool.wait(timeout=1.0):
                entry = index.entries[task.job.id]
                _record(entry, result, index.out)
                if result["status"] == "error" and entry.attempts <= cfg.retries:
                    entry.status, entry.error = "pending", None
                    entry.crashes.append(result["error"])
                    todo.appendleft(task)  # first in line again: it resumes from its checkpoint
                    tqdm.write(f"retry  {entry.id}: {result['error']} (attempt {entry.attempts + 1} of "
                               f"{cfg.retries + 1}; log {index.out / entry.log})", file=sys.stderr)
                else:
                    entry.status = {"done": "done", "invalid": "invalid", "error": "failed"}[result["status"]]
                    bar.update(1)
                    what = f"{entry.wall_s:.1f} s" if entry.status == "done" else entry.error
                    tqdm.write(f"{entry.status:<6} {entry.id}: {what}", file=sys.stderr)
                index.save(ids)
            counts = _progress(index, ids)
            if counts != shown or live:  # a log file gets a line per change, a terminal a live bar
                shown = counts
                bar.set_postfix(counts, refresh=True)
    except BaseException:
        pool.close()
        for entry in (index.entries[i] for i in ids):
            if entry.status == "running":
                entry.status = "interrupted"
        index.save(ids)
        raise
    finally:
        bar.close()
    pool.close()
