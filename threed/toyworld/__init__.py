"""The toy world: procedural scenes with exact ground truth, the embedded prior trained on them, and scoring.

``scenes`` (shapes, colours, captions, exact SDFs, prompt parsing), ``raycast`` (sphere-traced
renders) and ``train`` (the toy prior's training, run by ``scripts/train_toyworld_prior.py``).
Scoring against the truth: ``score`` (per asset), ``fidelity`` (geometry), ``colour``, ``score_views``,
and the fidelity ladder's evaluation tools ``prior_fidelity`` and ``ceiling``, with ``report``.
Generation never reads the ground truth; only training data and scoring do.
"""

from threed.toyworld.raycast import render, sphere_trace
from threed.toyworld.scenes import (COLOURS, SHAPES, Scene, SceneObject, catalogue, colour_rgb, ground_truth,
                                    parse_prompt, sample_surface, view_caption)

__all__ = ["COLOURS", "SHAPES", "Scene", "SceneObject", "catalogue", "colour_rgb", "ground_truth", "parse_prompt",
           "render", "sample_surface", "sphere_trace", "view_caption"]
