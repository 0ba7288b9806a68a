"""The web app: a real gradio server on localhost driven by a real headless Chromium, plus its queue and gate.

Browser tests need Debian's ``chromium`` and the ``[app]`` extra (gradio, playwright); they skip cleanly
without them. The job queue and the run-name gate need neither.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import app_server, wait_for
from PIL import Image

from threed.app.jobs import JobQueue
from threed.app.request import JobRequest
from threed.app.runs import run_dir, view_run
from threed.app.server import App
from threed.errors import ThreedError
from threed.recipe import last_checkpoint, load_recipe, load_run_config, save_config

CHROMIUM = os.environ.get("THREED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Without the networking flags Chromium keeps trying to reach Google's services from the closed network."""
TINY = ["stages.0.val_resolution=32", "stages.0.val_views=2", "export.grid_size=32", "export.video_frames=4",
        "export.video_resolution=48", "export.views=0", "export.texture=vertex"]
"""Overrides that keep a toy-world job to seconds of compute while still exporting every file and a turntable."""
TRAVERSALS = ["../../etc", "..", ".", "/etc", "a/../../b", "..\\..\\windows", ".hidden", "", "run\x00x"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``threed app`` on a free localhost port over a fresh output folder: (url, App)."""
    with app_server(tmp_path_factory.mktemp("app-out")) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def browser_page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    import tempfile

    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, viewport={"width": 1280, "height": 1000})
        page = ctx.new_page()
        page.goto(server[0])
        page.locator("#threed-generate").wait_for(timeout=30_000)
        yield page
        ctx.close()


def status_text(page) -> str:
    return page.locator("#threed-status").inner_text()


def wait_for_status(page, words: tuple[str, ...], timeout: float) -> str:
    return wait_for(lambda: next((s for s in [status_text(page)] if any(w in s for w in words)), None), timeout,
                    f"status {words}")


def test_bad_inputs_show_a_message_not_a_traceback(browser_page):
    page = browser_page
    page.locator("#threed-prompt textarea").fill("   ")
    page.locator("#threed-generate").click()
    message = page.locator("#threed-message")
    assert wait_for(lambda: "prompt is empty" in message.inner_text(), 20, "the empty-prompt message")

    page.locator("#threed-prompt textarea").fill("a red dragon")  # the toy prior knows shapes and colours only
    page.locator("#threed-generate").click()
    status = wait_for_status(page, ("Failed", "Done"), 120)
    assert "Failed" in status, status
    assert "dragon" in status and "does not know" in status, status
    assert "Traceback" not in page.content()


def canvas_coverage(png: bytes) -> float:
    """Share of the viewer's pixels that differ from its white clear colour: 0 for a blank canvas."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    return float((np.abs(rgb - 255).max(axis=-1) > 40).mean())


def test_prompt_to_viewer_in_a_real_browser(browser_page, server, tmp_path):
    """Type a prompt, run a short toy-world job, and see the mesh in the 3D viewer, the video and downloads."""
    page = browser_page
    page.locator("#threed-prompt textarea").fill("a red cube")
    page.get_by_text("Settings").click()
    page.locator("#threed-steps input").fill("3")
    page.locator("#threed-overrides textarea").fill("\n".join(TINY))
    page.locator("#threed-generate").click()
    runs = page.locator("#threed-runs input")
    wait_for(lambda: "a red cube" in runs.input_value(), 30, "the new run to be listed and followed")
    status = wait_for_status(page, ("Done", "Failed"), 180)
    assert "Done" in status and "Failed" not in status, status

    canvas = page.locator("#threed-viewer canvas")
    canvas.wait_for(timeout=30_000)
    coverage = wait_for(lambda: canvas_coverage(canvas.screenshot()) or None, 30, "the viewer to draw the mesh")
    assert 0.02 < coverage < 0.9, coverage  # an object, neither an empty canvas nor a filled one
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    links = [a.get_attribute("href") for a in page.locator("#threed-downloads a").all()]
    names = {Path(href.split("?")[0]).name: href for href in links if href}
    assert {"model.glb", "model-obj.zip", "model.ply", "turntable.mp4"} <= set(names), links
    glb = page.request.get(names["model.glb"]).body()
    assert glb[:4] == b"glTF", glb[:16]  # the download is the binary glTF itself
    assert page.locator("#threed-video video").count() == 1
    assert page.locator("#threed-preview img").count() == 1

    app = server[1]
    run = app.view(app.run_choices()[0][1])
    assert run.prompt == "a red cube" and run.state == "done" and run.glb.stat().st_size > 1000


def test_uploads_are_checked_by_content_in_a_real_browser(browser_page, tmp_path):
    """The page's image input hands the upload over untouched: a photo reaches the form checks, a broken file
    gets threed's message (not gradio's bare "Error"), and is kept by what it is, not by its name."""
    page = browser_page
    page.get_by_text("Or start from a photo").click()
    upload = page.locator("#threed-image input[type=file]")
    message = page.locator("#threed-message")
    upload.set_input_files(str(Path(__file__).parents[1] / "assets" / "examples" / "red-cube.png"))
    page.locator("#threed-generate").click()  # with the text recipe still chosen: refused, naming image recipes
    assert wait_for(lambda: "quickstart-image" in message.inner_text(), 30, "the text-recipe message")
    bad = tmp_path / "holiday.png"
    bad.write_text("these are not pixels\n")
    upload.set_input_files(str(bad))
    page.locator("#threed-generate").click()
    assert wait_for(lambda: "holiday.png is not an image" in message.inner_text(), 30, "the broken-upload message")
    assert str(tmp_path) not in message.inner_text() and "Traceback" not in page.content()


def test_run_names_cannot_leave_the_output_folder(server, tmp_path):
    url, app = server
    for name in TRAVERSALS:
        for action in (app.view, app.resume, app.cancel):
            with pytest.raises(ThreedError, match="not a run name|outside the output folder|no run"):
                action(name)
    outside = tmp_path / "outside-run"
    save_config(load_recipe("quickstart", prompt="a red cube"), outside)
    (app.root / "linked").symlink_to(outside)
    with pytest.raises(ThreedError, match="outside the output folder"):
        app.view("linked")
    assert "linked" not in [name for _, name in app.run_choices()]

    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post("/gradio_api/call/open_run", json={"data": ["../../etc"]}).json()["event_id"]
        assert "is not a run name" in http.get(f"/gradio_api/call/open_run/{event}").text  # run_dir's refusal
        inside = app.root / "probe.txt"
        inside.write_text("inside")
        assert http.get(f"/gradio_api/file={inside}").text == "inside"
        for path in ("/etc/hostname", f"{app.root}/../{outside.name}/config.yaml", str(outside / "config.yaml")):
            assert http.get(f"/gradio_api/file={path}").status_code in (403, 404), path


def test_queue_runs_one_job_at_a_time_and_cancel_leaves_a_resumable_run(tmp_path):
    app = App(tmp_path, JobQueue(tmp_path, envs=[{}]))  # one worker, as on a CPU
    try:
        long = app.submit(JobRequest("a red cube", steps=500, overrides=[
            "stages.0.ckpt_every=2", "stages.0.log_every=1", "stages.0.val_every=0"]))
        waiting = app.submit(JobRequest("a blue sphere", steps=3, overrides=TINY))
        assert app.queue.get(waiting).state == "queued"
        assert "Queued" in app.status(app.view(waiting)) and "1 worker" in app.status(app.view(waiting))
        assert app.cancel(waiting) == "cancelled before it started"
        assert view_run(run_dir(tmp_path, waiting)).job["state"] == "cancelled"

        wait_for(lambda: (p := app.view(long).progress) and p.step >= 3, 150, "three steps of the long job")
        assert "Running" in app.status(app.view(long))
        app.cancel(long)
        wait_for(lambda: app.queue.get(long).state == "cancelled", 60, "the job to stop")
        path = run_dir(tmp_path, long)
        ckpt = last_checkpoint(path, load_run_config(path))
        assert 2 <= ckpt.step < 500  # stopped mid-stage with its checkpoint: `threed generate --resume` continues
        assert "Cancelled" in app.status(app.view(long))
        assert app.queue.get(waiting).state == "cancelled" and not (run_dir(tmp_path, waiting) / "log.txt").exists()
    finally:
        app.queue.close()


def test_form_checks_before_queueing(tmp_path):
    with pytest.raises(ThreedError, match="not KEY=VALUE"):
        JobRequest("a red cube", overrides=["--out=/etc"]).validate()
    with pytest.raises(ThreedError, match="with the form"):
        JobRequest("a red cube", overrides=["image=/etc/passwd"]).validate()
    with pytest.raises(ThreedError, match="steps must be a positive"):
        JobRequest("a red cube", steps=-5).validate()
    assert "stages.0.val_every=7" in JobRequest("a red cube", preview_every=7).recipe_overrides()
    with pytest.raises(ThreedError, match="unknown key"):
        JobRequest("a red cube", overrides=["export.resolutoin=64"]).validate()
    opaque = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(opaque)
    with pytest.raises(ThreedError, match="no transparent background"):
        JobRequest(image=opaque).validate()
    cutout = tmp_path / "cutout.png"
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (200, 30, 30, 255)
    Image.fromarray(rgba).save(cutout)
    # a photo sent with a text recipe would be ignored: the page says which recipes take it
    with pytest.raises(ThreedError, match="quickstart-image"):
        JobRequest(image=cutout, recipe="quickstart").validate()
    assert JobRequest(image=cutout, recipe="quickstart-image").validate().stages[0].reference is not None


def test_texture_tab_checks_the_mesh_and_paints_it_through_the_queue(tmp_path):
    """A mesh upload runs ``threed texture`` into a run folder the app lists; bad meshes are refused first."""
    import trimesh

    cube = trimesh.creation.box((0.6, 0.6, 0.6))
    upload = tmp_path / "uploads" / "my cube.obj"
    upload.parent.mkdir()
    cube.export(upload)
    out = tmp_path / "out"
    app = App(out, JobQueue(out, envs=[{}]))
    try:
        with pytest.raises(ThreedError, match="paints a given mesh"):
            JobRequest("a red cube", recipe="texture").validate()
        with pytest.raises(ThreedError, match="would ignore the mesh"):
            JobRequest("a red cube", mesh=upload).validate()
        with pytest.raises(ThreedError, match="how to paint"):
            JobRequest("", recipe="texture", mesh=upload).validate()
        with pytest.raises(ThreedError, match="with the form"):
            JobRequest("a red cube", recipe="texture", mesh=upload, overrides=["mesh=/etc/passwd"]).validate()
        cloud = tmp_path / "uploads" / "cloud.ply"
        trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(cloud)
        notes = tmp_path / "uploads" / "notes.txt"
        notes.write_text("not a mesh")
        for bad in (cloud, notes):
            with pytest.raises(ThreedError):
                app.submit(JobRequest("a red cube", recipe="texture", mesh=bad))
        assert not any(out.iterdir()) or all(p.name.startswith(".") for p in out.iterdir())  # nothing made

        name = app.submit(JobRequest("a red cube", recipe="texture", mesh=upload, up="y", overrides=[
            "max_steps=2", "stages.0.render_size=16", "stages.0.cameras.batch_size=1", "stages.0.val_every=0",
            "export.views=0", "export.video=false", "export.texture_size=64"]))
        wait_for(lambda: app.queue.get(name).state in ("done", "failed"), 240, "the texture job")
        assert app.queue.get(name).state == "done", app.status(app.view(name))
        view = app.view(name)
        painted = trimesh.load(view.glb, force="mesh")
        assert len(painted.faces) == len(cube.faces)  # the user's surface, painted
        corners = np.unique(np.asarray(painted.vertices).round(6), axis=0)  # UV seams duplicate vertices
        assert np.allclose(corners, np.unique(np.asarray(cube.vertices).round(6), axis=0), atol=1e-6)
    finally:
        app.queue.close()


def test_edit_this_result_queues_a_new_run_and_keeps_the_original(tmp_path):
    """"Edit this result" runs ``threed edit`` on a finished run into a new run the app lists; the original's
    files stay byte for byte; an unfinished run or an empty prompt is refused before anything is made."""
    import hashlib

    import threed
    from small_recipes import TINY_QUICKSTART

    out = tmp_path / "out"
    out.mkdir()
    threed.generate("a red cube", out=out / "red", overrides={**TINY_QUICKSTART, "export.video": False})
    threed.generate("a red cube", out=out / "half", overrides={**TINY_QUICKSTART, "max_steps": 2})
    (out / "half" / "stages" / "0-coarse" / "last.pt").unlink()  # as if stopped before its first checkpoint
    digest = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "red").rglob("*")  # noqa: E731
                      if p.is_file() and p.name != ".lock"}
    before = digest()
    app = App(out, JobQueue(out, envs=[{}]))
    try:
        with pytest.raises(ThreedError, match="new prompt is empty"):
            app.edit("red", "  ")
        with pytest.raises(ThreedError, match="unfinished"):
            app.edit("half", "a blue cube")
        with pytest.raises(ThreedError, match="not KEY=VALUE"):
            app.edit("red", "a blue cube", overrides=["--out=/etc"])
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["half", "red"]

        name = app.edit("red", "a blue cube", steps=2, overrides=["stages.0.val_every=0", "export.video=false",
                                                                    "export.views=0", "export.texture=vertex"])
        wait_for(lambda: app.queue.get(name).state in ("done", "failed"), 240, "the edit job")
        assert app.queue.get(name).state == "done", app.status(app.view(name))
        config = load_run_config(out / name)
        assert config.prompt == "a blue cube" and config.edit is not None
        assert Path(config.edit.run) == (out / "red").resolve()
        assert app.view(name).glb is not None
        assert digest() == before
    finally:
        app.queue.close()
