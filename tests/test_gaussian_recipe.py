"""The gaussian recipe end to end on a CPU with the shipped toy-world prior: Gaussians -> mesh -> texture -> files."""

import json

import numpy as np
import trimesh

from threed.cli import main
from threed.export.gaussian_ply import read_gaussians_ply


def test_gaussian_recipe_exports_a_mesh_and_the_gaussians(tmp_path):
    """A short run still makes one object of about the size the Gaussians started at (a ball of radius 0.5)."""
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--recipe", "gaussian", "--out", str(run), "max_steps=30",
                 "stages.1.scene.init_grid_size=32", "stages.1.scene.geometry.grid_size=24",
                 "export.video=false", "export.views=0", "export.grid_size=48", "export.texture=vertex",
                 "export.normalize=false"]) == 0
    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert len(mesh.faces) > 100, len(mesh.faces)
    assert np.all(extent > 0.4) and np.all(extent < 1.8), extent  # started inside radius 0.5: not a speck or the box
    report = json.loads((run / "export" / "export.json").read_text())
    assert report["stage"] == "texture" and report["faces"] == len(mesh.faces)
    gaussians = read_gaussians_ply(run / "export" / "gaussians.ply")
    assert len(gaussians["positions"]) >= 2048 and bool(np.isfinite(gaussians["positions"].numpy()).all())
