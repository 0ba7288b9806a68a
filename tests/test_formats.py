"""Mesh files: GLB/OBJ/PLY round trips through trimesh, colours, axes, the OBJ material, atomic writes."""

import json
import os
import struct

import numpy as np
import pytest
import trimesh
from PIL import Image

from threed.errors import ThreedError
from threed.export.formats import FORMATS, write_mesh
from threed.files import atomic_path


@pytest.fixture
def colored_mesh():
    """An asymmetric mesh (so a rotation would show) with random RGBA vertex colours."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.vertices *= [1.0, 2.0, 0.5]
    mesh.vertices += [0.1, 0.2, -0.3]
    rng = np.random.default_rng(0)
    rgba = np.concatenate([rng.integers(0, 256, (len(mesh.vertices), 3)),
                           np.full((len(mesh.vertices), 1), 255)], axis=1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh


def glb_json(path):
    """The JSON chunk of a GLB file (glTF 2.0 binary container: 12-byte header, then chunk length + type)."""
    data = path.read_bytes()
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20:20 + length])


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_round_trip_keeps_faces_positions_and_colours(colored_mesh, tmp_path, fmt):
    path = write_mesh(colored_mesh, tmp_path / f"asset.{fmt}", fmt)
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(colored_mesh.faces)
    # Same vertices in the same order: +Y up is kept, no axis swap; 1e-6 = float32 storage in GLB/PLY.
    np.testing.assert_allclose(loaded.vertices, colored_mesh.vertices, atol=1e-6)
    assert loaded.visual.kind == "vertex"
    # Exact to 1/255: GLB and PLY store uint8; OBJ stores r/255 with 8 decimals.
    diff = np.abs(loaded.visual.vertex_colors[:, :3].astype(int) - colored_mesh.visual.vertex_colors[:, :3])
    assert diff.max() <= 1


def test_glb_stores_color_0(colored_mesh, tmp_path):
    gltf = glb_json(write_mesh(colored_mesh, tmp_path / "a.glb"))
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(attributes)
    accessor = gltf["accessors"][attributes["COLOR_0"]]
    assert accessor["componentType"] == 5121 and accessor["normalized"]  # UNSIGNED_BYTE in [0, 1]
    assert gltf["asset"]["version"] == "2.0"


def test_obj_references_an_existing_mtl(colored_mesh, tmp_path):
    path = write_mesh(colored_mesh, tmp_path / "my asset.obj")
    lines = path.read_text().splitlines()
    mtllib = [line.split(maxsplit=1)[1] for line in lines if line.startswith("mtllib ")]
    assert mtllib == ["my_asset.mtl"]  # one name, no spaces: mtllib splits file names on whitespace
    mtl = (tmp_path / mtllib[0]).read_text()
    assert "newmtl" in mtl and "Kd" in mtl
    vertex_lines = [line.split() for line in lines if line.startswith("v ")]
    assert len(vertex_lines) == len(colored_mesh.vertices)
    assert all(len(v) == 7 for v in vertex_lines)  # v x y z r g b
    assert lines.index(f"mtllib {mtllib[0]}") < next(i for i, line in enumerate(lines) if line.startswith("v "))


def test_ply_has_uchar_rgba(colored_mesh, tmp_path):
    path = write_mesh(colored_mesh, tmp_path / "a.ply")
    header = path.read_bytes().split(b"end_header")[0].decode()
    for channel in ("red", "green", "blue", "alpha"):
        assert f"property uchar {channel}" in header


def test_textured_mesh(tmp_path):
    mesh = trimesh.creation.box()
    rng = np.random.default_rng(1)
    texture = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    mesh.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(mesh.vertices), 2)), image=texture)
    paths = write_all(mesh, tmp_path, "tex")
    assert sorted(os.listdir(tmp_path)) == ["tex.glb", "tex.mtl", "tex.obj", "tex.ply", "tex_material_0.png"]
    assert "map_Kd tex_material_0.png" in (tmp_path / "tex.mtl").read_text()
    obj = trimesh.load(paths["obj"], force="mesh")
    np.testing.assert_array_equal(np.asarray(obj.visual.material.image.convert("RGB")), np.asarray(texture))
    assert trimesh.load(paths["glb"], force="mesh").visual.kind == "texture"
    assert trimesh.load(paths["ply"], force="mesh").visual.kind == "vertex"  # PLY: texture sampled per vertex


def write_all(mesh, out_dir, name="mesh"):
    return {f: write_mesh(mesh, out_dir / f"{name}.{f}") for f in FORMATS}


def test_writing_every_format_writes_only_the_assets(colored_mesh, tmp_path):
    paths = write_all(colored_mesh, tmp_path / "out")
    assert set(paths) == {"glb", "obj", "ply"}
    assert sorted(os.listdir(tmp_path / "out")) == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply"]  # no temp files
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_unknown_format_names_the_choices(colored_mesh, tmp_path):
    with pytest.raises(ThreedError, match="glb, obj, ply"):
        write_mesh(colored_mesh, tmp_path / "a.stl")
    with pytest.raises((ThreedError, TypeError), match="fbx"):  # the type checks of the test suite refuse it first
        write_mesh(colored_mesh, tmp_path / "a.glb", "fbx")  # type: ignore[arg-type]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.glb"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a new fi")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.glb"]
