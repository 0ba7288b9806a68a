"""What a page submits, checked before it is queued, and turned into the ``threed generate`` (or ``threed
texture``) command it runs.

A job runs the same command a person would type, so a web run and a terminal run of the same settings
are the same run. Everything that can be checked without loading a model is checked here, while the
person is still looking at the form: an empty prompt, an image without alpha and no mask, a mesh that
cannot be read or a recipe that would ignore it, a recipe override with an unknown key or a bad value. What needs the model (a word the prior does not know,
missing weights) fails in the job, and the page shows that job's message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from threed.commands import Edit, Generate, Texture
from threed.errors import ThreedError
from threed.image_files import check_image_file
from threed.mesh_files import read_user_mesh
from threed.recipe import RecipeConfig, load_recipe, paints_a_mesh

OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.*", re.DOTALL)
"""A recipe override: a dotted key, ``=``, a value (never a command-line option)."""
FORM_KEYS = ("prompt", "image", "mask", "mesh", "up")
"""Keys the form sets itself: an override may not point them elsewhere (e.g. at a file outside the output folder)."""


@dataclass
class JobRequest:
    """The form: a prompt (or an image with an optional mask, or a mesh to paint), a recipe and a few key settings."""

    prompt: str = ""
    """Text prompt; may be empty when an image is given."""
    recipe: str = "quickstart"
    """Shipped recipe name (see ``threed recipes``)."""
    steps: int | None = None
    """Caps every stage's steps (``max_steps``); None keeps the recipe's."""
    seed: int | None = None
    """None keeps the recipe's."""
    preview_every: int | None = None
    """Validation render every this many steps, in every stage (``stages.N.val_every``); None keeps the recipe's."""
    model: str | None = None
    """Prior (hub id, local diffusers folder or ``toyworld``); None keeps the recipe's."""
    overrides: list[str] = field(default_factory=list)
    """Further ``KEY=VALUE`` recipe overrides, as on the command line."""
    image: Path | None = None
    """Uploaded reference image, for image-to-3D."""
    mask: Path | None = None
    """Uploaded foreground mask for an image without alpha."""
    mesh: Path | None = None
    """Uploaded mesh to paint from the prompt (``threed texture``; OBJ, GLB, PLY, STL) with a texture recipe."""
    up: str = "y"
    """Up axis of ``mesh``: ``y`` (glTF) or ``z`` (CAD, Blender's world)."""

    def recipe_overrides(self) -> list[str]:
        """The settings as ``KEY=VALUE`` overrides, the form's fields first."""
        items = [f"max_steps={self.steps}"] if self.steps else []
        items += [f"seed={self.seed}"] if self.seed is not None else []
        items += [f"model={self.model}"] if self.model else []
        if self.preview_every:
            stages = len(load_recipe(self.recipe).stages)
            items += [f"stages.{i}.val_every={self.preview_every}" for i in range(stages)]
        return items + list(self.overrides)

    def validate(self) -> RecipeConfig:
        """The resolved recipe; a :class:`ThreedError` with what to fix, for anything checkable without a model."""
        if self.image is None and not self.prompt.strip():
            raise ThreedError('the prompt is empty: describe the object, e.g. "a red cube" (or upload an image)'
                              if self.mesh is None else 'the prompt is empty: say how to paint the mesh, e.g. "a red chair"')
        if self.mesh is not None and self.image is not None:
            raise ThreedError("give a photo or a mesh to paint, not both")
        for label, value in (("steps", self.steps), ("preview every", self.preview_every)):
            if value is not None and value < 1:
                raise ThreedError(f"{label} must be a positive number of steps, or blank for the recipe's")
        check_prompt_and_overrides(self.prompt, self.overrides)
        if self.image is not None:
            check_image(self.image, self.mask)
        if self.mesh is not None:
            read_user_mesh(self.mesh, "z" if self.up == "z" else "y")  # unreadable, empty, a point cloud...: said now
        cfg = load_recipe(self.recipe, self.recipe_overrides(), prompt=self.prompt.strip() or None,
                          **({"mesh": str(self.mesh), "up": self.up} if self.mesh is not None else {}))
        if self.mesh is not None and not paints_a_mesh(cfg):
            raise ThreedError(f"the recipe {self.recipe!r} makes its own surface and would ignore the mesh: choose a "
                              "texture recipe (texture on a CPU, texture-sd with Stable Diffusion)")
        if self.mesh is None and paints_a_mesh(cfg):
            raise ThreedError(f"the recipe {self.recipe!r} paints a given mesh: upload one under "
                              "\"Texture a mesh\", or choose a text-to-3D recipe")
        if self.image is not None and all(s.reference is None for s in cfg.stages):
            raise ThreedError(f"the recipe {self.recipe!r} is text-to-3D and would ignore the photo: choose an "
                              "image-to-3D recipe (quickstart-image, zero123 or magic123)")
        return cfg

    def generate(self, out: Path) -> Generate:
        """The ``threed generate`` request that runs this form into run folder ``out``."""
        return Generate.request(self.prompt.strip(), self.recipe_overrides(), recipe=self.recipe, out=str(out),
                                image=str(self.image) if self.image is not None else None,
                                mask=str(self.mask) if self.mask is not None else None)

    def texture(self, out: Path) -> Texture:
        """The ``threed texture`` request that paints this form's mesh into run folder ``out``."""
        assert self.mesh is not None
        return Texture.request(str(self.mesh), self.prompt.strip(), self.recipe_overrides(), recipe=self.recipe,
                               up=self.up, out=str(out))

    def command(self, out: Path) -> list[str]:
        """``threed`` arguments that run this request into run folder ``out``."""
        return (self.generate(out) if self.mesh is None else self.texture(out)).argv()


