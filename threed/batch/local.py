"""Local worker processes for a batch: one per GPU (pinned to it), or N sharing the CPU cores.

Each worker is a long-lived process (``spawn``, so CUDA and threads start clean) that runs one job at a
time; it imports torch and the prior code once, not once per job. The batch process watches each busy
worker's pipe *and* its process sentinel, so a worker that dies mid-job (killed, out of memory, a segfault
in a native library) is noticed at once and its job handed back for a retry; the slot gets a fresh worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from typing import Any

from threed.batch.worker import Task, worker_loop


@dataclass
class _Slot:
    gpu: int | None
    process: Any = None
    conn: Any = None
    task: Task | None = None


def _death(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"worker pid {process.pid} was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker pid {process.pid} was killed by signal {-code}"
    return f"worker pid {process.pid} exited with code {code} in the middle of the job"


class LocalPool:
    """``workers`` local processes; ``gpus`` (one per worker, round robin) pins each to a CUDA device."""

    def __init__(self, workers: int, gpus: list[int] | None = None):
        self._ctx = mp.get_context("spawn")
        self._slots = [_Slot(gpu=gpus[i % len(gpus)] if gpus else None) for i in range(workers)]
        self._threads = None if gpus else max(1, (os.cpu_count() or 1) // workers)
        self.slots = workers

    @property
    def busy(self) -> int:
        return sum(s.task is not None for s in self._slots)

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        slot.process = self._ctx.Process(target=worker_loop, args=(child, slot.gpu, self._threads), daemon=True,
                                         name=f"threed-batch-worker{'' if slot.gpu is None else f'-gpu{slot.gpu}'}")
        slot.process.start()
        child.close()
        slot.conn = parent

    def submit(self, task: Task) -> str:
        """Hand ``task`` to an idle worker (starting one if needed); returns where it runs."""
        idle = [s for s in self._slots if s.task is None]
        slot = min(idle, key=lambda s: s.process is None)  # a warm worker (imports done) before a fresh one
        if slot.process is not None and not slot.process.is_alive():  # died while idle
            self._retire(slot)
        if slot.process is None:
            self._start(slot)
        try:
            slot.conn.send(task)  # a worker that dies from here on is noticed by wait()
        except OSError:  # it died just now, before taking the task: a fresh one takes it
            slot.process.kill()
            self._retire(slot)
            self._start(slot)
            slot.conn.send(task)
        slot.task = task
        return f"pid {slot.process.pid}" + ("" if slot.gpu is None else f" gpu {slot.gpu}")

    def _retire(self, slot: _Slot) -> None:
        slot.process.join(timeout=10)
        slot.conn.close()
        slot.process = slot.conn = None

    def wait(self, timeout: float) -> list[tuple[Task, dict[str, Any]]]:
        """The tasks that finished (or whose worker died) within ``timeout`` seconds, with their results."""
        busy = [s for s in self._slots if s.task is not None]
        ready = set(wait_any([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=timeout))
        finished = []
        for slot in busy:
            if slot.conn not in ready and slot.process.sentinel not in ready:
                continue
            try:
                result = slot.conn.recv() if slot.conn.poll() else None
            except (EOFError, OSError):
                result = None
            if result is None:
                if slot.process.is_alive():  # the pipe closed but the process lingers: make the death certain
                    slot.process.kill()
                slot.process.join(timeout=10)
                result = {"status": "error", "error": _death(slot.process)}
            if result["status"] == "error":
                self._retire(slot)  # the worker exits after an error; the slot gets a fresh one
            finished.append((slot.task, result))
            slot.task = None
        return finished

    def close(self) -> None:
        """Stop every worker: idle ones are told to exit, busy ones are terminated (their checkpoints stay)."""
        for slot in self._slots:
            if slot.process is None:
                continue
            if slot.task is None and slot.process.is_alive():
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
            else:
                slot.process.terminate()
            slot.process.join(timeout=10)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
            slot.process = slot.conn = None
            slot.task = None
