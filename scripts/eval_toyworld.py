"""Score threed on the toy world: generate shape x colour prompts one after another and score each asset.

    python scripts/eval_toyworld.py --out eval/quickstart [--shapes cube sphere] [--colours red blue]
        [--seeds 0 1] [--prompts "a blue cube with a yellow front"] [--recipe quickstart] [KEY=VALUE ...]

Every prompt runs in-process in ``OUT/runs/<prompt>-seed<k>`` (a normal threed run directory), then its
exported mesh is scored by :func:`threed.toyworld.score.score_run` (colour from the vertex colours, shape
by Chamfer distance to the normalised primitives, connected components, side colours). After each prompt
it rewrites, atomically:

* ``OUT/scores.json``: per prompt and seed, the scores, the generation wall time and the scoring time;
* ``OUT/summary.md``: a shape x colour table with colour / shape marks, other prompts below, and totals;
* ``OUT/contact_sheet.png``: one turntable frame per prompt (``--view-azimuth``, default a front
  three-quarter view), rows = shape x seed, columns = colour, each tile labelled.

Running the same ``--out`` again skips prompts that have both an exported mesh and a scores entry,
scores exported runs that lack an entry, and continues unfinished runs under their own config.yaml.
KEY=VALUE arguments override the recipe as for ``threed generate`` (e.g. ``max_steps=60 model=PATH``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from threed.runtime import tune_cpu_runtime

tune_cpu_runtime()  # before torch is imported

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from threed.errors import ThreedError  # noqa: E402
from threed.files import write_bytes_atomic  # noqa: E402
from threed.export.video import write_grid  # noqa: E402
from threed.recipe import load_recipe, load_run_config, run_recipe, slugify  # noqa: E402
from threed.toyworld.scenes import COLOURS, SHAPES, parse_prompt  # noqa: E402
from threed.toyworld.score import export_mesh_path, score_run  # noqa: E402

TILE = 128
"""Contact-sheet tile size (pixels)."""
LABEL_HEIGHT = 26


@dataclass(frozen=True)
class Job:
    prompt: str
    seed: int
    shape: str | None = None
    """Set for the plain ``a <colour> <shape>`` prompts of the shape x colour table."""
    colour: str | None = None

    @property
    def key(self) -> str:
        return f"{self.prompt} | seed {self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / f"{slugify(self.prompt)}-seed{self.seed}"


def plan(shapes: list[str], colours: list[str], seeds: list[int], prompts: list[str]) -> list[Job]:
    jobs = [Job(f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}", k, s, c)
            for s in shapes for k in seeds for c in colours]
    for p in prompts:
        parse_prompt(p)  # fail before hours of generation, not after
        jobs += [Job(p, k) for k in seeds]
    return jobs


def load_scores(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("entries", {})
    except json.JSONDecodeError as exc:
        raise ThreedError(f"{path} is not valid JSON ({exc}); move it away to start the evaluation afresh") from exc


def has_export(run_dir: Path) -> bool:
    try:
        export_mesh_path(run_dir)
    except ThreedError:
        return False
    return True


TIMING = "eval_wall_time.json"
"""Per run directory: generation seconds, summed over interrupted and continued calls."""


def recorded_wall_time(run_dir: Path) -> float | None:
    path = run_dir / TIMING
    return json.loads(path.read_text())["seconds"] if path.is_file() else None


def generate(job: Job, run_dir: Path, recipe: str, overrides: list[str]) -> float:
    """Run (or continue) one prompt's recipe; returns its generation wall time in seconds (all calls)."""
    if (run_dir / "config.yaml").is_file():
        cfg = load_run_config(run_dir, overrides)
    else:
        cfg = load_recipe(recipe, overrides, prompt=job.prompt, seed=job.seed)
    before = recorded_wall_time(run_dir) or 0.0
    start = time.perf_counter()
    try:
        run_recipe(cfg, run_dir)
    finally:
        total = before + time.perf_counter() - start
        write_bytes_atomic(run_dir / TIMING, json.dumps({"seconds": round(total, 2)}))
    return total


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def cell_text(entry: dict | None) -> str:
    if entry is None:
        return "·"
    if "error" in entry:
        return "error"
    s = entry["scores"]
    text = f"{_mark(s['colour']['correct'])}{_mark(s['shape']['correct'])}"
    if not s["colour"]["correct"]:
        text += f" {s['colour']['name']}"
    if not s["shape"]["correct"]:
        text += f" {s['shape']['name']}"
    if not s["components"]["single_object"]:
        text += f" ({s['components']['n_components']} parts)"
    return text


def _pct(values: list[bool]) -> str:
    return f"{100.0 * sum(values) / len(values):.0f}%" if values else "n/a"


