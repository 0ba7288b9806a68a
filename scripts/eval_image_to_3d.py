"""Reconstruct a toy-world example photo and score it against the scene's other sides (no export).

    python scripts/eval_image_to_3d.py --caption "a blue cube with a yellow front" [--elevation 25] [--recipe quickstart-image]
        [--out eval/image-to-3d.json] [--views eval/image-to-3d.png] [KEY=VALUE ...]

The photo is assets/examples/<caption slug>[-el<elevation>].png (scripts/make_toy_examples.py). Every stage of the recipe
runs in-process in a temporary run directory; then the last stage's scene is rendered at the reference
camera (PSNR against the framed photo) and at Δazimuth 90/180/270 (mask IoU and colour agreement with
the ground truth, threed.toyworld.score_views). Prints and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from threed.toyworld.score_views import example_name, reconstruct_and_score

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caption", required=True)
    ap.add_argument("--recipe", default="quickstart-image")
    ap.add_argument("--elevation", type=float, default=0.0,
                    help="use the example photo seen from this elevation (<slug>-el<N>.png) and tell the recipe so")
    ap.add_argument("--out", help="JSON file to write the figures to")
    ap.add_argument("--views", help="PNG to write: ground truth on top, the reconstruction below, per azimuth")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    image = EXAMPLES / example_name(args.caption, args.elevation)
    overrides = ([f"stages.*.reference.view.elevation={args.elevation:g}"] if args.elevation else []) + args.overrides
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = reconstruct_and_score(args.recipe, args.caption, image, overrides, Path(tmp), args.views)
    report.update({"recipe": args.recipe, "overrides": overrides, "seconds": round(time.time() - t0, 1)})
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
