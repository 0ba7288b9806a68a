"""Objective scores of a toy-world asset: how close to the truth, and colour, shape, pieces, front right.

Generated assets meet the ground truth of :mod:`threed.toyworld.scenes` only here (and in the ladder's
tools), and only to be scored; generation never reads it. :func:`score_mesh` measures an exported mesh
against what its prompt describes (``"a red cube"``, ``"a blue cube with a yellow front"``; two-object
prompts go to :func:`score_pair`):

* **Fidelity.** F-scores, Chamfer-L1 and height/width against the exact primitive after the best
  similarity alignment (:mod:`threed.toyworld.fidelity`).
* **Colour.** The area-weighted per-channel median of the face colours, named on a hue disc and
  compared with the true albedo by CIEDE2000 (:mod:`threed.toyworld.colour`).
* **Shape** (nearest class). Area-uniform surface samples of the mesh and of each primitive (its own
  sampler, not a mesh of it) are centred on their centroid and scaled to unit RMS radius, with no
  rotation (objects are upright and face +Z by convention). The symmetric Chamfer distance (mean nearest-neighbour Euclidean
  distance each way, summed) to each of the six primitives picks the predicted shape.
  Two independent samplings of one surface are themselves about 0.05 apart at the default 8192
  points: that is the floor every distance shares.
* **Components.** Connected pieces (shared edges) with at least 1% of the faces; one piece means one
  object, and the area fraction of the largest piece measures floaters.
* **Sides.** For each side direction (+Z front, -Z back, +X, -X), the faces whose outward normal lies
  within 45 degrees of it (the toy world's own front rule, :data:`~threed.toyworld.scenes.FRONT_COS`)
  name a colour as above. For ``"... with a <c2> front"`` prompts, the number of sides showing ``c2`` is
  the Janus count: 1 is right, more is a multi-faced object (Poole et al., DreamFusion, 2022, sec. 3.2).
  :func:`front_shares` measures instead the share of each side's area in the front colour, and
  :func:`front_verdict` calls the front right when +Z mostly shows it and no other side does.
* **Two objects.** The two largest pieces, in X order (the first-named object sits at -X), are each
  scored against their object; the whole mesh's fidelity is against the whole scene.

Every score is deterministic for a given ``seed`` and JSON-serialisable.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
import yaml
from scipy.spatial import cKDTree

from threed.errors import ThreedError
from threed.export.meshops import UnitBoxTransform
from threed.run import ExportDir, RunLayout
from threed.toyworld.colour import (colour_distances, delta_e, face_colours, hue_disc, name_colour,
                                    weighted_median)
from threed.toyworld.fidelity import N_POINTS, geometry_fidelity
from threed.toyworld.scenes import COLOURS, FRONT_COS, SHAPES, Scene, SceneObject, parse_prompt, sample_surface

SIDES: dict[str, tuple[float, float, float]] = {
    "+Z": (0.0, 0.0, 1.0), "-Z": (0.0, 0.0, -1.0), "+X": (1.0, 0.0, 0.0), "-X": (-1.0, 0.0, 0.0)}
"""The four side directions the Janus check looks from (+Z is the front)."""

MIN_COMPONENT_FRACTION = 0.01
"""A connected piece counts as an object when it has at least this fraction of the mesh's faces."""

EXPORT_FORMATS = ("ply", "glb", "obj")
"""The exported meshes :func:`score_run` looks for in a run's export (``model.ply``, ...), in order."""


def _colour_entry(colours: np.ndarray, areas: np.ndarray) -> dict:
    rgb = weighted_median(colours, areas)
    dist = colour_distances(rgb)
    return {"rgb": [round(float(v), 4) for v in rgb], "name": name_colour(rgb, dist), "distances": dist}


