"""Running one batch job inside a worker process (a local worker or a Ray task), and the local worker loop.

A job runs the recipe in its own run directory, exactly as ``threed generate --out OUT/<id>`` does; if the
directory already holds a run (an earlier attempt crashed or was interrupted), it is resumed from its
checkpoints, as ``threed generate --resume`` does. The job's output (progress bars, tracebacks) goes to
``OUT/<id>/batch.log``. The result is plain data for the index:

* ``done``: ``files`` (kind -> path), ``wall_s``;
* ``invalid``: a :class:`ThreedError` -- bad input (an unknown word, a bad override) that a retry cannot fix;
* ``error``: any other exception (a bug, CUDA out of memory, ...); the runner retries it, and the local
  worker exits after reporting it so that the retry starts in a fresh process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threed.batch.jobs import Job
from threed.errors import ThreedError
from threed.run import RunLayout

LOG_NAME = "batch.log"
"""Each job's output, inside its run directory."""


@dataclass(frozen=True)
class Task:
    """A job with everything a worker needs to run it (picklable, so it crosses to any process or node)."""

    job: Job
    recipe: str
    """Recipe name or YAML path."""
    overrides: tuple[str, ...]
    """``KEY=VALUE`` overrides applied to every job."""
    run_dir: str
    """Absolute path of the job's run directory."""


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too, so C code and tqdm follow) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _generate(task: Task, priors: Any = None) -> dict[str, Any]:
    from threed.api import Run
    from threed.recipe import last_checkpoint, load_recipe, load_run_config

    run_dir = Path(task.run_dir)
    result: dict[str, Any] = {}
    if RunLayout(run_dir).is_run:
        cfg = load_run_config(run_dir, task.overrides)
        if (cfg.prompt, cfg.image) != (task.job.prompt, task.job.image):
            raise ThreedError(f"{run_dir} holds a run of prompt {cfg.prompt!r} (image {cfg.image}), not of "
                              f"{task.job.source}; move that folder away to generate this job")
        with contextlib.suppress(ThreedError):  # no checkpoint yet: the run starts from step 0
            ckpt = last_checkpoint(run_dir, cfg)
            result["resumed_from"] = f"stage {ckpt.stage} step {ckpt.step}/{ckpt.total_steps}"
        print(f"threed batch: resuming {run_dir} ({result.get('resumed_from', 'no checkpoint yet')})")
    else:
        cfg = load_recipe(task.recipe, task.overrides, prompt=task.job.prompt, image=task.job.image)
    run = Run(run_dir, cfg)
    run._go(None, priors)  # the API's run, with the worker's prior cache (one load per worker)
    result["files"] = {kind: str(path) for kind, path in run.files.items()}
    return result


def run_task(task: Task, priors: Any = None) -> dict[str, Any]:
    """Run one job to the end and describe the outcome (see the module docstring); never raises but Ctrl-C.
    ``priors`` (a :class:`~threed.guidance.loading.PriorCache`) keeps loaded priors for the worker's next jobs."""
    start = time.monotonic()
    result: dict[str, Any] = {"worker": f"{socket.gethostname()} pid {os.getpid()}"}
    with output_to(Path(task.run_dir) / LOG_NAME):
        print(f"threed batch: job {task.job.id} ({task.job.source}) on {result['worker']}", flush=True)
        try:
            result.update(_generate(task, priors), status="done")
        except ThreedError as exc:
            print(f"threed: error: {exc}")
            result.update(status="invalid", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any crash of a job is reported and retried, not fatal to the batch
            traceback.print_exc()
            result.update(status="error", error=f"{type(exc).__name__}: {exc}")
    result["wall_s"] = round(time.monotonic() - start, 2)
    return result


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the batch process dies, so no orphan keeps writing a run."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def worker_loop(conn, gpu: int | None, threads: int | None) -> None:
    """A local worker process: receive tasks on ``conn``, send results back, until told to stop (``None``).

    Ctrl-C is the batch process's to handle (it stops the workers), so workers ignore SIGINT. ``gpu``
    pins the worker to one CUDA device (set before anything initialises CUDA); ``threads`` bounds torch's
    CPU threads so that CPU workers share the cores instead of oversubscribing them.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from tqdm import tqdm

    from threed.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a terminated worker leaks
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from threed.guidance.loading import PriorCache

    priors = PriorCache()  # a prior loads once per worker, not once per job
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the batch process went away
            return
        if task is None:
            return
        result = run_task(task, priors)
        conn.send(result)
        if result["status"] == "error":
            return
