"""End to end through the command line, with tiny random-weight priors on CPU."""

import json
import subprocess
import sys

import pytest
import torch
import trimesh

from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.recipe import load_recipe, save_config
from threed.stage import Stage

# A CPU-sized scene: small hash grid, few samples, small images. Same code path as the shipped recipes.
SMALL = [
    "stages.0.render_size=24",
    "stages.0.scene.geometry.encoding.n_levels=4",
    "stages.0.scene.geometry.encoding.log2_hashmap_size=12",
    "stages.0.scene.geometry.encoding.max_resolution=64",
    "stages.0.scene.renderer.num_samples=24",
    "stages.0.scene.background.kind=solid",
    "stages.0.val_every=4",
    "stages.0.val_views=2",
    "stages.0.val_resolution=24",
    "stages.0.ckpt_every=3",
    "export.grid_size=32",
    "export.video_frames=3",
    "export.video_resolution=32",
    "export.texture_size=64",
    "export.views=2",
    "export.view_resolution=24",
]


def generate(*args: str) -> int:
    return main(["generate", *args])


@pytest.mark.parametrize("recipe,fixture", [("dreamfusion-sd", "tiny_sd_dir"), ("dreamfusion-if", "tiny_if_dir")])
def test_generate_writes_loadable_assets(recipe, fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    assert generate("a wooden chair", "--recipe", recipe, "--out", str(run), f"model={model}", "max_steps=6", *SMALL) == 0
    glb = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert len(glb.faces) > 0
    obj = trimesh.load(run / "export" / "model.obj", force="mesh")
    assert len(obj.faces) == len(glb.faces)
    assert (run / "export" / "model.ply").is_file() and (run / "export" / "model.mtl").is_file()
    assert (run / "export" / "turntable.mp4").stat().st_size > 0
    assert glb.visual.kind == "texture" and (run / "export" / "views.png").is_file()
    assert len(json.loads((run / "export" / "export.json").read_text())["views"]["psnr"]) == 2
    assert (run / "config.yaml").read_text().count("a wooden chair") == 1
    assert sorted(p.name for p in (run / "stages" / "0-coarse" / "val").iterdir()) == ["step-000004.png",
                                                                                        "step-000006.png"]
    assert Checkpoint.load(run / "stages" / "0-coarse" / "last.pt").step == 6


def test_resume_continues_exactly(tiny_sd_dir, tmp_path):
    """Stopping after 3 steps and resuming to 6 gives the same field as 6 steps straight."""
    common = ["--recipe", "dreamfusion-sd", f"model={tiny_sd_dir}", *SMALL, "export.video=false"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert generate("a wooden chair", "--out", str(straight), "max_steps=6", *common) == 0
    assert generate("a wooden chair", "--out", str(split), "max_steps=3", *common) == 0
    assert Checkpoint.load(split / "stages" / "0-coarse" / "last.pt").step == 3
    assert generate("--resume", str(split), "max_steps=6") == 0
    a = Checkpoint.load(straight / "stages" / "0-coarse" / "last.pt")
    b = Checkpoint.load(split / "stages" / "0-coarse" / "last.pt")
    assert b.step == 6
    for key, value in a.scene.items():
        assert torch.allclose(value, b.scene[key], atol=1e-6), key


def test_export_and_render_commands(tiny_sd_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert generate("a wooden chair", "--recipe", "dreamfusion-sd", "--out", str(run), f"model={tiny_sd_dir}",
                    "max_steps=3", *SMALL, "export.video=false", "export.formats=[glb]") == 0
    assert not (run / "export" / "model.obj").exists()
    assert main(["export", str(run), "--format", "obj", "--format", "ply", "--grid-size", "24"]) == 0
    assert trimesh.load(run / "export" / "model.obj", force="mesh").faces.shape[0] > 0
    video = tmp_path / "spin.mp4"
    assert main(["render", str(run), "--output", str(video), "--frames", "2", "--size", "16"]) == 0
    assert video.stat().st_size > 0


def test_recipes_lists_each_with_a_description(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = {line.split()[0] for line in lines}
    assert {"dreamfusion-sd", "dreamfusion-if"} <= names
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


@pytest.mark.parametrize("argv", [["--help"], ["recipes"], ["generate", "--help"]])
def test_help_and_the_recipe_list_start_without_torch(argv):
    """``threed --help`` and ``threed recipes`` answer at once: neither loads torch (seconds of import on a CPU)."""
    code = ("import sys\nfrom threed.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'trimesh' not in sys.modules, 'torch imported'" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_recipes_on_an_empty_or_broken_recipe_folder(tmp_path, monkeypatch, capsys):
    """An install without recipes says so; a file that is not a recipe is listed with why, beside the others."""
    import threed.recipes

    monkeypatch.setattr(threed.recipes, "CONFIG_DIR", tmp_path)
    assert main(["recipes"]) == 2
    err = capsys.readouterr().err
    assert f"no recipes found in {tmp_path}" in err and "reinstall" in err and "Traceback" not in err
    assert main(["generate", "a red cube", "--out", str(tmp_path / "run")]) == 2
    assert f"no recipes found in {tmp_path}" in capsys.readouterr().err
    (tmp_path / "good.yaml").write_text("description: fine\n")
    (tmp_path / "broken.yaml").write_text("description: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "folder.yaml").mkdir()
    assert main(["recipes"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines.pop("good") == "fine"
    assert lines.pop("broken").startswith(f"(unreadable: cannot read {tmp_path / 'broken.yaml'}")
    assert "is not a recipe" in lines.pop("list")
    assert lines.pop("binary").startswith("(unreadable: cannot read")
    assert not lines  # the folder named like a recipe is not one


@pytest.mark.parametrize("args,message", [
    (["", "max_steps=1"], "prompt is empty"),
    (["a cube", "stages.0.steps=abc"], "stages[0].steps"),  # noqa: RUF001 - path in the error
    (["a cube", "stages.0.scene.geometry.radiu=2"], "valid keys"),
    (["a cube", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["a cube", "device=tpu"], "choose one of: auto, cpu, cuda"),
])
def test_bad_input_is_a_clear_error(args, message, tmp_path, capsys):
    assert generate(*args, "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_model_names_the_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert generate("a cube", "--recipe", "dreamfusion-sd", "--out", str(tmp_path / "r"), f"model={missing}",
                    "max_steps=1", *SMALL) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "download" in err


def test_export_of_a_run_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "not a threed run directory" in capsys.readouterr().err
    save_config(load_recipe("dreamfusion-sd", SMALL, prompt="a cube"), tmp_path / "fresh")  # started, no step yet
    assert main(["export", str(tmp_path / "fresh")]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint yet" in err and "Traceback" not in err


def test_export_of_a_missing_run_dir_names_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["export", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"run directory {missing} does not exist" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(["export", str(tmp_path / "file")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err


def test_export_of_an_interrupted_run(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C at step 5 of 6 keeps the step-3 checkpoint; `threed export` takes the run from there."""
    run = tmp_path / "run"
    train_step, calls = Stage.train_step, []

    def interrupt_at_step_5(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return train_step(self, *args, **kwargs)

    monkeypatch.setattr(Stage, "train_step", interrupt_at_step_5)
    assert generate("a wooden chair", "--recipe", "dreamfusion-sd", "--out", str(run), f"model={tiny_sd_dir}",
                    "max_steps=6", *SMALL, "export.video=false") == 130
    assert not (run / "export").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["export", str(run), "--format", "glb", "--format", "ply", "--faces", "300", "--texture-size", "32",
                 "--views", "0"]) == 0
    captured = capsys.readouterr()
    assert "step 3/6 (the run is unfinished)" in captured.err
    report = json.loads((run / "export" / "export.json").read_text())
    assert report["step"] == 3 and report["total_steps"] == 6 and report["texture"]["texture_size"] == 32
    glb = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert 0 < len(glb.faces) <= 300
    assert glb.visual.kind == "texture" and 0.0 <= glb.visual.uv.min() and glb.visual.uv.max() <= 1.0
    assert (run / "export" / "model.ply").is_file() and not (run / "export" / "model.obj").exists()


def test_export_rejects_bad_options(tiny_sd_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert generate("a wooden chair", "--recipe", "dreamfusion-sd", "--out", str(run), f"model={tiny_sd_dir}",
                    "max_steps=1", *SMALL, "export.video=false", "export.formats=[glb]") == 0
    capsys.readouterr()
    assert main(["export", str(run), "--faces", "2"]) == 2
    err = capsys.readouterr().err
    assert "faces must be at least 4" in err and "Traceback" not in err
    # --faces 0 keeps every face; --no-normalize keeps world coordinates; vertex colours skip the texture.
    assert main(["export", str(run), "--faces", "0", "--no-normalize", "--texture", "vertex", "--views", "0"]) == 0
    report = json.loads((run / "export" / "export.json").read_text())
    assert "faces_before_decimation" not in report and report["transform"]["scale"] == 1.0
    assert report["texture_mode"] == "vertex"


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_sd_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["a wooden chair", "--recipe", "dreamfusion-sd", "--out", str(run), f"model={tiny_sd_dir}", *SMALL,
            "export.video=false"]
    assert generate(*args, "max_steps=3") == 0
    good = Checkpoint.load(run / "stages" / "0-coarse" / "last.pt")
    # A NaN guidance scale makes the first resumed step's loss NaN; the stage must stop there
    # without overwriting the good checkpoint.
    assert generate("--resume", str(run), "max_steps=12", "stages.0.guidance.guidance_scale=.nan",
                    "stages.0.ckpt_every=1") == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "--resume" in err
    kept = Checkpoint.load(run / "stages" / "0-coarse" / "last.pt")
    assert kept.step == good.step == 3
    for key, value in good.scene.items():
        assert torch.equal(value, kept.scene[key]), key
