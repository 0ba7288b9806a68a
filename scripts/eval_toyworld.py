"""Score threed on the toy world: generate prompts one after another and measure each asset against the truth.

    python scripts/eval_toyworld.py --out eval/quickstart [--shapes cube sphere] [--colours red blue]
        [--seeds 0 1 2] [--prompts "a blue cube with a yellow front"] [--recipe quickstart]
        [--ladder | --rungs sds ceiling prior] [--rescore] [KEY=VALUE ...]
    python scripts/eval_toyworld.py --out eval/compare --compare eval/quickstart eval/quickstart-mesh eval/gaussian

Each prompt and seed is scored on up to three rungs of the fidelity ladder (docs/toyworld.md), all with the
same measures (:mod:`threed.toyworld.score`, :mod:`threed.toyworld.fidelity`):

* ``sds`` (default): the recipe as shipped, ``threed generate``'s own path, in ``OUT/runs/<prompt>-seed<k>``;
* ``ceiling``: the same recipe's stages fitted straight to ground-truth renders
  (:mod:`threed.toyworld.ceiling`, an evaluation tool only) in ``OUT/ceiling/<prompt>-seed<k>``;
* ``prior``: the prior's own samples against ground-truth renders (:mod:`threed.toyworld.prior_fidelity`).

``--ladder`` runs all three. After each prompt it rewrites, atomically:

* ``OUT/scores.json``: per prompt and seed, the SDS run's scores, generation wall time and scoring time;
* ``OUT/summary.md``: fidelity per seed and over all seeds (mean / worst F@0.05, mean F@0.02, height/width
  error, colour Delta E, pieces), one row per prompt, then the nearest-class marks (colour / shape);
* ``OUT/contact_sheet.png``: one turntable frame per prompt (the exported mesh without a turntable; ``--view-azimuth``, default a front
  three-quarter view), rows = shape x seed, columns = colour, each tile labelled with its F-scores;
* with ``ceiling`` or ``prior``: ``OUT/ladder.json``, ``OUT/ladder.md`` (the rungs side by side) and
  ``OUT/ladder.png`` (per prompt: truth, prior samples, ceiling asset, SDS asset).

``--compare`` runs nothing: it puts the summaries of finished folders (one per recipe, say) in one table,
per recipe and seed, in ``OUT/compare.md``.

Running the same ``--out`` again skips what is done: prompts with an export and a scores entry, finished
ceiling fits, prior reports; it rescores exported runs that lack an entry (or whose entry predates the
fidelity measures; ``--rescore`` rescores them all) and continues unfinished runs under their own
config.yaml. KEY=VALUE arguments override the recipe as for ``threed generate`` (e.g. ``max_steps=60
model=PATH``), for the SDS and the ceiling rungs alike.
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

from threed.errors import ThreedError  # noqa: E402
from threed.files import write_bytes_atomic  # noqa: E402
from threed.export.video import write_grid  # noqa: E402
from threed.recipe import load_recipe, load_run_config, run_recipe, slugify  # noqa: E402
from threed.run import RunLayout  # noqa: E402
from threed.toyworld.report import (LADDER_HEADER, SUMMARY_HEADER, asset_image, headline, labelled,  # noqa: E402
                                    ladder_row, prior_tile, separator, summarise, summary_row, truth_image)
from threed.toyworld.scenes import COLOURS, SHAPES, parse_prompt  # noqa: E402
from threed.toyworld.score import export_mesh_path, score_run  # noqa: E402

TILE = 128
"""Contact-sheet tile size (pixels)."""
RUNGS = ("prior", "ceiling", "sds")


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

    @property
    def slug(self) -> str:
        return f"{slugify(self.prompt)}-seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.slug

    def ceiling_dir(self, out: Path) -> Path:
        return out / "ceiling" / self.slug


def plan(shapes: list[str], colours: list[str], seeds: list[int], prompts: list[str]) -> list[Job]:
    jobs = [Job(f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}", k, s, c)
            for s in shapes for k in seeds for c in colours]
    for p in prompts:
        parse_prompt(p)  # fail before hours of generation, not after
        jobs += [Job(p, k) for k in seeds]
    return jobs


def load_entries(path: Path) -> dict:
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


def is_current(entry: dict | None) -> bool:
    """An entry scored with today's measures (or a failure, which rescoring cannot mend)."""
    return entry is not None and ("error" in entry or "fidelity" in entry.get("scores", {}))


