"""The public Python API: run a recipe from Python, then read, export and render what it made.

::

    import threed
    run = threed.generate("a red cube", overrides={"max_steps": 300}, progress=print)
    mesh = run.mesh()                   # trimesh.Trimesh in export coordinates
    run.export("glb", faces=5000)       # -> Path
    frames = run.render(frames=36)      # F x H x W x 3 uint8 turntable frames
    run = threed.Run.load("outputs/cube"); run.resume()
    run = threed.texture("chair.obj", "a red chair")   # paint a given mesh; written back in its own coordinates

This is what the command line is built on: ``threed generate`` is :func:`generate` (and ``--resume`` is
:meth:`Run.resume`), ``threed texture`` is :func:`texture`, ``threed export`` and ``threed render`` open the run with :meth:`Run.load`, and the web
app reads a run's live progress with :meth:`Run.progress`. So a problem with the input raises the
:class:`~threed.errors.ThreedError` whose message the command line prints. docs/api.md has the guide.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import trimesh

from threed.errors import ThreedError
from threed.export.formats import FORMATS
from threed.export.pipeline import ExportConfig, build_assets, user_mesh_assets
from threed.export.video import render_frames, turntable_cameras
from threed.guidance.loading import PriorCache
from threed.progress import Progress
from threed.mesh_files import UpAxis, UserMesh, read_user_mesh
from threed.recipe import (RecipeConfig, default_run_dir, export_run, last_checkpoint, load_recipe, load_run_config,
                           paints_a_mesh, resolve_device, run_layout, run_mesh, run_recipe)
from threed.recipes import DEFAULT_IMAGE_RECIPE, DEFAULT_RECIPE, DEFAULT_TEXTURE_RECIPE
from threed.render.shading import Shading
from threed.run import RunLayout
from threed.scene import Scene
from threed.source import LoadedSource

ProgressCallback = Callable[[Progress], None]
Overrides = Mapping[str, Any] | Sequence[str]
"""``{"max_steps": 300, "stages.0.render_size": 32}`` (dotted keys, Python values), or the command line's
``["max_steps=300", ...]``."""
PathLike = str | os.PathLike
SHADINGS: tuple[str, ...] = get_args(Shading)


def _image_inputs(image: PathLike | None, mask: PathLike | None, depth: PathLike | None) -> dict[str, str | None]:
    """The image inputs as absolute paths (a resumed run must find them from any folder)."""
    paths: dict[str, str | None] = {"image": None, "mask": None, "depth": None}
    if image is None and (mask is not None or depth is not None):
        raise ThreedError("--mask and --depth belong to an image: add --image photo.png")
    for key, value in (("image", image), ("mask", mask), ("depth", depth)):
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ThreedError(f"--{key} {path} does not exist")
            paths[key] = str(path.resolve())
    return paths


def _existing_dir(path: PathLike) -> Path:
    """``path`` as a folder, or a clear error when there is nothing there."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise ThreedError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ThreedError(f"{run_dir} is a file, not a run directory")
    return run_dir


