"""The app's job queue: submissions from every tab wait in one line; one job runs per GPU (one on a CPU).

A job is the ``threed generate`` command a person would type, run in its own process with its output
in ``RUN/log.txt``. A process of its own is what makes Cancel clean: the job gets SIGINT, which is
Ctrl-C at a terminal, so the command stops between two steps with its last checkpoint intact and the
run folder can be continued with Resume (``threed generate --resume RUN``). Each job's state is kept
in ``RUN/job.json`` too, so a run's outcome outlives the server.

The line is bounded (:class:`QueueLimits`): a submission past the number of waiting jobs, or past
one client's share, is refused with a message rather than queued, so a flood from one page or one
script cannot push everyone else's jobs back without end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from threed.app.runs import JOB_FILE, LOG_FILE, RunState
from threed.errors import ThreedError
from threed.files import write_bytes_atomic

CANCEL_GRACE_S = 30.0
"""Seconds a job may take to stop after SIGINT (it finishes its step) before it is terminated."""
NICE = [shutil.which("nice"), "-n", "10"] if shutil.which("nice") else []
"""Jobs start at a lower CPU priority than the server (``nice`` execs the job, so its PID is the job's):
while a job trains on the CPU the page still answers at once. Measured in docs/reliability.md."""
ERROR_PREFIX = "threed: error: "
"""How the command line prints a user-facing error (see threed.cli.main)."""


@dataclass(frozen=True)
class QueueLimits:
    """How much the line holds (``threed app --queue-limit N --client-limit N``)."""

    waiting: int = 16
    """Jobs waiting to start, all clients together; a submission beyond is refused ("the queue is full")."""
    per_client: int = 4
    """Jobs one client (a login, else an address) may have queued or running at once."""

    def __post_init__(self):
        if self.waiting < 1 or self.per_client < 1:
            raise ThreedError(f"queue limits must be at least 1, got --queue-limit {self.waiting} "
                              f"--client-limit {self.per_client}")


ACTIVE = ("queued", "running", "cancelling")
"""Job states that hold a place in the line or a worker."""


@dataclass
class Job:
    """One submission."""

    run: str
    """Run folder name inside the output folder."""
    args: list[str]
    """``threed`` command-line arguments."""
    state: RunState = "queued"
    message: str = ""
    """What the page shows besides the progress: the error, how it was cancelled."""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    worker: int | None = None
    """Worker that ran it (the GPU index on a CUDA machine)."""
    client: str = "local"
    """Who submitted it: the login name, else the client's address (what :class:`QueueLimits` counts)."""


def worker_envs() -> list[dict[str, str]]:
    """One environment per worker: each CUDA device gets a worker that sees only it; a CPU gets one."""
    import torch

    if not torch.cuda.is_available():
        return [{}]
    return [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(torch.cuda.device_count())]


class JobQueue:
    """First come, first served, over a fixed set of workers (threads that each run one process at a time)."""

    def __init__(self, root: Path, envs: list[dict[str, str]] | None = None, python: str = sys.executable,
                 limits: QueueLimits = QueueLimits()):
        self.root = Path(root).resolve()
        self.python = python
        self.limits = limits
        self._envs = envs if envs is not None else worker_envs()
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True, name=f"threed-job-{i}")
                         for i in range(len(self._envs))]
        for t in self._threads:
            t.start()

    @property
    def workers(self) -> int:
        return len(self._envs)

    def submit(self, run: str, args: list[str], client: str = "local") -> Job:
        """Queue ``threed ARGS`` for run folder ``run`` (which the caller has created) on behalf of ``client``."""
        with self._lock:
            self._check_room(client)
            live = self._jobs.get(run)
            if live is not None and live.state in ACTIVE:
                raise ThreedError(f"run {run!r} already has a job {live.state}")
            job = Job(run=run, args=list(args), client=client)
            self._jobs[run] = job
            self._waiting.append(job)
            self._save(job)
            self._lock.notify()
            return job

    def check_room(self, client: str = "local") -> None:
        """A :class:`ThreedError` saying why, when :meth:`submit` would refuse ``client`` now."""
        with self._lock:
            self._check_room(client)

    def _check_room(self, client: str) -> None:
        if self._closed:
            raise ThreedError("the server is shutting down; no new jobs")
        if len(self._waiting) >= self.limits.waiting:
            raise ThreedError(f"the queue is full ({len(self._waiting)} jobs waiting, the most this server takes): "
                              f"try again when one has started")
        mine = sum(j.client == client and j.state in ACTIVE for j in self._jobs.values())
        if mine >= self.limits.per_client:
            raise ThreedError(f"you already have {mine} jobs queued or running, the most one client may have: "
                              f"wait for one to finish, or cancel one")

    def get(self, run: str) -> Job | None:
        """The job of ``run`` started by this server, if any (a copy: jobs change under the lock)."""
        with self._lock:
            job = self._jobs.get(run)
            return Job(**asdict(job)) if job else None

    def position(self, run: str) -> int | None:
        """1 for the next job to start, and so on; None when ``run`` is not waiting."""
        with self._lock:
            return next((i + 1 for i, j in enumerate(self._waiting) if j.run == run), None)

    def cancel(self, run: str) -> Job:
        """Take a waiting job out of the line, or ask a running one to stop (it finishes its step first)."""
        with self._lock:
            job = self._jobs.get(run)
            if job is None or job.state not in ACTIVE:
                raise ThreedError(f"run {run!r} has no queued or running job to cancel")
            if job.state == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.state = "cancelling"
                self._save(job)
                proc = self._procs.get(run)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                threading.Thread(target=self._escalate, args=(run,), daemon=True).start()
            return Job(**asdict(job))

    def close(self, timeout: float = CANCEL_GRACE_S) -> None:
        """Cancel everything and wait for the workers (the server is stopping)."""
        with self._lock:
            self._closed = True
            runs = [j.run for j in self._jobs.values() if j.state in ("queued", "running")]
        for run in runs:
            try:
                self.cancel(run)
            except ThreedError:
                pass
        with self._lock:
            self._lock.notify_all()
        for t in self._threads:
            t.join(timeout)

    # ----------------------------------------------------------------- workers

    def _work(self, index: int) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state, job.started, job.worker = "running", time.time(), index
                self._save(job)
                run_path = self.root / job.run
                try:
                    with open(run_path / LOG_FILE, "ab") as log:  # the child keeps its own copy of the handle
                        proc = subprocess.Popen([*NICE, self.python, "-m", "threed.cli", *job.args],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                cwd=self.root, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                    **self._envs[index]})
                except OSError as exc:
                    self._finish(job, "failed", f"the job could not start: {exc}")
                    continue
                self._procs[job.run] = proc
            code = proc.wait()
            with self._lock:
                self._procs.pop(job.run, None)
                self._finish(job, *self._outcome(job, code, run_path))

    def _outcome(self, job: Job, code: int, run_path: Path) -> tuple[RunState, str]:
        if code == 0:
            return "done", ""
        if job.state == "cancelling":
            return "cancelled", "cancelled; the last checkpoint is kept: Resume continues from it"
        return "failed", job_error(run_path / LOG_FILE, code)

    def _escalate(self, run: str) -> None:
        """SIGTERM, then SIGKILL, for a job that does not stop within the grace period after SIGINT."""
        proc = self._procs.get(run)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc is None:
                return
            try:
                proc.wait(CANCEL_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)

    def _finish(self, job: Job, state: RunState, message: str) -> None:
        job.state, job.message, job.finished = state, message, time.time()
        self._save(job)

    def _save(self, job: Job) -> None:
        path = self.root / job.run
        if path.is_dir():
            write_bytes_atomic(path / JOB_FILE, json.dumps(asdict(job), indent=1))


def job_error(log: Path, code: int, tail_lines: int = 12) -> str:
    """The user-facing message of a failed job: the command's own error line, else the end of its log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [line[len(ERROR_PREFIX):] for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    tail = "\n".join(lines[-tail_lines:])
    return f"the job stopped with exit code {code}; the end of {LOG_FILE}:\n{tail}"
