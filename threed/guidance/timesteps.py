"""Timestep schedules of score distillation: which t each view is scored at, step by step.

* ``uniform``: t ~ U[t_min, t_max] per view, t_max moving toward ``t_max_end`` as ``anneal`` says:
  linear or sqrt in progress (HiFA, Zhu et al. 2023), or one switch after ``anneal_steps``
  (ProlificDreamer, Wang et al. 2023).
* ``dreamtime``: one t per step, decreasing monotonically from t_max to t_min so that the steps spent
  at each t follow a prior over timesteps (DreamTime's time-prioritised schedule, Huang et al. 2023).
* ``linear``: one t per step, falling linearly from t_max to t_min (SDI's annealing, Lukoianov et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from threed.guidance.distillation import ScoreConfig

Anneal = Literal["none", "linear", "sqrt", "step"]
Schedule = Literal["uniform", "dreamtime", "linear"]


@dataclass
class DreamTimeConfig:
    """DreamTime's prior over timesteps (Huang et al. 2023): flat on [m2, m1], Gaussian tails outside.

    All values are fractions of the prior's training timesteps (the paper's 800, 500, 300, 100 of 1000).
    """

    m1: float = 0.8
    """Upper end of the flat part."""
    m2: float = 0.5
    """Lower end of the flat part."""
    s1: float = 0.3
    """Width of the Gaussian tail above m1."""
    s2: float = 0.1
    """Width of the Gaussian tail below m2."""

    def __post_init__(self):
        if not (0 <= self.m2 <= self.m1 <= 1 and self.s1 > 0 and self.s2 > 0):
            raise ValueError(f"need 0 <= m2 <= m1 <= 1 and s1, s2 > 0, got {self}")

    def density(self, t: Float[Tensor, "N"]) -> Float[Tensor, "N"]:
        """Unnormalised prior at timesteps given as fractions."""
        above = torch.exp(-(t - self.m1).square() / (2 * self.s1**2))
        below = torch.exp(-(t - self.m2).square() / (2 * self.s2**2))
        return torch.where(t > self.m1, above, torch.where(t < self.m2, below, torch.ones_like(t)))


class TimestepSampler:
    """Run state of the timestep schedule: ``update(step, max_steps)`` moves t_max (or the one t of a step)."""

    def __init__(self, cfg: ScoreConfig, num_train_timesteps: int):
        self.cfg = cfg
        self.num_train_timesteps = num_train_timesteps
        self.t_max = cfg.t_max
        if cfg.schedule == "dreamtime":
            lo, hi = self._range(cfg.t_max)
            self._steps = torch.arange(lo, hi + 1)
            p = cfg.dreamtime.density(self._steps.double() / num_train_timesteps)
            self._tail = (p / p.sum()).flip(0).cumsum(0).flip(0)  # mass of [t, hi]: 1 at lo, decreasing

    def _range(self, t_max: float) -> tuple[int, int]:
        last = self.num_train_timesteps - 1
        lo = min(int(self.cfg.t_min * self.num_train_timesteps), last)
        return lo, min(max(int(t_max * self.num_train_timesteps), lo), last)

    def update(self, step: int, max_steps: int) -> None:
        cfg = self.cfg
        n = cfg.anneal_steps or max(max_steps, 1)
        progress = min(max(step, 0) / n, 1.0)
        if cfg.schedule == "dreamtime":
            # The latest t whose tail mass reaches the progress: t(0) = t_max, t(1) = t_min, non-increasing.
            last = int((self._tail >= progress - 1e-9).nonzero().max())
            self.t_max = int(self._steps[last]) / self.num_train_timesteps
            return
        if cfg.schedule == "linear":
            self.t_max = cfg.t_max + (cfg.t_min - cfg.t_max) * progress
            return
        fraction = {"none": 0.0, "linear": progress, "sqrt": math.sqrt(progress),
                    "step": float(step >= n)}[cfg.anneal]
        self.t_max = cfg.t_max + (cfg.t_max_end - cfg.t_max) * fraction

    @property
    def bounds(self) -> tuple[int, int]:
        """Inclusive integer range of timesteps sampled now (one value under the dreamtime and linear schedules)."""
        if self.cfg.schedule != "uniform":
            t = min(max(round(self.t_max * self.num_train_timesteps), 0), self.num_train_timesteps - 1)
            return t, t
        return self._range(self.t_max)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> Int[Tensor, "B"]:
        """One timestep per view, uniform over :attr:`bounds` (on the generator's device, CPU by default)."""
        lo, hi = self.bounds
        device = generator.device if generator is not None else "cpu"
        return torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)
