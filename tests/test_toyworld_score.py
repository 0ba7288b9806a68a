"""Toy-world scoring: the ground truth scores perfectly, and each measure catches the failure it is for."""

import json

import numpy as np
import pytest
import trimesh
import yaml

from threed.errors import ThreedError
from threed.export.formats import write_mesh
from threed.toyworld.scenes import COLOURS, SHAPES
from threed.toyworld.score import (FRONT_SHARE_MIN, OTHER_SHARE_MAX, chamfer, colour_distances, front_shares,
                                   name_colour, reference_mesh, reference_points, score_mesh, score_pair, score_run)

# Two independent 8192-point samplings of one surface are ~0.045 apart (in RMS radii): the Chamfer floor.
FLOOR = 0.05


@pytest.fixture(scope="module")
def meshes() -> dict[str, trimesh.Trimesh]:
    """Marching cubes (64^3) of every primitive's exact SDF, coloured red."""
    return {s: reference_mesh(f"a red {s}") for s in SHAPES}


def _paint(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh = mesh.copy()
    rgba = np.array([*(np.round(np.array(rgb) * 255)), 255], np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


@pytest.mark.parametrize("shape", SHAPES)
def test_ground_truth_scores_right_for_every_colour(meshes, shape):
    for colour, rgb in COLOURS.items():
        prompt = f"a {colour} {shape}"
        s = score_mesh(_paint(meshes[shape], rgb), prompt, n_points=2048, fidelity_points=1000)
        assert s["correct"], (prompt, s["colour"]["name"], s["shape"]["name"])
        assert np.allclose(s["colour"]["rgb"], rgb, atol=1 / 255)  # uint8 rounding of the stored colours
        assert s["colour"]["delta_e"] < 0.5 and s["fidelity"]["f"]["0.05"] == 1.0
        assert s["components"] == {"n_components": 1, "n_pieces": 1, "largest_area_fraction": 1.0,
                                   "single_object": True}
        assert s["sides_with_colour"] == 4 and "janus_count" not in s


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_margins_are_decent(meshes, shape):
    s = score_mesh(meshes[shape], f"a red {shape}")["shape"]
    assert s["distances"][shape] < FLOOR + 0.01  # plus marching cubes rounding edges by about a grid cell
    # The closest pairs are cone/pyramid (0.117 apart) and cube/cylinder/sphere (~0.21): see the confusion test.
    assert s["margin"] > 0.06


def test_primitive_confusion_off_diagonal_well_above_the_floor():
    """Chamfer between the primitives' own samplers: every pair is more than twice the sampling floor apart."""
    d = np.array([[chamfer(reference_points(a, 8192, 0), reference_points(b, 8192, 1)) for b in SHAPES]
                  for a in SHAPES])
    diagonal, off = np.diag(d), d[~np.eye(len(SHAPES), dtype=bool)]
    assert diagonal.max() < FLOOR
    assert off.min() > 2 * diagonal.max()
    nearest = {a: SHAPES[int(np.argsort(row)[1])] for a, row in zip(SHAPES, d)}
    assert nearest["cone"] == "pyramid" and nearest["pyramid"] == "cone"


def test_blue_sphere_is_a_blue_sphere_not_red_whatever_its_size_and_place():
    mesh = _paint(trimesh.creation.icosphere(subdivisions=4, radius=3.0), COLOURS["blue"])
    mesh.apply_translation([5.0, -2.0, 1.0])
    s = score_mesh(mesh, "a red sphere")
    assert s["colour"]["name"] == "blue" and not s["colour"]["correct"] and s["colour"]["margin"] < 0
    assert s["shape"]["name"] == "sphere" and s["shape"]["correct"] and not s["correct"]
    assert score_mesh(mesh, "a blue sphere")["correct"]


def test_scores_are_invariant_to_scale_and_translation(meshes):
    moved = meshes["cone"].copy()
    moved.apply_scale(2.5)
    moved.apply_translation([0.3, 1.0, -4.0])
    a, b = score_mesh(meshes["cone"], "a red cone"), score_mesh(moved, "a red cone")
    for shape in SHAPES:  # same area-proportional samples after normalisation; float64 rounding only
        assert a["shape"]["distances"][shape] == pytest.approx(b["shape"]["distances"][shape], abs=1e-9)


def test_detached_blob_counts_as_a_second_component():
    body = trimesh.creation.icosphere(subdivisions=4, radius=0.5)  # 5120 faces
    blob = trimesh.creation.icosphere(subdivisions=1, radius=0.08)  # 80 faces: 1.5% of all
    blob.apply_translation([0.9, 0.4, 0.0])
    mesh = _paint(trimesh.util.concatenate([body, blob]), COLOURS["red"])
    parts = score_mesh(mesh, "a red sphere")["components"]
    assert parts["n_components"] == 2 and not parts["single_object"]
    assert parts["largest_area_fraction"] == pytest.approx(body.area / (body.area + blob.area), abs=1e-4)
    speck = trimesh.creation.icosphere(subdivisions=0, radius=0.02)  # 20 faces: 0.4% of all
    speck.apply_translation([-0.9, 0.0, 0.0])
    parts = score_mesh(_paint(trimesh.util.concatenate([body, speck]), COLOURS["red"]), "a red sphere")["components"]
    assert parts["n_components"] == 1 and parts["n_pieces"] == 2 and parts["largest_area_fraction"] < 1.0


def _painted_box(front_normals) -> trimesh.Trimesh:
    """A subdivided unit box, blue, with the faces whose normal is in ``front_normals`` painted yellow."""
    box = trimesh.creation.box(extents=(0.76, 0.76, 0.76)).subdivide().subdivide()
    colours = np.tile(np.array([31, 64, 217, 255], np.uint8), (len(box.faces), 1))
    for n in front_normals:
        colours[box.face_normals @ np.array(n, float) > 0.9] = [242, 217, 26, 255]
    box.visual = trimesh.visual.ColorVisuals(box, face_colors=colours)
    return box


def test_janus_count_on_painted_cubes():
    prompt = "a blue cube with a yellow front"
    one = score_mesh(_painted_box([(0, 0, 1)]), prompt)
    assert one["janus_count"] == 1 and one["front_correct"] and one["correct"]  # the body colour is blue
    assert {k: v["name"] for k, v in one["sides"].items()} == {"+Z": "yellow", "-Z": "blue", "+X": "blue",
                                                                 "-X": "blue"}
    two = score_mesh(_painted_box([(0, 0, 1), (0, 0, -1)]), prompt)
    assert two["janus_count"] == 2 and two["front_correct"]
    three = score_mesh(_painted_box([(0, 0, 1), (1, 0, 0), (-1, 0, 0)]), prompt)
    assert three["janus_count"] == 3
    behind = score_mesh(_painted_box([(0, 0, -1)]), prompt)
    assert behind["janus_count"] == 1 and not behind["front_correct"]
    truth = score_mesh(reference_mesh(prompt), prompt)  # the toy world's own front rule
    assert truth["janus_count"] == 1 and truth["front_correct"] and truth["correct"]
    shares = truth["front_shares"]  # faces at the front edge average the two colours of their vertices
    assert shares["+Z"] > 0.95 and max(shares["-Z"], shares["+X"], shares["-X"]) < 0.02 and truth["front_right"]
    assert one["front_right"] and not two["front_right"] and not three["front_right"] and not behind["front_right"]
    assert two["front_shares"]["-Z"] == 1.0 and behind["front_shares"]["+Z"] == 0.0


def test_front_shares_forgive_a_bled_edge_not_half_a_second_face():
    prompt = "a blue cube with a yellow front"
    box = _painted_box([(0, 0, 1)])
    colours = np.asarray(box.visual.face_colors)
    centres = box.triangles_center
    # A stripe of the front colour bled 15 % of the way along the +X face, from the front edge.
    colours[(box.face_normals[:, 0] > 0.9) & (centres[:, 2] > 0.38 - 0.15 * 0.76)] = [242, 217, 26, 255]
    bled = box.copy()
    bled.visual = trimesh.visual.ColorVisuals(bled, face_colors=colours)
    shares = front_shares(bled, "blue", "yellow")
    assert 0.0 < shares["+X"] <= OTHER_SHARE_MAX and shares["+Z"] >= FRONT_SHARE_MIN
    assert score_mesh(bled, prompt, fidelity_points=1000)["front_right"]
    colours[(box.face_normals[:, 2] < -0.9) & (centres[:, 0] > 0.0)] = [242, 217, 26, 255]  # half the back
    half = box.copy()
    half.visual = trimesh.visual.ColorVisuals(half, face_colors=colours)
    s = score_mesh(half, prompt, fidelity_points=1000)
    assert s["front_shares"]["-Z"] == pytest.approx(0.5, abs=0.05) and not s["front_right"]


@pytest.fixture(scope="module")
def pair_truth() -> trimesh.Trimesh:
    return reference_mesh("a red cube and a blue sphere", 96)


def test_two_object_truth_scores_right_and_each_object_is_judged_on_its_side(pair_truth):
    s = score_pair(pair_truth, "a red cube and a blue sphere", fidelity_points=2000)
    assert s["correct"] and s["components"]["two_objects"] and not s["swapped"]
    cube, sphere = s["objects"]
    assert cube["shape"]["name"] == "cube" and cube["colour"]["name"] == "red" and cube["colour"]["delta_e"] < 0.5
    assert sphere["shape"]["name"] == "sphere" and sphere["colour"]["name"] == "blue"
    assert cube["fidelity"]["f"]["0.05"] == 1.0 and sphere["fidelity"]["f"]["0.05"] == 1.0
    assert s["fidelity"]["f"]["0.05"] == 1.0  # the pair as a whole: layout and relative size right
    json.dumps(s)
    assert score_mesh(pair_truth, "a red cube and a blue sphere", fidelity_points=1000)["correct"]  # routed here


def test_two_objects_on_the_wrong_sides_or_of_the_wrong_shape_are_wrong(pair_truth):
    swapped = score_pair(pair_truth, "a blue sphere and a red cube", fidelity_points=1000)
    assert not swapped["correct"] and swapped["swapped"]
    assert swapped["objects"][0]["shape"]["name"] == "cube"  # the -X piece, judged against the first-named sphere
    assert swapped["objects"][0]["fidelity"]["f"]["0.05"] < 0.7
    # The whole scene's geometry turned by 180 degrees about +Y is the swapped scene: the layout is right, the
    # sides are not, which is why sides are judged per object.
    assert swapped["fidelity"]["f"]["0.05"] == 1.0 and abs(swapped["fidelity"]["alignment"]["rotation_deg"]) > 170
    cone = score_pair(pair_truth, "a red cube and a blue cone", fidelity_points=1000)
    assert not cone["correct"] and not cone["swapped"] and cone["objects"][0]["correct"]
    assert not cone["objects"][1]["shape"]["correct"]
    one = score_pair(reference_mesh("a red cube"), "a red cube and a blue sphere", fidelity_points=1000)
    assert not one["correct"] and one["objects"] == [None, None] and not one["components"]["two_objects"]
    assert one["fidelity"]["recall"]["0.05"] < 0.9  # one cube explains only part of the scene


def test_colour_naming_survives_shading_and_washing_out():
    """The hue disc names a colour darkened to 30%, mixed with 60% white, or with 60% grey of its own mean."""
    for name, rgb in COLOURS.items():
        rgb = np.array(rgb)
        assert name_colour(rgb) == name and colour_distances(rgb)[name] == pytest.approx(0.0, abs=1e-12)
        assert name_colour(0.4 * rgb + 0.6) == name
        assert name_colour(0.4 * rgb + 0.6 * rgb.mean()) == name
        if name != "white":  # a darkened white is grey
            assert name_colour(0.3 * rgb) == name
    # A 60-step run's steel blue: Euclidean RGB / CIELAB / Oklab distances all call it white.
    assert name_colour(np.array([85, 129, 169]) / 255) == "blue"
    assert name_colour(np.array([0.7, 0.7, 0.7])) == "white"  # a shaded white
    assert name_colour(np.array([0.95, 0.93, 0.85])) == "white"  # ivory: chroma 0.027, under half of 0.1
    assert name_colour(np.array([0.4, 0.4, 0.4])) == "grey"  # no toy-world colour: wrong for every prompt
    dark = _paint(reference_mesh("a white cube"), (0.3, 0.3, 0.3))
    assert not score_mesh(dark, "a white cube", n_points=1024)["colour"]["correct"]


def test_score_run_reads_the_export_and_the_prompt(tmp_path, meshes):
    mesh = _paint(meshes["torus"], COLOURS["green"])
    write_mesh(mesh, tmp_path / "export" / "model.glb")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"prompt": "a green torus"}))
    from_glb = score_run(tmp_path)
    assert from_glb["prompt"] == "a green torus" and from_glb["mesh"].endswith("model.glb") and from_glb["correct"]
    write_mesh(mesh, tmp_path / "export" / "model.ply")
    from_ply = score_run(tmp_path, "a green cone")  # PLY first; the given prompt wins over config.yaml
    assert from_ply["mesh"].endswith("model.ply") and from_ply["shape"]["name"] == "torus"
    assert not from_ply["shape"]["correct"] and from_ply["shape"]["margin"] < 0
    assert from_ply["colour"]["rgb"] == from_glb["colour"]["rgb"]
    json.dumps(from_ply)  # scores.json needs plain types
    assert from_ply["export"] == {}  # no export.json


