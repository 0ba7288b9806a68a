"""The shipped recipes: one YAML file per recipe in this folder (package data: a wheel carries them).

:mod:`threed.recipe` loads and runs them. This module is their catalogue: the default names, the list, a
name's file and each file's one-line summary, read from the YAML alone. It imports neither torch nor the
rest of threed, so ``threed --help`` and ``threed recipes`` start in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from threed.errors import ThreedError

CONFIG_DIR = Path(__file__).resolve().parent
"""The shipped recipes (package data: they travel in the wheel)."""

DEFAULT_RECIPE = "quickstart"
"""The recipe of ``threed generate`` (and ``threed batch``) when no ``--recipe`` is given."""
DEFAULT_IMAGE_RECIPE = "quickstart-image"
"""The recipe of ``threed generate --image`` when no ``--recipe`` is given."""
DEFAULT_TEXTURE_RECIPE = "texture"
"""The recipe of ``threed texture`` when no ``--recipe`` is given."""


def available_recipes() -> dict[str, Path]:
    """The shipped recipes by name (empty when the recipe folder is missing or empty)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml")) if p.is_file()}


def no_recipes_error() -> ThreedError:
    """What to say when the recipe folder holds no recipe (a broken installation)."""
    return ThreedError(f"no recipes found in {CONFIG_DIR}: this installation of threed is incomplete; reinstall it "
                       f"(pip install .) or give a recipe file with --recipe path.yaml")


@dataclass(frozen=True)
class RecipeSummary:
    """What a list of recipes shows of one: read from its YAML without validating it."""

    name: str
    path: Path
    description: str = ""
    model: str = ""
    """The recipe's text-to-image prior (``model``)."""
    image_model: str | None = None
    """Its view-conditioned prior: set for the image-to-3D recipes."""
    problem: str | None = None
    """Why the file could not be read (the other fields are then empty): listed, not fatal."""
    paints_a_mesh: bool = False
    """Whether it textures a given mesh (a stage whose scene kind is ``mesh``: ``threed texture``)."""


def recipe_summaries() -> list[RecipeSummary]:
    """One summary per shipped recipe, in name order; a file that does not parse as a mapping is listed with
    its ``problem`` rather than stopping the listing (``threed recipes``, the app, the batch runner)."""
    out = []
    for name, path in available_recipes().items():
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            out.append(RecipeSummary(name, path, problem=f"cannot read {path}: {' '.join(str(exc).split())}"))
            continue
        data = {} if data is None else data  # an empty file is every default, as load_recipe reads it
        if not isinstance(data, dict):
            out.append(RecipeSummary(name, path, problem=f"{path} is not a recipe (a YAML mapping of settings)"))
            continue
        image_model = data.get("image_model")
        stages = data.get("stages")
        mesh = isinstance(stages, list) and any(isinstance(st, dict) and isinstance(st.get("scene"), dict) and st["scene"].get("kind") == "mesh"
                   for st in stages)
        out.append(RecipeSummary(name, path, str(data.get("description") or ""), str(data.get("model") or ""),
                                 str(image_model) if image_model else None, paints_a_mesh=mesh))
    return out


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ThreedError(f"recipe file {path} does not exist")
        return path
    recipes = available_recipes()
    if not recipes:
        raise no_recipes_error()
    if name_or_path not in recipes:
        raise ThreedError(f"unknown recipe {name_or_path!r}; available: {', '.join(recipes)} "
                          f"(or give a path to a .yaml file)")
    return recipes[name_or_path]