class Run:
    """One run directory: its recipe (``config``), checkpoints, progress and export.

    Get one from :func:`generate` or :meth:`Run.load`. Every method reads the run's newest checkpoint, so
    it works on a finished run and on an interrupted one alike.
    """

    def __init__(self, path: PathLike, config: RecipeConfig):
        """Internal: use :func:`generate` or :meth:`Run.load`. ``config`` is the run's resolved recipe."""
        self.path = Path(path)
        """The run directory."""
        self.config = config
        """The fully resolved recipe of the run (``config.yaml``)."""
        self.files: dict[str, Path] = {}
        """The files the last :func:`generate`, :meth:`resume` or :meth:`export` of this object wrote, by
        kind (``glb``, ``obj``, ``ply``, ``views``, ``report``, ``video``, ...)."""

    def __repr__(self) -> str:
        return f"threed.Run({str(self.path)!r}, prompt={self.config.prompt!r})"

    @classmethod
    def load(cls, path: PathLike) -> Run:
        """Open the run in folder ``path``, finished or interrupted."""
        run_dir = _existing_dir(path)
        return cls(run_dir, load_run_config(run_dir))

    @property
    def _layout(self) -> RunLayout:
        return run_layout(self.path, self.config)

    def progress(self) -> Progress | None:
        """The latest report of the furthest stage that has written one (None before the first step), with the
        run's newest validation grid; it works while another process runs the recipe."""
        report, image = None, None
        for stage in reversed(self._layout.stages):
            report = report or Progress.read(stage)
            if image is None:
                grids = stage.val_images()
                image = grids[-1] if grids else None
        if report is not None and report.image is None:
            report.image = image
        return report

    def resume(self, overrides: Overrides | None = None, progress: ProgressCallback | None = None) -> Run:
        """Continue the run from its checkpoints (``overrides`` change the recipe, e.g. ``{"max_steps": 600}``),
        then export; a finished run is exported again. Returns this run."""
        self.config = load_run_config(self.path, overrides or ())
        self._go(progress)
        return self

    def _go(self, progress: ProgressCallback | None, priors: PriorCache | None = None, mesh: UserMesh | None = None,
            source: LoadedSource | None = None) -> None:
        """Run the recipe to the end and export; ``priors``: a prior cache kept across runs (internal: the batch
        runner's workers pass theirs, so a prior loads once per worker); ``mesh``: a new texture run's mesh, read;
        ``source``: a new edit run's original checkpoint, read."""
        print(f"run directory: {self.path}", file=sys.stderr)
        self.files = run_recipe(self.config, self.path, priors=priors, progress=progress, mesh=mesh, source=source)

    def _scene(self) -> Scene:
        return Scene.from_checkpoint(last_checkpoint(self.path, self.config), resolve_device(self.config.device))

    def _export_config(self, grid_size: int | None = None, faces: int | None = None, **changes: Any) -> ExportConfig:
        """The recipe's export settings with ``changes`` (None keeps the recipe's; ``faces=0`` keeps every face)."""
        changes = {k: v for k, v in {**changes, "grid_size": grid_size}.items() if v is not None}
        if faces is not None:
            changes["faces"] = faces or None
        try:
            return replace(self.config.export, **changes)
        except ValueError as exc:
            raise ThreedError(f"bad export option: {exc}") from exc

    def mesh(self, grid_size: int | None = None, faces: int | None = None) -> trimesh.Trimesh:
        """The surface of the newest checkpoint with vertex colours, cleaned, decimated and placed as the export
        places it (export coordinates: centred and scaled to the unit box unless the recipe's
        ``export.normalize`` is off). ``grid_size`` and ``faces`` default to the recipe's export settings.
        A texture run's mesh is the user's, as read, in the file's coordinates."""
        export = self._export_config(grid_size, faces, texture="vertex")
        device = resolve_device(self.config.device)
        user = run_mesh(self.config, self._layout)
        if user is not None:  # a texture run: the user's mesh, in the file's coordinates
            return user_mesh_assets(self._scene(), user, export, device).colored
        return build_assets(self._scene(), export, device).colored

    def export_files(self, formats: Sequence[str] | None = None, *, faces: int | None = None,
                     grid_size: int | None = None, texture: str | None = None, texture_size: int | None = None,
                     views: int | None = None, normalize: bool | None = None, video: bool = False
                     ) -> dict[str, Path]:
        """Export the newest checkpoint into ``RUN/export/`` (``threed export``); returns the files by kind.

        Every option defaults to the recipe's ``export`` settings; ``faces=0`` keeps every face, ``video``
        also writes the turntable.
        """
        export = self._export_config(grid_size, faces, formats=list(formats) if formats else None, texture=texture,
                                     texture_size=texture_size, views=views, normalize=normalize)
        device = resolve_device(self.config.device)
        with self._layout.hold("threed export"):  # one writer at a time (a run or another export is refused)
            self.files = export_run(self.config, self._layout, last_checkpoint(self.path, self.config), device,
                                    export=export, video=video)
        return self.files

    def export(self, format: str = "glb", *, faces: int | None = None, grid_size: int | None = None,
               texture: str | None = None, texture_size: int | None = None) -> Path:
        """Write the mesh as ``RUN/export/model.<format>`` (``glb``, ``obj`` or ``ply``) and return its path;
        the options are :meth:`export_files`'."""
        if format not in FORMATS:
            raise ThreedError(f"unknown mesh format {format!r}; choose from {', '.join(FORMATS)}")
        return self.export_files([format], faces=faces, grid_size=grid_size, texture=texture,
                                 texture_size=texture_size)[format]

    def exported_checkpoint(self) -> dict[str, Any]:
        """What the current export was made from (stage, step, total_steps), as its ``export.json`` records."""
        try:
            report = json.loads(self._layout.export.report.read_text())
        except (OSError, ValueError) as exc:
            raise ThreedError(f"{self.path} has no readable export report yet: export it first") from exc
        return {k: report.get(k) for k in ("stage", "step", "total_steps")}

    def edit(self, prompt: str, *, rule: str = "dds", source_prompt: str | None = None, out: PathLike | None = None,
             overrides: Overrides | None = None, progress: ProgressCallback | None = None) -> Run:
        """This (finished) run's asset edited toward ``prompt``, in a new run directory: :func:`edit`."""
        return edit(self.path, prompt, rule=rule, source_prompt=source_prompt, out=out, overrides=overrides,
                    progress=progress)

    def render(self, frames: int = 36, size: int = 128, shading: str = "albedo") -> np.ndarray:
        """``frames x size x size x 3`` uint8 turntable frames of the newest checkpoint, starting at the front
        and turning once (the views of ``threed render``); ``shading``: albedo, lambertian, textureless or
        normal."""
        if frames < 1 or size < 8:
            raise ThreedError(f"a turntable needs frames >= 1 and size >= 8, got frames={frames} size={size}")
        if shading not in SHADINGS:
            raise ThreedError(f"shading {shading!r} is not one of {', '.join(SHADINGS)}")
        scene = self._scene()
        device = resolve_device(self.config.device)
        cameras = turntable_cameras(frames, size).to(device)
        mode = cast(Shading, shading)
        return np.stack(list(render_frames(lambda cams: scene.render_eval(cams, mode), cameras)))


