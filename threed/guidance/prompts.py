"""Prompt processing: view-dependent text conditioning for each training camera.

DreamFusion (Poole et al. 2022, sec. 3.2) appends "front view", "side view", "back view" or
"overhead view" to the prompt according to the camera's azimuth and elevation, so the 2D prior
is asked for the view the camera actually sees and the object does not grow a face on every side.

Two refinements from Perp-Neg (Armandpour et al. 2023, sec. 5), each switchable per recipe:

* ``view_interpolation``: the embedding moves continuously with the azimuth, linearly from the
  front prompt (0 deg) to the side prompt (90 deg) to the back prompt (180 deg), instead of jumping
  between labels.
* ``perp_neg``: every camera also gets two negative prompts - the views it should *not* look like -
  whose weights grow with the camera's angular distance from them; :meth:`DiffusionPrior.guide`
  removes only their component perpendicular to the positive direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, ViewLabel
from threed.errors import ThreedError
from threed.guidance.prior import DiffusionPrior

VIEW_LABELS: tuple[ViewLabel, ...] = ("front", "side", "back", "overhead")


@dataclass
class PromptConfig:
    """How the prompt becomes text embeddings for each view."""

    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance ("" = truly unconditional)."""
    view_dependent: bool = True
    """Append a view suffix chosen from each camera's angles (DreamFusion's view-dependent prompting)."""
    front_suffix: str = ", front view"
    """Suffix for cameras within ``front_half_angle`` of azimuth 0."""
    side_suffix: str = ", side view"
    """Suffix for cameras that are neither front, back nor overhead."""
    back_suffix: str = ", back view"
    """Suffix for cameras within ``back_half_angle`` of azimuth 180."""
    overhead_suffix: str = ", overhead view"
    """Suffix for cameras above ``overhead_elevation``."""
    front_half_angle: float = 45.0
    """Half-width in degrees of the azimuth range labelled front."""
    back_half_angle: float = 45.0
    """Half-width in degrees of the azimuth range labelled back."""
    overhead_elevation: float = 60.0
    """Elevation in degrees above which a camera is labelled overhead."""
    view_interpolation: bool = False
    """Interpolate the front/side/back prompt embeddings linearly in azimuth (0/90/180 deg) instead of
    picking the label's; overhead cameras keep the overhead prompt. Needs view_dependent."""
    perp_neg: bool = False
    """Perp-Neg (Armandpour et al. 2023): add the two neighbouring view prompts as negatives, removed
    perpendicular to the positive direction. Needs view_dependent."""
    perp_neg_weight: float = 1.5
    """Weight of a Perp-Neg negative view 90 deg or more away from the camera; it falls linearly to 0
    at the negative view's own azimuth."""

    def __post_init__(self):
        if not (0 <= self.front_half_angle and 0 <= self.back_half_angle
                and self.front_half_angle + self.back_half_angle <= 180):
            raise ValueError("need 0 <= front_half_angle, back_half_angle and their sum <= 180")
        if (self.view_interpolation or self.perp_neg) and not self.view_dependent:
            raise ValueError("view_interpolation and perp_neg need view_dependent: true (they combine the "
                             "front/side/back prompts)")
        if not self.perp_neg_weight >= 0:
            raise ValueError(f"perp_neg_weight must be >= 0, got {self.perp_neg_weight}")


@dataclass
class Conditioning:
    """The condition of a batch of cameras (text, or a reference image), as the guidance core consumes it."""

    cond: Float[Tensor, "B L D"]
    """Prompt embedding of each view (its label's, or interpolated by azimuth)."""
    uncond: Float[Tensor, "B L D"]
    """Unconditional branch of classifier-free guidance (the negative prompt, "" by default)."""
    negatives: tuple[tuple[Float[Tensor, "B L D"], Float[Tensor, "B"]], ...] = ()
    """Perp-Neg negative prompt embeddings with per-view weights (empty when perp_neg is off)."""
    concat: tuple[Float[Tensor, "B K h w"], Float[Tensor, "B K h w"]] | None = None
    """Channels concatenated to the UNet input, conditional and unconditional (a view-conditioned prior's
    reference, :mod:`threed.guidance.zero123`); None for text priors."""
    class_labels: Float[Tensor, "B N"] | None = None
    """The UNet's class-embedding input of each view, the same in every branch (the toy view prior's pose)."""


