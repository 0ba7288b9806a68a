"""The exported GLB, OBJ and PLY open in Blender's own importers, textured, with no warning.

Blender (``bpy`` from PyPI, Blender as a Python module) pins its own numpy, so it lives in a separate
environment: set ``THREED_BLENDER_PYTHON`` to a Python that imports ``bpy`` (``.ci/run`` builds one).
Without it the test skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trimesh
from analytic_scene import analytic_scene

from threed.export.pipeline import ExportConfig, export_scene

IMPORT_SCRIPT = r"""
import sys, bpy
path = sys.argv[-1]
bpy.ops.wm.read_factory_settings(use_empty=True)
ops = {"glb": bpy.ops.import_scene.gltf, "obj": bpy.ops.wm.obj_import, "ply": bpy.ops.wm.ply_import}
print("RESULT", sorted(ops[path.rsplit(".", 1)[1]](filepath=path)))
for ob in bpy.data.objects:
    if ob.type == "MESH":
        print("MESH", len(ob.data.vertices), len(ob.data.polygons), len(ob.data.uv_layers),
              int(ob.data.color_attributes.active_color is not None))
for im in bpy.data.images:
    print("IMAGE", im.size[0], im.size[1])
"""


def blender_python() -> str | None:
    exe = os.environ.get("THREED_BLENDER_PYTHON")
    if exe:
        return exe
    try:
        import bpy  # noqa: F401
    except ImportError:
        return None
    return sys.executable


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("blender")
    cfg = ExportConfig(grid_size=48, faces=2000, texture_size=128, views=0, video=False)
    export_scene(analytic_scene(num_samples=64), out, cfg, torch.device("cpu"))
    return out


@pytest.mark.skipif(blender_python() is None, reason="no Blender: set THREED_BLENDER_PYTHON to a Python with bpy")
@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_blender_imports_the_asset_without_warnings(exported, fmt, tmp_path):
    script = tmp_path / "import.py"
    script.write_text(IMPORT_SCRIPT)
    path = exported / f"model.{fmt}"
    run = subprocess.run([blender_python(), str(script), str(path)], capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "RESULT ['FINISHED']" in log, log
    warnings = [line for line in log.splitlines() if re.search(r"\b(warning|error)\b", line, re.IGNORECASE)]
    assert not warnings, warnings
    ours = trimesh.load(path, force="mesh", process=False)
    meshes = [tuple(map(int, line.split()[1:])) for line in log.splitlines() if line.startswith("MESH")]
    assert len(meshes) == 1, log
    vertices, faces, uv_layers, colours = meshes[0]
    assert faces == len(ours.faces)
    if fmt == "ply":  # vertex colours, no texture
        assert vertices == len(ours.vertices) and colours == 1
    else:  # UV-textured: the baked albedo comes along (the OBJ through its MTL's map_Kd)
        assert uv_layers == 1
        assert "IMAGE 128 128" in log, log