def generate(prompt: str = "", *, recipe: str | None = None, seed: int | None = None, out: PathLike | None = None,
             overrides: Overrides | None = None, progress: ProgressCallback | None = None,
             image: PathLike | None = None, mask: PathLike | None = None, depth: PathLike | None = None) -> Run:
    """Run ``recipe`` for ``prompt`` (or for ``image``: image to 3D) in a new run directory, export, return it.

    ``recipe``: a name from ``threed recipes`` or a YAML path (default ``quickstart``, or ``quickstart-image``
    with an image). ``seed``: None keeps the recipe's. ``out``: the run directory (default
    ``outputs/<prompt-slug>-<timestamp>``); it must not hold a run already (continue one with
    :meth:`Run.resume`). ``overrides``: recipe settings by dotted key. ``progress``: called with a
    :class:`Progress` every few steps. ``mask``/``depth``: of ``image``. Ctrl-C (KeyboardInterrupt) stops between
    two steps with the last checkpoint intact: ``Run.load(out).resume()`` continues it.
    """
    images = _image_inputs(image, mask, depth)
    name = recipe or (DEFAULT_IMAGE_RECIPE if images["image"] else DEFAULT_RECIPE)
    cfg = load_recipe(name, overrides or (), prompt=prompt or None, seed=seed, **images)
    run_dir = Path(out) if out is not None else default_run_dir(prompt or Path(images["image"] or "run").stem)
    if RunLayout(run_dir).is_run:
        raise ThreedError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --out")
    run = Run(run_dir, cfg)
    run._go(progress)
    return run


