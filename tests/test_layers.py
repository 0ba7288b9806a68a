"""The package's layering (docs: /work/shared/DESIGN.md, "Package layout"): a module imports from its own
layer or below, never above, and nothing imports the command line. Every ``import`` counts, also those
inside functions and under ``TYPE_CHECKING``: an upward arrow is a circle waiting to happen."""

import ast
from pathlib import Path

import threed

ROOT = Path(threed.__file__).parent

LAYERS: dict[str, int] = {
    # (1) foundations: no threed imports but each other
    "threed.errors": 1, "threed.version": 1, "threed.recipes": 1, "threed.runtime": 1, "threed.cameras": 1, "threed.config": 1,
    "threed.run": 1, "threed.files": 1, "threed.checkpoint": 1, "threed.progress": 1, "threed.backends": 1,
    "threed.profiling": 1, "threed.image_files": 1, "threed.mesh_files": 1,
    # (2) representations
    "threed.geometry": 2,
    # (3) rendering, and the scene that pairs a geometry with its renderer
    "threed.render": 3, "threed.scene": 3,
    # (4) what scores or reads a render
    "threed.guidance": 4, "threed.reference": 4, "threed.regularizers": 4, "threed.export": 4,
    # (5) - (8)
    "threed.stage": 5, "threed.source": 5,
    "threed.recipe": 6, "threed.editing": 6,
    "threed.api": 7, "threed.toyworld": 7, "threed.doctor": 7,
    "threed.cli": 8, "threed.commands": 8, "threed.app": 8, "threed.batch": 8, "threed.__main__": 8,
    # the package's front door re-exports the API (threed.generate, threed.Run): above everything, imported by
    # nothing inside (threed/__init__.py loads threed.api lazily, on first use)
    "threed": 9,
}

ENTRY_POINTS = {"threed.cli", "threed.__main__"}
"""The only modules that may import the command line: itself, and ``python -m threed``."""
KNOWN_UPWARD: set[tuple[str, str]] = set()
"""Upward imports tolerated while someone's work removes them. Empty since the guidance package landed (its
guidance <-> stage circle went with it); an entry is a debt with an owner, never a way to pass this test."""


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it to LAYERS (and to DESIGN.md's list)")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("threed",) + path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "threed" or n.startswith("threed.")}


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for module, path in modules().items():
        for target in imports(path):
            if layer(target) > layer(module) or (target == "threed.cli" and module not in ENTRY_POINTS):
                found.add((module, target))
    return found


def test_every_module_has_a_layer():
    for module in modules():
        layer(module)


def test_no_module_imports_one_above_it():
    unexpected = upward_imports() - KNOWN_UPWARD
    assert not unexpected, "imports that go up the layers: " + ", ".join(
        f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})" for a, b in sorted(unexpected))


def test_the_allow_list_holds_only_imports_that_still_exist():
    """An entry whose import is gone fails here until it is deleted, so the list never outlives its debt."""
    assert KNOWN_UPWARD <= upward_imports(), KNOWN_UPWARD - upward_imports()


def test_the_checker_sees_an_upward_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from threed.recipe import load_recipe\n")
    assert "threed.recipe" in imports(path) and layer("threed.recipe") > layer("threed.export.pipeline")