def _oriented(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy with merged vertices and outward face normals (as :func:`threed.export.isosurface.clean_mesh`)."""
    mesh = mesh.copy()
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    trimesh.repair.fix_normals(mesh, multibody=True)
    return mesh


def side_colours(mesh: trimesh.Trimesh, colours: np.ndarray | None = None) -> dict[str, dict | None]:
    """Per side direction: the colour of the faces facing it (outward normal within 45 degrees).

    Each entry holds ``rgb``, ``name`` and ``area_fraction`` (of the whole surface); ``None`` where no face
    faces that way. The mesh's face normals must point outward (threed's exports do).
    """
    colours = face_colours(mesh) if colours is None else colours
    areas = mesh.area_faces
    out: dict[str, dict | None] = {}
    for side, direction in SIDES.items():
        sel = mesh.face_normals @ np.array(direction) > FRONT_COS
        if areas[sel].sum() <= 0:
            out[side] = None
            continue
        entry = _colour_entry(colours[sel], areas[sel])
        del entry["distances"]
        out[side] = {**entry, "area_fraction": round(float(areas[sel].sum() / areas.sum()), 4)}
    return out


def janus_count(sides: dict[str, dict | None], front_colour: str) -> int:
    """How many of the four sides show ``front_colour`` (1 = a single front, more = multi-faced)."""
    return sum(1 for entry in sides.values() if entry is not None and entry["name"] == front_colour)


def piece_labels(mesh: trimesh.Trimesh) -> np.ndarray:
    """The connected piece (shared edges) each face belongs to."""
    return trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))


def components(mesh: trimesh.Trimesh, min_fraction: float = MIN_COMPONENT_FRACTION) -> dict:
    """Connected pieces of a mesh: how many hold ``min_fraction`` of the faces, and the largest one's area share."""
    labels = piece_labels(mesh)
    faces_per = np.bincount(labels)
    area_per = np.bincount(labels, weights=mesh.area_faces)
    return {"n_components": int((faces_per >= min_fraction * len(mesh.faces)).sum()),
            "n_pieces": int(len(faces_per)),
            "largest_area_fraction": round(float(area_per.max() / area_per.sum()), 4)}


def object_pieces(mesh: trimesh.Trimesh, min_fraction: float = MIN_COMPONENT_FRACTION) -> list[trimesh.Trimesh]:
    """The pieces that count as objects (at least ``min_fraction`` of the faces), largest area first."""
    labels = piece_labels(mesh)
    faces_per = np.bincount(labels)
    area_per = np.bincount(labels, weights=mesh.area_faces)
    keep = [k for k in np.argsort(-area_per, kind="stable") if faces_per[k] >= min_fraction * len(mesh.faces)]
    return [mesh.submesh([np.nonzero(labels == k)[0]], append=True) for k in keep]


def normalise(points: np.ndarray) -> np.ndarray:
    """Centre ``N x 3`` points on their centroid and scale them to unit RMS radius (no rotation)."""
    centred = points - points.mean(axis=0)
    rms = math.sqrt(float((centred ** 2).sum(axis=1).mean()))
    if rms <= 0:
        raise ThreedError("the mesh collapses to a point: there is no shape to score")
    return centred / rms


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance from ``a`` to ``b`` plus from ``b`` to ``a``."""
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


@functools.lru_cache(maxsize=32)
def reference_points(shape: str, n_points: int, seed: int) -> np.ndarray:
    """``n_points`` normalised area-uniform samples of a primitive's surface (cached)."""
    generator = torch.Generator().manual_seed(10_000 + seed)  # independent of the mesh's samples
    points, _ = sample_surface(shape, n_points, generator)
    out = normalise(points.double().numpy())
    out.setflags(write=False)
    return out


def shape_distances(mesh: trimesh.Trimesh, n_points: int = 8192, seed: int = 0) -> dict[str, float]:
    """Chamfer distance of the normalised mesh surface to each normalised primitive, by shape word."""
    points, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    points = normalise(np.asarray(points, dtype=np.float64))
    return {s: chamfer(points, reference_points(s, n_points, seed)) for s in SHAPES}


def _margin(distances: dict[str, float], expected: str) -> float:
    """Distance to the nearest wrong answer minus distance to the right one (> 0 iff right)."""
    return float(min(d for k, d in distances.items() if k != expected) - distances[expected])


def front_shares(mesh: trimesh.Trimesh, colour: str, front_colour: str, colours: np.ndarray | None = None
                 ) -> dict[str, float | None]:
    """Per side (+Z, -Z, +X, -X): the share of the area facing it (outward normal within 45 degrees) whose
    colour is nearer, on the hue disc, to ``front_colour`` than to the body ``colour``; None where no face
    faces that way."""
    colours = face_colours(mesh) if colours is None else colours
    disc = hue_disc(colours)[0]
    to_front = np.linalg.norm(disc - hue_disc(np.array(COLOURS[front_colour]))[0], axis=-1)
    to_body = np.linalg.norm(disc - hue_disc(np.array(COLOURS[colour]))[0], axis=-1)
    is_front, areas = to_front < to_body, mesh.area_faces
    out: dict[str, float | None] = {}
    for side, direction in SIDES.items():
        sel = mesh.face_normals @ np.array(direction) > FRONT_COS
        total = areas[sel].sum()
        out[side] = round(float(areas[sel & is_front].sum() / total), 4) if total > 0 else None
    return out