TIMING = "eval_wall_time.json"
"""Per run directory: generation seconds, summed over interrupted and continued calls."""


def recorded_wall_time(run_dir: Path) -> float | None:
    path = run_dir / TIMING
    return json.loads(path.read_text())["seconds"] if path.is_file() else None


def generate(job: Job, run_dir: Path, recipe: str, overrides: list[str]) -> float:
    """Run (or continue) one prompt's recipe; returns its generation wall time in seconds (all calls)."""
    if RunLayout(run_dir).is_run:
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


def _class_text(s: dict) -> str:
    """Nearest-class marks of one object's scores: colour then shape, with what was measured when wrong."""
    text = f"{_mark(s['colour']['correct'])}{_mark(s['shape']['correct'])}"
    if not s["colour"]["correct"]:
        text += f" {s['colour']['name']}"
    if not s["shape"]["correct"]:
        text += f" {s['shape']['name']}"
    return text


def cell_text(entry: dict | None) -> str:
    if entry is None:
        return "·"
    if "error" in entry:
        return "error"
    s = entry["scores"]
    if "objects" in s:
        text = " + ".join("missing" if o is None else _class_text(o) for o in s["objects"])
        if s["swapped"]:
            text += " (sides swapped)"
    else:
        text = _class_text(s)
    if s["components"]["n_components"] != len(parse_prompt(entry["prompt"]).objects):
        text += f" ({s['components']['n_components']} parts)"
    return text


def _pct(values: list[bool]) -> str:
    return f"{100.0 * sum(values) / len(values):.0f}%" if values else "n/a"


def _scored(jobs: list[Job], entries: dict, seeds: set[int] | None = None) -> list[dict]:
    return [entries[j.key]["scores"] for j in jobs if "scores" in entries.get(j.key, {})
            and (seeds is None or j.seed in seeds)]


def fidelity_summary(jobs: list[Job], entries: dict, recipe: str) -> list[str]:
    """Summary rows per seed and over all seeds (the issue's target columns)."""
    seeds = sorted({j.seed for j in jobs})
    lines = [SUMMARY_HEADER, separator(SUMMARY_HEADER)]
    groups = [({k}, str(k)) for k in seeds] + ([(set(seeds), ", ".join(map(str, seeds)))] if len(seeds) > 1 else [])
    for group, label in groups:
        lines.append(summary_row(f"`{recipe}`", label, summarise([headline(s) for s in _scored(jobs, entries, group)])))
    return lines


def prompt_table(jobs: list[Job], entries: dict) -> list[str]:
    lines = ["| prompt | seed | F@0.05 / F@0.02 | height/width error | colour ΔE | pieces | Chamfer-L1 "
             "| largest piece | export PSNR | field IoU / PSNR | field size | nearest class | front (+Z -Z +X -X) "
             "| seconds |"]
    lines.append(separator(lines[0]))
    for j in jobs:
        e = entries.get(j.key)
        if not e or "scores" not in e:
            lines.append(f"| {j.prompt} | {j.seed} | {'error' if e else '·'} |" + " · |" * 11)
            continue
        s, h = e["scores"], headline(e["scores"])
        hw = "·" if h["hw_error"] is None else f"{100 * h['hw_error']:+.0f} %"
        front = "·"
        if "front_shares" in s:
            front = " ".join("-" if v is None else f"{v:.2f}" for v in s["front_shares"].values())
            front += f" {_mark(s['front_right'])}"
        psnr = "·" if h["psnr"] is None else f"{h['psnr']:.1f}"
        size = "·" if h["field_size"] is None else f"{h['field_size']:.2f}"
        wall = "·" if e.get("wall_time_s") is None else f"{e['wall_time_s']:.0f}"
        field = "·" if h["field_iou"] is None else f"{h['field_iou']:.2f} / {h['field_psnr']:.1f}"
        de = "·" if h["delta_e"] is None else f"{h['delta_e']:.1f}"  # a pair whose objects were not found
        lines.append(f"| {j.prompt} | {j.seed} | {h['f05']:.2f} / {h['f02']:.2f} | {hw} | {de} | "
                     f"{h['pieces']} | {h['chamfer_l1']:.4f} | {h['largest']:.2f} | {psnr} | {field} | {size} | "
                     f"{cell_text(e)} | {front} | {wall} |")
    return lines


