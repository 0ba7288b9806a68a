"""Command line: ``threed generate | export | render | recipes | batch | app``.

``threed generate PROMPT [--recipe NAME_OR_PATH] [--out DIR] [KEY=VALUE ...]``
``threed generate --image photo.png [--mask mask.png] [--depth depth.png] [PROMPT] [--recipe zero123] [KEY=VALUE ...]``
``threed generate --resume RUN_DIR [KEY=VALUE ...]``

The commands and their options are described once, in :mod:`threed.commands`; this module runs them.
Importing it changes nothing in the process: :func:`main` applies the CPU runtime settings
(:func:`threed.runtime.tune_cpu_runtime`) before any command imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threed.commands import (DEFAULT_IMAGE_RECIPE, DEFAULT_RECIPE, App, Batch, Command, Export, Generate, Recipes,
                             Render, parse)
from threed.errors import ThreedError
from threed.runtime import tune_cpu_runtime

if TYPE_CHECKING:
    from threed.checkpoint import Checkpoint
    from threed.recipe import RecipeConfig
    from threed.run import RunLayout


def _split_generate_args(args: Generate) -> tuple[str | None, list[str]]:
    items = list(args.items)
    if args.resume is not None:
        return None, items
    if args.image is not None:  # image-to-3D: the prompt is optional
        if items and "=" not in items[0]:
            return items[0], items[1:]
        return None, items
    if not items:
        raise ThreedError('give a prompt: threed generate "a hamburger" [--recipe NAME] [KEY=VALUE ...] '
                          '(or an image: threed generate --image photo.png)')
    return items[0], items[1:]


def _image_inputs(args: Generate) -> dict[str, str | None]:
    """--image/--mask/--depth as absolute paths (a resumed run must find them from any folder)."""
    paths = {"image": args.image, "mask": args.mask, "depth": args.depth}
    if paths["image"] is None and (paths["mask"] or paths["depth"]):
        raise ThreedError("--mask and --depth belong to an image: add --image photo.png")
    for key, value in paths.items():
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ThreedError(f"--{key} {path} does not exist")
            paths[key] = str(path.resolve())
    return paths


def cmd_generate(args: Generate) -> int:
    from threed.recipe import default_run_dir, load_recipe, load_run_config, run_recipe
    from threed.run import RunLayout

    prompt, overrides = _split_generate_args(args)
    if args.resume is not None:
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir, overrides)
    else:
        images = _image_inputs(args)
        recipe = args.recipe or (DEFAULT_IMAGE_RECIPE if images["image"] else DEFAULT_RECIPE)
        cfg = load_recipe(recipe, overrides, prompt=prompt or None, **images)
        name = prompt or (Path(images["image"]).stem if images["image"] else "")
        run_dir = Path(args.out) if args.out else default_run_dir(name)
        if RunLayout(run_dir).is_run:
            raise ThreedError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another --out")
    print(f"run directory: {run_dir}", file=sys.stderr)
    files = run_recipe(cfg, run_dir)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def _existing_run_dir(path: str) -> Path:
    """``path`` as a run directory, or a clear error when there is nothing there."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise ThreedError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ThreedError(f"{run_dir} is a file, not a run directory")
    return run_dir


def cmd_export(args: Export) -> int:
    from threed.recipe import last_checkpoint, load_run_config, run_layout

    run_dir = _existing_run_dir(args.run_dir)
    cfg = load_run_config(run_dir)
    layout = run_layout(run_dir, cfg)
    with layout.hold("threed export"):
        ckpt = last_checkpoint(run_dir, cfg)
        files = _export(args, cfg, layout, ckpt)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    if not ckpt.done:
        print(f"note: exported stage {ckpt.stage!r} at step {ckpt.step}/{ckpt.total_steps} (the run is unfinished)",
              file=sys.stderr)
    return 0


