"""Kill anywhere: SIGKILL a CPU run at random moments, resume after each, and end where an unbroken run ends.

``threed generate`` runs in children of :mod:`kill_harness` (imports paid once), each killed at a moment drawn
at random: inside a training step, half-way through a checkpoint write, between ``last.pt`` becoming
``prev.pt`` and the new ``last.pt``, half-way through the GLB, between turntable frames, or after a random
delay wherever the run is. After each kill the run is resumed (or, when it died before its ``config.yaml``,
started again). Every resume must succeed, and the final checkpoint must equal, tensor for tensor, the
checkpoint of an uninterrupted run with the same seed; the export must be whole and no temporary file left.
The batch runner gets the same with its workers killed.

The draws come from a seed printed with every failure (``THREED_KILL_SEED`` replays one). The normal suite
kills 3 times (generate) and twice (batch); ``pytest -m slow`` kills 20 times in a row each.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import trimesh

from small_recipes import TOY
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.files import stale_temporaries
from threed.run import RunLayout

PROMPT = "a red cube"
STEPS = 6
RUN = [o for o in TOY if not o.startswith(("max_steps=", "stages.0.ckpt_every=", "export.video="))] + [
    f"max_steps={STEPS}", "stages.0.ckpt_every=1", "export.video=true", "export.video_frames=4",
    "export.video_resolution=16"]
"""A toy run of 6 steps, a checkpoint after each, a 4-frame turntable: seconds per run."""
THREADS = max(1, os.cpu_count() or 1)
"""torch's threads in every run: what the worker of a one-worker batch sets (threed.batch.local), so that
batch jobs and harness runs compute alike."""
TRAINING = ("step", "checkpoint", "rotate")
"""Kill points that exist only while the stage trains."""
ANYTIME = ("export", "video", "timer")
"""Kill points every run passes, a finished one too (each resume exports again)."""


def seed() -> int:
    return int(os.environ.get("THREED_KILL_SEED") or random.SystemRandom().randrange(1 << 30))


class Harness:
    """The fork server of :mod:`kill_harness`: one run per call, each maybe killed."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_harness.py")), str(THREADS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert json.loads(self.readline()) == {"ready": True}

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the kill harness died (exit {self.proc.wait()})"
        return line

    def run(self, argv: list[str], log: Path, kill: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill": kill}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


@pytest.fixture(scope="module")
def baseline(harness, tmp_path_factory) -> Checkpoint:
    """The final checkpoint of the run, uninterrupted."""
    run = tmp_path_factory.mktemp("baseline") / "run"
    result = harness.run(["generate", PROMPT, "--out", str(run), *RUN], run.parent / "run.log")
    assert result["rc"] == 0, (run.parent / "run.log").read_text()[-3000:]
    return Checkpoint.load(RunLayout(run).stage(0, "coarse").checkpoint)


def steps_done(run: Path) -> int:
    last = RunLayout(run).stage(0, "coarse").checkpoint
    try:
        return Checkpoint.load(last).step
    except Exception:  # noqa: BLE001 - none yet (a torn last.pt cannot be: writes are atomic)
        return 0


def draw_kill(rng: random.Random, run: Path, at: str | None = None) -> dict[str, Any]:
    """A kill at a random moment of the next run: ``at``, else, while the stage still trains, a point of
    training two times in three (a timer or an export kill lets the rest of the training go by), then any
    point."""
    left = STEPS - steps_done(run)
    at = at or rng.choice(TRAINING * 2 + ANYTIME if left else ANYTIME)
    if at == "timer":
        return {"at": at, "delay": round(rng.uniform(0.0, 2.5), 3)}
    if at in TRAINING:
        return {"at": at, "nth": rng.randint(1, max(1, min(3, left)))}
    return {"at": at, "nth": rng.randint(1, 3) if at == "video" else 1}


def assert_same_checkpoint(got: Checkpoint, want: Checkpoint) -> None:
    assert (got.step, got.total_steps) == (want.step, want.total_steps)
    for key, value in want.scene.items():
        assert torch.equal(got.scene[key], value), f"scene {key} differs from the uninterrupted run's"
    assert got.optimizer is not None and want.optimizer is not None
    for pid, state in want.optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(got.optimizer["state"][pid][key], value), f"optimizer state {pid}.{key} differs"
    assert torch.equal(got.rng["cameras"], want.rng["cameras"]) and torch.equal(got.rng["guidance"], want.rng["guidance"])


def assert_whole(run: Path, baseline: Checkpoint) -> None:
    """The run ended as the uninterrupted one did: same checkpoint, a whole export, no leftovers, no lock."""
    layout = RunLayout(run)
    assert_same_checkpoint(Checkpoint.load(layout.stage(0, "coarse").checkpoint), baseline)
    assert json.loads(layout.export.report.read_text())["step"] == STEPS
    assert len(trimesh.load(layout.export.model("glb"), force="mesh").faces) > 0
    assert layout.export.turntable.stat().st_size > 0
    assert not stale_temporaries(run), stale_temporaries(run)
    assert layout.holder() is None


def kill_and_resume(harness: Harness, run: Path, kills: int, rng: random.Random, points: list[str] | None = None
                    ) -> list[tuple[dict, dict]]:
    """Run, kill, resume, ... until ``kills`` kills have landed; then resume to the end. The runs, in order."""
    log, history = run.parent / "runs.log", []
    while sum("signal" in result for _, result in history) < kills:
        kill = draw_kill(rng, run, points.pop(0) if points else None)
        argv = ["generate", "--resume", str(run)] if RunLayout(run).is_run else [
            "generate", PROMPT, "--out", str(run), *RUN]  # killed before its config.yaml: start again
        result = harness.run(argv, log, kill)
        history.append((kill, result))
        assert result.get("signal") == "SIGKILL" or result.get("rc") == 0, (
            f"a resume failed after {history}:\n{log.read_text()[-3000:]}")
    result = harness.run(["generate", "--resume", str(run)], log)
    history.append((None, result))
    assert result.get("rc") == 0, f"the last resume failed after {history}:\n{log.read_text()[-3000:]}"
    return history


def check_generate(harness: Harness, baseline: Checkpoint, tmp_path: Path, kills: int, points: list[str] | None
                   ) -> None:
    s = seed()
    rng = random.Random(s)
    points = points if points is None else [rng.choice(group) for group in points]
    run = tmp_path / "run"
    history = kill_and_resume(harness, run, kills, rng, points)
    print(f"THREED_KILL_SEED={s}: {len(history)} runs", *history, sep="\n  ")
    try:
        assert_whole(run, baseline)
    except AssertionError as exc:
        raise AssertionError(f"THREED_KILL_SEED={s} {history}: {exc}") from exc


def test_three_kills_anywhere_and_the_resumed_run_equals_an_unbroken_one(harness, baseline, tmp_path):
    """One kill while training, one while writing a checkpoint, one in the export or its video."""
    check_generate(harness, baseline, tmp_path, 3, [["step", "timer"], ["checkpoint", "rotate"], ["export", "video"]])


@pytest.mark.slow
def test_twenty_kills_in_a_row(harness, baseline, tmp_path):
    check_generate(harness, baseline, tmp_path, 20, None)


WORKER_KILLS = ("started", "training", "exporting")
"""When the batch's worker is killed: a random 0-1 s after its attempt starts (still importing: a fresh worker
takes longer than that), or 0-0.1 s after it trains a step, or after it starts exporting."""


def _kill_workers(out: Path, job: str, hows: list[str], rng: random.Random, victims: list[dict],
                  finished: threading.Event) -> None:
    """SIGKILL the worker running ``job`` once per entry of ``hows`` (see :data:`WORKER_KILLS`), each time in a
    new attempt."""
    run, killed = out / job, set()
    for how in hows:
        delay = rng.uniform(0.0, 1.0) if how == "started" else rng.uniform(0.0, 0.1)
        worker = None
        while worker is None and not finished.wait(0.01):
            try:
                entry = next(e for e in json.loads((out / "index.json").read_text())["jobs"] if e["id"] == job)
            except (OSError, ValueError, StopIteration):
                continue
            if entry["status"] == "running" and entry["worker"] not in killed:
                worker = entry["worker"]
        if worker is None:
            return
        log = run / "batch.log"
        start_log, start_step = log.stat().st_size if log.exists() else 0, steps_done(run)
        while not finished.is_set():
            grown = log.read_text(errors="replace")[start_log:] if log.exists() else ""
            if (how == "started" or (how == "exporting" and "exporting to" in grown)
                    or (how == "training" and (steps_done(run) > start_step or "exporting to" in grown))):
                break
            time.sleep(0.01)
        if finished.wait(delay):
            return
        os.kill(int(worker.split()[1]), signal.SIGKILL)  # "pid N"
        killed.add(worker)
        victims.append({"worker": worker, "how": how, "delay": round(delay, 3), "step": steps_done(run)})


def check_batch(baseline: Checkpoint, tmp_path: Path, hows: list[str]) -> None:
    s = seed()
    rng = random.Random(s)
    hows = [how or rng.choice(WORKER_KILLS) for how in hows]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    out, job = tmp_path / "out", PROMPT.replace(" ", "-")
    finished, victims = threading.Event(), []
    killer = threading.Thread(target=_kill_workers, args=(out, job, hows, rng, victims, finished))
    killer.start()
    try:
        rc = main(["batch", str(prompts), "--out", str(out), "--workers", "1", "--retries", str(len(hows) + 1), *RUN])
    finally:
        finished.set()
        killer.join()
    entry = json.loads((out / "index.json").read_text())["jobs"][0]
    where = f"THREED_KILL_SEED={s}, kills {victims}, entry {entry}"
    assert rc == 0 and entry["status"] == "done", where
    assert len(victims) == len(hows) and len(entry["crashes"]) == len(hows), where
    assert all("killed by SIGKILL" in c for c in entry["crashes"]), where
    try:
        assert_whole(out / job, baseline)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from exc


def test_a_batch_whose_worker_is_killed_twice_ends_as_an_unbroken_run(baseline, tmp_path):
    """Once after a training step, once while the next worker starts (the last kill must not miss: a missed
    kill lets the job finish)."""
    check_batch(baseline, tmp_path, ["training", "started"])


@pytest.mark.slow
def test_a_batch_whose_worker_is_killed_twenty_times(baseline, tmp_path):
    check_batch(baseline, tmp_path, [None] * 19 + ["started"])
