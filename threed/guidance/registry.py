"""The guidance registry: every score rule registers its config class and its rule class here, from its own file.

A rule file in :mod:`threed.guidance.rules` ends with ``register(MyConfig, MyRule)``; every module of
that package is imported before the first lookup, so adding a rule is one new file. Config loading
reads the registry wherever a guidance is configured (``StageConfig.guidance`` is a list of
:data:`GuidanceConfig`): a mapping is built as the config class of its ``kind`` (``sds`` when absent),
so no union or table of rules exists to keep in step.
"""

from __future__ import annotations

from typing import Annotated

from threed.config import Registry
from threed.guidance.distillation import ScoreConfig, ScoreDistillation

GUIDANCES = Registry("guidance", default="sds", package="threed.guidance.rules")
"""kind -> config class -> rule class."""

GuidanceConfig = Annotated[ScoreConfig, GUIDANCES]
"""The type of a guidance config field: any registered rule's config, told apart by ``kind``."""


def register(config: type[ScoreConfig], rule: type[ScoreDistillation]) -> None:
    """Add a rule: ``config`` (with ``kind: Literal["name"] = "name"``) selects ``rule``."""
    GUIDANCES.register(config, rule)


def rule_of(cfg: ScoreConfig) -> type[ScoreDistillation]:
    """The rule class registered for ``cfg``'s config class."""
    return GUIDANCES.implementation(cfg)


def make_guidance(cfg: ScoreConfig, prior, conditioner, generator=None) -> ScoreDistillation:
    """The rule of ``cfg`` on a prior and conditioner already in hand (tests, scripts; a stage builds its
    guidances with :func:`threed.guidance.build.build_guidances`)."""
    return rule_of(cfg)(cfg, prior, conditioner, generator)
