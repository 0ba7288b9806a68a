"""The ``threed`` commands as data: one typed request per command, its options described once.

Each command is a dataclass whose fields are its options; a field's metadata (:func:`option`) says how it
appears on the command line. Everyone who runs a command goes through these types:

* the command line parses ``argv`` into one (:func:`parse`; :mod:`threed.cli` then runs it);
* the web app builds one from its form and turns it back into the ``argv`` its job process runs
  (:meth:`Generate.argv`), so a web run and a typed run of the same settings are the same run;
* the Python API can take the same fields as keyword arguments.

``parse(request.argv()) == request`` for every request (tested), so the two directions cannot drift.
This module imports neither torch nor any other part of threed that does: it is what a process reads
before it decides how to run.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from threed.recipes import DEFAULT_IMAGE_RECIPE, DEFAULT_RECIPE, DEFAULT_TEXTURE_RECIPE
from threed.version import __version__


SHADINGS = ("albedo", "lambertian", "textureless", "normal")
"""Shading modes of ``threed render``."""


def option(help: str, *, metavar: str | None = None, choices: Sequence[str] | None = None, flag: str | None = None,
           positional: bool = False, default: Any = None, repeat: bool = False) -> Any:
    """A command field: its ``help``, and how it is spelt (``--name-with-dashes`` unless ``flag`` or ``positional``).

    A ``bool`` field is a switch (``--flag`` sets it); ``repeat`` makes a list from repeated ``--flag X``.
    """
    meta = {"help": help, "metavar": metavar, "choices": tuple(choices) if choices else None, "flag": flag,
            "positional": positional, "repeat": repeat}
    if repeat or positional and default is None:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


class Command:
    """Base of the command requests: the name, help and how a request turns back into ``argv``."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str | None] = None

    def argv(self) -> list[str]:
        """The ``threed`` arguments that run this request (options first, then positional items)."""
        args: list[str] = [self.name]
        positional: list[str] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata["positional"]:
                positional += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            elif isinstance(value, bool):
                args += [_flag(f)] if value else []
            elif f.metadata["repeat"]:
                for v in value:
                    args += [_flag(f), str(v)]
            elif value is not None and value != f.default:
                args += [_flag(f), str(value)]
        return args + positional


@dataclass
class Generate(Command):
    """``threed generate``: run a recipe for a prompt (or an image) and export the result."""

    name: ClassVar[str] = "generate"
    help: ClassVar[str] = "run a recipe for a prompt and export the result"
    description: ClassVar[str | None] = ("threed generate PROMPT [--recipe NAME_OR_PATH] [--out DIR] [KEY=VALUE ...]; "
                                         "image to 3D: threed generate --image photo.png [--mask mask.png] [PROMPT] ...")

    items: list[str] = option("the prompt, then recipe overrides such as max_steps=200 or "
                              "stages.0.render_size=128", positional=True, metavar="PROMPT KEY=VALUE")
    recipe: str | None = option(f"recipe name (see `threed recipes`) or YAML path; default {DEFAULT_RECIPE}, or "
                                f"{DEFAULT_IMAGE_RECIPE} with --image")
    image: str | None = option("image-to-3D: the reference photo (RGBA, or RGB with --mask); the prompt becomes "
                               "optional", metavar="PATH")
    mask: str | None = option("mask of an RGB --image: white on the object, black elsewhere", metavar="PATH")
    depth: str | None = option("optional depth or disparity map of --image (same size)", metavar="PATH")
    out: str | None = option("run directory (default outputs/<prompt-slug>-<timestamp>)")
    resume: str | None = option("continue an interrupted run directory", metavar="RUN_DIR")

    @classmethod
    def request(cls, prompt: str = "", overrides: Sequence[str] = (), **options: Any) -> Generate:
        """A request from a prompt (may be empty with ``image``) and ``KEY=VALUE`` overrides."""
        return cls(items=([prompt] if prompt else []) + list(overrides), **options)

    @classmethod
    def resuming(cls, run_dir: str, overrides: Sequence[str] = ()) -> Generate:
        """Continue the run in ``run_dir``."""
        return cls(items=list(overrides), resume=str(run_dir))


