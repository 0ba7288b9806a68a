"""Train threed's embedded toy-world prior (see threed/toyworld/train.py and the model card it writes).

    python scripts/train_toyworld_prior.py --out threed/priors/toyworld --minutes 75 --threads 1 --seed 0
    python scripts/train_toyworld_prior.py --mode views --out threed/priors/toyworld-zero123 --minutes 45 --threads 1
    python scripts/train_toyworld_prior.py --mode multiview --out threed/priors/toyworld-mv --steps 2000 --threads 2

``--mode text`` (default) trains the text-to-image prior (threed/toyworld/train.py); ``--mode views`` the
view-conditioned image-to-3D prior, a tiny Zero-1-to-3 (threed/toyworld/train_views.py); ``--mode multiview``
the MVDream-style multi-view prior, fine-tuned from the text prior (threed/toyworld/train_multiview.py).

Stops at whichever of --steps / --minutes comes first; checkpoints to <out>-train-ckpt next to
--out every few minutes (continue with --resume). --samples-only redoes the model card's samples
(e.g. after changing cfg_scale) from the saved prior. Extra KEY=VALUE arguments override any field of
ToyworldTrainConfig (ViewTrainConfig with --mode views, MultiViewTrainConfig with --mode multiview), e.g. ``batch_size=64 data.cache_size=4096``.
"""

from __future__ import annotations

import argparse
import sys

from threed.config import build, parse_overrides
from threed.errors import ThreedError
from threed.toyworld.train import refresh_samples, train
from threed.toyworld.train_config import MultiViewTrainConfig, ToyworldTrainConfig, ViewTrainConfig
from threed.toyworld.train_multiview import train_multiview
from threed.toyworld.train_views import train_views


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder to write the prior to (replaced at the end)")
    ap.add_argument("--mode", choices=["text", "views", "multiview"], default="text",
                    help="text: the text-to-image prior; views: the view-conditioned (Zero123-like) prior; "
                         "multiview: the MVDream-like multi-view prior, fine-tuned from the text prior")
    ap.add_argument("--steps", type=int, default=None, help="maximum optimiser steps")
    ap.add_argument("--minutes", type=float, default=None, help="maximum wall time of rendering + training")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--resume", action="store_true", help="continue from <out>-train-ckpt")
    ap.add_argument("--samples-only", action="store_true",
                    help="do not train: redo samples.png and the model card's samples table of the prior in --out")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = ap.parse_args(argv)
    try:
        data = parse_overrides(args.overrides)
        for key in ("steps", "minutes", "seed", "threads"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        log = lambda msg: print(msg, flush=True)  # noqa: E731
        if args.mode in ("views", "multiview"):
            if args.samples_only:
                raise ThreedError("--samples-only is for --mode text")
            if args.mode == "views":
                train_views(build(ViewTrainConfig, data), args.out, resume=args.resume, log=log)
            else:
                train_multiview(build(MultiViewTrainConfig, data), args.out, resume=args.resume, log=log)
            return 0
        cfg = build(ToyworldTrainConfig, data)
        if args.samples_only:
            for row in refresh_samples(cfg, args.out):
                print(f"{row['prompt']}: colour {row['colour_ok']:.2f} shape {row['shape_ok']:.2f}")
        else:
            train(cfg, args.out, resume=args.resume, log=log)
    except ThreedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