FRONT_SHARE_MIN = 0.6
"""A front is right when at least this share of the +Z side shows the front colour: "mostly", with room for
the colour bleeding over a rounded edge (a 32-pixel prior paints edges blurred) ..."""
OTHER_SHARE_MAX = 0.2
"""... and no other side shows it on more than this share: a bled stripe passes, a second painted face
(share near 1) or half of one does not."""


def front_verdict(shares: dict[str, float | None]) -> bool:
    """Right front: +Z mostly the front colour, every other side not (:data:`FRONT_SHARE_MIN`,
    :data:`OTHER_SHARE_MAX`)."""
    others = [v for k, v in shares.items() if k != "+Z" and v is not None]
    return shares["+Z"] is not None and shares["+Z"] >= FRONT_SHARE_MIN and all(v <= OTHER_SHARE_MAX for v in others)


def score_object(mesh: trimesh.Trimesh, obj: SceneObject, n_points: int = 8192, seed: int = 0,
                 fidelity_points: int = N_POINTS, colours: np.ndarray | None = None) -> dict:
    """Colour, nearest shape and geometric fidelity of an outward-oriented coloured mesh against one toy object
    (its shape and colours; placement is the alignment's business)."""
    colours = face_colours(mesh) if colours is None else colours
    colour = _colour_entry(colours, mesh.area_faces)
    colour.update(margin=_margin(colour["distances"], obj.colour), correct=colour["name"] == obj.colour,
                  delta_e=round(float(delta_e(np.array(colour["rgb"]), np.array(COLOURS[obj.colour]))), 3))
    dist = shape_distances(mesh, n_points, seed)
    name = min(dist, key=dist.get)
    shape = {"name": name, "distances": dist, "margin": _margin(dist, obj.shape), "correct": name == obj.shape}
    truth = Scene.single(obj.shape, obj.colour, obj.front_colour)
    pieces = object_pieces(mesh)
    fidelity = geometry_fidelity(mesh, truth, fidelity_points, seed,
                                 pieces=trimesh.util.concatenate(pieces) if pieces else mesh)
    return {"expected": {"shape": obj.shape, "colour": obj.colour, "front_colour": obj.front_colour},
            "colour": colour, "shape": shape, "fidelity": fidelity, "correct": colour["correct"] and shape["correct"]}


