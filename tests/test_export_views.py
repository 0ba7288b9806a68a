"""Exported asset vs field from the same cameras: PSNR, the contact sheet, the side-by-side turntable."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from analytic_scene import analytic_scene

from threed.export import video
from threed.export.meshops import UnitBoxTransform
from threed.export.pipeline import ExportConfig, export_scene
from threed.export.views import AssetRenderer, psnr, view_cameras

CPU = torch.device("cpu")
VIEWS, RES = 4, 64


@pytest.fixture(scope="module")
def scene():
    return analytic_scene(num_samples=192)


@pytest.fixture(scope="module")
def exported(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("views")
    cfg = ExportConfig(grid_size=64, faces=4000, texture_size=256, views=VIEWS, view_resolution=RES, video=False)
    files = export_scene(scene, out, cfg, CPU)
    return out, files, json.loads((out / "export.json").read_text())


def field_render(scene, cameras):
    return scene.render_eval(cameras, "albedo").rgb


def asset_from(out, report):
    glb = trimesh.load(out / "model.glb", force="mesh", process=False)
    transform = UnitBoxTransform(tuple(report["transform"]["centre"]), report["transform"]["scale"])
    return glb, transform


def test_exported_asset_renders_like_the_field(exported):
    _, _, report = exported
    values = report["views"]["psnr"]
    assert len(values) == VIEWS
    # Issue 7 asks for >= 20 dB on a toy example; this one measures ~29-31 dB (the residual is the soft
    # rim of the field's density, which a hard surface cannot reproduce).
    assert min(values) >= 20.0
    assert report["views"]["mean_psnr"] >= 25.0


def test_the_glb_as_loaded_renders_like_the_field_and_a_flipped_texture_does_not(scene, exported):
    """Re-render the GLB read back by trimesh: the round trip, UV convention and transform all count."""
    out, _, report = exported
    glb, transform = asset_from(out, report)
    cameras = view_cameras(VIEWS, RES, scene.radius)
    background = lambda dirs: scene.background(dirs, training=False)  # noqa: E731
    field = field_render(scene, cameras)
    good = AssetRenderer(glb, transform.to_world, background)(cameras).rgb
    assert psnr(field, good) >= 25.0
    flipped = glb.copy()
    flipped.visual = trimesh.visual.TextureVisuals(uv=glb.visual.uv * [1.0, -1.0] + [0.0, 1.0],
                                                   material=glb.visual.material)
    # An upside-down texture lookup (the classic glTF/OpenGL v mix-up) must cost several dB.
    # Measured: 30.8 dB as exported, 17.2 dB flipped.
    assert psnr(field, AssetRenderer(flipped, transform.to_world, background)(cameras).rgb) < psnr(field, good) - 8


def test_vertex_coloured_and_textured_assets_agree(scene, exported):
    out, _, report = exported
    glb, transform = asset_from(out, report)
    ply = trimesh.load(out / "model.ply", force="mesh", process=False)
    cameras = view_cameras(2, RES, scene.radius)
    textured = AssetRenderer(glb, transform.to_world)(cameras, "lambertian")
    coloured = AssetRenderer(ply, transform.to_world)(cameras, "lambertian")
    assert psnr(textured.rgb, coloured.rgb) > 30.0  # measured 39.7 dB
    torch.testing.assert_close(textured.opacity, coloured.opacity, atol=0.02, rtol=0)  # same surface
    assert 0.1 < float(textured.opacity.mean()) < 0.6


def test_contact_sheet_layout(exported):
    out, files, _ = exported
    sheet = iio.imread(files["views"])
    pad = 2  # write_grid's default padding
    assert sheet.shape == (3 * RES + 2 * pad, VIEWS * RES + (VIEWS - 1) * pad, 3)
    top, middle = sheet[:RES, :RES].astype(int), sheet[RES + pad:2 * RES + pad, :RES].astype(int)
    assert np.abs(top - middle).mean() < 8  # field over asset: nearly the same picture
    difference = sheet[2 * (RES + pad):, :RES]
    assert difference.mean() < 20 and difference.max() > 40  # dark, with the rim showing


def test_side_by_side_turntable_with_gif_fallback(scene, tmp_path, monkeypatch):
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    cfg = ExportConfig(grid_size=48, faces=1000, texture_size=64, views=0, video=True, video_frames=3,
                       video_resolution=32, formats=["glb"])
    files = export_scene(scene, tmp_path, cfg, CPU)
    assert files["video"] == tmp_path / "turntable.gif"
    frames = iio.imread(files["video"], index=None)[..., :3].astype(int)
    assert frames.shape == (3, 32, 64, 3)  # field | asset
    assert np.abs(frames[:, :, :32] - frames[:, :, 32:]).mean() < 10
    assert "turntable.mp4" not in os.listdir(tmp_path)


def test_an_asset_only_turntable_is_the_right_half_of_the_side_by_side(scene, tmp_path, monkeypatch):
    """``video_shows: asset`` rasterises the asset alone: the same frames as the side-by-side's right half."""
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    frames = {}
    for shows in ("both", "asset"):
        cfg = ExportConfig(grid_size=48, faces=1000, texture_size=64, views=0, video=True, video_frames=2,
                           video_resolution=32, formats=["glb"], video_shows=shows)
        files = export_scene(scene, tmp_path / shows, cfg, CPU)
        frames[shows] = iio.imread(files["video"], index=None)[..., :3].astype(int)
    assert frames["asset"].shape == (2, 32, 32, 3)
    assert np.abs(frames["asset"] - frames["both"][:, :, 32:]).mean() < 1
    report = json.loads((tmp_path / "asset" / "export.json").read_text())
    assert report["seconds"]["video"] > 0  # the report is rewritten with the turntable's time