@dataclass
class Texture(Command):
    """``threed texture``: paint a given mesh from a prompt and write it back in its own coordinates."""

    name: ClassVar[str] = "texture"
    help: ClassVar[str] = "paint a given mesh (OBJ, GLB/glTF, PLY, STL) from a prompt"
    description: ClassVar[str | None] = ("threed texture MESH PROMPT [--recipe texture|texture-sd|PATH] [--up y|z] "
                                         "[--out DIR] [KEY=VALUE ...]; the mesh comes back with its own vertices and "
                                         "faces (docs/texture.md)")

    items: list[str] = option("the mesh file, the prompt, then recipe overrides such as max_steps=200",
                              positional=True, metavar="MESH PROMPT KEY=VALUE")
    recipe: str | None = option(f"a texture recipe (see `threed recipes`) or YAML path; default {DEFAULT_TEXTURE_RECIPE}")
    up: str = option("the mesh file's up axis: y (glTF, threed) or z (CAD, Blender's world)", choices=("y", "z"),
                     default="y")
    out: str | None = option("run directory (default outputs/<mesh>-<prompt-slug>-<timestamp>)")

    @classmethod
    def request(cls, mesh: str, prompt: str, overrides: Sequence[str] = (), **options: Any) -> Texture:
        """A request to paint ``mesh`` from ``prompt``, with ``KEY=VALUE`` overrides."""
        return cls(items=[mesh, prompt, *overrides], **options)


@dataclass
class Edit(Command):
    """``threed edit``: edit a finished run's asset by a new prompt, in a new run directory."""

    name: ClassVar[str] = "edit"
    help: ClassVar[str] = "edit a finished run's asset by a new prompt (a new run directory; the original is kept)"
    description: ClassVar[str | None] = ("threed edit RUN_DIR PROMPT [--rule dds|pds|sds] [--source-prompt TEXT] "
                                         "[--out DIR] [KEY=VALUE ...]")

    items: list[str] = option("the finished run directory, the new prompt, then overrides of the edit recipe such as "
                              "stages.0.steps=300", positional=True, metavar="RUN_DIR PROMPT KEY=VALUE")
    rule: str = option("editing rule: dds (Delta Denoising Score), pds (Posterior Distillation Sampling), or sds "
                       "from the same start (default dds)", choices=("dds", "pds", "sds"), default="dds")
    source_prompt: str | None = option("the original's prompt for the editing rule (default: the run's own)",
                                       metavar="TEXT")
    out: str | None = option("new run directory (default outputs/<prompt-slug>-<timestamp>)")


@dataclass
class Export(Command):
    """``threed export``: export a run (finished or interrupted) to mesh files."""

    name: ClassVar[str] = "export"
    help: ClassVar[str] = "export a run (finished or interrupted) to mesh files"

    run_dir: str = option("the run directory", positional=True, default="")
    format: list[str] = option("format to write; repeat for several (default: the recipe's export.formats)",
                               choices=("glb", "obj", "ply"), repeat=True)
    grid_size: int | None = option("marching-cubes grid points per axis (default: the recipe's export.grid_size)",
                                   metavar="N")
    faces: int | None = option("decimate to at most N faces (0: keep all; default: the recipe's export.faces)",
                               metavar="N")
    texture: str | None = option("uv: unwrap and bake a texture PNG; vertex: vertex colours only (faster)",
                                 choices=("uv", "vertex"))
    texture_size: int | None = option("texture width and height in texels", metavar="N")
    views: int | None = option("views in the field-vs-mesh contact sheet (0: none)", metavar="N")
    no_normalize: bool = option("keep the field's coordinates instead of centring and scaling to a unit box",
                                default=False)
    video: bool = option("also write the turntable video", default=False)


@dataclass
class Render(Command):
    """``threed render``: a turntable video of a run."""

    name: ClassVar[str] = "render"
    help: ClassVar[str] = "write a turntable video of a run"

    run_dir: str = option("the run directory", positional=True, default="")
    output: str | None = option("video path (default RUN_DIR/export/turntable.mp4)")
    frames: int = option("frames in the turntable", default=60)
    size: int = option("pixels per side of each frame", default=256)
    shading: str = option("shading of the frames", choices=SHADINGS, default="albedo")


@dataclass
class Recipes(Command):
    """``threed recipes``: list the shipped recipes."""

    name: ClassVar[str] = "recipes"
    help: ClassVar[str] = "list the shipped recipes"


