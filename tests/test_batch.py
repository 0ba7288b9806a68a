"""``threed batch``: local workers and a Ray local cluster, a killed worker, bad lines, reruns (toy-world prior, CPU).

Each job is a real toy-world generation cut to a few steps at 16 px; a worker's first job pays the
diffusers/transformers imports (seconds), later jobs on the same worker take a few seconds each.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from threed.batch.runner import BatchConfig, _locked, run_batch
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.errors import ThreedError

TINY = [
    "max_steps=6",
    "stages.0.render_size=16",
    "stages.0.ckpt_every=1",
    "stages.0.val_every=0",
    "stages.0.scene.geometry.encoding.n_levels=4",
    "stages.0.scene.geometry.encoding.log2_hashmap_size=12",
    "stages.0.scene.geometry.encoding.max_resolution=64",
    "stages.0.scene.renderer.num_samples=16",
    "export.video=false",
    "export.views=0",
    "export.texture=vertex",
    "export.grid_size=32",
]
GOOD = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]


def read_index(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


def entries(out: Path) -> dict[str, dict]:
    return {e["id"]: e for e in read_index(out)["jobs"]}


def assert_done(out: Path, entry: dict) -> None:
    assert entry["status"] == "done", entry
    mesh = trimesh.load(out / entry["files"]["glb"], force="mesh")
    assert len(mesh.faces) > 0
    assert Checkpoint.load(out / entry["run_dir"] / "stages" / "0-coarse" / "last.pt").step == 6
    assert (out / entry["log"]).is_file()


def _kill_one_worker_mid_job(out: Path, finished: threading.Event) -> str | None:
    """Wait until a job has written a checkpoint, then SIGKILL the worker running it; the job's id."""
    while not finished.wait(0.05):
        try:
            running = [e for e in read_index(out)["jobs"] if e["status"] == "running"]
        except (OSError, ValueError):
            continue
        for e in running:
            if (out / e["id"] / "stages" / "0-coarse" / "last.pt").is_file():
                os.kill(int(e["worker"].split()[1]), signal.SIGKILL)  # "pid N"
                return e["id"]
    return None


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory):
    """4 prompts, an empty line and an unknown word on 2 local workers; one worker is killed mid-job."""
    root = tmp_path_factory.mktemp("batch")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n\na purple dragon\n# a comment\na green cone\na yellow torus\n")
    out = root / "out"
    finished, victim = threading.Event(), []
    killer = threading.Thread(target=lambda: victim.append(_kill_one_worker_mid_job(out, finished)))
    killer.start()
    start = time.monotonic()
    try:
        rc = main(["batch", str(prompts), "--out", str(out), "--workers", "2", *TINY])
    finally:
        finished.set()
        killer.join()
    return {"rc": rc, "out": out, "prompts": prompts, "victim": victim[0], "wall_s": time.monotonic() - start}


def test_local_batch_generates_every_prompt_on_two_workers(local_batch):
    out = local_batch["out"]
    assert local_batch["rc"] == 1  # two lines were bad
    index = read_index(out)
    assert index["counts"] == {"done": 4, "invalid": 2}
    jobs = entries(out)
    assert [e["prompt"] for e in index["jobs"] if e["status"] == "done"] == GOOD  # file order
    for prompt in GOOD:
        assert_done(out, jobs[prompt.replace(" ", "-")])
    pids = {jobs[p.replace(" ", "-")]["worker"] for p in GOOD}
    assert len(pids) >= 2, pids  # both workers ran jobs


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(local_batch):
    victim = local_batch["victim"]
    assert victim is not None, "no job was seen running with a checkpoint: nothing was killed"
    jobs = entries(local_batch["out"])
    entry = jobs[victim]
    assert entry["attempts"] == 2 and entry["status"] == "done", entry
    assert len(entry["crashes"]) == 1 and "killed by SIGKILL" in entry["crashes"][0], entry["crashes"]
    assert entry["resumed_from"].startswith("stage coarse step "), entry  # not started over
    assert int(entry["resumed_from"].split()[3].split("/")[0]) >= 1
    assert all(e["attempts"] == 1 for i, e in jobs.items() if i != victim and e["status"] == "done")


def test_bad_lines_are_reported_not_fatal(local_batch):
    jobs = entries(local_batch["out"])
    assert jobs["line-3"]["status"] == "invalid" and "prompts.txt:3 is empty" in jobs["line-3"]["error"]
    assert jobs["line-3"]["run_dir"] is None
    dragon = jobs["a-purple-dragon"]
    assert dragon["status"] == "invalid" and dragon["attempts"] == 1, dragon  # bad input is not retried
    assert "'dragon" in dragon["error"] and "does not know" in dragon["error"]


def test_rerun_skips_done_jobs(local_batch, capsys):
    """After fixing the prompts file, a rerun starts no worker: every job is already done."""
    out, prompts = local_batch["out"], local_batch["prompts"]
    before = entries(out)
    glb_mtimes = {i: (out / e["files"]["glb"]).stat().st_mtime_ns for i, e in before.items() if e["status"] == "done"}
    prompts.write_text("\n".join(GOOD) + "\n")
    start = time.monotonic()
    assert main(["batch", str(prompts), "--out", str(out), *TINY]) == 0
    elapsed = time.monotonic() - start
    assert "4 of 4 jobs already done" in capsys.readouterr().err
    after = entries(out)
    for i, mtime in glb_mtimes.items():
        assert (out / after[i]["files"]["glb"]).stat().st_mtime_ns == mtime
        assert after[i]["wall_s"] == before[i]["wall_s"] and after[i]["worker"] == before[i]["worker"]
    assert after["a-purple-dragon"]["status"] == "invalid"  # entries of dropped lines are kept
    assert read_index(out)["counts"] == {"done": 4}
    assert elapsed < 15, elapsed


def test_image_jobs_and_missing_images_are_reported(tmp_path, capsys):
    """Without an image-to-3D recipe each image job says so; a missing image names its path. No worker starts."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(images / "red.png")
    prompts = tmp_path / "list.txt"
    prompts.write_text("image: nowhere/gone.png\n")
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--image-dir", str(images), "--out", str(out), *TINY]) == 1
    jobs = entries(out)
    assert jobs["gone"]["status"] == "invalid" and "nowhere/gone.png does not exist" in jobs["gone"]["error"]
    assert jobs["red"]["status"] == "invalid" and "image-to-3D is not available" in jobs["red"]["error"]
    assert "2 jobs: 2 invalid" in capsys.readouterr().out


def test_duplicate_prompts_get_their_own_run_dirs_and_a_held_batch_folder_is_refused(tmp_path):
    from threed.batch.jobs import read_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\nA red cube!\n")
    assert [j.id for j in read_prompts(prompts, set())] == ["a-red-cube", "a-red-cube-2"]
    out = tmp_path / "out"
    with _locked(out), pytest.raises(ThreedError, match="another threed batch .* is running"):
        run_batch(BatchConfig(out=str(out), overrides=TINY), read_prompts(prompts, set()))


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e .[batch]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_local_cluster_batch(ray_cluster, tmp_path):
    """The same 4 prompts as Ray tasks (one CPU each) on a 2-CPU local cluster."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(GOOD) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--out", str(out), "--ray", "auto", *TINY]) == 0
    index = read_index(out)
    assert index["counts"] == {"done": 4} and index["ray"] == "auto"
    for e in index["jobs"]:
        assert_done(out, e)
        assert int(e["worker"].split()[-1]) != os.getpid()  # ran in Ray's workers, not here
