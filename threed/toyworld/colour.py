"""Colour of a toy-world asset: its measured albedo, the colour word it shows, and how far it is from the truth.

Colours are treated as sRGB-encoded throughout: they are the pixel values the toy prior was trained on
(its renders put albedo straight into the image, :mod:`threed.toyworld.raycast`) and the exporter stores
the field's albedo unchanged, so the space the prior learned colours in is sRGB.

* **Measured albedo.** The area-weighted per-channel median of the face colours (a face's colour is the
  mean of its vertex colours). The median rather than the mean, so that a painted front (1/6 of a cube)
  or a few wrongly coloured patches do not drag the estimate.
* **Naming.** The measured albedo names the nearest of :data:`~threed.toyworld.scenes.COLOURS` on a
  *hue disc* built from Oklab (Ottosson, 2020): the angle is Oklab hue, the radius is chroma divided by
  :data:`SATURATED_CHROMA` and capped at 1, and lightness is left out. The six chromatic words sit on the
  rim (their chroma is 0.18 to 0.23), white at the centre, so a colour is named by its hue unless its
  chroma is under half of :data:`SATURATED_CHROMA`, when it is neutral; a neutral darker than mid grey is
  named ``"grey"``, which is no toy-world colour. Why not a plain distance: shading baked into the albedo
  darkens it and an under-trained field washes it out, both moving lightness and chroma but hardly hue.
  With Euclidean distance in RGB, CIELAB or Oklab (even with lightness down-weighted), every desaturated
  colour drifts to white: a 60-step run exported a steel blue (85, 129, 169) that those call white, and
  RGB calls a 75%-dark yellow orange. On the hue disc each chromatic word survives darkening to 20% (sRGB
  scaled), mixing with 70% white, or with 75% grey of its own mean. Naming says *which* colour; the
  distance below says *how close*.
* **Distance.** CIEDE2000 (Sharma, Wu and Dalal, "The CIEDE2000 color-difference formula:
  implementation notes, supplementary test data, and mathematical observations", Color Research and
  Application 30(1), 2005) between CIELAB (D65, 2 degree observer) of the measured and the true albedo,
  by scikit-image's ``deltaE_ciede2000``. About 1 is a just-noticeable difference, and 2 to 10 reads as
  the same colour at a glance.
"""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.color import deltaE_ciede2000, rgb2lab

from threed.errors import ThreedError
from threed.toyworld.scenes import COLOURS

SATURATED_CHROMA = 0.1
"""Oklab chroma from which a colour counts as fully saturated on the hue disc (neutral below half of it)."""

GREY_LIGHTNESS = 0.6
"""Neutral colours with Oklab lightness under this (about sRGB mid grey, 0.5) are ``"grey"``, not white."""

_OKLAB_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                      [0.2119034982, 0.6806995451, 0.1073969566],
                      [0.0883024619, 0.2817188376, 0.6299787005]])
_OKLAB_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                      [1.9779984951, -2.4285922050, 0.4505937099],
                      [0.0259040371, 0.7827717662, -0.8086757660]])


def srgb_to_oklab(rgb: np.ndarray) -> np.ndarray:
    """Oklab (Ottosson, 2020) of sRGB-encoded colours ``... x 3`` in [0, 1]: ``L`` in [0, 1], then ``a``, ``b``."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    lms = np.cbrt(linear @ _OKLAB_M1.T)
    return lms @ _OKLAB_M2.T


def hue_disc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue-disc points ``... x 2`` (Oklab hue as angle, chroma / SATURATED_CHROMA capped at 1 as radius) and
    Oklab lightness ``...`` of sRGB colours ``... x 3`` in [0, 1]."""
    lab = srgb_to_oklab(rgb)
    chroma = np.linalg.norm(lab[..., 1:], axis=-1, keepdims=True)
    radius = np.minimum(chroma / SATURATED_CHROMA, 1.0)
    return lab[..., 1:] / np.maximum(chroma, 1e-12) * radius, lab[..., 0]


_NAMES = tuple(COLOURS)
_NAMED_DISC = hue_disc(np.array([COLOURS[n] for n in _NAMES]))[0]


def colour_distances(rgb: np.ndarray) -> dict[str, float]:
    """Hue-disc distance (0 to 2) of one sRGB colour (3,) in [0, 1] to every named colour."""
    point, _ = hue_disc(rgb)
    return {n: float(d) for n, d in zip(_NAMES, np.linalg.norm(_NAMED_DISC - point, axis=-1))}


def name_colour(rgb: np.ndarray, distances: dict[str, float] | None = None) -> str:
    """The colour word of an sRGB colour (3,) in [0, 1]: the nearest on the hue disc, or ``"grey"`` (see above)."""
    distances = colour_distances(rgb) if distances is None else distances
    name = min(distances, key=distances.get)
    is_neutral = np.linalg.norm(_NAMED_DISC[_NAMES.index(name)]) < 0.5
    return "grey" if is_neutral and hue_disc(rgb)[1] < GREY_LIGHTNESS else name


def face_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """``F x 3`` face colours in [0, 1]: the mean of each face's vertex colours (or the face colours)."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        visual = visual.to_color()
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3][mesh.faces].mean(axis=1) / 255.0
    if kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
    raise ThreedError("the mesh has no vertex or face colours to score; export it with threed (which stores the "
                      "field's albedo as vertex colours) or give a coloured mesh")


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-column weighted median of ``N x C`` values with ``N`` non-negative weights; returns ``C``."""
    out = np.empty(values.shape[1])
    cum_total = weights.sum()
    for c in range(values.shape[1]):
        order = np.argsort(values[:, c], kind="stable")
        cum = np.cumsum(weights[order])
        out[c] = values[order[np.searchsorted(cum, 0.5 * cum_total)], c]
    return out


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2 degree observer) of sRGB-encoded colours ``... x 3`` in [0, 1]."""
    return rgb2lab(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0), illuminant="D65", observer="2")


def delta_e(rgb: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference of sRGB colours ``... x 3`` in [0, 1] from ``reference`` (broadcast): shape ``...``
    (0-d for two single colours)."""
    return np.asarray(deltaE_ciede2000(srgb_to_lab(rgb), srgb_to_lab(reference)))
