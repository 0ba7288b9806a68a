"""``threed texture``: a user's mesh painted from a prompt comes back with its own geometry, in its own coordinates.

The toy-world checks paint the exact primitives (a cube and a sphere the size of the toy world's, written to OBJ
here) and score the baked texture with the toy world's own measures (CIEDE2000 to the true albedo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import threed.mesh_files
from threed.api import Run, texture
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.errors import ThreedError
from threed.export.texture import unwrap
from threed.mesh_files import read_user_mesh
from threed.recipe import load_recipe
from threed.toyworld.scenes import CUBE_HALF, SPHERE_RADIUS
from threed.toyworld.score import score_textured
from small_recipes import ENCODING, SMALL

TINY = (["max_steps=2", "stages.0.render_size=16", "stages.0.cameras.batch_size=1", "stages.0.val_every=0",
         "stages.0.ckpt_every=2", "export.video=false", "export.views=0", "export.texture_size=64"]
        + [f"stages.0.scene.geometry.encoding.{e}" for e in ENCODING])
"""The texture recipe cut to 2 steps at 16 px and a 64-texel texture: the geometry checks need no colour."""


def cube() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=[2 * CUBE_HALF] * 3)


def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=3, radius=SPHERE_RADIUS)


def with_uv(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``mesh`` cut along xatlas seams with UVs of its own (a mesh as a DCC tool would hand it over)."""
    layout = unwrap(mesh, 256)
    return trimesh.Trimesh(layout.vertices, layout.faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=layout.uv))


def load(path: Path) -> trimesh.Trimesh:
    """A mesh file as ``threed texture`` reads one (and as a user's tool would): no merging, order kept."""
    loaded = trimesh.load(str(path), process=False, maintain_order=True)
    return loaded if isinstance(loaded, trimesh.Trimesh) else loaded.to_mesh()


def corners(mesh: trimesh.Trimesh) -> np.ndarray:
    """Every face's three corner positions, in face order (what a UV-seam split leaves unchanged)."""
    return np.asarray(mesh.vertices)[np.asarray(mesh.faces)]


# --- bad input: a clear error, and nothing written ------------------------------------------------------------

def _refused(tmp_path: Path, path: Path, match: str, **kwargs) -> None:
    out = tmp_path / "run"
    with pytest.raises(ThreedError, match=match):
        texture(path, "a red cube", out=out, overrides=TINY, **kwargs)
    assert not out.exists(), "a refused input must leave no run directory behind"


def test_missing_unsupported_and_unreadable_files_are_refused(tmp_path):
    _refused(tmp_path, tmp_path / "nothing.obj", "does not exist")
    (tmp_path / "chair.fbx").write_bytes(b"Kaydara FBX Binary")
    _refused(tmp_path, tmp_path / "chair.fbx", r"cannot read \.fbx meshes.*\.obj, \.glb")
    (tmp_path / "broken.glb").write_bytes(b"not a glb at all")
    _refused(tmp_path, tmp_path / "broken.glb", "trimesh cannot read")
    (tmp_path / "garbage.obj").write_text("this is no mesh\n")
    _refused(tmp_path, tmp_path / "garbage.obj", "holds no triangle mesh")
    (tmp_path / "empty.stl").write_bytes(b"")
    _refused(tmp_path, tmp_path / "empty.stl", "no triangle mesh|empty|cannot read")


def test_point_clouds_and_empty_meshes_are_refused(tmp_path):
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    _refused(tmp_path, tmp_path / "points.obj", r"point cloud \(4 points, no faces\).*reconstruct a surface")
    trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(tmp_path / "scan.ply")
    _refused(tmp_path, tmp_path / "scan.ply", "point cloud")
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n")
    _refused(tmp_path, tmp_path / "flat.obj", "no extent")


