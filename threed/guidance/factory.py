"""Which prior and which condition a stage's guidance config gets: text for text-to-image rules, the
reference image for Zero123-family rules. The one place a stage turns a guidance config into a rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from threed.errors import ThreedError
from threed.guidance.prior import load_prior
from threed.guidance.prompts import PromptConfig, PromptProcessor
from threed.guidance.score import ScoreConfig, ScoreDistillation, Zero123Config, make_guidance

if TYPE_CHECKING:
    from threed.reference.image import ReferenceViewConfig
    from threed.stage import RunContext


def make_stage_guidance(cfg: ScoreConfig, model: str | None, prompt: PromptConfig | None, ctx: "RunContext",
                        view: "ReferenceViewConfig | None") -> ScoreDistillation:
    """The guidance rule of ``cfg``: a Zero123-family rule loads ``cfg.model`` (else the recipe's
    ``image_model``) and is conditioned on the run's reference image seen from ``view``; any other
    rule loads the text prior ``model`` and is conditioned on the run's prompt."""
    if isinstance(cfg, Zero123Config):
        from threed.guidance.zero123 import ImageConditioning, load_view_prior
        from threed.reference.image import load_reference

        if view is None:
            raise ThreedError("a zero123 guidance needs the stage's reference view: add a `reference:` section to "
                              "the stage (see threed/recipes/zero123.yaml)")
        name = cfg.model or ctx.image_model
        if not name:
            raise ThreedError("zero123 guidance needs a view-conditioned model: set image_model=<hub id or folder> "
                              "(e.g. bennyguo/zero123-xl-diffusers) or image_model=toyworld")
        prior = load_view_prior(name, ctx.device, convention=cfg.convention)
        reference = load_reference(ctx.image, view, ctx.mask, size=prior.resolution)
        return make_guidance(cfg, prior, ImageConditioning(prior, reference, view))
    prior = load_prior(model or ctx.model, ctx.device)
    return make_guidance(cfg, prior, PromptProcessor(prior, ctx.prompt, prompt))
