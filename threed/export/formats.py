"""Writing meshes as GLB, OBJ (+ MTL) and PLY, atomically.

Axes: threed's world is right-handed with +Y up and the object's front facing +Z, which is glTF's
convention, so vertices are written unchanged in every format (no rotation). Blender's glTF and OBJ
importers (default Up Y, Forward -Z) turn this into Blender's Z-up world with the front toward -Y, i.e. the
object faces Blender's front view. Blender's PLY importer assumes Z up: set its Up axis to Y.

Colours: a mesh with vertex colours (:func:`threed.export.isosurface.color_vertices`) keeps them in all three
formats: GLB ``COLOR_0`` (RGBA uint8, normalised), PLY ``red green blue alpha`` uchar properties, and OBJ's
de-facto ``v x y z r g b`` extension (read by Blender 3.4+, MeshLab and trimesh). Values are written as
stored, i.e. sRGB-encoded albedo; strict glTF viewers treat ``COLOR_0`` as linear and show them slightly
lighter, so the UV-textured export is the colour-exact path. A textured mesh (``TextureVisuals``, e.g. from
:func:`threed.export.texture.bake_albedo`) keeps its material and texture in GLB (a PBR metallic-roughness
material, the PNG embedded) and OBJ (``map_Kd`` in a matte MTL, the PNG beside it); PLY has no standard
texture, so it gets the texture sampled at each vertex.

Every file is written to a temporary name in its destination folder and moved into place with
``os.replace`` (:mod:`threed.files`), so an interrupted export leaves the previous file (or none), never a
truncated one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import trimesh
import trimesh.exchange.gltf
import trimesh.exchange.obj
import trimesh.exchange.ply

from threed.errors import ThreedError
from threed.files import write_bytes_atomic

MeshFormat = Literal["glb", "obj", "ply"]
FORMATS: tuple[MeshFormat, ...] = ("glb", "obj", "ply")

_MTL = """# threed: {comment}
newmtl {name}
Ka 0.000000 0.000000 0.000000
Kd 1.000000 1.000000 1.000000
Ks 0.000000 0.000000 0.000000
Ns 1.000000
d 1.000000
illum 1
Pr 1.000000
Pm 0.000000
{texture}"""
"""A white matte material (``Pr``/``Pm``: the PBR extension Blender's importer reads, roughness 1, metallic 0,
as in the GLB); ``texture`` is empty or a ``map_Kd`` line."""


def _vertex_color_mtl(name: str) -> str:
    return _MTL.format(comment="a white material; the colours are the OBJ's per-vertex colours", name=name,
                       texture="")


def _matte_mtl(mtl: str) -> str:
    """trimesh's MTL for a textured material, rewritten as a white matte material with the same ``map_Kd``.

    trimesh writes ``Kd 0.4`` and ``Ks 0.4`` for a PBR material, which OBJ importers multiply into the
    texture (a darker, shiny asset). Ours (:data:`_MTL`): ``Kd 1`` so the texture is the colour as baked, no
    specular. A material without a texture is kept as trimesh wrote it.
    """
    blocks = re.split(r"(?m)^(?=newmtl )", mtl)
    out = []
    for block in blocks:
        name = re.search(r"(?m)^newmtl (.+)$", block)
        texture = re.search(r"(?m)^map_Kd (.+)$", block)
        out.append(_MTL.format(comment="baked albedo; the diffuse colour is the texture", name=name[1].strip(),
                               texture=f"map_Kd {texture[1].strip()}\n") if name and texture else block)
    return "".join(out)


def _obj_files(mesh: trimesh.Trimesh, mtl_name: str) -> tuple[str, dict[str, bytes]]:
    """OBJ text that references ``mtl_name``, and the files to write beside it (the MTL, any textures)."""
    text, extra = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_color=True,
                                                  return_texture=True, mtl_name=mtl_name)
    if mtl_name in extra:
        # Textures get the OBJ's stem as prefix so two exports in one folder do not overwrite each other's.
        stem = mtl_name[: -len(".mtl")]
        mtl = extra.pop(mtl_name).decode()
        renamed = {}
        for name, blob in extra.items():
            mtl = re.sub(rf"(?m)^(map_\w+.*\s){re.escape(name)}$", rf"\g<1>{stem}_{name}", mtl)
            renamed[f"{stem}_{name}"] = blob
        extra = {**renamed, mtl_name: _matte_mtl(mtl).encode()}
    else:
        # Vertex colours only: trimesh writes no material, but importers look for one next to the OBJ.
        # No ``usemtl``: loaders such as trimesh let a used material replace the vertex colours.
        lines = text.split("\n")
        first_vertex = next(i for i, line in enumerate(lines) if line.startswith("v "))
        lines.insert(first_vertex, f"mtllib {mtl_name}")
        text = "\n".join(lines)
        extra = {mtl_name: _vertex_color_mtl("material_0").encode()}
    return text, extra


def write_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike, format: MeshFormat | None = None) -> Path:
    """Write ``mesh`` to ``path`` as ``format`` (default: from the suffix); returns ``path``.

    OBJ also writes ``<stem>.mtl`` (whitespace in the name replaced by ``_``, since ``mtllib`` splits on
    spaces) and any texture images beside it; the OBJ is written last so it never names a missing file.
    """
    path = Path(path)
    format = format or path.suffix.lower().lstrip(".")  # type: ignore[assignment]
    if format not in FORMATS:
        raise ThreedError(f"unknown mesh format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "glb":
        data = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), include_normals=True)
    elif format == "ply":
        if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
            mesh = mesh.copy()
            mesh.visual = mesh.visual.to_color()
        data = trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    else:
        mtl_name = re.sub(r"\s", "_", path.stem) + ".mtl"
        data, extra = _obj_files(mesh, mtl_name)
        for name, blob in extra.items():
            write_bytes_atomic(path.parent / name, blob)
    return write_bytes_atomic(path, data)
