"""Coarse-to-fine recipes: stages chained in one run directory, typed hand-offs, frozen parts, resume mid-recipe."""

from __future__ import annotations

import pytest
import torch
import trimesh

from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.recipe import load_recipe, run_recipe
from threed.stage import RunContext, Stage
from small_recipes import small

@pytest.mark.parametrize("recipe,stages", [
    ("magic3d", ["coarse", "refine"]),
    ("fantasia3d", ["geometry", "texture"]),
    ("prolificdreamer", ["coarse", "geometry", "texture"]),
])
def test_each_coarse_to_fine_recipe_runs_offline_in_one_command(recipe, stages, tiny_toy_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--recipe", recipe, "--out", str(run), f"model={tiny_toy_dir}",
                 *small(recipe)]) == 0
    ckpts = [Checkpoint.load(run / "stages" / f"{i}-{name}" / "last.pt") for i, name in enumerate(stages)]
    assert [c.step for c in ckpts] == [3] * len(stages)
    assert ckpts[-1].scene_kind == "dmtet" and ckpts[-1].scene_config["kind"] == "dmtet"
    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert len(mesh.faces) > 100


def test_texture_stage_keeps_the_surface_and_paints_the_albedo(tiny_toy_dir, tmp_path):
    """fantasia3d's texture stage: SDF and offsets are exactly those of the geometry stage; the albedo moves."""
    cfg = load_recipe("fantasia3d", small("fantasia3d") + ["stages.1.optimizer.lr_encoding=0.1"],
                      prompt="a red cube", model=str(tiny_toy_dir))
    ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=torch.device("cpu"), seed=0, max_steps=3,
                     run_dir=tmp_path)
    geometry = Stage(cfg.stages[0], ctx, 0).run()
    texture = Stage(cfg.stages[1], ctx, 1).run(init=geometry)
    for key in ("renderer.geometry.sdf_param", "renderer.geometry.deform_param"):
        assert torch.equal(geometry.scene[key], texture.scene[key]), key
    albedo = [k for k in texture.scene if k.startswith("renderer.geometry.albedo_")]
    assert albedo and any(not torch.equal(geometry.scene[k], texture.scene[k]) for k in albedo)
    # and the geometry stage, conversely, optimises the SDF and offsets only
    groups = {g["name"] for g in Stage(cfg.stages[0], ctx, 0).setup()[0].optimizer.param_groups}
    assert groups == {"geometry"}


def test_resume_continues_mid_recipe(tiny_toy_dir, tmp_path):
    """A run whose first stage finished and whose second never started picks up at the second."""
    cfg = load_recipe("magic3d", small("magic3d"), prompt="a red cube", model=str(tiny_toy_dir))
    ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=torch.device("cpu"), seed=0, max_steps=3,
                     run_dir=tmp_path)
    Stage(cfg.stages[0], ctx, 0).run()
    first = tmp_path / "stages" / "0-coarse" / "last.pt"
    before = first.stat().st_mtime_ns
    files = run_recipe(cfg, tmp_path)
    assert first.stat().st_mtime_ns == before, "the finished stage must not be run or rewritten again"
    refine = Checkpoint.load(tmp_path / "stages" / "1-refine" / "last.pt")
    assert refine.step == 3 and refine.scene_kind == "dmtet"
    assert files["glb"].is_file()


def test_stage_wildcard_overrides_and_bad_stage_indices(tiny_toy_dir):
    cfg = load_recipe("prolificdreamer", ["stages.*.render_size=32", "stages.2.render_size=48"])
    assert [s.render_size for s in cfg.stages] == [32, 32, 48]
    from threed.errors import ThreedError

    with pytest.raises(ThreedError, match=r"3 stages.*stages\.\*"):
        load_recipe("prolificdreamer", ["stages.5.render_size=32"])