def compare_markdown(folders: list[Path]) -> str:
    """One table over evaluation folders (e.g. one per recipe): their SDS summary rows per seed and over all
    seeds, read from each folder's ``scores.json``."""
    lines = [SUMMARY_HEADER, separator(SUMMARY_HEADER)]
    for folder in folders:
        path = folder / "scores.json"
        if not path.is_file():
            raise ThreedError(f"{folder} has no scores.json: is it an eval_toyworld.py --out folder?")
        report = json.loads(path.read_text())
        label = f"`{report['recipe']}`" + (f" {' '.join(report['overrides'])}" if report.get("overrides") else "")
        entries = [e for e in report["entries"].values() if "scores" in e]
        seeds = sorted({e["seed"] for e in entries})
        groups = [({k}, str(k)) for k in seeds] + ([(set(seeds), ", ".join(map(str, seeds)))] if len(seeds) > 1 else [])
        for group, seed_label in groups:
            rows = [headline(e["scores"]) for e in entries if e["seed"] in group]
            lines.append(summary_row(label, seed_label, summarise(rows)))
    return "\n".join(lines) + "\n"


def summary_markdown(jobs: list[Job], entries: dict, recipe: str, overrides: list[str]) -> str:
    lines = ["# Toy-world evaluation", "",
             f"Recipe `{recipe}`, overrides `{' '.join(overrides) or '(none)'}`; {len(jobs)} prompt runs.", "",
             "## Fidelity against the exact primitive", "",
             "F-scores at 0.05 and 0.02 of the true object's longest side after the best similarity alignment; "
             "height/width error relative to the truth's; CIEDE2000 of the median albedo; pieces holding "
             ">= 1 % of the faces (docs/toyworld.md, Scoring).", ""]
    lines += fidelity_summary(jobs, entries, recipe) + [""] + prompt_table(jobs, entries) + [""]
    lines += ["## Nearest class (secondary)", "",
              "Marks: colour then shape (✓ right, ✗ wrong, followed by what was measured); "
              "`(n parts)` = more pieces than objects; `·` = not run yet.", ""]
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
    others = [j for j in jobs if j.shape is None and len(parse_prompt(j.prompt).objects) == 1]
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
    singles = [s for s in scored if "objects" not in s]
    lines += [f"Scored {len(scored)} of {len(jobs)} runs; {failed} failed (count as wrong).", "",
              "| measure | value |", "|---|---|"]
    as_wrong = [False] * failed
    lines += [f"| colour correct (one-object prompts) | {_pct([s['colour']['correct'] for s in singles])} |",
              f"| shape correct (one-object prompts) | {_pct([s['shape']['correct'] for s in singles])} |",
              f"| all right | {_pct([s['correct'] for s in scored] + as_wrong)} |"]
    janus = [s["janus_count"] == 1 for s in scored if "janus_count" in s]
    if janus:
        lines.append(f"| front prompts with one front (Janus count 1) | {_pct(janus)} |")
    if singles:
        margin = np.mean([s["shape"]["margin"] for s in singles])
        lines.append(f"| mean shape margin (Chamfer, > 0 = right) | {margin:.3f} |")
    lines.append(f"| mean wall time per prompt | {f'{np.mean(walls):.0f} s' if walls else 'n/a'} |")
    return "\n".join(lines) + "\n"