def texture(mesh: PathLike, prompt: str, *, recipe: str | None = None, up: UpAxis = "y", seed: int | None = None,
            out: PathLike | None = None, overrides: Overrides | None = None,
            progress: ProgressCallback | None = None) -> Run:
    """Paint the mesh in file ``mesh`` (OBJ, GLB/glTF, PLY, STL) from ``prompt`` in a new run directory; return it.

    ``recipe``: a texture recipe (default ``texture``: the toy prior on a CPU; ``texture-sd``: Stable Diffusion).
    ``up``: the file's up axis, ``y`` (glTF) or ``z`` (CAD, Blender's world). The mesh is read and checked first:
    a file that cannot be textured raises :class:`ThreedError` before anything is written. The run keeps a copy
    of it (``RUN/input/``), optimises an albedo field on it in the scene box, and exports it in the file's own
    coordinates: the same vertices and faces, its own UVs when it has usable ones, else new xatlas UVs
    (``export.json`` says which). The other arguments are :func:`generate`'s. docs/texture.md has the rules.
    """
    if not prompt.strip():
        raise ThreedError('give a prompt: threed texture chair.obj "a red chair"')
    user = read_user_mesh(mesh, up)
    source = str(Path(mesh).expanduser().resolve())
    cfg = load_recipe(recipe or DEFAULT_TEXTURE_RECIPE, overrides or (), prompt=prompt, seed=seed, mesh=source, up=up)
    if not paints_a_mesh(cfg):
        raise ThreedError(f"recipe {recipe!r} makes its own surface; texture a mesh with --recipe texture (CPU, toy "
                          f"world) or texture-sd (or a recipe whose stages have scene kind mesh)")
    run_dir = Path(out) if out is not None else default_run_dir(f"{Path(mesh).stem}-{prompt}")
    if RunLayout(run_dir).is_run:
        raise ThreedError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --out")
    run = Run(run_dir, cfg)
    run._go(progress, mesh=user)
    return run


def edit(run_dir: PathLike, prompt: str, *, rule: str = "dds", source_prompt: str | None = None,
         out: PathLike | None = None, overrides: Overrides | None = None,
         progress: ProgressCallback | None = None) -> Run:
    """Edit the asset of the finished run in ``run_dir`` toward ``prompt`` in a new run directory, export, return it.

    The new run's one stage starts from the run's final checkpoint (any representation) and optimises with
    ``rule``: ``dds`` (Delta Denoising Score), ``pds`` (Posterior Distillation Sampling) or ``sds``; the
    editing rules compare each render with the original's at the same camera under ``source_prompt`` (default
    the run's own prompt). :mod:`threed.editing` says what else the edit recipe keeps and changes; ``overrides``
    apply to it (``{"stages.0.steps": 300, "stages.0.loss.preserve.rgb": 1.0}``). ``out``: default
    ``outputs/<prompt-slug>-<timestamp>``. The source run is only read (it must be finished, and nobody may be
    writing it); the new run keeps a copy of its checkpoint and records where it came from (``edit`` in its
    ``config.yaml`` and ``export.json``).
    """
    from threed.editing import EditDefaults, check_source_run, edit_recipe

    if not prompt.strip():
        raise ThreedError('the prompt is empty: give the new prompt, e.g. threed edit RUN_DIR "a blue cube"')
    source_cfg, source, loaded = check_source_run(Path(run_dir))
    cfg = edit_recipe(source_cfg, source, prompt, loaded.checkpoint.scene_config, EditDefaults(rule=rule),
                      source_prompt, overrides or ())
    run_dir_new = Path(out) if out is not None else default_run_dir(prompt)
    if RunLayout(run_dir_new).is_run:
        raise ThreedError(f"{run_dir_new} already holds a run; choose another --out")
    run = Run(run_dir_new, cfg)
    run._go(progress, source=loaded)
    return run