def test_a_mesh_too_large_to_unwrap_is_refused_with_the_limit_named(tmp_path, monkeypatch):
    """Without UVs the export would unwrap every face with xatlas: past the limit the input is refused up front;
    with UVs of its own the same mesh is accepted (the optimisation decimates, the bake uses every face)."""
    monkeypatch.setattr(threed.mesh_files, "UNWRAP_FACE_LIMIT", 100)
    sphere().export(tmp_path / "dense.obj")
    _refused(tmp_path, tmp_path / "dense.obj", r"1,280 faces and no usable UVs.*up to 100 faces.*Decimate")
    with_uv(sphere()).export(tmp_path / "dense_uv.obj")
    assert read_user_mesh(tmp_path / "dense_uv.obj").uv is not None


def test_a_non_texture_recipe_and_a_texture_recipe_without_a_mesh_are_refused(tmp_path):
    cube().export(tmp_path / "cube.obj")
    _refused(tmp_path, tmp_path / "cube.obj", "makes its own surface", recipe="quickstart")
    out = tmp_path / "gen"
    assert main(["generate", "a red cube", "--recipe", "texture", "--out", str(out), *TINY]) == 2
    assert not out.exists()


def test_the_command_line_names_what_is_missing(tmp_path, capsys):
    assert main(["texture", str(tmp_path / "nothing.obj"), "a red cube", "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["texture", str(tmp_path / "nothing.obj")]) == 2
    assert "give a mesh and a prompt" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_command_line_paints_a_mesh_and_lists_what_it_wrote(tmp_path, capsys):
    cube().export(tmp_path / "cube.ply")
    out = tmp_path / "run"
    assert main(["texture", str(tmp_path / "cube.ply"), "a red cube", "--up", "z", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"glb: {out / 'export' / 'model.glb'}" in printed and "report:" in printed
    assert (out / "input" / "cube.ply").is_file() and (out / "input" / "mesh.npz").is_file()


def test_non_manifold_and_open_meshes_are_accepted(tmp_path):
    """Texturing needs triangles, not a closed surface: three faces on one edge (an open fan) are fine."""
    fan = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]],
                          [[0, 1, 2], [0, 1, 3], [0, 1, 4]], process=False)
    fan.export(tmp_path / "fan.ply")
    user = read_user_mesh(tmp_path / "fan.ply")
    assert len(user.faces) == 3 and not user.facts()["watertight"]


# --- geometry comes back bit-identical -------------------------------------------------------------------------

def test_a_mesh_without_uvs_keeps_every_face_corner_and_the_face_order(tmp_path):
    cube().export(tmp_path / "cube.obj")
    run = texture(tmp_path / "cube.obj", "a red cube", out=tmp_path / "run", overrides=TINY)
    source = load(tmp_path / "cube.obj")
    for fmt in ("obj", "glb"):
        out = load(run.files[fmt])
        expected = corners(source).astype(np.float32) if fmt == "glb" else corners(source)  # glTF stores float32
        assert np.array_equal(corners(out), expected), fmt
        assert out.visual.uv is not None
    ply = load(run.files["ply"])  # vertex colours: no seams, the very vertices (float32, as PLY stores them) and faces
    assert np.array_equal(ply.vertices, source.vertices.astype(np.float32)) and np.array_equal(ply.faces, source.faces)
    report = (run.path / "export" / "export.json").read_text()
    assert '"uv_source": "xatlas"' in report and '"up": "y"' in report
    assert (run.path / "input" / "cube.obj").read_bytes() == (tmp_path / "cube.obj").read_bytes()


def test_a_mesh_with_uvs_keeps_its_vertices_faces_and_uvs(tmp_path):
    with_uv(sphere()).export(tmp_path / "ball.obj")
    run = texture(tmp_path / "ball.obj", "a green sphere", out=tmp_path / "run", overrides=TINY)
    source = load(tmp_path / "ball.obj")
    out = load(run.files["obj"])
    assert np.array_equal(out.vertices, source.vertices) and np.array_equal(out.faces, source.faces)
    assert np.allclose(out.visual.uv, source.visual.uv, atol=1e-8)
    assert '"uv_source": "input"' in (run.path / "export" / "export.json").read_text()


def test_a_scaled_offset_z_up_glb_comes_back_in_its_own_coordinates(tmp_path):
    """A Z-up file far from the origin and 40x too large: optimised in the scene box (its top up there), written
    back exactly where it was, the GLB's float32 vertices bit for bit."""
    mesh = with_uv(cube())
    mesh.apply_scale([40.0, 20.0, 60.0])  # tallest along the file's Z: its up axis
    mesh.apply_translation([100.0, -250.0, 30.0])
    trimesh.Scene(mesh).export(tmp_path / "part.glb")
    run = texture(tmp_path / "part.glb", "a blue cube", up="z", out=tmp_path / "run", overrides=TINY)
    source, out = load(tmp_path / "part.glb"), load(run.files["glb"])
    assert np.array_equal(out.vertices, source.vertices) and np.array_equal(out.faces, source.faces)
    surface = Checkpoint.load(run.path / "stages" / "0-texture" / "last.pt").scene["renderer.geometry.surface_vertices"]
    extent = surface.max(0).values - surface.min(0).values
    assert torch.allclose(extent, torch.tensor([0.6, 0.9, 0.3]), atol=1e-5), "file Z is scene Y; longest side 0.9"
    assert '"up": "z"' in (run.path / "export" / "export.json").read_text()


def test_a_run_is_self_contained_resumes_without_the_file_and_decimates_only_for_optimisation(tmp_path):
    sphere().export(tmp_path / "ball.stl")
    overrides = TINY + ["stages.0.steps=4", "stages.0.scene.geometry.max_faces=200"]
    run = texture(tmp_path / "ball.stl", "a green sphere", out=tmp_path / "run", overrides=overrides)
    ckpt = Checkpoint.load(run.path / "stages" / "0-texture" / "last.pt")
    assert ckpt.step == 2 and len(ckpt.scene["renderer.geometry.surface_faces"]) <= 200
    (tmp_path / "ball.stl").unlink()
    run = Run.load(run.path).resume({"max_steps": 4})
    assert Checkpoint.load(run.path / "stages" / "0-texture" / "last.pt").step == 4
    assert len(load(run.files["glb"]).faces) == 1280, "the bake covers every original face"
    assert len(run.mesh().faces) == 1280


def test_the_sd_recipe_builds_and_runs_on_a_tiny_model(tmp_path, tiny_sd_dir):
    cube().export(tmp_path / "cube.obj")
    cfg = load_recipe("texture-sd")
    assert cfg.stages[0].render_size == 512 and cfg.stages[0].scene.kind == "mesh"
    run = texture(tmp_path / "cube.obj", "a red chair", recipe="texture-sd", out=tmp_path / "run",
                  overrides=SMALL + [f"model={tiny_sd_dir}", "export.texture=uv", "export.texture_size=64"])
    assert run.files["glb"].is_file()


# --- colour: the toy world scores the baked texture ------------------------------------------------------------

def test_a_plain_colour_prompt_paints_the_sphere_that_colour(tmp_path):
    """100 steps at the toy prior's 32 px, one view per step, learning rates x3 (the shipped recipe runs 300 steps
    of two views): about 10 s of training. Measured: delta E 5.8 (green, a little light); mid grey, the untrained
    field's colour, is 28 away, red 73."""
    sphere().export(tmp_path / "ball.obj")
    run = texture(tmp_path / "ball.obj", "a green sphere", out=tmp_path / "run", overrides=[
        "max_steps=100", "stages.0.cameras.batch_size=1", "stages.0.val_every=0", "stages.0.optimizer.lr_encoding=0.03",
        "stages.0.optimizer.lr_network=0.003", "export.video=false", "export.views=0", "export.texture_size=128",
        "export.formats=[glb]"])
    colour = score_textured(load(run.files["glb"]), "a green sphere", fidelity_points=2048)["colour"]
    assert colour["name"] == "green" and colour["delta_e"] < 12.0, colour