def _prepared(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    if len(mesh.faces) == 0:
        raise ThreedError("the mesh has no faces: there is nothing to score")
    return _oriented(mesh)


def score_mesh(mesh: trimesh.Trimesh, prompt: str, n_points: int = 8192, seed: int = 0,
               fidelity_points: int = N_POINTS) -> dict:
    """Score a coloured mesh against a toy-world prompt; two-object prompts go to :func:`score_pair`.

    Returns a JSON-serialisable dict:

    * ``expected``: ``{"shape", "colour", "front_colour"}`` read from the prompt;
    * ``colour``: ``rgb`` (area-weighted median, sRGB in [0, 1]), ``name``, ``distances`` to every named
      colour (hue disc), ``margin`` (nearest wrong minus right; > 0 when right, except a dark neutral,
      named ``"grey"``, for a white prompt), ``correct``, ``delta_e`` (CIEDE2000 to the true albedo);
    * ``shape``: ``name`` (argmin), ``distances`` (Chamfer, in units of RMS radius), ``margin``, ``correct``;
    * ``fidelity``: :func:`threed.toyworld.fidelity.geometry_fidelity` against the exact primitive;
    * ``components``: ``n_components`` (pieces with >= 1% of faces), ``n_pieces``, ``largest_area_fraction``,
      ``single_object``;
    * ``sides``: per direction (``+Z``, ``-Z``, ``+X``, ``-X``) the colour facing it; ``sides_with_colour``:
      how many show the prompt's body colour; for front prompts ``janus_count`` (sides showing the front
      colour, 1 is right), ``front_correct`` (+Z shows it), ``front_shares`` (:func:`front_shares`) and
      ``front_right`` (:func:`front_verdict`);
    * ``correct``: colour and shape both right.
    """
    scene = parse_prompt(prompt)
    if len(scene.objects) == 2:
        return score_pair(mesh, prompt, n_points, seed, fidelity_points)
    obj = scene.objects[0]
    mesh = _prepared(mesh)
    colours = face_colours(mesh)
    result = score_object(mesh, obj, n_points, seed, fidelity_points, colours)
    parts = components(mesh)
    parts["single_object"] = parts["n_components"] == 1
    sides = side_colours(mesh, colours)
    result.update(components=parts, sides=sides, sides_with_colour=janus_count(sides, obj.colour))
    if obj.front_colour is not None:
        shares = front_shares(mesh, obj.colour, obj.front_colour, colours)
        result.update(janus_count=janus_count(sides, obj.front_colour),
                      front_correct=sides["+Z"] is not None and sides["+Z"]["name"] == obj.front_colour,
                      front_shares=shares, front_right=front_verdict(shares))
    return result


def texture_sampled(mesh: trimesh.Trimesh, faces: int = 20_000) -> trimesh.Trimesh:
    """A UV-textured mesh as a vertex-coloured one that shows its texture: subdivided (each face into four, UVs
    interpolated) until it has at least ``faces`` faces, each vertex then coloured by the texel under its UV.

    The scores read colour per face from vertex colours; a textured cube has 12 faces and 24 vertices, far too few
    to show what its texture paints (``threed texture`` keeps the user's faces).
    """
    if not isinstance(mesh.visual, trimesh.visual.TextureVisuals) or mesh.visual.uv is None:
        raise ThreedError("the mesh has no UV texture to sample; score its vertex colours with score_mesh")
    out = mesh.copy()
    while len(out.faces) < faces:
        out = out.subdivide()
    out.visual = out.visual.to_color()
    return out


def score_textured(mesh: trimesh.Trimesh, prompt: str, faces: int = 20_000, **kwargs) -> dict:
    """:func:`score_mesh` of a UV-textured mesh, colours read from its texture (:func:`texture_sampled`)."""
    return score_mesh(texture_sampled(mesh, faces), prompt, **kwargs)


def score_pair(mesh: trimesh.Trimesh, prompt: str, n_points: int = 8192, seed: int = 0,
               fidelity_points: int = N_POINTS) -> dict:
    """Score a mesh against a two-object prompt (``"a red cube and a blue sphere"``, the first-named at -X).

    The two largest pieces are the objects, ordered by the X of their centroids; each is scored by
    :func:`score_object` against the object of its side. Returns ``objects`` (one entry per named object,
    None where the mesh has too few pieces), ``swapped`` (both pieces would be right on the other side),
    ``fidelity`` of the whole mesh against the whole scene (layout and relative size included),
    ``components`` and ``correct`` (two pieces, each the right shape and colour on the right side).
    """
    scene = parse_prompt(prompt)
    if len(scene.objects) != 2:
        raise ThreedError(f"{prompt!r} names {len(scene.objects)} object(s); score_pair wants two, e.g. "
                          "'a red cube and a blue sphere'")
    mesh = _prepared(mesh)
    parts = components(mesh)
    pieces = sorted(object_pieces(mesh)[:2], key=lambda m: float(m.area_faces @ m.triangles_center[:, 0]))
    objects: list[dict | None] = [None, None]
    swapped = False
    if len(pieces) == 2:
        objects = [score_object(piece, obj, n_points, seed, fidelity_points)
                   for piece, obj in zip(pieces, scene.objects)]
        crossed = [(p, o) for p, o in zip(pieces, reversed(scene.objects))]
        swapped = not all(e["correct"] for e in objects) and all(
            _names_match(p, o, n_points, seed) for p, o in crossed)
    parts["two_objects"] = parts["n_components"] == 2
    return {"expected": [{"shape": o.shape, "colour": o.colour, "front_colour": o.front_colour} for o in scene.objects],
            "objects": objects, "swapped": swapped, "components": parts,
            "fidelity": geometry_fidelity(mesh, scene, fidelity_points, seed),
            "correct": parts["two_objects"] and all(e is not None and e["correct"] for e in objects)}


def _names_match(piece: trimesh.Trimesh, obj: SceneObject, n_points: int, seed: int) -> bool:
    """Whether a piece shows ``obj``'s colour and nearest shape (no fidelity: the swap check only names)."""
    dist = shape_distances(piece, n_points, seed)
    colour = _colour_entry(face_colours(piece), piece.area_faces)
    return min(dist, key=dist.get) == obj.shape and colour["name"] == obj.colour


def export_mesh_path(run_dir: str | Path) -> Path:
    """The exported mesh of a run: ``export/model.ply``, else ``.glb``, else ``.obj``."""
    export = RunLayout(Path(run_dir)).export
    for fmt in EXPORT_FORMATS:
        if export.model(fmt).is_file():
            return export.model(fmt)
    looked = ", ".join(export.model(fmt).name for fmt in EXPORT_FORMATS)
    raise ThreedError(f"no exported mesh in {export.root} (looked for {looked}); finish the run "
                      f"with `threed generate --resume {run_dir}` or export it with `threed export {run_dir}`")


def export_to_world(run_dir: str | Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The map from a run's exported positions back to its field's frame (``export.json``'s transform), or None
    when the export records none (not normalised)."""
    info = RunLayout(Path(run_dir)).export.report
    t = json.loads(info.read_text()).get("transform") if info.is_file() else None
    return UnitBoxTransform(tuple(t["centre"]), float(t["scale"])).to_world if t else None


def world_mesh(run_dir: str | Path) -> trimesh.Trimesh:
    """A run's exported mesh in its field's frame: two runs' assets compare in one frame (an edit and its source)."""
    mesh = load_mesh(export_mesh_path(run_dir))
    to_world = export_to_world(run_dir)
    if to_world is not None:
        mesh.vertices = to_world(np.asarray(mesh.vertices))
    return mesh


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Load one mesh file (a GLB scene is flattened into one mesh), keeping its colours."""
    loaded = trimesh.load(str(path), force="mesh", process=True)
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ThreedError(f"{path} holds no triangle mesh to score")
    return loaded


def score_run(run_dir: str | Path, prompt: str | None = None, n_points: int = 8192, seed: int = 0) -> dict:
    """:func:`score_mesh` of a run's exported mesh; the prompt defaults to the one in ``run_dir/config.yaml``."""
    layout = RunLayout(Path(run_dir))
    if prompt is None:
        config = layout.config
        if not config.is_file():
            raise ThreedError(f"{run_dir} has no config.yaml to read the prompt from; pass the prompt")
        prompt = str((yaml.safe_load(config.read_text()) or {}).get("prompt", ""))
    path = export_mesh_path(run_dir)
    result = score_mesh(load_mesh(path), prompt, n_points, seed)
    return {"prompt": prompt, "mesh": str(path), **result, "export": export_report(layout.export, result)}


def export_report(export: ExportDir, result: dict) -> dict:
    """From ``export.json``: the asset-vs-field PSNR (fog shows as a low PSNR: the field's haze is no part of the
    surface) and, with the export transform, the field's size against the truth's (1 = right size)."""
    path = export.report
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    report = {"mean_psnr": (info.get("views") or {}).get("mean_psnr")}
    scale = (info.get("transform") or {}).get("scale")
    fidelity = result.get("fidelity")
    if scale and fidelity:
        report["field_size"] = round(1.0 / (fidelity["alignment"]["scale"] * scale), 4)
    return report


def reference_mesh(prompt: str, resolution: int = 64) -> trimesh.Trimesh:
    """The ground truth of a prompt as a vertex-coloured mesh: marching cubes of its exact SDF.

    What a perfect generation would export (up to grid resolution), so its scores calibrate the measure:
    the Chamfer floor, the colour distances of exact albedo.
    """
    scene = parse_prompt(prompt)
    half = scene.radius + 0.1
    axis = torch.linspace(-half, half, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    sdf = scene.sdf(grid.reshape(-1, 3)).reshape(grid.shape[:3]).numpy()
    vertices, faces = mcubes.marching_cubes(-sdf, 0.0)  # larger inside: faces wind outward
    vertices = vertices * (2 * half / (resolution - 1)) - half
    mesh = trimesh.Trimesh(vertices, faces.astype(np.int64), process=True)
    trimesh.repair.fix_normals(mesh)
    points = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    normals = torch.tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
    rgb = (scene.albedo(points, normals).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.concatenate(
        [rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1))
    return mesh
