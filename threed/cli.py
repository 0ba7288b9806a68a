"""Command line: ``threed generate | export | render | recipes | batch | app``.

``threed generate PROMPT [--recipe NAME_OR_PATH] [--out DIR] [KEY=VALUE ...]``
``threed generate --image photo.png [--mask mask.png] [--depth depth.png] [PROMPT] [--recipe zero123] [KEY=VALUE ...]``
``threed generate --resume RUN_DIR [KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from threed.errors import ThreedError
from threed.runtime import tune_cpu_runtime

tune_cpu_runtime()  # before torch is imported by any command

DEFAULT_RECIPE = "quickstart"
DEFAULT_IMAGE_RECIPE = "quickstart-image"
"""The recipe of ``threed generate --image`` when no --recipe is given."""


def _split_generate_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    items = list(args.items)
    if args.resume is not None:
        return None, items
    if getattr(args, "image", None) is not None:  # image-to-3D: the prompt is optional
        if items and "=" not in items[0]:
            return items[0], items[1:]
        return None, items
    if not items:
        raise ThreedError('give a prompt: threed generate "a hamburger" [--recipe NAME] [KEY=VALUE ...] '
                          '(or an image: threed generate --image photo.png)')
    return items[0], items[1:]


def _image_inputs(args: argparse.Namespace) -> dict[str, str | None]:
    """--image/--mask/--depth as absolute paths (a resumed run must find them from any folder)."""
    paths = {k: getattr(args, k, None) for k in ("image", "mask", "depth")}
    if paths["image"] is None and (paths["mask"] or paths["depth"]):
        raise ThreedError("--mask and --depth belong to an image: add --image photo.png")
    for key, value in paths.items():
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ThreedError(f"--{key} {path} does not exist")
            paths[key] = str(path.resolve())
    return paths


def cmd_generate(args: argparse.Namespace) -> int:
    from threed.recipe import default_run_dir, load_recipe, load_run_config, run_recipe

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
        if (run_dir / "config.yaml").exists():
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


def cmd_export(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from threed.export.pipeline import export_run
    from threed.recipe import last_checkpoint, load_run_config, resolve_device

    run_dir = _existing_run_dir(args.run_dir)
    cfg = load_run_config(run_dir)
    ckpt = last_checkpoint(run_dir, cfg)
    changes = {"formats": list(args.format) if args.format else None, "resolution": args.resolution,
               "texture": args.texture, "texture_size": args.texture_size, "views": args.views,
               "normalize": False if args.no_normalize else None}
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.faces is not None:
        changes["faces"] = args.faces or None  # --faces 0: keep every face
    try:
        export = replace(cfg.export, **changes)
    except ValueError as exc:
        raise ThreedError(f"bad export option: {exc}") from exc
    files = export_run(run_dir, cfg, ckpt, resolve_device(cfg.device), export=export, video=args.video)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    if not ckpt.done:
        print(f"note: exported stage {ckpt.stage!r} at step {ckpt.step}/{ckpt.total_steps} (the run is unfinished)",
              file=sys.stderr)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from threed.export.pipeline import scene_from_checkpoint
    from threed.export.video import write_turntable
    from threed.recipe import last_checkpoint, load_run_config, resolve_device

    run_dir = _existing_run_dir(args.run_dir)
    cfg = load_run_config(run_dir)
    device = resolve_device(cfg.device)
    scene = scene_from_checkpoint(cfg, last_checkpoint(run_dir, cfg), device)
    out = Path(args.output) if args.output else run_dir / "export" / "turntable.mp4"
    path = write_turntable(lambda cams: scene.render_eval(cams.to(device), args.shading), out,
                           n_frames=args.frames, resolution=args.resolution)
    print(f"video: {path}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from threed.recipe import available_recipes

    recipes = available_recipes()
    width = max(len(n) for n in recipes)
    for name, path in recipes.items():
        desc = OmegaConf.load(path).get("description", "")
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
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


def cmd_app(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threed", description="Text or image to 3D assets by score distillation.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="run a recipe for a prompt and export the result",
                         description="threed generate PROMPT [--recipe NAME_OR_PATH] [--out DIR] [KEY=VALUE ...]; "
                                     "image to 3D: threed generate --image photo.png [--mask mask.png] [PROMPT] ...")
    gen.add_argument("items", nargs="*", metavar="PROMPT KEY=VALUE",
                     help="the prompt, then recipe overrides such as max_steps=200 or stages.0.resolution=128")
    gen.add_argument("--recipe", default=None, help=f"recipe name (see `threed recipes`) or YAML path; default "
                                                    f"{DEFAULT_RECIPE}, or {DEFAULT_IMAGE_RECIPE} with --image")
    gen.add_argument("--image", metavar="PATH", help="image-to-3D: the reference photo (RGBA, or RGB with --mask); "
                                                     "the prompt becomes optional")
    gen.add_argument("--mask", metavar="PATH", help="mask of an RGB --image: white on the object, black elsewhere")
    gen.add_argument("--depth", metavar="PATH", help="optional depth or disparity map of --image (same size)")
    gen.add_argument("--out", help="run directory (default outputs/<prompt-slug>-<timestamp>)")
    gen.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run directory")
    gen.set_defaults(func=cmd_generate)

    exp = sub.add_parser("export", help="export a run (finished or interrupted) to mesh files")
    exp.add_argument("run_dir")
    exp.add_argument("--format", action="append", choices=["glb", "obj", "ply"],
                     help="format to write; repeat for several (default: the recipe's export.formats)")
    exp.add_argument("--resolution", type=int, help="marching-cubes grid resolution")
    exp.add_argument("--faces", type=int, metavar="N",
                     help="decimate to at most N faces (0: keep all; default: the recipe's export.faces)")
    exp.add_argument("--texture", choices=["uv", "vertex"],
                     help="uv: unwrap and bake a texture PNG; vertex: vertex colours only (faster)")
    exp.add_argument("--texture-size", type=int, metavar="N", help="texture width and height in texels")
    exp.add_argument("--views", type=int, metavar="N", help="views in the field-vs-mesh contact sheet (0: none)")
    exp.add_argument("--no-normalize", action="store_true",
                     help="keep the field's coordinates instead of centring and scaling to a unit box")
    exp.add_argument("--video", action="store_true", help="also write the turntable video")
    exp.set_defaults(func=cmd_export)

    ren = sub.add_parser("render", help="write a turntable video of a run")
    ren.add_argument("run_dir")
    ren.add_argument("--output", help="video path (default RUN_DIR/export/turntable.mp4)")
    ren.add_argument("--frames", type=int, default=60)
    ren.add_argument("--resolution", type=int, default=256)
    ren.add_argument("--shading", choices=["albedo", "lambertian", "textureless", "normal"], default="albedo")
    ren.set_defaults(func=cmd_render)

    rec = sub.add_parser("recipes", help="list the shipped recipes")
    rec.set_defaults(func=cmd_recipes)

    bat = sub.add_parser("batch", help="generate one asset per line of a prompts file (or per image), resumable",
                         description="threed batch PROMPTS_FILE [--image-dir DIR] [--recipe R] [--out DIR] "
                                     "[--workers N] [--retries N] [--ray auto|local|ADDRESS] [KEY=VALUE ...]")
    bat.add_argument("items", nargs="*", metavar="PROMPTS_FILE KEY=VALUE",
                     help="a file with one prompt per line, then recipe overrides for every job")
    bat.add_argument("--image-dir", metavar="DIR", help="also one image-to-3D job per image in DIR")
    bat.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe for every job; default {DEFAULT_RECIPE}")
    bat.add_argument("--out", help="batch folder: OUT/<job>/ per job and OUT/index.json "
                                   "(default outputs/batch-<prompts file name>); rerun to resume")
    bat.add_argument("--workers", type=int, metavar="N",
                     help="jobs at once (default: one per GPU, else min(4, cores/2); with --ray: what the "
                          "cluster fits)")
    bat.add_argument("--retries", type=int, default=2, metavar="N",
                     help="extra attempts for a job that crashes or whose worker dies (default 2)")
    bat.add_argument("--ray", metavar="auto|local|ADDRESS",
                     help="run each job as a Ray task: auto = the running cluster, local = start one here "
                          "(needs: pip install -e .[batch])")
    bat.set_defaults(func=cmd_batch)

    app = sub.add_parser("app", help="serve the web app (needs: pip install -e .[app])")
    app.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--out", default="outputs", help="output folder: runs are written and listed here")
    app.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                     help="require this login (repeat for more users); needed for any --host but a loopback one")
    app.add_argument("--auth-file", metavar="FILE", help="logins from FILE, one USER:PASSWORD per line "
                                                         "(keeps passwords out of the process list)")
    app.add_argument("--no-auth", action="store_true",
                     help="serve a non-loopback --host without a login: anyone who reaches it can run jobs")
    app.add_argument("--queue-limit", type=int, metavar="N",
                     help="jobs that may wait in the queue; more are refused (default 16)")
    app.add_argument("--client-limit", type=int, metavar="N",
                     help="jobs one login (or address) may have queued or running (default 4)")
    app.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`generate "a cube" --out d max_steps=5`): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra and (getattr(args, "items", None) is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.items = list(args.items) + extra
    try:
        return args.func(args)
    except ThreedError as exc:
        print(f"threed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("threed: interrupted; the last checkpoint is intact: continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
