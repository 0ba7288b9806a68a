"""The export pipeline on an analytic NeRF: files, face budget, unit box and its transform, colours, atomicity."""

import json
import os
import struct

import numpy as np
import pytest
import torch
import trimesh
from analytic_scene import BALL_RADIUS, BOX_CENTRE, BOX_HALF, albedo, analytic_scene

from threed.errors import ThreedError
from threed.export import pipeline
from threed.export.meshops import UnitBoxTransform
from threed.export.pipeline import ExportConfig, export_scene

CPU = torch.device("cpu")
# The analytic object's world bounding box: the ball and the box, whichever reaches further. Its soft
# edge renders RIM = 0.03 outside sdf = 0 (where the optical depth across the rim reaches ln 2; measured),
# and the automatic level follows the render, so the mesh does too.
RIM = 0.03
WORLD_LO = np.minimum(-BALL_RADIUS, np.asarray(BOX_CENTRE) - BOX_HALF) - RIM
WORLD_HI = np.maximum(BALL_RADIUS, np.asarray(BOX_CENTRE) + BOX_HALF) + RIM


def small(**changes) -> ExportConfig:
    base = dict(grid_size=64, faces=3000, texture_size=256, views=0, video=False)
    return ExportConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def scene():
    return analytic_scene(num_samples=128)


@pytest.fixture(scope="module")
def exported(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    files = export_scene(scene, out, small(), CPU, report={"stage": "toy", "step": 7})
    return out, files, json.loads((out / "export.json").read_text())


def test_writes_every_asset_and_nothing_else(exported):
    out, files, report = exported
    assert set(files) == {"glb", "obj", "ply", "report"}
    assert sorted(os.listdir(out)) == ["export.json", "model.glb", "model.mtl", "model.obj", "model.ply",
                                       "model_albedo.png"]  # no temporary files left
    assert report["stage"] == "toy" and report["step"] == 7
    assert report["texture_mode"] == "uv" and report["texture"]["texture_size"] == 256
    assert report["silhouette_iou"] > 0.95


def test_face_budget_unit_box_and_transform(exported):
    out, _, report = exported
    assert report["faces_before_decimation"] > 3000
    glb = trimesh.load(out / "model.glb", force="mesh")
    assert 0.98 * 3000 <= len(glb.faces) == report["faces"] <= 3000
    lo, hi = glb.bounds
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-6)  # float32 storage
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)
    # The saved transform takes the asset back onto the field: its bounds are the rendered object's,
    # to within a third of a marching-cubes cell (2 / 63).
    transform = UnitBoxTransform(tuple(report["transform"]["centre"]), report["transform"]["scale"])
    world = transform.to_world(glb.vertices)
    np.testing.assert_allclose(world.min(0), WORLD_LO, atol=0.01)
    np.testing.assert_allclose(world.max(0), WORLD_HI, atol=0.01)
    matrix = np.asarray(report["transform"]["world_to_export"])
    np.testing.assert_allclose(np.c_[world, np.ones(len(world))] @ matrix.T, np.c_[glb.vertices, np.ones(len(world))],
                               atol=1e-6)


def test_winding_outward_and_textured(exported):
    out, _, _ = exported
    # Not split at UV seams: closed. process=False: merging by position would fuse two distinct vertices
    # that decimation left at one spot into a pinch (DCC importers do not merge either).
    ply = trimesh.load(out / "model.ply", force="mesh", process=False)
    assert ply.is_watertight and ply.is_winding_consistent and ply.volume > 0
    glb = trimesh.load(out / "model.glb", force="mesh")
    assert glb.is_winding_consistent and glb.volume > 0
    assert glb.visual.kind == "texture"
    assert glb.visual.uv.min() >= 0.0 and glb.visual.uv.max() <= 1.0
    assert np.asarray(glb.visual.material.baseColorTexture).shape[:2] == (256, 256)
    # The GLB's NORMALs are smooth across UV seams: every copy of a split vertex has the same normal.
    # (Read from the file: trimesh.load(force="mesh") copies the mesh and recomputes normals.)
    positions, normals = glb_attribute(out / "model.glb", "POSITION"), glb_attribute(out / "model.glb", "NORMAL")
    assert len(positions) > len(ply.vertices)  # it is split
    _, first, inverse = np.unique(positions, axis=0, return_index=True, return_inverse=True)
    # Decimation may leave two distinct vertices at one spot (e.g. a box corner), which share a position
    # but not a normal: allow 0.5 % of the copies.
    same = np.abs(normals - normals[first][inverse.reshape(-1)]).max(-1) < 1e-6
    assert same.mean() > 0.995
    assert (np.einsum("ij,ij->i", normals, positions - positions.mean(0)) > -0.2).mean() > 0.99  # outward