def turntable_frame(run_dir: Path, azimuth: float) -> np.ndarray | None:
    """The turntable frame nearest ``azimuth`` degrees (0 = front), or None without a video."""
    import imageio.v3 as iio

    path = RunLayout(run_dir).export.turntable_written()
    if path is None:
        return None
    frames = iio.imread(path)
    return np.asarray(frames[round(azimuth / 360.0 * len(frames)) % len(frames)])[..., :3]


def tile(job: Job, entry: dict | None, frame: np.ndarray | None) -> np.ndarray:
    """A render (or a grey square) labelled with the prompt and its F-scores, green when right and red when wrong."""
    name = job.prompt.removeprefix("an ").removeprefix("a ")
    if entry is None or "error" in entry:
        return labelled(frame, [f"{name} s{job.seed}", cell_text(entry)], TILE, good=None if entry is None else False)
    h = headline(entry["scores"])
    return labelled(frame, [f"{name} s{job.seed}", f"F {h['f05']:.2f}/{h['f02']:.2f} {h['pieces']}p"], TILE,
                    good=h["right"])


def contact_sheet(jobs: list[Job], entries: dict, out: Path, azimuth: float) -> Path:
    colours = list(dict.fromkeys(j.colour for j in jobs if j.colour))
    ncols = len(colours) or math.ceil(math.sqrt(len(jobs)))
    tiles = []
    for i, job in enumerate(jobs):
        if job.shape is None and len(tiles) % ncols and (i == 0 or jobs[i - 1].shape is not None):
            blank = np.full_like(tiles[-1], 255)
            tiles += [blank] * (ncols - len(tiles) % ncols)  # other prompts start on a fresh row
        frame = turntable_frame(job.run_dir(out), azimuth)
        if frame is None:  # no turntable (export.video=false): the scored mesh itself, at the display camera
            frame = asset_image(job.run_dir(out))
        tiles.append(tile(job, entries.get(job.key), frame))
    return write_grid(tiles, out / "contact_sheet.png", ncols=ncols)


def write_outputs(jobs: list[Job], entries: dict, out: Path, recipe: str, overrides: list[str],
                  azimuth: float) -> None:
    report = {"recipe": recipe, "overrides": overrides, "entries": entries}
    write_bytes_atomic(out / "scores.json", json.dumps(report, indent=1))
    write_bytes_atomic(out / "summary.md", summary_markdown(jobs, entries, recipe, overrides))
    contact_sheet(jobs, entries, out, azimuth)


# ----------------------------------------------------------------------------------------------- the ladder


def prior_grid_path(job: Job, out: Path) -> Path:
    return out / "ladder" / f"{job.slug}-prior.png"


def run_prior_rung(job: Job, out: Path, recipe: str, overrides: list[str]) -> dict:
    """Rung 1: sample the recipe's prior for the prompt at each view label and judge the samples."""
    import torch

    from threed.guidance.prior import load_prior
    from threed.recipe import resolve_device
    from threed.toyworld.prior_fidelity import prior_fidelity

    cfg = load_recipe(recipe, overrides, prompt=job.prompt, seed=job.seed)
    start = time.perf_counter()
    report, samples = prior_fidelity(load_prior(cfg.model, resolve_device(cfg.device)), job.prompt, seed=job.seed)
    rows = [torch.cat(list(images), dim=1) for images in samples.values()]  # one row per view label
    write_grid([torch.cat(rows, dim=0)], prior_grid_path(job, out), ncols=1, padding=0)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def load_prior_grid(job: Job, out: Path, n_views: int = 4) -> np.ndarray | None:
    """The saved prior samples as ``views x n x H x W x 3``."""
    from PIL import Image

    path = prior_grid_path(job, out)
    if not path.is_file():
        return None
    grid = np.asarray(Image.open(path).convert("RGB"))
    size = grid.shape[0] // n_views
    return grid.reshape(n_views, size, -1, size, 3).transpose(0, 2, 1, 3, 4)