@dataclass
class EditRequest:
    """"Edit this result": a finished run, the new prompt, the editing rule and the form's settings."""

    source: Path
    """The finished run folder to edit (it is only read)."""
    prompt: str
    """What it should become, e.g. "a blue cube"."""
    rule: str = "dds"
    """dds, pds or sds (``threed edit --rule``)."""
    steps: int | None = None
    """Caps the edit's steps (``max_steps``); None keeps the edit recipe's."""
    overrides: list[str] = field(default_factory=list)
    """Further ``KEY=VALUE`` overrides of the edit recipe."""

    def validate(self) -> None:
        """A :class:`ThreedError` with what to fix: an empty prompt, a bad override, a run that cannot be edited
        (unfinished, being written...)."""
        from threed.editing import check_source_run

        if not self.prompt.strip():
            raise ThreedError('the new prompt is empty: say what the result should become, e.g. "a blue cube"')
        if self.rule not in ("dds", "pds", "sds"):
            raise ThreedError(f"unknown editing rule {self.rule!r}: choose dds, pds or sds")
        if self.steps is not None and self.steps < 1:
            raise ThreedError("steps must be a positive number of steps, or blank for the edit recipe's")
        check_prompt_and_overrides(self.prompt, self.overrides)
        check_source_run(self.source)

    def command(self, out: Path) -> list[str]:
        """``threed edit`` arguments that write the edit into run folder ``out``."""
        items = [str(self.source), self.prompt.strip(), *([f"max_steps={self.steps}"] if self.steps else []),
                 *self.overrides]
        return Edit(items=items, rule=self.rule, out=str(out)).argv()


def check_prompt_and_overrides(prompt: str, overrides: list[str]) -> None:
    """A prompt that would read as an option, or an override that is not ``KEY=VALUE`` or sets a form field."""
    if prompt.lstrip().startswith("-"):
        raise ThreedError("a prompt cannot start with '-'")
    for item in overrides:
        if not OVERRIDE.fullmatch(item):
            raise ThreedError(f"override {item!r} is not KEY=VALUE (one per line, e.g. max_steps=200)")
        if item.split("=", 1)[0] in FORM_KEYS:
            raise ThreedError(f"set {item.split('=', 1)[0]!r} with the form, not as an override")


def resume_command(run: Path) -> list[str]:
    """``threed`` arguments that continue an interrupted run folder."""
    return Generate.resuming(str(run)).argv()


def check_image(image: Path, mask: Path | None) -> None:
    """An image-to-3D input needs the object separated from its background: an alpha channel or a mask."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(check_image_file(image, "uploaded image")[0])) as im:
        rgba = im.convert("RGBA") if im.mode == "P" else im
        transparent = "A" in rgba.getbands() and rgba.getchannel("A").getextrema()[0] < 255
    if not transparent and mask is None:
        raise ThreedError("the image has no transparent background (no alpha channel) and no mask was given: "
                          "upload a PNG with the background removed, or add a mask (white = object)")