def test_score_run_reports_the_field_size_and_the_export_psnr(tmp_path, meshes):
    """export.json's transform took the field to a unit box; with it the field's size against the truth's."""
    field = _paint(meshes["cone"], COLOURS["red"])
    field.apply_scale(0.8)  # the field's cone, in its world frame: 80 % of the true size
    scale = 1.0 / field.extents.max()
    exported = field.copy()
    exported.apply_scale(scale)  # export = scale * (world - centre), longest side 1
    write_mesh(exported, tmp_path / "export" / "model.ply")
    (tmp_path / "export" / "export.json").write_text(json.dumps(
        {"transform": {"scale": scale}, "views": {"mean_psnr": 31.5}}))
    report = score_run(tmp_path, "a red cone")["export"]
    assert report["mean_psnr"] == 31.5 and report["field_size"] == pytest.approx(0.8, abs=0.01)


def test_errors_name_the_problem(tmp_path, meshes):
    with pytest.raises(ThreedError, match="wants two"):
        score_pair(meshes["cube"], "a red cube")
    with pytest.raises(ThreedError, match="unknown word 'hamburger'"):
        score_mesh(meshes["cube"], "a red hamburger")
    with pytest.raises(ThreedError, match="no vertex or face colours"):
        score_mesh(trimesh.creation.icosphere(), "a red sphere")
    with pytest.raises(ThreedError, match="no exported mesh in .*model.ply"):
        score_run(tmp_path, "a red cube")
