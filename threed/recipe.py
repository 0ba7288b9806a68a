"""Recipes: a YAML list of stages run in order in one run directory, then exported.

``threed/recipes/<name>.yaml`` holds the shipped recipes. Top-level keys (``prompt``, ``model``, ``seed``,
``device``, ``max_steps``, ...) are shared by the stages. A run directory keeps the fully resolved
``config.yaml``, every stage's checkpoints and validation images, and ``export/``; running the same
directory again continues where it stopped (``threed generate --resume RUN_DIR``).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from omegaconf import OmegaConf
from tqdm import tqdm

from threed.checkpoint import Checkpoint, read_stage_checkpoint
from threed.config import build, parse_overrides, to_dict
from threed.errors import ThreedError
from threed.export.pipeline import ExportConfig, export_checkpoint
from threed.files import DiskFullError, write_bytes_atomic
from threed.guidance.loading import DEFAULT_TEXT_MODEL, PriorCache
from threed.mesh_files import UserMesh, read_user_mesh
from threed.progress import Progress
from threed.recipes import recipe_path
from threed.run import RunLayout
from threed.source import EditSource, LoadedSource, keep_source, read_source
from threed.stage import RunContext, Stage, StageConfig

@dataclass
class RecipeConfig:
    """A whole recipe: shared settings, stages, export."""

    description: str = ""
    """One line shown by ``threed recipes``."""
    prompt: str = ""
    """Text prompt (the positional argument of ``threed generate``)."""
    image: str | None = None
    """Reference image for image-to-3D recipes (RGBA, or RGB with ``mask``)."""
    mask: str | None = None
    """Mask of the reference image (white = object), needed when the image has no alpha."""
    depth: str | None = None
    """Optional depth (or disparity) map of the reference image, for the reference-view depth loss."""
    mesh: str | None = None
    """Texture recipes (``threed texture``): the user's mesh file as given; the run keeps a copy and reads that
    (``RUN/input/``)."""
    up: Literal["y", "z"] = "y"
    """Up axis of ``mesh``: ``y`` (glTF, threed) or ``z`` (CAD, Blender's world, many threestudio exports)."""
    model: str = DEFAULT_TEXT_MODEL
    """Text-to-image prior: hub id, local diffusers folder, or ``toyworld``. The default is Stable Diffusion
    2.1-base from its sd2-community mirror (Stability AI withdrew ``stabilityai/stable-diffusion-2-1-base``,
    which still loads when it is in the local cache)."""
    image_model: str | None = None
    """View-conditioned prior for image-to-3D recipes."""
    seed: int = 0
    """Seeds every stage (stage ``i``: torch's global generator, which initialises the scene and drives the
    renderer's random draws, with ``seed + 1000 i``; its cameras with ``seed + 1000 i + 1``; its guidance's
    timesteps and noise with ``seed + 1000 i + 2``; its shading draws with ``seed + i``), so a seed gives the
    same run on the same machine."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when torch sees a device, else the CPU."""
    max_steps: int | None = None
    """Caps every stage's steps (smoke runs)."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The stages, run in order in one run directory; each hands its geometry to the next."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """What is written at the end (and by ``threed export`` by default)."""
    edit: EditSource | None = None
    """An edit run (``threed edit``): the finished run whose asset the first stage starts from and the editing
    rules compare with (threed.source); None for a run from scratch."""

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")


def _apply_list_overrides(base, overrides, path: str = "") -> None:
    """OmegaConf merges lists wholesale; a dotted override into a list must edit its items instead:
    ``stages.0.steps=10`` one stage, ``stages.*.steps=10`` every stage (applied first, so a numbered
    override wins), nested lists alike (``stages.0.guidance.1.weight=20``). A key that is not an index
    edits the only item of a one-item list, so ``stages.0.guidance.guidance_scale=50`` works on a stage
    with one guidance, however the recipe wrote it. A list given where the recipe has a mapping replaces it
    (``stages.0.guidance=[{kind: sds}, {kind: csd}]``)."""
    for key in [k for k in overrides if k in base and OmegaConf.is_dict(base[k])]:
        if OmegaConf.is_list(overrides[key]):
            base[key] = overrides.pop(key)
        elif OmegaConf.is_dict(overrides[key]):
            _apply_list_overrides(base[key], overrides[key], f"{path}{key}.")
    for key in [k for k in overrides if k in base and OmegaConf.is_list(base[k]) and OmegaConf.is_dict(overrides[k])]:
        items, patches, where = base[key], overrides.pop(key), f"{path}{key}"
        indexed = [k for k in patches if k == "*" or str(k).isdigit()]
        plain = [k for k in patches if k not in indexed]
        if plain:
            if len(items) != 1:
                raise ThreedError(f"override {where}.{plain[0]}: {where} has {len(items)} entries; name one "
                                  f"({where}.0 ... {where}.{len(items) - 1}), all ({where}.*), or give the "
                                  f"whole list ({where}=[...])")
            patches = OmegaConf.merge({"0": {k: patches[k] for k in plain}}, {k: patches[k] for k in indexed})
            indexed = list(patches)
        for idx in sorted(indexed, key=lambda k: k != "*"):
            if idx != "*" and not (str(idx).isdigit() and 0 <= int(idx) < len(items)):
                owner, noun = ("the recipe", "stages") if where == "stages" else (where, "entries")
                raise ThreedError(f"override {where}.{idx}: {owner} has {len(items)} {noun} "
                                  f"(use {where}.0 ... {where}.{len(items) - 1}, or {where}.* for all)")
            for i in range(len(items)) if idx == "*" else [int(idx)]:
                patch = patches[idx]
                if OmegaConf.is_dict(patch) and OmegaConf.is_dict(items[i]):
                    patch = OmegaConf.create(OmegaConf.to_container(patch))  # a copy: the recursion pops from it
                    _apply_list_overrides(items[i], patch, f"{where}.{i}.")
                    items[i] = OmegaConf.merge(items[i], patch)
                else:
                    items[i] = patch


def load_recipe(name_or_path: str, overrides: Sequence[str] | Mapping[str, Any] = (), **top_level) -> RecipeConfig:
    """Read a recipe, apply top-level values and overrides (``KEY=VALUE`` items or a mapping of dotted keys to
    values: :func:`threed.config.parse_overrides`), validate it."""
    path = recipe_path(name_or_path)
    try:
        base = OmegaConf.load(path)
    except Exception as exc:
        raise ThreedError(f"cannot read recipe {path}: {exc}") from exc
    return recipe_from(base, overrides, str(path), **top_level)


def recipe_from(data: Any, overrides: Sequence[str] | Mapping[str, Any] = (), where: str = "the recipe",
                **top_level) -> RecipeConfig:
    """A recipe from plain data or an OmegaConf mapping (``where`` names it in errors), with top-level values and
    overrides applied as :func:`load_recipe` applies them; validated."""
    base = OmegaConf.create(data) if not OmegaConf.is_config(data) else data
    path = where
    for key, value in top_level.items():
        if value is not None:
            base[key] = value
    over = parse_overrides(overrides)
    _apply_list_overrides(base, over)
    merged = OmegaConf.merge(base, over)
    try:
        data = OmegaConf.to_container(merged, resolve=True)
    except Exception as exc:
        raise ThreedError(f"recipe {path}: {exc}") from exc
    return build(RecipeConfig, data)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ThreedError("device=cuda was asked for but torch sees no CUDA device; use device=cpu or device=auto")
    return torch.device(name)


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def default_run_dir(prompt: str, root: Path = Path("outputs")) -> Path:
    return root / f"{slugify(prompt)}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_layout(run_dir: str | Path, cfg: RecipeConfig) -> RunLayout:
    """The paths of the run of ``cfg`` in ``run_dir``."""
    return RunLayout(Path(run_dir), tuple(s.name for s in cfg.stages))


def save_config(cfg: RecipeConfig, run_dir: Path) -> None:
    layout = RunLayout(Path(run_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(layout.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_config(run_dir: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RecipeConfig:
    """The resolved recipe a run directory was started with (``config.yaml``), with ``overrides`` applied."""
    layout = RunLayout(Path(run_dir))
    if not layout.is_run:
        raise ThreedError(f"{run_dir} is not a threed run directory (no config.yaml)")
    return load_recipe(str(layout.config), overrides)


def paints_a_mesh(cfg: RecipeConfig) -> bool:
    """Whether the recipe textures a given mesh (a stage with a ``mesh`` scene: ``threed texture``)."""
    return any(s.scene.kind == "mesh" for s in cfg.stages)


def _validate_mesh(cfg: RecipeConfig) -> None:
    if cfg.mesh is not None and not paints_a_mesh(cfg):
        raise ThreedError("this recipe makes its own surface and would ignore the mesh: use a texture recipe, "
                          "--recipe texture (CPU, toy world) or texture-sd")
    if cfg.mesh is None and paints_a_mesh(cfg):
        raise ThreedError("this recipe textures a given mesh: run it with threed texture MESH PROMPT")


def validate_inputs(cfg: RecipeConfig) -> None:
    _validate_mesh(cfg)
    if not cfg.prompt.strip() and cfg.image is None:
        raise ThreedError("the prompt is empty: give a text prompt, e.g. threed generate \"a red cube\"")
    if cfg.image is not None:  # image-to-3D: a bad photo or mask fails before any model loads
        from threed.reference.image import read_reference

        if all(s.reference is None for s in cfg.stages):
            raise ThreedError("this recipe is text-to-3D and would ignore the image: use an image-to-3D recipe, "
                              "--recipe quickstart-image (CPU, toy world), zero123 or magic123")
        read_reference(cfg.image, cfg.mask, cfg.depth)
    elif any(s.reference is not None for s in cfg.stages):
        raise ThreedError("this recipe is image-to-3D: give the photo with threed generate --image photo.png "
                          "[--mask mask.png]")


def run_mesh(cfg: RecipeConfig, layout: RunLayout) -> UserMesh | None:
    """The user's mesh of a texture run: the run's own copy once the run exists, else the file ``cfg.mesh`` names
    (a new run: never a copy some earlier, failed start left in the folder)."""
    if cfg.mesh is None:
        return None
    if layout.is_run:
        return UserMesh.load(layout.input_mesh)
    return read_user_mesh(cfg.mesh, cfg.up)


def run_recipe(cfg: RecipeConfig, run_dir: Path, priors: PriorCache | None = None,
               progress: Callable[[Progress], None] | None = None, mesh: UserMesh | None = None,
               source: LoadedSource | None = None) -> dict[str, Path]:
    """Run every stage of ``cfg`` in ``run_dir`` (continuing finished/partial stages), then export.

    The run holds ``run_dir``'s lock throughout (:meth:`RunLayout.hold`), so a second writer is refused. A new
    run builds its first stage -- the prior, and the prompt's words checked against it -- before it makes
    ``run_dir``, so a run that fails validation leaves nothing behind.

    ``priors`` holds the loaded priors (a worker serving many runs passes its own, so that a prior loads
    once per worker); by default the run loads its own. ``progress`` is called with every stage's reports.
    ``mesh``: a texture run's mesh when the caller has read ``cfg.mesh`` already (default: read here); a new run
    copies it into ``RUN/input/``, a resumed one reads that copy. ``source``: likewise, a new edit run's original
    checkpoint when the caller has read it already (:func:`threed.editing.check_source_run`)."""
    validate_inputs(cfg)
    device = resolve_device(cfg.device)
    layout = run_layout(run_dir, cfg)
    mesh = mesh if mesh is not None and not layout.is_run else run_mesh(cfg, layout)
    if cfg.edit is None:
        source = None
    elif source is None or layout.is_run:
        source = read_source(cfg.edit, layout)
    ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=device, seed=cfg.seed,
                     max_steps=cfg.max_steps, run_dir=run_dir, image=cfg.image, mask=cfg.mask, depth=cfg.depth,
                     image_model=cfg.image_model, priors=priors or PriorCache(), progress=progress, mesh=mesh,
                     source=source.scene(device) if source is not None else None)
    stages = [Stage(stage_cfg, ctx, i) for i, stage_cfg in enumerate(cfg.stages)]
    resuming = layout.is_run
    # An edit's first stage starts from the original's checkpoint, as a later stage from the one before it.
    start = source.checkpoint if source is not None else None
    first = None if resuming else stages[0].setup(start)  # a new run: validate before anything is written
    made = not layout.root.exists()
    with layout.hold("threed generate"):
        if not resuming:
            _start(cfg, layout, made, mesh, source)
        ckpt: Checkpoint | None = start
        image: Path | None = None
        for stage in stages:
            stage.image = stage.image or image  # until its first grid, a stage's reports show the last stage's
            ckpt = stage.run(init=ckpt, prepared=first if stage.index == 0 else None)
            image = stage.image
        assert ckpt is not None  # a recipe has at least one stage
        tqdm.write(f"exporting to {layout.export.root}")
        return export_run(cfg, layout, ckpt, device)


def _start(cfg: RecipeConfig, layout: RunLayout, made: bool, mesh: UserMesh | None = None,
           source: LoadedSource | None = None) -> None:
    """Write a new run's inputs (a texture run's mesh: the file as given and what was read of it; an edit's copy
    of its original, ``source.pt``) and then its ``config.yaml`` (the lock is held; a run with a config is a
    run); a folder this run made goes again if that fails."""
    if layout.is_run:  # another process started a run here while this one was validating
        raise ThreedError(f"{layout.root} already holds a run; continue it with --resume {layout.root}")
    try:
        if mesh is not None and cfg.mesh is not None:
            layout.inputs.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(layout.inputs / Path(cfg.mesh).name, Path(cfg.mesh).expanduser().read_bytes())
            write_bytes_atomic(layout.input_mesh, mesh.to_bytes())
        if source is not None:
            keep_source(source, layout)
        save_config(cfg, layout.root)
    except BaseException:
        if made:
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def export_run(cfg: RecipeConfig, layout: RunLayout, ckpt: Checkpoint, device: torch.device,
               export: ExportConfig | None = None, video: bool | None = None) -> dict[str, Path]:
    """Export checkpoint ``ckpt`` of the run into its ``export/`` (``export`` defaults to the recipe's).

    When ``ckpt``'s stage refined the Gaussians of an earlier stage into a mesh (DreamGaussian), those
    Gaussians are exported beside it (``gaussians.ply``).
    """
    gaussians = None
    if ckpt.scene_kind != "gaussian":
        stage = layout.stage_named(ckpt.stage)
        earlier = layout.stages[:stage.index] if stage is not None else layout.stages
        source = next((s for s in reversed(earlier) if cfg.stages[s.index].scene.kind == "gaussian"
                       and s.has_checkpoint), None)
        gaussians = read_stage_checkpoint(source)[0] if source is not None else None
    user = run_mesh(cfg, layout) if ckpt.scene_kind == "mesh" else None
    try:
        origin = {"edit": to_dict(cfg.edit)} if cfg.edit is not None else None
        return export_checkpoint(ckpt, layout.export, export or cfg.export, device, video, gaussians, user, origin)
    except DiskFullError as exc:
        raise ThreedError(f"the export of {layout.root} stopped: {exc}. The files written before it are new, the "
                          f"rest as they were, and the checkpoints are intact: once there is space, run "
                          f"threed export {layout.root}") from exc


def last_checkpoint(run_dir: str | Path, cfg: RecipeConfig) -> Checkpoint:
    """The newest checkpoint of a run: the last stage that wrote one (finished or interrupted), from its
    ``last.pt``, or its ``prev.pt`` with a warning when ``last.pt`` is damaged."""
    stage = run_layout(run_dir, cfg).latest_checkpoint()
    if stage is None:
        raise ThreedError(f"{run_dir} has no checkpoint yet: let `threed generate` run at least "
                          f"{cfg.stages[0].ckpt_every} steps, or resume it with --resume {run_dir}")
    return read_stage_checkpoint(stage)[0]