class PromptProcessor:
    """Text embeddings per camera: each view label's prompt is encoded once, at construction.

    Encoding eagerly makes a bad prompt (empty, unknown words) fail before any training step.
    """

    def __init__(self, prior: DiffusionPrior, prompt: str, cfg: PromptConfig | None = None):
        self.cfg = cfg or PromptConfig()
        self.prompt = prompt.strip()
        if not self.prompt:
            raise ThreedError('the prompt is empty: describe the object, e.g. "a red chair"')
        self.prior = prior
        suffixes = {"front": self.cfg.front_suffix, "side": self.cfg.side_suffix,
                    "back": self.cfg.back_suffix, "overhead": self.cfg.overhead_suffix}
        self.prompts: dict[ViewLabel, str] = {
            label: self.prompt + (suffixes[label] if self.cfg.view_dependent else "") for label in VIEW_LABELS}
        texts = list(dict.fromkeys(self.prompts.values()))
        table = prior.encode_text(texts + [self.cfg.negative_prompt])
        rows = {text: table[i] for i, text in enumerate(texts)}
        self._cond: dict[ViewLabel, Float[Tensor, "L D"]] = {label: rows[t] for label, t in self.prompts.items()}
        self._uncond: Float[Tensor, "L D"] = table[-1]

    def labels(self, cameras: Cameras) -> list[ViewLabel]:
        """DreamFusion view label of each camera, with this config's angles."""
        return cameras.view_labels(front_half_angle=self.cfg.front_half_angle,
                                   back_half_angle=self.cfg.back_half_angle,
                                   overhead_elevation=self.cfg.overhead_elevation)

    def embeddings(self, cameras: Cameras) -> tuple[Float[Tensor, "B L D"], Float[Tensor, "B L D"]]:
        """(conditional, unconditional) text embeddings for each camera of the batch."""
        text = self.conditioning(cameras)
        return text.cond, text.uncond

    def conditioning(self, cameras: Cameras) -> Conditioning:
        """Prompt, unconditional and (with perp_neg) negative embeddings for each camera."""
        cfg = self.cfg
        labelled = torch.stack([self._cond[label] for label in self.labels(cameras)])
        if not (cfg.view_interpolation or cfg.perp_neg):
            return Conditioning(cond=labelled, uncond=self._uncond.expand_as(labelled))
        dev = labelled.device
        az = (torch.remainder(cameras.azimuth.detach().float().cpu() + 180.0, 360.0) - 180.0).abs()  # [0, 180]
        overhead = (cameras.elevation.detach().float().cpu() > cfg.overhead_elevation).to(dev)
        front_half = (az <= 90).to(dev)
        u = torch.where(az <= 90, az / 90, (az - 90) / 90).to(dev, labelled.dtype)  # along the segment
        front, side, back = (self._cond[k][None] for k in ("front", "side", "back"))

        def pick(a, b):
            return torch.where(front_half.view(-1, 1, 1), a, b)

        uu = u.view(-1, 1, 1)
        cond = labelled
        if cfg.view_interpolation:
            cond = pick(torch.lerp(front, side, uu), torch.lerp(side, back, uu))
            cond = torch.where(overhead.view(-1, 1, 1), labelled, cond)
        negatives: tuple = ()
        if cfg.perp_neg:
            # Front half (front -> side): negatives front and side; back half (side -> back): side and
            # front. Weight = perp_neg_weight * min(angular distance to that view / 90 deg, 1).
            w = cfg.perp_neg_weight * (~overhead).to(u.dtype)
            first = (pick(front, side), w * u)
            second = (pick(side, front), w * torch.where(front_half, 1 - u, torch.ones_like(u)))
            negatives = (first, second)
        return Conditioning(cond=cond, uncond=self._uncond.expand_as(cond), negatives=negatives)

    def repeat(self, text: str, batch: int) -> Float[Tensor, "B L D"]:
        """The embedding of a fixed ``text`` (checked against the vocabulary, cached), repeated ``batch`` times.

        ``repeat(self.prompt, b)`` is the view-independent prompt; ``repeat("", b)`` the null prompt.
        """
        return self.prior.encode_text([text]).expand(batch, -1, -1)
