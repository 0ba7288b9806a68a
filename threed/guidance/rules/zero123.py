"""Zero123-SDS: score distillation with a view-conditioned prior (Zero-1-to-3, Liu et al. 2023, sec. 3.3;
Magic123, Qian et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from threed.guidance.distillation import ScoreConfig
from threed.guidance.registry import register
from threed.guidance.rules.sds import SDS


@dataclass
class Zero123Config(ScoreConfig):
    """SDS with a Zero123-family view-conditioned prior (Zero-1-to-3, Liu et al. 2023; Magic123, Qian et al.
    2023): the rule is SDS's, the condition is the reference image at each view's relative pose
    (:class:`threed.guidance.zero123.ImageConditioning`). Needs the stage's ``reference`` view."""

    kind: Literal["zero123"] = "zero123"
    """Selects this rule."""
    guidance_scale: float = 3.0
    """CFG scale on the image condition (Zero-1-to-3 samples at 3; threestudio distils at 3 to 5)."""
    convention: Literal["auto", "zero123", "stable-zero123"] = "auto"
    """Pose vector the model was trained on (threed.guidance.zero123); auto: stable-zero123 when the repository
    or folder name itself (not the folders above it) names Stable Zero123, e.g. ashawkey/stable-zero123-diffusers,
    else zero123 (``threed.guidance.zero123.auto_convention``). Set it when a folder's name does not say."""


class Zero123(SDS):
    """SDS's residual, eps_hat(x_t; reference, pose) - eps, on a view-conditioned prior: classifier-free
    guidance drops the image (a zero reference latent and a zero token), as Zero-1-to-3 was trained."""

    prior_kind = "view"


register(Zero123Config, Zero123)