def summary_markdown(jobs: list[Job], entries: dict, recipe: str, overrides: list[str]) -> str:
    lines = ["# Toy-world evaluation", "",
             f"Recipe `{recipe}`, overrides `{' '.join(overrides) or '(none)'}`; {len(jobs)} prompt runs.", "",
             "Marks: colour then shape (✓ right, ✗ wrong, followed by what was measured); "
             "`(n parts)` = more than one object; `·` = not run yet.", ""]
    shapes = list(dict.fromkeys(j.shape for j in jobs if j.shape))
    colours = list(dict.fromkeys(j.colour for j in jobs if j.colour))
    if shapes:
        lines += ["| shape \\ colour | " + " | ".join(colours) + " |", "|---" * (len(colours) + 1) + "|"]
        for shape in shapes:
            cells = []
            for colour in colours:
                runs = [j for j in jobs if j.shape == shape and j.colour == colour]
                cells.append("<br>".join(cell_text(entries.get(j.key)) for j in runs))
            lines.append(f"| **{shape}** | " + " | ".join(cells) + " |")
        lines.append("")
    others = [j for j in jobs if j.shape is None]
    if others:
        lines += ["| prompt | seed | colour / shape | sides +Z -Z +X -X | front on +Z | Janus count (1 = right) |",
                  "|---|---|---|---|---|---|"]
        for j in others:
            e = entries.get(j.key)
            s = e.get("scores", {}) if e else {}
            sides = " ".join(v["name"] if v else "-" for v in s["sides"].values()) if s else "·"
            front = _mark(s["front_correct"]) if "front_correct" in s else "·"
            lines.append(f"| {j.prompt} | {j.seed} | {cell_text(e)} | {sides} | {front} | "
                         f"{s.get('janus_count', '·')} |")
        lines.append("")
    done = [entries[j.key] for j in jobs if j.key in entries]
    scored = [e["scores"] for e in done if "scores" in e]
    failed = len(done) - len(scored)
    walls = [e["wall_time_s"] for e in done if e.get("wall_time_s") is not None]
    lines += ["## Totals", "", f"Scored {len(scored)} of {len(jobs)} runs; {failed} failed (count as wrong).", "",
              "| measure | value |", "|---|---|"]
    as_wrong = [False] * failed
    lines += [f"| colour correct | {_pct([s['colour']['correct'] for s in scored] + as_wrong)} |",
              f"| shape correct | {_pct([s['shape']['correct'] for s in scored] + as_wrong)} |",
              f"| colour and shape correct | {_pct([s['correct'] for s in scored] + as_wrong)} |",
              f"| single object | {_pct([s['components']['single_object'] for s in scored] + as_wrong)} |"]
    janus = [s["janus_count"] == 1 for s in scored if "janus_count" in s]
    if janus:
        lines.append(f"| front prompts with one front (Janus count 1) | {_pct(janus)} |")
    if scored:
        margin = np.mean([s["shape"]["margin"] for s in scored])
        lines.append(f"| mean shape margin (Chamfer, > 0 = right) | {margin:.3f} |")
    lines.append(f"| mean wall time per prompt | {f'{np.mean(walls):.0f} s' if walls else 'n/a'} |")
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def turntable_frame(run_dir: Path, azimuth: float) -> np.ndarray | None:
    """The turntable frame nearest ``azimuth`` degrees (0 = front), or None without a video."""
    import imageio.v3 as iio

    for name in ("turntable.mp4", "turntable.gif"):
        path = run_dir / "export" / name
        if path.is_file():
            frames = iio.imread(path)
            index = round(azimuth / 360.0 * len(frames)) % len(frames)
            frame = Image.fromarray(np.asarray(frames[index])[..., :3]).resize((TILE, TILE), Image.BILINEAR)
            return np.asarray(frame)
    return None


def tile(job: Job, entry: dict | None, frame: np.ndarray | None) -> np.ndarray:
    """A render (or a grey square) with two label lines under it, green when right and red when wrong."""
    image = Image.new("RGB", (TILE, TILE + LABEL_HEIGHT), (255, 255, 255))
    image.paste(Image.fromarray(frame) if frame is not None else Image.new("RGB", (TILE, TILE), (200, 200, 200)))
    draw, font = ImageDraw.Draw(image), _font(10)
    name = job.prompt.removeprefix("an ").removeprefix("a ")
    draw.text((2, TILE + 1), f"{name} s{job.seed}", fill=(0, 0, 0), font=font)
    ok = entry is not None and entry.get("scores", {}).get("correct", False)
    status = cell_text(entry) if entry is None or "error" in entry else (
        f"{entry['scores']['colour']['name']} {entry['scores']['shape']['name']} "
        f"{entry['scores']['components']['n_components']}p")
    draw.text((2, TILE + 13), status, fill=(0, 130, 0) if ok else (190, 0, 0), font=font)
    return np.asarray(image)


