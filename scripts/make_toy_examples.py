"""Render the example reference images of image-to-3D (assets/examples/*.png) with the toy world's own renderer.

    python scripts/make_toy_examples.py [--out assets/examples] [--size 128]

Each is an RGBA PNG of one toy-world scene seen from the front (azimuth 0, distance 2.75, fovy 40: the
reference camera of threed/recipes/quickstart-image.yaml; elevation 0 unless the name ends in ``-el<degrees>``),
lambertian-shaded, with the object's coverage as alpha, so ``threed generate --image
assets/examples/<name>.png`` runs on the embedded toy-world view prior and its result can be scored
against the same scene's ground truth. A yellow-fronted blue cube seen straight on is a yellow square:
nothing in that photo says its sides are blue, so ``blue-cube-with-a-yellow-front-el25.png`` shows it
from 25 degrees up, where its blue top is visible (pass ``stages.*.reference.view.elevation=25``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from threed.toyworld.score_views import example_name
from threed.toyworld.train_card import reference_view

EXAMPLES = (("a blue cube with a yellow front", 0.0), ("a blue cube with a yellow front", 25.0), ("a red cube", 0.0),
            ("a yellow cylinder", 0.0), ("a purple torus", 0.0))
"""(caption, camera elevation) of the shipped examples ("a purple torus" is held out of both toy priors' training)."""



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/examples")
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    import imageio.v3 as iio

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for caption, elevation in EXAMPLES:
        rgb, mask = reference_view(caption, args.size, elevation)
        rgba = np.concatenate([rgb[0].numpy(), mask[0].numpy()], axis=-1)
        path = out / example_name(caption, elevation)
        iio.imwrite(path, (rgba * 255).round().astype(np.uint8))
        print(path)


if __name__ == "__main__":
    main()