def run_ceiling_rung(job: Job, out: Path, recipe: str, overrides: list[str]) -> dict:
    """Rung 2: the recipe's stages fitted to ground-truth renders, exported and scored."""
    from threed.toyworld.ceiling import MARKER, run_ceiling

    run_dir = job.ceiling_dir(out)
    if not ((run_dir / MARKER).is_file() and has_export(run_dir)):
        run_ceiling(load_recipe(recipe, overrides, prompt=job.prompt, seed=job.seed), run_dir)
    scores = score_rung(run_dir, job)
    scores["seconds"] = json.loads((run_dir / MARKER).read_text())["wall_seconds"]
    return scores


def ladder_markdown(jobs: list[Job], entries: dict, ladder: dict, recipe: str) -> str:
    def rungs(job: Job) -> dict:
        rung = dict(ladder.get(job.key, {}))
        sds = entries.get(job.key, {})
        rung["sds"] = sds.get("scores")
        rung["seconds"] = {"prior": (rung.get("prior") or {}).get("seconds"),
                           "ceiling": (rung.get("ceiling") or {}).get("seconds"), "sds": sds.get("wall_time_s")}
        return rung

    lines = ["# The fidelity ladder", "", f"Recipe `{recipe}`. Rung 1, the prior: its DDIM samples (CFG 3) at each "
             "view label against the truth's best-matching training-like camera (silhouette IoU, box aspect error, "
             "CIEDE2000 of the median colour). Rung 2, the ceiling: the recipe's stages fitted to ground-truth "
             "renders, exported as the recipe does. Rung 3: the recipe as shipped (score distillation).", ""]
    all_rungs = [rungs(j) for j in jobs]
    lines += [SUMMARY_HEADER.replace("| recipe |", "| rung |"), separator(SUMMARY_HEADER)]
    seeds = ", ".join(map(str, sorted({j.seed for j in jobs})))
    for name in ("ceiling", "sds"):
        lines.append(summary_row(name, seeds, summarise([headline(r[name]) for r in all_rungs if r.get(name)])))
    priors = [r["prior"] for r in all_rungs if r.get("prior")]
    if priors:
        lines += ["", f"Prior (rung 1) over {len(priors)} prompt runs: mean silhouette IoU "
                  f"{np.mean([p['iou'] for p in priors]):.2f}, mean aspect error "
                  f"{np.mean([abs(p['aspect_error'] or 0) for p in priors]) * 100:.0f} %, median colour ΔE "
                  f"{np.median([p['delta_e'] for p in priors if p['delta_e'] is not None]):.1f}."]
    lines += ["", LADDER_HEADER, separator(LADDER_HEADER)]
    lines += [ladder_row(j.prompt, j.seed, r) for j, r in zip(jobs, all_rungs)]
    return "\n".join(lines) + "\n"


def ladder_tiles(job: Job, entries: dict, ladder: dict, out: Path) -> list[np.ndarray]:
    """Truth, prior samples (front, side / back, overhead), ceiling asset, SDS asset, each labelled."""
    rung = ladder.get(job.key, {})
    prior, ceiling, sds = rung.get("prior"), rung.get("ceiling"), entries.get(job.key, {}).get("scores")
    name = job.prompt.removeprefix("an ").removeprefix("a ")

    def fid(scores: dict | None) -> tuple[str, bool | None]:
        if scores is None:
            return "·", None
        h = headline(scores)
        return f"F {h['f05']:.2f}/{h['f02']:.2f} {h['pieces']}p", h["right"]

    prior_label = "·" if prior is None else f"IoU {prior['iou']:.2f} dE {prior['delta_e'] or float('nan'):.0f}"
    tiles = [labelled(truth_image(job.prompt), [f"{name} s{job.seed}", "truth"]),
             labelled(prior_tile(load_prior_grid(job, out)), ["prior", prior_label])]
    for label, scores, folder in (("ceiling", ceiling, job.ceiling_dir(out)), ("SDS", sds, job.run_dir(out))):
        text, good = fid(scores)
        tiles.append(labelled(asset_image(folder), [label, text], good=good))
    return tiles