def contact_sheet(jobs: list[Job], entries: dict, out: Path, azimuth: float) -> Path:
    colours = list(dict.fromkeys(j.colour for j in jobs if j.colour))
    ncols = len(colours) or math.ceil(math.sqrt(len(jobs)))
    tiles, blank = [], np.full((TILE + LABEL_HEIGHT, TILE, 3), 255, np.uint8)
    for i, job in enumerate(jobs):
        if job.shape is None and len(tiles) % ncols and (i == 0 or jobs[i - 1].shape is not None):
            tiles += [blank] * (ncols - len(tiles) % ncols)  # other prompts start on a fresh row
        tiles.append(tile(job, entries.get(job.key), turntable_frame(job.run_dir(out), azimuth)))
    return write_grid(tiles, out / "contact_sheet.png", ncols=ncols)


def write_outputs(jobs: list[Job], entries: dict, out: Path, recipe: str, overrides: list[str],
                  azimuth: float) -> None:
    report = {"recipe": recipe, "overrides": overrides, "entries": entries}
    write_bytes_atomic(out / "scores.json", json.dumps(report, indent=1))
    write_bytes_atomic(out / "summary.md", summary_markdown(jobs, entries, recipe, overrides))
    contact_sheet(jobs, entries, out, azimuth)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="evaluation folder (runs/, scores.json, summary.md, ...)")
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, metavar="SHAPE",
                    help=f"shapes of the table (default all: {' '.join(SHAPES)}; none when only --prompts is given)")
    ap.add_argument("--colours", nargs="+", choices=list(COLOURS), metavar="COLOUR",
                    help=f"colours of the table (default all: {' '.join(COLOURS)}; none when only --prompts is given)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per prompt (default 0)")
    ap.add_argument("--prompts", nargs="+", default=[], help="further one-object prompts, e.g. "
                    "'a blue cube with a yellow front' (scored with their Janus count)")
    ap.add_argument("--recipe", default="quickstart", help="recipe name or YAML path (default quickstart)")
    ap.add_argument("--view-azimuth", type=float, default=30.0, help="contact-sheet view, degrees from the front")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides, e.g. max_steps=60 model=PATH")
    argv = sys.argv[1:] if argv is None else argv
    # KEY=VALUE items may follow a list option (--colours red max_steps=60): take them out first.
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        table = not args.prompts or args.shapes or args.colours
        jobs = plan((args.shapes or list(SHAPES)) if table else [], (args.colours or list(COLOURS)) if table else [],
                    args.seeds, args.prompts)
        args.out.mkdir(parents=True, exist_ok=True)
        entries = load_scores(args.out / "scores.json")
        start, generated_walls = time.perf_counter(), []
        for i, job in enumerate(jobs, 1):
            run_dir = job.run_dir(args.out)
            head = f"[{i}/{len(jobs)}] {job.prompt!r} seed {job.seed}"
            if job.key in entries and has_export(run_dir):
                print(f"{head}: already scored, skipped", flush=True)
                continue
            wall = recorded_wall_time(run_dir)
            if not has_export(run_dir):
                print(f"{head}: generating in {run_dir}", flush=True)
                try:
                    t0 = time.perf_counter()
                    wall = generate(job, run_dir, args.recipe, args.overrides)
                    generated_walls.append(time.perf_counter() - t0)
                except ThreedError as exc:
                    entries[job.key] = {"prompt": job.prompt, "seed": job.seed, "run_dir": str(run_dir),
                                        "error": str(exc)}
                    print(f"{head}: FAILED: {exc}", flush=True)
                    write_outputs(jobs, entries, args.out, args.recipe, args.overrides, args.view_azimuth)
                    continue
            t0 = time.perf_counter()
            scores = score_run(run_dir, job.prompt, seed=job.seed)
            entries[job.key] = {"prompt": job.prompt, "seed": job.seed, "run_dir": str(run_dir),
                                "wall_time_s": wall, "score_time_s": round(time.perf_counter() - t0, 3),
                                "scores": scores}
            write_outputs(jobs, entries, args.out, args.recipe, args.overrides, args.view_azimuth)
            elapsed = time.perf_counter() - start
            remaining = sum(1 for j in jobs[i:] if not (j.key in entries and has_export(j.run_dir(args.out))))
            eta = _duration(np.mean(generated_walls) * remaining) if generated_walls else "n/a"
            print(f"{head}: {cell_text(entries[job.key])} (colour {scores['colour']['name']}, shape "
                  f"{scores['shape']['name']}, margin {scores['shape']['margin']:+.3f}, "
                  f"{scores['components']['n_components']} part(s)); "
                  f"{'' if wall is None else f'{wall:.0f} s, '}elapsed {_duration(elapsed)}, ETA {eta}", flush=True)
        write_outputs(jobs, entries, args.out, args.recipe, args.overrides, args.view_azimuth)
        print(f"wrote {args.out / 'scores.json'}, {args.out / 'summary.md'}, {args.out / 'contact_sheet.png'}")
        print((args.out / "summary.md").read_text().split("## Totals", 1)[1].strip())
    except ThreedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
