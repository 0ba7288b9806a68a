"""Measure ``threed texture`` on the toy world: the exact primitives painted from prompts, scored objectively.

For each prompt and seed this writes the primitive (a cube or a sphere the size of the toy world's) to OBJ, runs
``threed texture MESH PROMPT --seed`` through the command line with the shipped recipe, and scores the baked
texture of ``model.glb`` with the toy world's measures (:func:`threed.toyworld.score.score_textured`): CIEDE2000
of the area-weighted median colour to the true albedo, the colour each side shows and, for a "... with a <c>
front" prompt, the share of each side's area in the front colour. It also checks that the written vertices and
faces are the input's. Prints a Markdown table and writes the results as JSON::

    python scripts/eval_texture.py --out outputs/eval-texture --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

from threed.toyworld.scenes import CUBE_HALF, SPHERE_RADIUS, parse_prompt
from threed.toyworld.score import score_textured

PROMPTS = ("a green sphere", "a red cube", "a blue cube with a yellow front")


def primitive(shape: str) -> trimesh.Trimesh:
    if shape == "cube":
        return trimesh.creation.box(extents=[2 * CUBE_HALF] * 3)
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=SPHERE_RADIUS)
    raise SystemExit(f"no exact mesh for {shape!r} here; use a cube or sphere prompt")


def measure(prompt: str, seed: int, root: Path, recipe: str, overrides: list[str]) -> dict:
    shape = parse_prompt(prompt).objects[0].shape
    mesh_path = root / f"{shape}.obj"
    primitive(shape).export(mesh_path)
    run = root / f"{prompt.replace(' ', '-')}-seed{seed}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "threed", "texture", str(mesh_path), prompt, "--recipe", recipe, "--out",
                    str(run), f"seed={seed}", *overrides], check=True)
    wall = time.perf_counter() - started
    loaded = trimesh.load(str(run / "export" / "model.glb"), process=False)
    out = loaded.to_mesh() if isinstance(loaded, trimesh.Scene) else loaded
    source = trimesh.load(str(mesh_path), process=False, maintain_order=True)
    same = bool(np.array_equal(out.vertices[out.faces], source.vertices[source.faces].astype(np.float32)))
    score = score_textured(out, prompt)
    result = {"prompt": prompt, "seed": seed, "wall_s": round(wall, 1), "geometry_identical": same,
              "colour": score["colour"]["name"], "delta_e": score["colour"]["delta_e"],
              "sides": {k: v["name"] if v else None for k, v in score["sides"].items()}}
    if "front_shares" in score:
        result.update(front_shares=score["front_shares"], front_right=score["front_right"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/eval-texture")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--recipe", default="texture")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every run")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = [measure(p, s, root, args.recipe, args.overrides) for p in args.prompts for s in args.seeds]
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print("| prompt | seed | colour | ΔE | +Z / -Z / +X / -X | front share +Z / -Z / +X / -X | geometry | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        shares = r.get("front_shares")
        share = " / ".join(f"{v:.2f}" if v is not None else "-" for v in shares.values()) if shares else "-"
        print(f"| {r['prompt']} | {r['seed']} | {r['colour']} | {r['delta_e']:.1f} | {' / '.join(map(str, r['sides'].values()))} "
              f"| {share} | {'identical' if r['geometry_identical'] else 'CHANGED'} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
