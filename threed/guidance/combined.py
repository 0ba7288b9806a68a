"""Several guidances in one stage, each with its weight (Magic123: text SDS at 1 and Zero123-SDS at 40).

A :class:`GuidanceSet` looks to the stage like one guidance: one loss (the weighted sum), one set of
logged terms, the optimiser groups of every member, and one checkpoint entry per member, so each
member's trainable state (VSD's LoRA) is saved and restored on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.distillation import GuidanceOut, ScoreDistillation
from threed.render.output import RenderOut


class GuidanceSet:
    """Weighted guidances of a stage; ``members`` are (weight, guidance) in the recipe's order.

    Logged terms: a single guidance's as they are; with several, each member's prefixed by its label
    (its kind, with its position when kinds repeat: ``sds.t``, ``zero123.grad_norm``) plus its weighted
    loss under the label itself. A member of weight 0 is not run.
    """

    def __init__(self, members: Sequence[tuple[float, ScoreDistillation]]):
        if not members:
            raise ThreedError("a stage needs at least one guidance")
        self.members = list(members)
        kinds = [g.cfg.kind for _, g in self.members]
        counts = Counter(kinds)
        self.labels = [k if counts[k] == 1 else f"{k}{i}" for i, k in enumerate(kinds)]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[ScoreDistillation]:
        return (g for _, g in self.members)

    def __getitem__(self, i: int) -> ScoreDistillation:
        return self.members[i][1]

    def update(self, step: int, max_steps: int) -> None:
        """Advance every member's schedules."""
        for g in self:
            g.update(step, max_steps)

    @property
    def needs_source(self) -> bool:
        """Whether a member (of non-zero weight) compares with the original asset's render (an editing rule)."""
        return any(weight != 0 and g.needs_source for weight, g in self.members)

    def __call__(self, out: RenderOut, cameras: Cameras, source: RenderOut | None = None) -> GuidanceOut:
        """The weighted sum of the members' losses on one batch of renders; ``source``: the original asset's
        render at the same cameras, for editing rules."""
        loss, terms = None, {}
        for label, (weight, guidance) in zip(self.labels, self.members):
            if weight == 0:
                continue
            g = guidance(out, cameras, source=source)
            weighted = weight * g.loss
            loss = weighted if loss is None else loss + weighted
            if len(self.members) == 1:
                terms = g.terms
            else:
                terms.update({f"{label}.{k}": v for k, v in g.terms.items()})
                terms[label] = float(weighted.detach())
        if loss is None:
            loss = torch.zeros((), device=out.rgb.device)
        return GuidanceOut(loss=loss, terms=terms)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Every member's optimiser groups."""
        return [group for g in self for group in g.parameter_groups()]

    def state_dict(self) -> dict[str, Any]:
        """Each member's trainable state, by position."""
        return {str(i): g.state_dict() for i, g in enumerate(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. A checkpoint written when a stage had one guidance holds that guidance's
        state itself (no positions): it is the first member's."""
        if state and not all(k.isdigit() for k in state):
            state = {"0": state}
        extra = sorted(set(state) - {str(i) for i in range(len(self))})
        if extra:
            raise ThreedError(f"the checkpoint holds state of guidance(s) {extra} but the stage has {len(self)}: "
                              "it was written with another guidance list")
        for i, g in enumerate(self):
            g.load_state_dict(state.get(str(i), {}))