def write_ladder(jobs: list[Job], entries: dict, ladder: dict, out: Path, recipe: str) -> None:
    write_bytes_atomic(out / "ladder.json", json.dumps({"recipe": recipe, "entries": ladder}, indent=1))
    write_bytes_atomic(out / "ladder.md", ladder_markdown(jobs, entries, ladder, recipe))
    tiles = [t for j in jobs for t in ladder_tiles(j, entries, ladder, out)]
    write_grid(tiles, out / "ladder.png", ncols=4)


# --------------------------------------------------------------------------------------------------- main


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def score_rung(run_dir: Path, job: Job) -> dict:
    """The exported asset's scores (:func:`score_run`) and, from the last checkpoint, the field's own agreement
    with the truth (:func:`threed.toyworld.score_views.field_agreement`): the export's share of the loss."""
    from threed.toyworld.score_views import field_agreement

    scores = score_run(run_dir, job.prompt, seed=job.seed)
    scores["field"] = field_agreement(run_dir, job.prompt)
    return scores


def run_sds_rung(job: Job, entries: dict, args, head: str, walls: list[float]) -> bool:
    """Rung 3 for one job (generate unless exported, then score); False when generation failed."""
    run_dir = job.run_dir(args.out)
    if is_current(entries.get(job.key)) and has_export(run_dir) and not args.rescore:
        print(f"{head}: SDS already scored, skipped", flush=True)
        return True
    wall = recorded_wall_time(run_dir)
    if not has_export(run_dir):
        print(f"{head}: generating in {run_dir}", flush=True)
        try:
            t0 = time.perf_counter()
            wall = generate(job, run_dir, args.recipe, args.overrides)
            walls.append(time.perf_counter() - t0)
        except ThreedError as exc:
            entries[job.key] = {"prompt": job.prompt, "seed": job.seed, "run_dir": str(run_dir), "error": str(exc)}
            print(f"{head}: FAILED: {exc}", flush=True)
            return False
    t0 = time.perf_counter()
    scores = score_rung(run_dir, job)
    entries[job.key] = {"prompt": job.prompt, "seed": job.seed, "run_dir": str(run_dir), "wall_time_s": wall,
                        "score_time_s": round(time.perf_counter() - t0, 3), "scores": scores}
    h = headline(scores)
    num = lambda v, spec: "·" if v is None else format(v, spec)  # noqa: E731  (a pair with an object not found)
    print(f"{head}: SDS F@0.05 {h['f05']:.2f}, F@0.02 {h['f02']:.2f}, h/w error {num(h['hw_error'], '+.2f')}, "
          f"ΔE {num(h['delta_e'], '.1f')}, {h['pieces']} piece(s); nearest class {cell_text(entries[job.key])}"
          f"{'' if wall is None else f'; {wall:.0f} s'}", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="evaluation folder (runs/, scores.json, summary.md, ...)")
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, metavar="SHAPE",
                    help=f"shapes of the table (default all: {' '.join(SHAPES)}; none when only --prompts is given)")
    ap.add_argument("--colours", nargs="+", choices=list(COLOURS), metavar="COLOUR",
                    help=f"colours of the table (default all: {' '.join(COLOURS)}; none when only --prompts is given)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per prompt (default 0)")
    ap.add_argument("--prompts", nargs="+", default=[], help="further prompts, e.g. 'a blue cube with a yellow front' "
                    "(front shares and Janus count) or 'a red cube and a blue sphere' (two objects)")
    ap.add_argument("--recipe", default="quickstart", help="recipe name or YAML path (default quickstart)")
    ap.add_argument("--rungs", nargs="+", choices=RUNGS, default=["sds"],
                    help="ladder rungs to run (default sds, the recipe as shipped)")
    ap.add_argument("--ladder", action="store_true", help="run all three rungs: --rungs prior ceiling sds")
    ap.add_argument("--compare", nargs="+", type=Path, metavar="OUT", help="print one summary table over finished "
                    "evaluation folders (e.g. one per recipe) and exit; --out is then where compare.md is written")
    ap.add_argument("--rescore", action="store_true", help="score every exported SDS and ceiling run again "
                    "(after a change to the measures); nothing is generated or fitted again")
    ap.add_argument("--view-azimuth", type=float, default=30.0, help="contact-sheet view, degrees from the front")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides, e.g. max_steps=60 model=PATH")
    argv = sys.argv[1:] if argv is None else argv
    # KEY=VALUE items may follow a list option (--colours red max_steps=60): take them out first.
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    rungs = set(RUNGS) if args.ladder else set(args.rungs)
    try:
        if args.compare:
            table = compare_markdown(args.compare)
            args.out.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(args.out / "compare.md", table)
            print(table, end="")
            return 0
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        table = not args.prompts or args.shapes or args.colours
        jobs = plan((args.shapes or list(SHAPES)) if table else [], (args.colours or list(COLOURS)) if table else [],
                    args.seeds, args.prompts)
        args.out.mkdir(parents=True, exist_ok=True)
        entries = load_entries(args.out / "scores.json")
        ladder = load_entries(args.out / "ladder.json")
        start, walls = time.perf_counter(), []
        for i, job in enumerate(jobs, 1):
            head = f"[{i}/{len(jobs)}] {job.prompt!r} seed {job.seed}"
            rung = ladder.setdefault(job.key, {}) if rungs - {"sds"} else {}
            if "prior" in rungs and "prior" not in rung:
                print(f"{head}: sampling the prior", flush=True)
                rung["prior"] = run_prior_rung(job, args.out, args.recipe, args.overrides)
                print(f"{head}: prior IoU {rung['prior']['iou']:.2f}, ΔE {rung['prior']['delta_e']}", flush=True)
            if "ceiling" in rungs and ("fidelity" not in (rung.get("ceiling") or {}) or args.rescore):
                print(f"{head}: fitting the ceiling in {job.ceiling_dir(args.out)}", flush=True)
                rung["ceiling"] = run_ceiling_rung(job, args.out, args.recipe, args.overrides)
                h = headline(rung["ceiling"])
                print(f"{head}: ceiling F@0.05 {h['f05']:.2f}, F@0.02 {h['f02']:.2f}, h/w error {h['hw_error']:+.2f}, "
                      f"ΔE {h['delta_e']:.1f}, {h['pieces']} piece(s)", flush=True)
            if "sds" in rungs:
                run_sds_rung(job, entries, args, head, walls)
                write_outputs(jobs, entries, args.out, args.recipe, args.overrides, args.view_azimuth)
            if rung:
                write_ladder(jobs, entries, ladder, args.out, args.recipe)
            remaining = sum(1 for j in jobs[i:]
                            if not (is_current(entries.get(j.key)) and has_export(j.run_dir(args.out))))
            eta = _duration(np.mean(walls) * remaining) if walls and "sds" in rungs else "n/a"
            print(f"{head}: done; elapsed {_duration(time.perf_counter() - start)}, SDS ETA {eta}", flush=True)
        if "sds" in rungs:
            write_outputs(jobs, entries, args.out, args.recipe, args.overrides, args.view_azimuth)
            print(f"wrote {args.out / 'scores.json'}, {args.out / 'summary.md'}, {args.out / 'contact_sheet.png'}")
            print("\n".join(fidelity_summary(jobs, entries, args.recipe)))
        if rungs - {"sds"}:
            write_ladder(jobs, entries, ladder, args.out, args.recipe)
            print(f"wrote {args.out / 'ladder.json'}, {args.out / 'ladder.md'}, {args.out / 'ladder.png'}")
    except ThreedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
