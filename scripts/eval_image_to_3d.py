"""Reconstruct a toy-world example photo and score it against the scene's other sides (no export).

    python scripts/eval_image_to_3d.py --caption "a blue cube with a yellow front" [--recipe quickstart-image]
        [--out eval/image-to-3d.json] [KEY=VALUE ...]

The photo is assets/examples/<caption slug>.png (scripts/make_toy_examples.py). Every stage of the recipe
runs in-process in a temporary run directory; then the last stage's scene is rendered at the reference
camera (PSNR against the framed photo) and at Δazimuth 90/180/270 (mask IoU and colour agreement with
the ground truth, threed.toyworld.score_views). Prints and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from threed.recipe import load_recipe, resolve_device, slugify
from threed.stage import RunContext, Stage
from threed.toyworld.score_views import view_agreement

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caption", required=True)
    ap.add_argument("--recipe", default="quickstart-image")
    ap.add_argument("--out", help="JSON file to write the figures to")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    image = EXAMPLES / f"{slugify(args.caption.removeprefix('a ').removeprefix('an '))}.png"
    cfg = load_recipe(args.recipe, args.overrides, image=str(image))
    device = resolve_device(cfg.device)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=device, seed=cfg.seed, max_steps=cfg.max_steps,
                         run_dir=Path(tmp), image=cfg.image, mask=cfg.mask, depth=cfg.depth,
                         image_model=cfg.image_model)
        ckpt = None
        for i, stage_cfg in enumerate(cfg.stages):
            stage = Stage(stage_cfg, ctx, i)
            ckpt = stage.run(init=ckpt)
        tr, _ = stage.setup()  # the finished stage, reloaded from its checkpoint
        scene, ref = tr.scene.eval(), tr.reference
        with torch.no_grad():
            front = scene.render_eval(ref.camera, "albedo")
        psnr = -10 * math.log10(float((front.rgb - ref.reference.rgb).square().mean()))
        view = stage_cfg.reference.view
        report = view_agreement(lambda cams: scene.render_eval(cams.to(device), "albedo"), args.caption, view)
    report.update({"recipe": args.recipe, "overrides": args.overrides, "reference_psnr": round(psnr, 2),
                   "seconds": round(time.time() - t0, 1)})
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
