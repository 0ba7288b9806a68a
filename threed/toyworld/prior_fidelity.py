"""The prior's rung of the fidelity ladder: its own 2D samples of a prompt against ground-truth renders.

Score distillation can only be as faithful as the 2D prior it distils, so the ladder (docs/toyworld.md)
asks first whether the prior draws the prompt right. For each view label (front, side, back, overhead)
the prompt with its view suffix is sampled as the prior is meant to be sampled (DDIM, 50 steps, CFG 3:
docs/toyworld.md, "Guidance scale"). A sample has no camera, only a view label, so each is matched to the
ground-truth render, among a bank of training-like cameras with that label, whose silhouette it overlaps
most (an oracle pose: the question is whether *some* pose the prompt allows explains the sample):

* ``iou``: silhouette IoU with that best render (the sample's silhouette: pixels that differ from its
  border colour, :func:`threed.toyworld.train.foreground`, as the prior's own model card judges them; the
  truth's cut at the same edge coverage, see :func:`judge_sample`);
* ``aspect_error``: the sample's silhouette box height/width against the best render's, minus 1 (the
  2D view of the 3D height/width error);
* ``delta_e``: CIEDE2000 between the median colour of the sample's silhouette and that of the truth at
  the best camera, the smaller of albedo and lambertian (headlight) shading, two of the shadings the
  prior was trained on (textureless renders are white whatever the prompt, so they are left out).

The cameras follow the prior's training data (:mod:`threed.toyworld.train`): elevations -10 to 45 degrees
(60 to 85 overhead), distance 2.5 to 3, field of view 35 to 45 degrees.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from threed.cameras import Cameras
from threed.guidance.prior import DiffusionPrior
from threed.toyworld.colour import delta_e
from threed.toyworld.raycast import render
from threed.toyworld.scenes import VIEW_LABELS, Scene, parse_prompt, view_caption
from threed.toyworld.train_card import foreground

FOREGROUND = 0.12
"""A sample's pixel is object when a channel differs from the border colour by more than this (the prior's
model card judges its samples with the same rule, :func:`threed.toyworld.train.foreground`)."""
CFG_SCALE = 3.0
"""Guidance scale for sampling the toy prior (docs/toyworld.md: at 5 its objects wash out towards grey)."""
DDIM_STEPS = 50

_AZIMUTHS = {"front": np.arange(-45, 46, 15), "side": np.arange(50, 131, 10), "back": np.arange(135, 226, 15),
             "overhead": np.arange(0, 360, 30)}
"""Inside each label's range (:meth:`threed.cameras.Cameras.view_labels`); training flips images left-right,
so the -X side looks like the +X side."""
_ELEVATIONS = {"overhead": (62.5, 72.5, 82.5)}
_DEFAULT_ELEVATIONS = (-10.0, 5.0, 20.0, 35.0, 45.0)
_FRAMINGS = ((2.5, 35.0), (2.75, 40.0), (3.0, 45.0), (2.5, 45.0), (3.0, 35.0))
"""(distance, fovy) pairs spanning the training cameras' apparent sizes (largest, middle, smallest, and two mixed)."""


def camera_bank(label: str, resolution: int) -> Cameras:
    """Training-like cameras whose view label is ``label``: a grid of azimuth, elevation and framing."""
    grid = [(el, float(az), d, fov) for az in _AZIMUTHS[label] for el in _ELEVATIONS.get(label, _DEFAULT_ELEVATIONS)
            for d, fov in _FRAMINGS]
    el, az, d, fov = (torch.tensor(v, dtype=torch.float32) for v in zip(*grid))
    return Cameras.orbit(el, az, d, fov, resolution)


@functools.lru_cache(maxsize=32)
def _coverage(scene: Scene, label: str, resolution: int) -> tuple[Cameras, torch.Tensor]:
    """The camera bank of ``label`` and the truth's pixel coverage (opacity) from each camera."""
    cams = camera_bank(label, resolution)
    return cams, torch.cat([render(scene, cams[i:i + 64], "albedo").opacity[..., 0] for i in range(0, len(cams), 64)])