def glb_attribute(path, name):
    """A float VEC3 vertex attribute of the first primitive, read straight from the GLB's binary chunk."""
    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    gltf = json.loads(data[20:20 + length])
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"][name]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    start = 20 + length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(data[start:start + 12 * accessor["count"]], dtype=np.float32).reshape(-1, 3)


def test_vertex_colours_match_the_field(exported):
    out, _, report = exported
    ply = trimesh.load(out / "model.ply", force="mesh")
    transform = UnitBoxTransform(tuple(report["transform"]["centre"]), report["transform"]["scale"])
    expected = albedo(torch.as_tensor(transform.to_world(ply.vertices), dtype=torch.float32)).numpy()
    # Read 0.5 % of the diagonal inside the surface (the albedo changes by ~0.02 there) + uint8 rounding.
    assert np.abs(ply.visual.vertex_colors[:, :3] / 255.0 - expected).mean() < 0.02


def test_vertex_mode_and_no_normalisation(scene, tmp_path):
    files = export_scene(scene, tmp_path, small(texture="vertex", normalize=False, formats=["glb", "obj"]), CPU)
    assert sorted(os.listdir(tmp_path)) == ["export.json", "model.glb", "model.mtl", "model.obj"]  # no PNG
    glb = trimesh.load(files["glb"], force="mesh")
    assert glb.visual.kind == "vertex"
    np.testing.assert_allclose(glb.bounds[0], WORLD_LO, atol=0.01)  # world coordinates kept
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["transform"]["scale"] == 1.0 and "texture" not in report


def test_a_failed_export_keeps_the_previous_one(scene, tmp_path, monkeypatch):
    export_scene(scene, tmp_path, small(faces=500, texture_size=64), CPU)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    def crash(*args, **kwargs):
        raise ThreedError("xatlas failed to unwrap the mesh")

    monkeypatch.setattr(pipeline, "bake_albedo", crash)
    with pytest.raises(ThreedError, match="xatlas"):
        export_scene(scene, tmp_path, small(faces=800), CPU)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="faces must be at least 4"):
        ExportConfig(faces=2)
    with pytest.raises(ValueError, match="texture_size"):
        ExportConfig(texture_size=4)


def test_a_dmtet_scene_exports_its_own_surface(tmp_path):
    """A DMTet stage has no density: its mesh is the surface, textured and compared like a NeRF's."""
    from threed.geometry.dmtet import DMTetConfig
    from threed.scene import DMTetSceneConfig, Scene

    torch.manual_seed(0)
    scene = Scene(DMTetSceneConfig(geometry=DMTetConfig(grid_size=24, init="ellipsoid",
                                                        init_radii=(0.6, 0.3, 0.45)))).eval()
    files = export_scene(scene, tmp_path, small(faces=2000, texture_size=128, views=3, view_resolution=48), CPU)
    report = json.loads(files["report"].read_text())
    assert "level" not in report and report["faces"] == 2000 < report["faces_before_decimation"]
    glb = trimesh.load(files["glb"], force="mesh")
    assert glb.visual.kind == "texture"
    # The unit box keeps the ellipsoid's proportions 0.6 : 0.3 : 0.45 (to a grid cell of the 24^3 tets).
    np.testing.assert_allclose(glb.bounds[1] - glb.bounds[0], [1.0, 0.5, 0.75], atol=0.03)
    # Both sides draw the same albedo field on the same surface: measured ~43 dB.
    assert min(report["views"]["psnr"]) > 30.0