@dataclass
class Batch(Command):
    """``threed batch``: one asset per line of a prompts file (or per image), resumable."""

    name: ClassVar[str] = "batch"
    help: ClassVar[str] = "generate one asset per line of a prompts file (or per image), resumable"
    description: ClassVar[str | None] = ("threed batch PROMPTS_FILE [--image-dir DIR] [--recipe R] [--out DIR] "
                                         "[--workers N] [--retries N] [--ray auto|local|ADDRESS] [KEY=VALUE ...]")

    items: list[str] = option("a file with one prompt per line, then recipe overrides for every job",
                              positional=True, metavar="PROMPTS_FILE KEY=VALUE")
    image_dir: str | None = option("also one image-to-3D job per image in DIR", metavar="DIR")
    recipe: str = option(f"recipe for every job; default {DEFAULT_RECIPE}", default=DEFAULT_RECIPE)
    out: str | None = option("batch folder: OUT/<job>/ per job and OUT/index.json (default "
                             "outputs/batch-<prompts file name>); rerun to resume")
    workers: int | None = option("jobs at once (default: one per GPU, else min(4, cores/2); with --ray: what "
                                 "the cluster fits)", metavar="N")
    retries: int = option("extra attempts for a job that crashes or whose worker dies (default 2)", metavar="N",
                          default=2)
    ray: str | None = option("run each job as a Ray task: auto = the running cluster, local = start one here "
                             "(needs: pip install -e .[batch])", metavar="auto|local|ADDRESS")


@dataclass
class App(Command):
    """``threed app``: serve the web app."""

    name: ClassVar[str] = "app"
    help: ClassVar[str] = "serve the web app (needs: pip install -e .[app])"

    host: str = option("address to bind (default 127.0.0.1: this machine only)", default="127.0.0.1")
    port: int = option("port to listen on", default=7860)
    out: str = option("output folder: runs are written and listed here", default="outputs")
    auth: list[str] = option("require this login (repeat for more users); needed for any --host but a loopback one",
                             metavar="USER:PASSWORD", repeat=True)
    auth_file: str | None = option("logins from FILE, one USER:PASSWORD per line (keeps passwords out of the "
                                   "process list)", metavar="FILE")
    no_auth: bool = option("serve a non-loopback --host without a login: anyone who reaches it can run jobs",
                           default=False)
    queue_limit: int | None = option("jobs that may wait in the queue; more are refused (default 16)", metavar="N")
    client_limit: int | None = option("jobs one login (or address) may have queued or running (default 4)",
                                      metavar="N")


@dataclass
class Doctor(Command):
    """``threed doctor``: what this machine has for threed, and whether a recipe can run here."""

    name: ClassVar[str] = "doctor"
    help: ClassVar[str] = "report torch, CUDA, fast paths, caches and disk; check that a recipe can run here"
    description: ClassVar[str | None] = ("threed doctor [--recipe NAME_OR_PATH] [KEY=VALUE ...]: exits 1 when the "
                                         "recipe cannot run here, saying what to do")

    recipe: str | None = option("also check what this recipe (name or YAML path) needs: device, fast paths, "
                                "priors, packages")
    items: list[str] = option("recipe overrides, as for generate (e.g. model=/path/to/sd)", positional=True,
                              metavar="KEY=VALUE")


COMMANDS: tuple[type[Command], ...] = (Generate, Texture, Edit, Export, Render, Recipes, Batch, App, Doctor)
"""Every command, in the order ``threed --help`` lists them."""


def _type(f: dataclasses.Field) -> type:
    """``int`` or ``str``: the value type of an option field (annotations are strings here)."""
    return int if str(f.type).startswith("int") else str


def build_parser() -> argparse.ArgumentParser:
    """The ``threed`` argument parser, derived from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="threed", description="Text or image to 3D assets by score distillation.")
    parser.add_argument("--version", action="version", version=f"threed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cls in COMMANDS:
        p = sub.add_parser(cls.name, help=cls.help, description=cls.description)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            meta = f.metadata
            kw: dict[str, Any] = {"help": meta["help"]}
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            if meta["positional"]:
                p.add_argument(f.name, nargs="*" if str(f.type).startswith("list") else None, **kw)
            elif str(f.type) == "bool":
                p.add_argument(_flag(f), dest=f.name, action="store_true", **kw)
            elif meta["repeat"]:
                p.add_argument(_flag(f), dest=f.name, action="append", default=[], **kw)
            else:
                p.add_argument(_flag(f), dest=f.name, type=_type(f), default=f.default, **kw)
    return parser


def parse(argv: Sequence[str] | None = None) -> Command:
    """The request ``argv`` asks for (``sys.argv[1:]`` when None); exits with usage on a malformed line.

    Recipe overrides may follow options (``generate "a cube" --out d max_steps=5``): they join the items.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    cls = next(c for c in COMMANDS if c.name == args.command)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if extra and ("items" not in names or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    values = {k: v for k, v in vars(args).items() if k in names}
    if extra:
        values["items"] = list(values["items"]) + extra
    return cls(**values)
