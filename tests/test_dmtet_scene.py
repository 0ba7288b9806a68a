"""The dmtet scene kind: config, renderer selection, optimiser groups and the NeRF -> DMTet hand-off."""

import pytest
import torch

from threed.cameras import Cameras
from threed.config import build
from threed.errors import ThreedError
from threed.geometry.dmtet import DMTet
from threed.render.raster import MeshRenderer
from threed.scene import DMTetSceneConfig, NeRFSceneConfig, OptimizerConfig, Scene
from threed.stage import StageConfig, hand_off_level

ENCODING = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4, "max_resolution": 64}


def nerf_scene() -> Scene:
    cfg = build(NeRFSceneConfig, {"geometry": {"encoding": ENCODING, "hidden_dim": 16},
                                  "renderer": {"num_samples": 64}})
    return Scene(cfg).eval()


def dmtet_scene(**geometry) -> Scene:
    cfg = build(DMTetSceneConfig, {"geometry": {"grid_size": 20, "encoding": ENCODING, "hidden_dim": 16,
                                                **geometry}})
    return Scene(cfg).eval()


def test_stage_config_builds_a_dmtet_scene_by_kind():
    cfg = build(StageConfig, {"scene": {"kind": "dmtet", "geometry": {"grid_size": 16},
                                        "renderer": {"normals": "face"}}})
    assert isinstance(cfg.scene, DMTetSceneConfig) and cfg.scene.geometry.grid_size == 16
    scene = Scene(cfg.scene)
    assert isinstance(scene.renderer, MeshRenderer) and isinstance(scene.geometry, DMTet)
    with pytest.raises(ThreedError, match="dmtet"):
        build(StageConfig, {"scene": {"kind": "voxels"}})
    with pytest.raises(ThreedError, match="grid_size"):
        build(StageConfig, {"scene": {"kind": "dmtet", "geometry": {"grid_sise": 16}}})


def test_parameter_groups_cover_every_parameter_once():
    scene = dmtet_scene()
    groups = scene.parameter_groups(OptimizerConfig(lr_geometry=0.02))
    names = {g["name"]: g for g in groups}
    assert names["geometry"]["lr"] == 0.02 and len(names["geometry"]["params"]) == 2  # sdf + offsets
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(scene.parameters()))
    nerf_groups = nerf_scene().parameter_groups(OptimizerConfig())
    assert [g["name"] for g in nerf_groups] == ["encoding", "network"]


def test_hand_off_from_nerf_matches_its_silhouettes():
    """After the hand-off the DMTet mask and the NeRF opacity from the same cameras overlap with IoU >= 0.9."""
    torch.manual_seed(0)
    nerf = nerf_scene()
    dmtet = dmtet_scene()
    info = dmtet.init_from(nerf, hand_off_level(dmtet, nerf))
    assert info["albedo"] == "copied" and info["level"] > 0
    cams = Cameras.orbit([15.0, 15.0, 15.0, 60.0], [0.0, 90.0, 200.0, 300.0], 2.75, 40.0, 40)
    with torch.no_grad():
        volume = nerf(cams).opacity[..., 0] > 0.5
        mesh = dmtet(cams).opacity[..., 0] > 0.5
    assert volume.sum() > 200
    iou = float((volume & mesh).sum() / (volume | mesh).sum())
    assert iou >= 0.9, iou
    points = torch.rand(100, 3) - 0.5
    torch.testing.assert_close(dmtet.geometry.albedo(points), nerf.geometry.albedo(points))


def test_hand_off_fits_albedo_when_the_fields_differ():
    torch.manual_seed(0)
    nerf = nerf_scene()
    dmtet = dmtet_scene(hidden_dim=8)
    info = dmtet.init_from(nerf, hand_off_level(dmtet, nerf))
    assert info["albedo"] == "fitted"
    surface = dmtet.mesh().vertices.detach()
    error = (dmtet.geometry.albedo(surface) - nerf.geometry.albedo(surface)).abs().mean()
    assert error < 0.05


def test_scene_kind_mismatches_are_reported():
    nerf, dmtet = nerf_scene(), dmtet_scene()
    with pytest.raises(ThreedError, match="no density field"):
        dmtet.density(torch.zeros(1, 3))
    with pytest.raises(ThreedError, match="no explicit mesh"):
        nerf.mesh()
    with pytest.raises(ThreedError, match="nerf -> dmtet"):
        nerf.init_from(dmtet, hand_off_level(nerf, dmtet))


def test_a_dmtet_stage_trains_checkpoints_and_resumes(tiny_toy_dir, tmp_path):
    """The real stage loop on a DMTet scene: SDS through the rasterizer moves the SDF; resume is a no-op."""
    from threed.checkpoint import Checkpoint
    from threed.stage import RunContext, Stage

    cfg = build(StageConfig, {
        "name": "refine", "steps": 3, "render_size": 24, "val_every": 3, "val_views": 2, "val_resolution": 24,
        "ckpt_every": 3,
        "scene": {"kind": "dmtet", "geometry": {"grid_size": 12, "encoding": ENCODING, "hidden_dim": 16},
                  "background": {"kind": "random"}},
        "cameras": {"batch_size": 2}, "loss": {"orient": 0.0}})
    ctx = RunContext(prompt="a red cube", model=str(tiny_toy_dir), device=torch.device("cpu"), seed=0,
                     max_steps=None, run_dir=tmp_path)
    stage = Stage(cfg, ctx, 1)
    start = Scene(cfg.scene).geometry.sdf_param.detach().clone()
    ckpt = stage.run()
    assert ckpt.step == 3 and ckpt.scene_kind == "dmtet"
    sdf = Checkpoint.load(stage.checkpoint_path).scene["renderer.geometry.sdf_param"]
    assert torch.isfinite(sdf).all() and not torch.equal(sdf, start)
    assert stage.dir.val_image(3).is_file()
    assert stage.run().step == 3
