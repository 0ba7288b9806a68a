"""Command line: ``threed generate | texture | edit | export | render | recipes | batch | app | doctor``.

``threed generate PROMPT [--recipe NAME_OR_PATH] [--out DIR] [KEY=VALUE ...]``
``threed generate --image photo.png [--mask mask.png] [--depth depth.png] [PROMPT] [--recipe zero123] [KEY=VALUE ...]``
``threed generate --resume RUN_DIR [KEY=VALUE ...]``
``threed texture MESH PROMPT [--recipe texture] [--up y|z] [--out DIR] [KEY=VALUE ...]``
``threed edit RUN_DIR PROMPT [--rule dds|pds|sds] [--source-prompt TEXT] [--out DIR] [KEY=VALUE ...]``

The commands and their options are described once, in :mod:`threed.commands`; this module runs them.
Importing it changes nothing in the process: :func:`main` applies the CPU runtime settings
(:func:`threed.runtime.tune_cpu_runtime`) before any command imports torch.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threed.commands import App, Batch, Command, Doctor, Edit, Export, Generate, Recipes, Render, Texture, parse
from threed.errors import ThreedError
from threed.run import RunLayout
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


def cmd_generate(args: Generate) -> int:
    from threed.api import Run, generate

    prompt, overrides = _split_generate_args(args)
    if args.resume is not None:
        run = Run.load(args.resume).resume(overrides)
    else:
        run = generate(prompt or "", recipe=args.recipe, out=args.out, overrides=overrides, image=args.image,
                       mask=args.mask, depth=args.depth)
    for kind, path in run.files.items():
        print(f"{kind}: {path}")
    return 0


def cmd_texture(args: Texture) -> int:
    from threed.api import texture

    items = list(args.items)
    if len(items) < 2 or re.match(r"[\w.*]+=", items[1]):  # the second item is an override, not a prompt
        raise ThreedError('give a mesh and a prompt: threed texture chair.obj "a red chair" [--recipe texture] '
                          '[KEY=VALUE ...]')
    run = texture(items[0], items[1], recipe=args.recipe, up=args.up, out=args.out, overrides=items[2:])  # type: ignore[arg-type]
    for kind, path in run.files.items():
        print(f"{kind}: {path}")
    return 0


def cmd_edit(args: Edit) -> int:
    from threed.api import edit

    if len(args.items) < 2 or "=" in args.items[1]:
        raise ThreedError('give the run and the new prompt: threed edit RUN_DIR "a blue cube" [--rule dds|pds|sds] '
                          '[KEY=VALUE ...]')
    run_dir, prompt, *overrides = args.items
    run = edit(run_dir, prompt, rule=args.rule, source_prompt=args.source_prompt, out=args.out, overrides=overrides)
    for kind, path in run.files.items():
        print(f"{kind}: {path}")
    return 0


def cmd_export(args: Export) -> int:
    from threed.api import Run

    run = Run.load(args.run_dir)
    files = run.export_files(args.format or None, grid_size=args.grid_size, faces=args.faces, texture=args.texture,
                             texture_size=args.texture_size, views=args.views,
                             normalize=False if args.no_normalize else None, video=args.video)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    source = run.exported_checkpoint()
    if source["step"] is not None and source["step"] < source["total_steps"]:
        print(f"note: exported stage {source['stage']!r} at step {source['step']}/{source['total_steps']} "
              f"(the run is unfinished)", file=sys.stderr)
    return 0


def cmd_render(args: Render) -> int:
    from threed.api import Run
    from threed.export.video import write_video

    run = Run.load(args.run_dir)
    layout = RunLayout(run.path)
    with layout.hold("threed render"):
        out = Path(args.output) if args.output else layout.export.turntable
        path = write_video(run.render(args.frames, args.size, args.shading), out)
    print(f"video: {path}")
    return 0


def cmd_recipes(args: Recipes) -> int:
    from threed.recipes import no_recipes_error, recipe_summaries

    recipes = recipe_summaries()
    if not recipes:
        raise no_recipes_error()
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        print(f"{r.name:<{width}}  {r.description if r.problem is None else f'(unreadable: {r.problem})'}")
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


def cmd_doctor(args: Doctor) -> int:
    from threed.doctor import run

    if args.items and args.recipe is None:
        raise ThreedError("overrides belong to a recipe: threed doctor --recipe NAME KEY=VALUE ...")
    code, text = run(args.recipe, args.items)
    print(text)
    return code


RUNNERS: dict[type[Command], Callable[[Any], int]] = {
    Generate: cmd_generate, Texture: cmd_texture, Edit: cmd_edit, Export: cmd_export, Render: cmd_render,
    Recipes: cmd_recipes, Batch: cmd_batch, App: cmd_app, Doctor: cmd_doctor}
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
