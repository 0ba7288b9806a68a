"""Damaged run files, leftovers, two writers and a full disk: what `threed export` and `threed generate` do.

Runs are real toy-world runs (:data:`small_recipes.TOY`: 4 steps at 16 px, checkpoints at steps 2 and 4).
A full disk is simulated by making threed's own file writes (:mod:`threed.files`) write half their bytes and
then raise ``OSError(ENOSPC)``, as ``write(2)`` does on a full file system.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import threed.files
from fault_files import half_writes
from small_recipes import TOY
from threed.batch.index import BatchIndex, Entry
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import stale_temporaries
from threed.recipe import load_recipe, save_config

STAGE = Path("stages") / "0-coarse"


def test_a_truncated_checkpoint_is_named_by_export_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_recipe("quickstart", prompt="a red cube")
    save_config(cfg, run)
    path = run / "stages" / f"0-{cfg.stages[0].name}" / "last.pt"
    Checkpoint(stage=cfg.stages[0].name, step=3, total_steps=10, scene_kind="nerf",
               scene={"weights": torch.zeros(4096)}, scene_config=to_dict(cfg.stages[0].scene)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    for argv in (["export", str(run)], ["generate", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {path} cannot be read" in err and "truncated" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step toy run; tests copy it before they change it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["generate", "a red cube", "--out", str(run), *TOY]) == 0
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def assert_same_state(a: Checkpoint, b: Checkpoint) -> None:
    assert a.step == b.step
    assert a.scene.keys() == b.scene.keys()
    for key, value in a.scene.items():
        assert torch.equal(value, b.scene[key]), key


@pytest.mark.parametrize("argv,message", [
    (["a red zebra"], "does not know: 'zebra'"),  # found once the prior has loaded
    ([""], "the prompt is empty"),
    (["a red cube", "model=no/such-model-folder"], "no/such-model-folder"),
])
def test_a_run_that_fails_before_its_first_step_leaves_no_run_directory(argv, message, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *argv, *TOY]) == 2
    assert main(["generate", *argv, "--out", "mine", *TOY]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed run left files behind"


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, caplog, capsys):
    run = copy_run(finished_run, tmp_path)
    last, prev = run / STAGE / "last.pt", run / STAGE / "prev.pt"
    good = Checkpoint.load(last)
    assert (good.step, Checkpoint.load(prev).step) == (4, 2)
    cut_short(last)

    assert main(["export", str(run), "--format", "glb"]) == 0
    assert f"using the previous checkpoint {prev} instead, from step 2 of 4" in caplog.text
    assert json.loads((run / "export" / "export.json").read_text())["step"] == 2
    assert "at step 2/4 (the run is unfinished)" in capsys.readouterr().err

    caplog.clear()
    assert main(["generate", "--resume", str(run)]) == 0  # steps 3 and 4 again, from prev.pt
    assert "from step 2 of 4" in caplog.text
    assert_same_state(Checkpoint.load(last), good)  # exact resume: the same step 4
    assert Checkpoint.load(prev).step == 2  # the damaged last.pt never became the previous checkpoint

    cut_short(last)
    cut_short(prev)
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} cannot be read" in err and "the previous checkpoint cannot be used either" in err
    assert str(prev) in err


HOLD = ("import sys; from threed.run import RunLayout\n"
        "with RunLayout(sys.argv[1]).hold('threed generate'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()")


def test_a_second_writer_is_refused_naming_the_holder(finished_run, tmp_path, capsys):
    from threed.app.jobs import JobQueue
    from threed.app.server import App

    run = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "export")  # not exported, so the app would resume it
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["generate", "--resume", str(run)], ["export", str(run)], ["render", str(run)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"is in use: pid {holder.pid} (threed generate) is writing it" in err, err
            assert f"kill {holder.pid}" in err and "Traceback" not in err
        app = App(tmp_path, JobQueue(tmp_path, envs=[{}]))
        try:
            with pytest.raises(ThreedError, match=f"pid {holder.pid} .threed generate. is writing it"):
                app.resume("run")
        finally:
            app.queue.close()
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock of a killed holder
        holder.wait()
    assert main(["export", str(run), "--format", "glb"]) == 0


def _no_space() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(monkeypatch, full: Callable[[Path], bool]) -> None:
    """From now on, threed's writes of files for which ``full(destination)`` is true find the disk full."""
    monkeypatch.setattr(threed.files, "open", half_writes(full, _no_space), raising=False)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    saves = []
    fill_disk(monkeypatch, lambda p: p.name == "last.pt" and len(saves.append(p) or saves) == 2)
    assert main(["generate", "a red cube", "--out", str(run), *TOY]) == 2
    err = capsys.readouterr().err
    last = run / STAGE / "last.pt"
    assert (f"the checkpoint of step 4 could not be written: no space left on the device to write {last}" in err
            and "the previous last.pt is kept unchanged" in err and f"(step 2) is kept at {last}" in err), err
    assert f"--resume {run}" in err and "Traceback" not in err
    assert Checkpoint.load(last).step == 2 and not stale_temporaries(run)
    monkeypatch.undo()
    assert main(["generate", "--resume", str(run)]) == 0
    assert Checkpoint.load(last).step == 4


def test_a_full_disk_during_an_export_keeps_the_previous_files(finished_run, tmp_path, monkeypatch, capsys):
    run = copy_run(finished_run, tmp_path)
    glb = run / "export" / "model.glb"
    before = glb.read_bytes()
    fill_disk(monkeypatch, lambda p: p.name == "model.glb")
    assert main(["export", str(run), "--format", "glb"]) == 2
    err = capsys.readouterr().err
    assert f"the export of {run} stopped: no space left on the device to write {glb}" in err, err
    assert "the previous model.glb is kept unchanged" in err and f"threed export {run}" in err
    assert glb.read_bytes() == before and not stale_temporaries(run)


def test_a_full_disk_at_an_index_write_keeps_the_previous_index(tmp_path, monkeypatch):
    index = BatchIndex(tmp_path, {"a": Entry(id="a", source="prompts.txt:1", prompt="a red cube")})
    index.save()
    before = index.path.read_text()
    index.entries["a"].status = "done"
    fill_disk(monkeypatch, lambda p: p.name == "index.json")
    with pytest.raises(ThreedError, match=f"no space left on the device to write {index.path}.*the previous "
                                          "index.json is kept unchanged"):
        index.save()
    assert index.path.read_text() == before and not stale_temporaries(tmp_path)
