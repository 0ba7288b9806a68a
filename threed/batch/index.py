"""``OUT/index.json``: what a batch knows about each of its jobs, rewritten atomically after every change.

The index is the batch's memory across runs: a rerun skips jobs that are ``done`` (and whose files are
still there) and runs the rest, which resume from their run directories. Only the batch process writes
it, always through a temporary file and a rename, so a crash or Ctrl-C at any moment leaves the previous
complete index. Paths in it are relative to ``OUT``, so the folder can be moved or shared.

Statuses: ``pending`` (not started, or waiting for a retry), ``running``, ``done``, ``failed`` (crashed
on every attempt), ``invalid`` (bad input: an empty line, a missing image, an unknown word; not retried),
``interrupted`` (stopped by Ctrl-C; resumes on the next run).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from threed.batch.jobs import Job
from threed.errors import ThreedError

Status = Literal["pending", "running", "done", "failed", "invalid", "interrupted"]
STATUSES: tuple[Status, ...] = ("pending", "running", "done", "failed", "invalid", "interrupted")
INDEX_NAME = "index.json"


@dataclass
class Entry:
    """One job's line in the index."""

    id: str
    """The job's slug; its run directory is ``OUT/<id>/``."""
    source: str
    """``prompts.txt:3`` or the image path."""
    prompt: str = ""
    image: str | None = None
    status: Status = "pending"
    run_dir: str | None = None
    """Relative to ``OUT``; ``None`` for a job that never got one (e.g. an empty line)."""
    files: dict[str, str] = field(default_factory=dict)
    """Exported files (``glb``, ``obj``, ``ply``, ``video``, ``report``, ...) relative to ``OUT``."""
    wall_s: float | None = None
    """Seconds the last attempt took."""
    attempts: int = 0
    """Attempts in the latest batch run (a crash is retried up to ``--retries`` times)."""
    error: str | None = None
    """Why the job is ``invalid`` or ``failed``."""
    crashes: list[str] = field(default_factory=list)
    """What made each retried attempt of the latest batch run crash (a killed worker, an exception)."""
    worker: str | None = None
    """Where the last attempt ran (host and pid, or the local worker and GPU)."""
    resumed_from: str | None = None
    """The checkpoint the last attempt continued from, if it resumed an earlier one."""
    log: str | None = None
    """The job's output (progress, tracebacks), relative to ``OUT``."""


class BatchIndex:
    """The entries of ``OUT/index.json``, in job order, with the batch settings they were made with."""

    def __init__(self, out: Path, entries: dict[str, Entry] | None = None):
        self.out = out
        self.entries: dict[str, Entry] = entries or {}
        self.settings: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return self.out / INDEX_NAME

    @classmethod
    def load(cls, out: Path) -> "BatchIndex":
        """The index in ``out`` (an empty one if there is none yet)."""
        path = out / INDEX_NAME
        if not path.exists():
            return cls(out)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            names = {f.name for f in fields(Entry)}
            entries = [Entry(**{k: v for k, v in e.items() if k in names}) for e in data["jobs"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ThreedError(f"{path} is not a threed batch index ({exc}); threed writes it atomically, so "
                              f"something else changed it: move it away and rerun (each job resumes from its "
                              f"run directory)") from exc
        return cls(out, {e.id: e for e in entries})

    def add(self, job: Job) -> Entry:
        """The entry for ``job``: the existing one if a previous run made it, else a new pending one."""
        entry = self.entries.get(job.id)
        if entry is None:
            entry = self.entries[job.id] = Entry(id=job.id, source=job.source, prompt=job.prompt, image=job.image)
        entry.source = job.source
        return entry

    def finished(self, job_id: str) -> bool:
        """Done in an earlier run, and its files are all still on disk."""
        entry = self.entries.get(job_id)
        return (entry is not None and entry.status == "done" and bool(entry.files)
                and all((self.out / p).is_file() for p in entry.files.values()))

    def counts(self, ids: list[str] | None = None) -> dict[str, int]:
        chosen = [self.entries[i] for i in ids] if ids is not None else list(self.entries.values())
        return {s: n for s in STATUSES if (n := sum(e.status == s for e in chosen))}

    def summary(self, ids: list[str]) -> str:
        """One line for the end of a batch: ``6 jobs: 4 done, 1 invalid, 1 failed; index OUT/index.json``."""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts(ids).items())
        return f"{len(ids)} jobs: {counts}; index {self.path}"

    def save(self, ids: list[str] | None = None) -> None:
        """Write the index atomically; ``ids`` (this run's jobs) come first and are the ones counted."""
        from threed.files import write_bytes_atomic

        order = list(ids or []) + [i for i in self.entries if i not in set(ids or [])]
        data = {**self.settings, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "counts": self.counts(ids),
                "jobs": [asdict(self.entries[i]) for i in order]}
        write_bytes_atomic(self.path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
