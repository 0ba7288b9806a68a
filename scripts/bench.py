"""Benchmark the NeRF stage: steps/s per backend and resolution, and where a step's time goes.

    python scripts/bench.py                                  # recipe quickstart (toy-world prior), torch backend
    python scripts/bench.py --recipe dreamfusion-sd model=/path/to/sd --backends torch cuda --resolutions 64 128
    python scripts/bench.py --raster                         # mesh rasterizer frames/s (50k faces, 64/128/256 px)
    python scripts/bench.py --export                         # export: 256^3 extraction + 1024^2 texture bake
    python scripts/bench.py --splat                          # Gaussian splatting: tiles vs dense reference (+ gsplat)
    python scripts/bench.py --default --repeats 3            # the default command end to end, phase by phase

It drives the real stage loop (``Stage.train_step``) and prints JSON: for each backend x resolution the
median step time, steps/s, the median time of each phase (render, guidance, backward, optimizer), the
time inside the frozen prior's network (``prior``, part of guidance; every guidance of the stage), and ``outside_prior_share`` = 1 -
prior / step: the overhead DESIGN.md asks us to shrink. Steps are timed in steady state: the stage
starts just past the occupancy grid's warm-up, as a run does after its first steps.

``--raster`` times the mesh renderer instead (``threed.render.raster.render_mesh``, lambertian shading
over a background, vertex positions and colours requiring grad): frames/s of forward + backward of one
camera per frame, for a bumpy sphere of about ``--raster-faces`` faces, per backend and resolution.

``--export`` times the export pipeline (``threed.export.pipeline``) on the recipe's first-stage NeRF as
initialised (hash grid + MLP at their seeded initial values plus the centre density blob: a bumpy ball),
or on a run's last checkpoint with ``--export-run RUN_DIR``: a ``--export-resolution``^3 extraction with
the automatic level, clean-up, decimation to ``--export-faces``, vertex colours, xatlas unwrap and a
``--texture-size``^2 albedo bake, and writing GLB/OBJ/PLY; the median of ``--repeats`` runs per phase.

``--default`` times what a user waits for: ``threed generate PROMPT`` run ``--repeats`` times as a separate
process, as from a shell (with ``--recipe``, by default the default recipe, and the overrides), plus
``threed --help`` and ``threed recipes``. Per run: wall time, the seconds until the first step is reported
(start-up: imports, prior, recipe, and that step), each stage's seconds and steps/s (validation grids and
checkpoints included), every export phase from export.json (surface, clean, decimate, colours, texture, views,
video) and what is left of the wall time (start-up before the first stage, writing, process exit); the
medians over the runs; and one steady-state step profile of the first stage (``outside_prior_share``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from threed.runtime import tune_cpu_runtime

tune_cpu_runtime()

import torch  # noqa: E402

from threed.profiling import PhaseTimer  # noqa: E402
from threed.recipe import load_recipe, resolve_device  # noqa: E402
from threed.recipes import available_recipes  # noqa: E402
from threed.stage import RunContext, Stage  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_one(recipe: str, overrides: list[str], backend: str, resolution: int, steps: int, device: torch.device,
              prompt: str) -> dict:
    cfg = load_recipe(recipe, [*overrides, f"stages.0.render_size={resolution}",
                               f"stages.0.scene.renderer.backend={backend}",
                               f"stages.0.scene.geometry.encoding.backend={backend}"], prompt=prompt)
    stage_cfg = cfg.stages[0]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(prompt=prompt, model=cfg.model, device=device, seed=cfg.seed, max_steps=None,
                         run_dir=Path(tmp), image=cfg.image, mask=cfg.mask, depth=cfg.depth, image_model=cfg.image_model)
        stage = Stage(stage_cfg, ctx, 0)
        tr, _ = stage.setup()
        priors = list({id(g.prior): g.prior for g in tr.guidance}.values())
        timer = PhaseTimer(device)

        def timed(predict):
            def timed_predict(*args, **kwargs):
                with timer("prior"):
                    return predict(*args, **kwargs)
            return timed_predict

        for prior in priors:  # every network call goes through model_outputs; instance attribute: this benchmark only
            prior.model_outputs = timed(prior.model_outputs)
        try:
            tr.step = stage_cfg.scene.renderer.occupancy_warmup_steps
            for _ in range(2):  # untimed: allocator and kernel warm-up
                stage.train_step(tr)
            timer.steps.clear()
            t0 = time.perf_counter()
            for _ in range(steps):
                with timer("step"):
                    stage.train_step(tr, timer)
                timer.next_step()
            wall = time.perf_counter() - t0
        finally:
            for prior in priors:
                del prior.model_outputs
    med = timer.medians()
    step = med.pop("step")
    return {
        "backend": backend, "resolution": resolution, "steps": steps,
        "median_step_s": round(step, 4), "steps_per_s": round(1.0 / step, 2), "mean_steps_per_s": round(steps / wall, 2),
        "phases_s": {k: round(v, 4) for k, v in med.items()},
        "outside_prior_share": round(1.0 - med.get("prior", 0.0) / step, 3),
    }


def bench_raster(backend: str, resolution: int, faces: int, steps: int, device: torch.device) -> dict:
    """Forward + backward frames/s of ``render_mesh`` on a ~``faces``-face mesh seen from random orbit cameras."""
    import math

    import trimesh

    from threed.cameras import CameraSampler
    from threed.geometry.mesh import Mesh
    from threed.render.background import Background
    from threed.render.raster import MeshRendererConfig, render_mesh

    n = max(4, round(math.sqrt(faces / 4)))  # a uv sphere of count [n, n] has about 4 n^2 faces
    tm = trimesh.creation.uv_sphere(radius=0.7, count=[n, n])
    g = torch.Generator().manual_seed(0)
    base = Mesh.from_trimesh(tm, device=device)
    bumps = 1.0 + 0.05 * torch.sin(7 * base.vertices[:, :1]) * torch.cos(5 * base.vertices[:, 1:2])
    vertices = (base.vertices * bumps).requires_grad_(True)
    colors = torch.rand(len(vertices), 3, generator=g).to(device).requires_grad_(True)
    mesh = Mesh(vertices, base.faces, colors)
    cfg = MeshRendererConfig(backend=backend)
    background = Background().to(device)
    sampler = CameraSampler()

    def frame(cams):
        out = render_mesh(mesh, cams, background, "lambertian", cfg=cfg, training=True)
        (out.rgb.square().mean() + out.depth.mean()).backward()

    cams = [sampler.sample(resolution, generator=g, batch_size=1).to(device) for _ in range(steps + 2)]
    for c in cams[:2]:
        frame(c)
    times = []
    for c in cams[2:]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        frame(c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return {"backend": backend, "resolution": resolution, "faces": int(len(mesh.faces)), "frames": steps,
            "median_frame_s": round(med, 4), "frames_per_s": round(1.0 / med, 2)}


def bench_export(recipe: str, overrides: list[str], resolution: int, texture_size: int, faces: int | None,
                 repeats: int, device: torch.device, run_dir: str | None = None) -> dict:
    """Median seconds per export phase (see the module docstring) over ``repeats`` runs."""
    import statistics
    from dataclasses import replace

    from threed.export.pipeline import build_assets, write_assets
    from threed.recipe import last_checkpoint, load_run_config
    from threed.scene import Scene

    if run_dir is not None:
        cfg = load_run_config(Path(run_dir))
        scene = Scene.from_checkpoint(last_checkpoint(Path(run_dir), cfg), device)
        source = f"checkpoint of {run_dir}"
    else:
        cfg = load_recipe(recipe, overrides, prompt="a red cube")
        torch.manual_seed(cfg.seed)
        scene = Scene(cfg.stages[0].scene).to(device).eval()
        source = f"{recipe} stage 0 at initialisation"
    export = replace(cfg.export, grid_size=resolution, texture="uv", texture_size=texture_size, faces=faces,
                     views=0, video=False)
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            assets = build_assets(scene, export, device)
            t1 = time.perf_counter()
            write_assets(assets, Path(tmp), export.formats)
            t2 = time.perf_counter()
        seconds = dict(assets.info["seconds"])
        seconds.update(assets.info["texture"]["seconds"], write=t2 - t1, total=t2 - t0)
        runs.append(seconds)
    phases = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    return {"source": source, "resolution": resolution, "texture_size": texture_size, "target_faces": faces,
            "faces_before_decimation": assets.info.get("faces_before_decimation", assets.info["faces"]),
            "faces": assets.info["faces"], "vertices": assets.info["vertices"],
            "charts": assets.info["texture"]["charts"], "repeats": repeats, "median_s": phases}


def bench_splat(count: int, resolutions: list[int], repeats: int, dense_repeats: int, device: torch.device) -> list:
    """Forward + backward seconds (median) of the torch tiled splatting, the dense test reference and gsplat.

    The scene: ``count`` anisotropic, rotated Gaussians of mixed opacity in the unit ball (the parity test's
    generator), one camera at 40 degrees field of view, loss on colour and depth. The dense reference
    (``tests/splat_reference.py``: every Gaussian against every pixel) runs one pixel chunk with plain
    autograd up to 64 px and 4096-pixel chunks under activation checkpointing above, to fit in memory.
    """
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from splat_reference import dense_splat
    from test_splat import random_gaussians

    from threed.cameras import Cameras
    from threed.render.splat import SplatRendererConfig, splat

    params = {k: v.to(device).requires_grad_(True) for k, v in random_gaussians(count).items()}

    def timed(fn, cams, n, **kwargs) -> float:
        times = []
        for _ in range(n + 1):  # the first run warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = fn(params["means"], params["quats"], params["log_scales"].exp(),
                     torch.sigmoid(params["opacity_logits"]), params["colors"][None], cams, **kwargs)
            features, depth = (out.features, out.depth) if hasattr(out, "features") else out[:2]
            torch.autograd.grad(features.square().mean() + depth.mean(), list(params.values()))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    rows = []
    for res in resolutions:
        cams = Cameras.orbit(20.0, 30.0, 2.6, 40.0, res).to(device)
        row = {"gaussians": count, "resolution": res,
               "torch_tiles_s": round(timed(splat, cams, repeats, cfg=SplatRendererConfig(backend="torch")), 4)}
        row["dense_reference_s"] = round(timed(dense_splat, cams, dense_repeats,
                                               chunk=None if res <= 64 else 4096), 4)
        row["dense_over_tiles"] = round(row["dense_reference_s"] / row["torch_tiles_s"], 1)
        if device.type == "cuda":
            row["gsplat_s"] = round(timed(splat, cams, repeats, cfg=SplatRendererConfig(backend="cuda")), 5)
        rows.append(row)
    return rows


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _first_step_seconds(proc: subprocess.Popen, run_dir: Path, started: float) -> float | None:
    """Seconds from ``started`` until the run reports its first step (None if the process ends first)."""
    while proc.poll() is None:
        for report in run_dir.glob("stages/*/progress.json"):
            try:
                if json.loads(report.read_text()).get("step", 0) >= 1:
                    return time.perf_counter() - started
            except (OSError, ValueError):  # being written: look again
                pass
        time.sleep(0.05)
    return None


def _command_seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "threed", *argv], check=True, capture_output=True)
    return time.perf_counter() - started


def bench_default(prompt: str, recipe: str, overrides: list[str], repeats: int) -> dict:
    """The default command end to end, ``repeats`` times in fresh processes (see the module docstring)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            run_dir = Path(tmp) / f"run-{i}"
            argv = [sys.executable, "-m", "threed", "generate", prompt, "--recipe", recipe, "--out", str(run_dir),
                    *overrides]
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            first_step = _first_step_seconds(proc, run_dir, started)
            log, _ = proc.communicate()
            wall = time.perf_counter() - started
            if proc.returncode:
                raise RuntimeError(f"threed generate failed ({proc.returncode}):\n{log[-3000:]}")
            stages = {m[1]: {"steps": int(m[2]), "seconds": float(m[3]), "steps_per_s": float(m[4])}
                      for m in re.finditer(r"stage \d+ (\S+): (\d+) steps in ([\d.]+)s \(([\d.]+) it/s\)", log)}
            export = json.loads((run_dir / "export" / "export.json").read_text())["seconds"]
            accounted = sum(st["seconds"] for st in stages.values()) + sum(export.values())
            runs.append({"wall_s": round(wall, 3), "first_step_s": round(first_step or 0.0, 3), "stages": stages,
                         "export_s": export, "other_s": round(wall - accounted, 3)})
    medians = {"wall_s": _median([r["wall_s"] for r in runs]), "first_step_s": _median([r["first_step_s"] for r in runs]),
               "stages_s": {name: _median([r["stages"][name]["seconds"] for r in runs]) for name in runs[0]["stages"]},
               "steps_per_s": {name: _median([r["stages"][name]["steps_per_s"] for r in runs]) for name in runs[0]["stages"]},
               "export_s": {k: _median([r["export_s"].get(k, 0.0) for r in runs]) for k in runs[0]["export_s"]},
               "other_s": _median([r["other_s"] for r in runs])}
    medians["export_total_s"] = round(sum(medians["export_s"].values()), 3)
    return {"prompt": prompt, "recipe": recipe, "overrides": overrides, "repeats": repeats,
            "help_s": _median([_command_seconds(["--help"]) for _ in range(3)]),
            "recipes_s": _median([_command_seconds(["recipes"]) for _ in range(3)]),
            "median": medians, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    default_recipe = "quickstart" if "quickstart" in available_recipes() else "dreamfusion-sd"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE (e.g. model=/path)")
    parser.add_argument("--recipe", default=default_recipe)
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--backends", nargs="+", default=None, help="torch and/or cuda (default: torch, + cuda on GPU)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--raster", action="store_true", help="benchmark the mesh rasterizer instead of the stage")
    parser.add_argument("--raster-faces", type=int, default=50_000)
    parser.add_argument("--raster-resolutions", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--export", action="store_true", help="benchmark mesh + texture export instead of the stage")
    parser.add_argument("--export-resolution", type=int, default=256, help="marching-cubes grid per axis")
    parser.add_argument("--export-faces", type=int, default=50_000, help="decimation target (0: none)")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="export runs; phases report their median")
    parser.add_argument("--export-run", metavar="RUN_DIR", help="export this run's last checkpoint instead")
    parser.add_argument("--default", action="store_true",
                        help="time the default command end to end (threed generate PROMPT), --repeats times")
    parser.add_argument("--splat", action="store_true", help="benchmark Gaussian splatting instead of the stage")
    parser.add_argument("--splat-gaussians", type=int, default=10_000)
    parser.add_argument("--splat-resolutions", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--dense-repeats", type=int, default=1, help="timed runs of the (slow) dense reference")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    backends = args.backends or (["torch", "cuda"] if device.type == "cuda" else ["torch"])
    report = {"device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.default:
        report["default"] = bench_default(args.prompt, args.recipe, args.overrides, args.repeats)
        first = load_recipe(args.recipe, args.overrides).stages[0].render_size
        report["step_profile"] = bench_one(args.recipe, args.overrides, backends[0], first, args.steps, device,
                                           args.prompt)
    elif args.splat:
        report["splatting"] = bench_splat(args.splat_gaussians, args.splat_resolutions, args.steps,
                                          args.dense_repeats, device)
    elif args.export:
        report["export"] = bench_export(args.recipe, args.overrides, args.export_resolution, args.texture_size,
                                        args.export_faces or None, args.repeats, device, args.export_run)
    elif args.raster:
        report["rasterizer"] = [bench_raster(b, r, args.raster_faces, args.steps, device)
                                for b in backends for r in args.raster_resolutions]
    else:
        report.update(recipe=args.recipe, overrides=args.overrides)
        report["nerf_stage"] = [bench_one(args.recipe, args.overrides, b, r, args.steps, device, args.prompt)
                                for b in backends for r in args.resolutions]
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
