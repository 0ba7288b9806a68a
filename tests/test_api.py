"""The Python API through its public names only (``threed.generate``, ``threed.Run``, ``threed.Progress``,
``threed.ThreedError``): one tiny run of the shipped toy default, read, exported, rendered and resumed."""

import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import trimesh

import threed
from threed.cli import main
from small_recipes import TINY_QUICKSTART

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 4-step run and the progress reports its callback got."""
    reports = []
    run = threed.generate("a red cube", out=tmp_path_factory.mktemp("api") / "cube", overrides=TINY_QUICKSTART,
                          progress=reports.append)
    return run, reports


def test_all_is_exactly_the_public_names():
    assert sorted(threed.__all__) == ["Progress", "Run", "ThreedError", "__version__", "edit", "generate",
                                      "texture"]
    for name in threed.__all__:
        assert getattr(threed, name) is not None
    # Submodules become attributes of the package once imported; every other public name is in __all__.
    public = {n for n, v in vars(threed).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public <= set(threed.__all__), public


def test_importing_threed_loads_neither_torch_nor_the_api():
    code = "import sys, threed; assert 'torch' not in sys.modules and 'threed.api' not in sys.modules, sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_m_threed_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "threed", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"threed {threed.__version__}"


def test_generate_reports_progress_with_the_validation_image(tiny_run):
    run, reports = tiny_run
    assert isinstance(run, threed.Run) and run.files["glb"].is_file()
    assert all(isinstance(r, threed.Progress) for r in reports)
    assert [r.step for r in reports] == [0, 1, 2, 3, 4]
    assert {r.stage for r in reports} == {"coarse"} and {r.total_steps for r in reports} == {4}
    last = reports[-1]
    assert math.isfinite(last.loss) and last.it_per_s > 0 and last.eta_s == 0
    assert reports[1].image is None  # no grid before step 2
    assert reports[2].image.name == "step-000002.png" and last.image.name == "step-000004.png"
    assert last.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mesh_export_and_render(tiny_run):
    run, _ = tiny_run
    mesh = run.mesh()
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0
    assert np.isclose(mesh.extents.max(), 1.0, atol=1e-3)  # export coordinates: the unit box
    assert np.allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-3)
    path = run.export("ply", faces=100)
    assert path == run.path / "export" / "model.ply"
    assert 0 < len(trimesh.load(path, force="mesh").faces) <= 100
    frames = run.render(frames=3, size=16)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1])  # the object turns
    with pytest.raises(threed.ThreedError, match="shading 'shiny' is not one of albedo"):
        run.render(shading="shiny")
    with pytest.raises(threed.ThreedError, match="unknown mesh format 'fbx'; choose from glb"):
        run.export("fbx")


def test_load_and_resume(tiny_run):
    run, _ = tiny_run
    loaded = threed.Run.load(run.path)
    assert loaded.config.prompt == "a red cube"
    assert loaded.progress().step == 4 and loaded.progress().image.name == "step-000004.png"
    reports = []
    loaded.resume(overrides={"max_steps": 6}, progress=reports.append)
    assert [r.step for r in reports] == [4, 5, 6]
    assert threed.Run.load(run.path).progress().step == 6


def _cli_error(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    prefix = "threed: error: "
    return next(line[len(prefix):] for line in capsys.readouterr().err.splitlines() if line.startswith(prefix))


def test_errors_are_threed_errors_with_the_command_lines_messages(tmp_path, capsys, tiny_run):
    cases = [
        (lambda: threed.generate("a cube", recipe="nope", out=tmp_path / "a"),
         ["generate", "a cube", "--recipe", "nope", "--out", str(tmp_path / "a")]),
        (lambda: threed.generate("a cube", out=tmp_path / "b", overrides={"stages.0.scene.geometry.radiu": 2}),
         ["generate", "a cube", "--out", str(tmp_path / "b"), "stages.0.scene.geometry.radiu=2"]),
        (lambda: threed.generate("", out=tmp_path / "c"), ["generate", "", "--out", str(tmp_path / "c")]),
        (lambda: threed.generate("a cube", out=tiny_run[0].path), ["generate", "a cube", "--out", str(tiny_run[0].path)]),
        (lambda: threed.Run.load(tmp_path / "missing"), ["export", str(tmp_path / "missing")]),
        (lambda: threed.generate(image=tmp_path / "none.png", out=tmp_path / "d"),
         ["generate", "--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "d")]),
    ]
    for call, argv in cases:
        with pytest.raises(threed.ThreedError) as exc:
            call()
        assert str(exc.value) == _cli_error(argv, capsys)


def test_overrides_must_be_dotted_names(tmp_path):
    with pytest.raises(threed.ThreedError, match="not a dotted name"):
        threed.generate("a cube", out=tmp_path / "r", overrides={"stages..steps": 1})