def _export(args: Export, cfg: RecipeConfig, layout: RunLayout, ckpt: Checkpoint) -> dict[str, Path]:
    """Export ``ckpt`` of the run with the recipe's export settings, changed by the command's options."""
    from dataclasses import replace

    from threed.recipe import export_run, resolve_device

    changes = {"formats": list(args.format) if args.format else None, "grid_size": args.grid_size,
               "texture": args.texture, "texture_size": args.texture_size, "views": args.views,
               "normalize": False if args.no_normalize else None}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.faces is not None:
        changes["faces"] = args.faces or None  # --faces 0: keep every face
    try:
        export = replace(cfg.export, **changes)
    except ValueError as exc:
        raise ThreedError(f"bad export option: {exc}") from exc
    return export_run(cfg, layout, ckpt, resolve_device(cfg.device), export=export, video=args.video)


def cmd_render(args: Render) -> int:
    from threed.export.video import write_turntable
    from threed.recipe import last_checkpoint, load_run_config, resolve_device, run_layout
    from threed.scene import Scene

    run_dir = _existing_run_dir(args.run_dir)
    cfg = load_run_config(run_dir)
    device = resolve_device(cfg.device)
    layout = run_layout(run_dir, cfg)
    with layout.hold("threed render"):
        scene = Scene.from_checkpoint(last_checkpoint(run_dir, cfg), device)
        out = Path(args.output) if args.output else layout.export.turntable
        path = write_turntable(lambda cams: scene.render_eval(cams.to(device), args.shading), out,
                               n_frames=args.frames, resolution=args.size)
    print(f"video: {path}")
    return 0


def cmd_recipes(args: Recipes) -> int:
    from omegaconf import OmegaConf

    from threed.recipe import available_recipes

    recipes = available_recipes()
    width = max(len(n) for n in recipes)
    for name, path in recipes.items():
        desc = OmegaConf.load(path).get("description", "")
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_batch(args: Batch) -> int:
    from threed.batch.jobs import read_jobs
    from threed.batch.runner import BatchConfig, run_batch
    from threed.recipe import slugify

    items = list(args.items)
    prompts = Path(items.pop(0)) if items and ("=" not in items[0] or Path(items[0]).is_file()) else None
    image_dir = Path(args.image_dir) if args.image_dir else None
    jobs = read_jobs(prompts, image_dir)
    out = args.out or f"outputs/batch-{slugify((prompts or image_dir).stem)}"
    cfg = BatchConfig(recipe=args.recipe, overrides=items, out=out, workers=args.workers, retries=args.retries,
                      ray=args.ray)
    try:
        index = run_batch(cfg, jobs)
    except KeyboardInterrupt:
        print(f"threed batch: interrupted; finished jobs and checkpoints are kept in {out}: rerun the same "
              f"command to resume", file=sys.stderr)
        return 130
    ids = [job.id for job in jobs]
    print(index.summary(ids))
    return 0 if all(index.entries[i].status == "done" for i in ids) else 1


def cmd_app(args: App) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise ThreedError(f"the web app needs gradio ({exc}): pip install -e \".[app]\"") from exc
    from threed.app.access import logins
    from threed.app.jobs import QueueLimits
    from threed.app.server import serve

    limits = QueueLimits(**{k: v for k, v in (("waiting", args.queue_limit), ("per_client", args.client_limit))
                            if v is not None})
    serve(args.host, args.port, Path(args.out), auth=logins(args.auth, args.auth_file), no_auth=args.no_auth,
          limits=limits)
    return 0


RUNNERS: dict[type[Command], Callable[[Any], int]] = {
    Generate: cmd_generate, Export: cmd_export, Render: cmd_render, Recipes: cmd_recipes, Batch: cmd_batch,
    App: cmd_app}
"""The function that runs each command."""


def main(argv: list[str] | None = None) -> int:
    tune_cpu_runtime()  # before any command imports torch
    request = parse(argv)
    try:
        return RUNNERS[type(request)](request)
    except ThreedError as exc:
        print(f"threed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("threed: interrupted; the last checkpoint is intact: continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
