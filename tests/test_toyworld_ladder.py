"""The fidelity ladder's tools: the prior's samples judged against the truth, the ceiling fit, and the
evaluation script that puts them beside the recipe as shipped."""

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from small_recipes import SMALL, small
from threed.guidance.prior import load_prior
from threed.recipe import load_recipe
from threed.toyworld.ceiling import MARKER, ceiling_recipe, run_ceiling
from threed.toyworld.prior_fidelity import camera_bank, judge_sample, prior_fidelity
from threed.toyworld.raycast import render
from threed.toyworld.scenes import Scene
from threed.toyworld.score import score_run

ROOT = Path(__file__).resolve().parents[1]


def test_a_truth_render_judged_as_a_prior_sample_is_perfect_and_a_wrong_shape_is_not():
    cams = camera_bank("front", 32)
    cube, sphere = Scene.single("cube", "red"), Scene.single("sphere", "red")
    truth = render(cube, cams[17], "albedo").rgb[0]
    judged = judge_sample(truth, cube, "front")
    assert judged["iou"] == pytest.approx(1.0, abs=1e-3) and judged["aspect_error"] == pytest.approx(0.0, abs=1e-3)
    assert judged["delta_e"] < 1.0
    wrong = judge_sample(render(sphere, cams[17], "albedo").rgb[0], cube, "front")
    assert wrong["iou"] < 0.93 and json.dumps(wrong)
    blue = judge_sample(render(Scene.single("cube", "blue"), cams[17], "lambertian").rgb[0], cube, "front")
    assert blue["iou"] > 0.95 and blue["delta_e"] > 30.0


def test_camera_banks_carry_their_view_label():
    for label in ("front", "side", "back", "overhead"):
        labels = camera_bank(label, 16).view_labels()
        assert set(labels) == {label}


def test_prior_rung_on_a_tiny_prior_is_deterministic_and_json_ready(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    report, samples = prior_fidelity(prior, "a red cube", n_per_view=2, steps=3, seed=1)
    again, _ = prior_fidelity(prior, "a red cube", n_per_view=2, steps=3, seed=1)
    assert report == again and json.loads(json.dumps(report)) == report
    assert set(samples) == {"front", "side", "back", "overhead"} and samples["front"].shape == (2, 16, 16, 3)
    assert len(report["views"]["side"]["samples"]) == 2 and 0.0 <= report["iou"] <= 1.0


def test_the_ceiling_fits_the_truth_through_the_recipes_own_stages_and_export(tmp_path, tiny_toy_dir):
    """A few photometric steps move the blob's colour and shape toward the truth; nothing but the background
    differs from the recipe, and the run directory scores like any run."""
    overrides = [o for o in SMALL if not o.startswith("max_steps")] + [f"model={tiny_toy_dir}", "export.views=2"]
    before = load_recipe("quickstart", overrides + ["max_steps=0"], prompt="a red cube")
    run_ceiling(before, tmp_path / "start")
    cfg = load_recipe("quickstart", overrides + ["max_steps=150", "stages.0.scene.background.kind=random"],
                      prompt="a red cube")
    assert ceiling_recipe(cfg).stages[0].scene.background.kind == "solid"
    report = run_ceiling(cfg, tmp_path / "fit")
    assert json.loads((tmp_path / "fit" / MARKER).read_text()) == report and report["fit_seconds"] > 0
    start, fit = score_run(tmp_path / "start", "a red cube"), score_run(tmp_path / "fit", "a red cube")
    # Measured: Delta E 31.5 -> 3.0, F@0.05 0.43 -> 0.56 (a 24-pixel, 150-step fit of a grey blob to a red cube).
    assert start["colour"]["delta_e"] > 20.0 and fit["colour"]["delta_e"] < 10.0
    assert fit["fidelity"]["f"]["0.05"] > start["fidelity"]["f"]["0.05"] + 0.05
    assert fit["export"]["mean_psnr"] is not None and (tmp_path / "fit" / "stages" / "0-coarse" / "last.pt").is_file()
    again = run_ceiling(cfg, tmp_path / "fit")  # finished stages are kept, not fitted again
    assert again["final_loss"] == report["final_loss"]


def test_the_ceiling_hands_geometry_on_between_stages_as_a_run_does(tmp_path, tiny_toy_dir):
    """quickstart-mesh: the NeRF stage's fit starts the DMTet stage, whose surface is what gets exported."""
    overrides = [o for o in small("quickstart-mesh") if not o.startswith("max_steps")] + ["max_steps=3"]
    report = run_ceiling(load_recipe("quickstart-mesh", overrides + [f"model={tiny_toy_dir}"], prompt="a red cube"),
                         tmp_path)
    assert set(report["final_loss"]) == {"coarse", "refine"}
    assert json.loads((tmp_path / "export" / "export.json").read_text())["stage"] == "refine"
    assert score_run(tmp_path, "a red cube")["fidelity"]["f"]["0.05"] > 0.0


def test_nothing_in_the_package_reaches_the_ceiling():
    """The ceiling reads ground truth: only scripts and tests may import it, never generation."""
    importers = []
    for path in (ROOT / "threed").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "ceiling" in node.module:
                importers.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Import) and any("ceiling" in a.name for a in node.names):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []


def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_toyworld", ROOT / "scripts" / "eval_toyworld.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_eval_script_ladder_writes_three_rungs_and_resumes(tmp_path, tiny_toy_dir, capsys):
    script = _eval_script()
    out = tmp_path / "eval"
    args = ["--out", str(out), "--prompts", "a red cube", "--ladder", f"model={tiny_toy_dir}",
            *[o for o in SMALL if o != "export.views=0"], "export.views=2"]
    assert script.main(args) == 0
    ladder = json.loads((out / "ladder.json").read_text())["entries"]["a red cube | seed 0"]
    assert {"prior", "ceiling"} <= set(ladder) and "fidelity" in ladder["ceiling"]
    scores = json.loads((out / "scores.json").read_text())["entries"]["a red cube | seed 0"]["scores"]
    assert scores["fidelity"]["f"]["0.05"] >= 0.0 and "delta_e" in scores["colour"]
    table = (out / "ladder.md").read_text()
    assert "| a red cube | 0 |" in table and "| ceiling | 0 | 1 |" in table and "| sds | 0 | 1 |" in table
    assert "mean F@0.05" in (out / "summary.md").read_text()
    from PIL import Image

    assert Image.open(out / "ladder.png").size[0] > 4 * 128
    stamp = (out / "ceiling" / "a-red-cube-seed0" / "export" / "model.glb").stat().st_mtime
    capsys.readouterr()
    assert script.main(args) == 0
    assert "SDS already scored, skipped" in capsys.readouterr().out
    assert (out / "ceiling" / "a-red-cube-seed0" / "export" / "model.glb").stat().st_mtime == stamp
    assert 0.0 <= ladder["prior"]["iou"] <= 1.0
    assert script.main(["--out", str(tmp_path / "cmp"), "--compare", str(out)]) == 0
    row = (tmp_path / "cmp" / "compare.md").read_text().splitlines()[2]
    assert row.startswith("| `quickstart` ") and f"| {scores['fidelity']['f']['0.05']:.2f} |" in row