def _iou(mask: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    m = mask.flatten().float()
    flat = bank.flatten(1).float()
    inter = flat @ m
    return inter / (flat.sum(1) + m.sum() - inter).clamp(min=1)


def _aspect(mask: torch.Tensor) -> float | None:
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        return None
    return float(rows[-1] - rows[0] + 1) / float(cols[-1] - cols[0] + 1)


def _median_colour(image: torch.Tensor, mask: torch.Tensor) -> np.ndarray | None:
    pixels = image[mask]
    return None if len(pixels) < 4 else pixels.median(dim=0).values.double().numpy()


def _border_colour(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image[0], image[-1], image[:, 0], image[:, -1]]).median(dim=0).values


def judge_sample(image: torch.Tensor, scene: Scene, label: str) -> dict:
    """One sample (``H x W x 3`` in [0, 1]) against the truth's best-matching render with its view label.

    The sample's silhouette takes every pixel that differs from the border colour by more than
    :data:`FOREGROUND`; an edge pixel does so once its coverage exceeds ``FOREGROUND / contrast`` (the
    contrast between the sample's median object colour and its background), so the truth's silhouettes are
    cut from its coverage at that same fraction, and a perfect sample scores 1 on any background.
    """
    mask = foreground(image, FOREGROUND)
    colour = _median_colour(image, mask)
    cams, coverage = _coverage(scene.uncoloured(), label, image.shape[0])
    contrast = 1.0 if colour is None else float((torch.from_numpy(colour).float() - _border_colour(image)).abs().max())
    bank = coverage > min(max(FOREGROUND / max(contrast, 1e-6), 0.05), 0.95)
    ious = _iou(mask, bank)
    best = int(ious.argmax())
    cam = cams[best]
    truth_mask = coverage[best] > 0.5
    aspect, truth_aspect = _aspect(mask), _aspect(bank[best])
    errors = []
    for mode in ("albedo", "lambertian"):
        truth_colour = _median_colour(render(scene, cam, mode).rgb[0], truth_mask)
        if colour is not None and truth_colour is not None:
            errors.append(float(delta_e(colour, truth_colour)))
    return {"iou": round(float(ious[best]), 4),
            "aspect_error": None if aspect is None or truth_aspect is None else round(aspect / truth_aspect - 1, 4),
            "delta_e": round(min(errors), 3) if errors else None,
            "camera": {"elevation": float(cam.elevation[0]), "azimuth": float(cam.azimuth[0]),
                       "distance": float(cam.distance[0]), "fovy_deg": round(float(np.degrees(cam.fovy[0])), 2)}}


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


@torch.no_grad()
def prior_fidelity(prior: DiffusionPrior, prompt: str, n_per_view: int = 4, seed: int = 0,
                   steps: int = DDIM_STEPS, cfg_scale: float = CFG_SCALE
                   ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Sample ``n_per_view`` images per view label and judge each (:func:`judge_sample`).

    Returns the JSON-ready report (per view and overall: mean ``iou``, mean ``aspect_error``, median
    ``delta_e``; every sample's judgement) and the samples per view label (``n x H x W x 3``).
    """
    scene = parse_prompt(prompt)
    generator = torch.Generator().manual_seed(seed)
    samples = {label: prior.sample([view_caption(scene.caption, label)] * n_per_view, steps, cfg_scale, generator)
               .float().cpu() for label in VIEW_LABELS}
    views, judged = {}, []
    for label, images in samples.items():
        rows = [judge_sample(img, scene, label) for img in images]
        judged += rows
        views[label] = {"iou": _mean([r["iou"] for r in rows]),
                        "aspect_error": _mean([r["aspect_error"] for r in rows]),
                        "delta_e": _median([r["delta_e"] for r in rows]), "samples": rows}
    report = {"prompt": prompt, "cfg_scale": cfg_scale, "ddim_steps": steps, "n_per_view": n_per_view, "seed": seed,
              "iou": _mean([r["iou"] for r in judged]), "aspect_error": _mean([r["aspect_error"] for r in judged]),
              "delta_e": _median([r["delta_e"] for r in judged]), "views": views}
    return report, samples


def _median(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.median(kept)), 3) if kept else None
