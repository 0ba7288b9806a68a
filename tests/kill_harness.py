"""Fault injection for ``tests/test_kill_anywhere.py``: ``threed`` commands SIGKILLed at chosen moments.

``python tests/kill_harness.py [THREADS]`` imports threed (torch, diffusers, the export code) once, then runs
each command it is sent in a child forked from it, so a run starts in well under a second instead of paying
the imports again (``THREADS``: torch's CPU threads in each child, as a batch worker sets them). A child runs ``threed.cli.main(argv)``, the command line's own entry point, after it has
armed at most one kill. The kill is a real ``SIGKILL`` sent by the child to itself, or by the harness:

* ``step``: inside the ``nth`` training step, after its backward and before the optimiser moves a weight;
* ``checkpoint``: inside the ``nth`` checkpoint write, half of its bytes on disk;
* ``rotate``: in the ``nth`` checkpoint save, after ``last.pt`` became ``prev.pt``, before the new ``last.pt``;
* ``export``: while ``model.glb`` is being written, half of it on disk;
* ``video``: after the ``nth`` frame of the turntable has gone to ffmpeg;
* ``timer``: the harness kills the child ``delay`` seconds after it started, wherever it is.

Each line on stdin is one run as JSON: ``{"argv": [...], "log": "PATH", "kill": {"at": "step", "nth": 2} |
{"at": "timer", "delay": 0.7} | null}``; the harness answers each with one JSON line, ``{"rc": 0, "wall_s": 1.2}``
or ``{"signal": "SIGKILL", ...}``, and exits at the end of stdin. Nothing here is imported by threed: the hooks
exist only in the children.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import threed.files
from fault_files import half_writes


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_nth(nth: int):
    """A counter that kills the process on its ``nth`` call."""
    calls = [0]

    def count() -> None:
        calls[0] += 1
        if calls[0] == nth:
            _die()
    return count


def _kill_writing(name: str, nth: int) -> None:
    """Kill the process half-way through its ``nth`` write of a file called ``name`` (threed.files)."""
    seen = [0]

    def broken(destination: Path) -> bool:
        seen[0] += destination.name == name
        return destination.name == name and seen[0] == nth
    threed.files.open = half_writes(broken, _die)  # type: ignore[attr-defined]


def arm(kill: dict[str, Any]) -> None:
    """Install the kill ``kill`` names in this (child) process."""
    at, nth = kill["at"], int(kill.get("nth", 1))
    if at == "step":
        import torch

        backward, count = torch.Tensor.backward, _on_nth(nth)

        def dying_backward(self, *args, **kwargs):
            backward(self, *args, **kwargs)
            count()
        torch.Tensor.backward = dying_backward  # type: ignore[method-assign]
    elif at == "checkpoint":
        _kill_writing("last.pt", nth)
    elif at == "rotate":
        keep, count = threed.files._keep_as, _on_nth(nth)

        def dying_keep(path, previous):
            keep(path, previous)
            count()
        threed.files._keep_as = dying_keep  # type: ignore[attr-defined]
    elif at == "export":
        _kill_writing("model.glb", nth)
    elif at == "video":
        import threed.export.video as video

        frames, count = video.render_frames, _on_nth(nth)

        def dying_frames(*args, **kwargs):
            for frame in frames(*args, **kwargs):
                yield frame
                count()
        video.render_frames = dying_frames  # type: ignore[assignment]
    elif at != "timer":
        raise ValueError(f"unknown kill point {at!r}")


def run_child(run: dict[str, Any], threads: int | None) -> int:
    """In the forked child: output to the run's log, arm the kill, run the command; the exit code."""
    log = os.open(run["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import torch

    from threed.cli import main

    if threads is not None:
        torch.set_num_threads(threads)
    if run.get("kill"):
        arm(run["kill"])
    try:
        return main(run["argv"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_one(run: dict[str, Any], threads: int | None) -> dict[str, Any]:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_child(run, threads)
        finally:
            os._exit(code)
    kill = run.get("kill") or {}
    done, status = 0, 0
    if kill.get("at") == "timer":
        deadline = time.monotonic() + float(kill["delay"])
        while not done and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.005)
        if not done:
            os.kill(pid, signal.SIGKILL)
    if not done:
        _, status = os.waitpid(pid, 0)
    wall_s = round(time.monotonic() - start, 2)
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name, "wall_s": wall_s}
    return {"rc": os.WEXITSTATUS(status), "wall_s": wall_s}


def main() -> None:
    from threed.runtime import tune_cpu_runtime

    tune_cpu_runtime()  # before torch, as the command line does
    import diffusers
    import transformers

    import threed.cli  # noqa: F401 - the imports every child shares
    import threed.export.pipeline  # noqa: F401
    import threed.recipe  # noqa: F401
    from threed.guidance.loading import read_index

    libraries = {"diffusers": diffusers, "transformers": transformers}
    for library, class_name in read_index(Path(threed.__file__).parent / "priors" / "toyworld").values():
        getattr(libraries[library], class_name)  # the lazy imports of the toy prior's classes, done once here

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run_one(json.loads(line), threads)), flush=True)


if __name__ == "__main__":
    main()
