"""UV textures: layout rasterisation, seam padding, baking an analytic albedo, and format round trips."""

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from threed.errors import ThreedError
from threed.export.formats import FORMATS, write_mesh
from threed.export.texture import bake_albedo, fill_empty, rasterize_uv
from threed.export.xatlas_process import parametrize


def albedo(p):
    """A smooth colour field that differs along every axis (so a mirrored or shifted texture would show)."""
    return torch.stack([0.5 + 0.45 * torch.sin(3.0 * p[:, 0]), 0.5 + 0.45 * torch.cos(2.0 * p[:, 1]),
                        0.5 + 0.4 * p[:, 2]], dim=-1).clamp(0, 1)


def bilinear(image, uv):
    """Sample ``image`` (H W C, float) at ``uv`` as a GPU would: texel centres, clamp to edge, v up."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.fixture(scope="module")
def baked():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    mesh.vertices *= [1.0, 1.4, 0.8]
    textured, info = bake_albedo(mesh, albedo, texture_size=256, inset=0.0)
    return mesh, textured, info


def test_rasterize_uv_covers_the_square_with_exact_barycentrics():
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face_index, bary = rasterize_uv(uv, faces, 16, 24, max_pairs=50)  # tiny chunks exercise the batching
    assert (face_index >= 0).all()
    rows, cols = np.mgrid[0:16, 0:24]
    centre = np.stack([(cols + 0.5) / 24, 1.0 - (rows + 0.5) / 16], axis=-1)
    interpolated = np.einsum("hwk,hwkc->hwc", bary, uv[faces[face_index]])
    np.testing.assert_allclose(interpolated, centre, atol=1e-12)
    assert np.allclose(bary.sum(-1), 1.0) and (bary >= -1e-9).all()


def test_rasterize_uv_coverage_matches_triangle_area():
    uv = np.array([[0.1, 0.1], [0.9, 0.2], [0.3, 0.8]])
    face_index, _ = rasterize_uv(uv, np.array([[0, 1, 2]]), 256, 256)
    area = 0.5 * abs((0.9 - 0.1) * (0.8 - 0.1) - (0.3 - 0.1) * (0.2 - 0.1))
    # A 256^2 grid counts a triangle of ~15k texels to within its perimeter (~600 texels): 2 %.
    assert (face_index == 0).mean() == pytest.approx(area, rel=0.02)
    assert (face_index[0] == -1).all()  # the top row (v near 1) lies outside


def test_fill_empty_copies_the_nearest_covered_texel():
    image = np.zeros((5, 5, 3), np.float32)
    covered = np.zeros((5, 5), bool)
    image[1, 1], covered[1, 1] = [1, 0, 0], True
    image[3, 4], covered[3, 4] = [0, 0, 1], True
    out = fill_empty(image, covered)
    assert (out[0, 0] == [1, 0, 0]).all() and (out[4, 4] == [0, 0, 1]).all()
    assert (out[1, 1] == [1, 0, 0]).all()  # covered texels keep their value
    with pytest.raises(ThreedError, match="no texel"):
        fill_empty(image, np.zeros((5, 5), bool))


def test_baked_texture_reproduces_the_albedo_everywhere_on_the_surface(baked):
    mesh, textured, info = baked
    assert len(textured.faces) == len(mesh.faces)  # same faces, same order; seam vertices split
    assert len(textured.vertices) > len(mesh.vertices)
    uv = textured.visual.uv
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    image = np.asarray(textured.visual.material.baseColorTexture, dtype=np.float64) / 255.0
    assert image.shape == (256, 256, 3)
    assert 0.3 < info["coverage"] < 0.95
    # Random points on every face: the GPU-style bilinear lookup of their UV against the field's albedo.
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), size=len(textured.faces))
    points = np.einsum("fk,fkc->fc", w, textured.vertices[textured.faces])
    points_uv = np.einsum("fk,fkc->fc", w, uv[textured.faces])
    expected = albedo(torch.as_tensor(points, dtype=torch.float32)).numpy()
    error = np.abs(bilinear(image, points_uv) - expected)
    # Measured 0.0007 mean, 0.006 max: the field changes by < 0.01 per texel here, plus 0.5/255 rounding.
    assert error.mean() < 0.003 and error.max() < 0.02
    # Seam vertices sit on chart borders, where bilinear taps reach outside the chart: the padding must
    # hold the border colour there, not black (without the fill: errors up to 0.9; with it: 0.023).
    at_vertices = bilinear(image, uv)
    expected_v = albedo(torch.as_tensor(textured.vertices, dtype=torch.float32)).numpy()
    assert np.abs(at_vertices - expected_v).max() < 0.05
    assert (image.sum(-1) > 0.05).all()  # no unfilled (black) texel anywhere


def test_textured_mesh_keeps_smooth_normals_across_seams(baked):
    mesh, textured, _ = baked
    # Split copies of one vertex share its normal: no shading crease along the UV seams.
    _, first, inverse = np.unique(textured.vertices.round(9), axis=0, return_index=True, return_inverse=True)
    np.testing.assert_allclose(textured.vertex_normals, textured.vertex_normals[first][inverse.reshape(-1)],
                               atol=1e-9)
    assert (np.einsum("ij,ij->i", textured.vertex_normals, textured.vertices) > 0).all()  # outward


def glb_json(path):
    data = path.read_bytes()
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20:20 + length])


def test_textured_round_trips(baked, tmp_path):
    _, textured, _ = baked
    texture = np.asarray(textured.visual.material.baseColorTexture)
    paths = {f: write_mesh(textured, tmp_path / f"model.{f}") for f in FORMATS}
    # GLB: PBR metallic-roughness material with the texture embedded as PNG; UVs in [0, 1].
    gltf = glb_json(paths["glb"])
    material = gltf["materials"][0]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0 and material["roughnessFactor"] == 1.0
    assert "baseColorTexture" in material
    assert gltf["images"][0]["mimeType"] == "image/png" and "uri" not in gltf["images"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(gltf["meshes"][0]["primitives"][0]["attributes"])
    glb = trimesh.load(paths["glb"], force="mesh")
    assert glb.visual.kind == "texture"
    assert glb.visual.uv.min() >= 0.0 and glb.visual.uv.max() <= 1.0
    np.testing.assert_allclose(glb.visual.uv, textured.visual.uv, atol=1e-6)  # float32 storage
    np.testing.assert_array_equal(np.asarray(glb.visual.material.baseColorTexture.convert("RGB")), texture)
    # OBJ + MTL + PNG: a matte material whose map_Kd is the texture, bit-exact.
    mtl = (tmp_path / "model.mtl").read_text()
    assert "map_Kd model_albedo.png" in mtl and "Kd 1.000000 1.000000 1.000000" in mtl and "Ks 0.0" in mtl
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "model_albedo.png").convert("RGB")), texture)
    obj = trimesh.load(paths["obj"], force="mesh")
    assert obj.visual.kind == "texture" and len(obj.faces) == len(textured.faces)
    assert obj.visual.uv.min() >= 0.0 and obj.visual.uv.max() <= 1.0
    # PLY has no texture: colours sampled per vertex.
    assert trimesh.load(paths["ply"], force="mesh").visual.kind == "vertex"


def test_xatlas_failures_are_clear_errors():
    vertices = np.zeros((3, 3))
    with pytest.raises(ThreedError, match="xatlas failed to unwrap"):
        parametrize(vertices, np.array([[0, 1, 7]]), 64, 2)  # an index past the vertices
    with pytest.raises(ThreedError, match="at least 16"):
        bake_albedo(trimesh.creation.box(), albedo, texture_size=8)
