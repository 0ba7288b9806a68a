"""Score ``threed edit`` on the toy world: edit a generated asset by a new prompt with each rule, then measure
whether what the prompt changes changed and the rest stayed.

    python scripts/eval_editing.py --out eval/editing [--seeds 0 1] [--rules dds pds sds]
        [--edits "a red cube=a blue cube" "a red cube=a green cube"] [--no-run] [KEY=VALUE ...]

Per seed, the source asset is ``threed generate SOURCE`` with the shipped default recipe, in
``OUT/source/<prompt>-seed<k>`` (made once); each edit runs ``threed edit`` on it with each rule in
``OUT/runs/<prompt>-<rule>-seed<k>``. KEY=VALUE arguments override the edit recipe. Measured per run
(:mod:`threed.toyworld.score`): Delta E (CIEDE2000) of the edited asset's colour to the new prompt's, F@0.02 of
the edited asset against the *original* asset (same frame, no alignment: did the geometry stay?), F@0.05 against
the true shape, and the edit's wall time. Writes ``OUT/scores.json``, ``OUT/summary.md`` and
``OUT/before_after.png`` (per seed and edit: source, then each rule's result). Rerunning skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from threed.runtime import tune_cpu_runtime

tune_cpu_runtime()  # before torch is imported

import numpy as np  # noqa: E402

from threed.api import Run, edit, generate  # noqa: E402
from threed.export.video import write_grid  # noqa: E402
from threed.files import write_bytes_atomic  # noqa: E402
from threed.recipe import slugify  # noqa: E402
from threed.run import RunLayout  # noqa: E402
from threed.toyworld.fidelity import mesh_agreement  # noqa: E402
from threed.toyworld.report import asset_image, labelled  # noqa: E402
from threed.toyworld.score import score_run, world_mesh  # noqa: E402


def finished(run_dir: Path) -> bool:
    return RunLayout(run_dir).export.report.is_file()


def measure(run_dir: Path, prompt: str, source: Path) -> dict:
    scores = score_run(run_dir, prompt)
    return {"delta_e": scores["colour"]["delta_e"], "colour": scores["colour"]["name"],
            "f002_vs_original": mesh_agreement(world_mesh(run_dir), world_mesh(source))["0.02"],
            "f005_vs_truth": scores["fidelity"]["f"]["0.05"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rules", nargs="+", default=["dds", "pds", "sds"])
    parser.add_argument("--edits", nargs="+", default=["a red cube=a blue cube"])
    parser.add_argument("--no-run", action="store_true", help="only score and show the runs that are finished")
    args, overrides = parser.parse_known_args()
    path = args.out / "scores.json"
    results: dict = json.loads(path.read_text()) if path.is_file() else {}
    tiles = []
    for pair in args.edits:
        source_prompt, prompt = (p.strip() for p in pair.split("="))
        for seed in args.seeds:
            src = args.out / "source" / f"{slugify(source_prompt)}-seed{seed}"
            if args.no_run and not finished(src):
                continue
            if RunLayout(src).is_run and not finished(src):
                Run.load(src).resume()
            elif not finished(src):
                generate(source_prompt, seed=seed, out=src)
            row = [labelled(asset_image(src), [f"{source_prompt} s{seed}", "source"])]
            for rule in args.rules:
                key = f"{prompt} | {rule} | seed {seed}"
                run_dir = args.out / "runs" / f"{slugify(prompt)}-{rule}-seed{seed}"
                if args.no_run and not finished(run_dir):
                    continue
                if not finished(run_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)  # an edit stopped half way: edit again, timed whole
                    t0 = time.perf_counter()
                    edit(src, prompt, rule=rule, out=run_dir, overrides=[f"seed={seed}", *overrides])
                    results[key] = {"wall_s": round(time.perf_counter() - t0, 1)}
                entry = results.setdefault(key, {})
                entry.update(source=source_prompt, prompt=prompt, rule=rule, seed=seed,
                             **measure(run_dir, prompt, src))
                write_bytes_atomic(path, json.dumps(results, indent=1))
                row.append(labelled(asset_image(run_dir), [f"{rule}: dE {entry['delta_e']:.1f}",
                                                           f"F.02 orig {entry['f002_vs_original']:.2f}"],
                                    good=entry["f002_vs_original"] >= 0.8))
            tiles.append(row)
    lines = ["| edit | rule | seed | ΔE to new colour | colour named | F@0.02 vs original | F@0.05 vs true shape "
             "| wall s |", "|---|---|---|---|---|---|---|---|"]
    for e in results.values():
        lines.append(f"| {e['source']} → {e['prompt']} | {e['rule']} | {e['seed']} | {e['delta_e']:.1f} | "
                     f"{e['colour']} | {e['f002_vs_original']:.3f} | {e['f005_vs_truth']:.3f} | "
                     f"{e.get('wall_s', float('nan')):.0f} |")
    write_bytes_atomic(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    width = max(len(r) for r in tiles)
    grid = [t for r in tiles for t in r + [np.full_like(r[0], 255)] * (width - len(r))]
    write_grid(np.stack(grid).astype(np.float32) / 255.0, args.out / "before_after.png", ncols=width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
