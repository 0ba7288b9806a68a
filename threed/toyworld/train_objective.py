"""What a toy prior's network learns: the noising, the regression target and each sample's loss weight.

An :class:`Objective` is the one place that decides these for training, and it hands the matching
scheduler to the saver, so a saved prior's ``scheduler/`` always says what its network learned (a
v-prediction scheduler beside a UNet that learned the noise makes every guidance step wrong).

* :class:`DDPMObjective`: DDPM (Ho et al., 2020) with epsilon or v targets (Salimans & Ho, "Progressive
  Distillation", 2022), the loss weighted by Min-SNR-gamma (Hang et al., 2023) with an optional floor
  (:func:`min_snr_weight`).

Another objective (e.g. rectified flow, Liu et al. 2023, with diffusers' ``FlowMatchEulerDiscreteScheduler``:
``x_t = (1 - s) x0 + s noise``, target ``noise - x0``) is one more subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.toyworld.train_config import DiffusionTrainConfig


def min_snr_weight(alpha_bar: Float[Tensor, "B"], gamma: float, floor: float = 0.0,
                   prediction_type: str = "epsilon") -> Float[Tensor, "B"]:
    """Per-sample weights of the squared error of the model's output such that, in x0 terms, the loss is
    weighted by min(max(SNR, floor), gamma) (Min-SNR-gamma of Hang et al. 2023, with an optional floor;
    gamma <= 0: no cap). An epsilon error is an x0 error times sqrt(SNR), a v error one times
    sqrt(SNR + 1). With no floor and no cap the epsilon loss is unweighted (1)."""
    snr = alpha_bar / (1 - alpha_bar)
    w = snr.clamp(min=floor) if floor > 0 else snr
    if gamma > 0:
        w = w.clamp(max=gamma)
    return w / (snr + 1) if prediction_type == "v_prediction" else w / snr


def build_scheduler(cfg: DiffusionTrainConfig):
    """The DDPM scheduler of ``cfg`` (cosine betas by default, trailing timestep spacing for few-step sampling)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, timestep_spacing="trailing")


class Objective(ABC):
    """Noising, target and per-sample weight of one training objective; ``scheduler`` is saved with the prior."""

    scheduler: object
    """The diffusers scheduler that samples (and guides) with what this objective trains."""

    @abstractmethod
    def timesteps(self, batch: int, generator: torch.Generator) -> Tensor:
        """The noise levels of a batch, drawn from ``generator``."""

    @abstractmethod
    def noisy(self, x0: Float[Tensor, "B C H W"], noise: Float[Tensor, "B C H W"], t: Tensor
              ) -> Float[Tensor, "B C H W"]:
        """The network's input: ``x0`` noised to level ``t``."""

    @abstractmethod
    def target(self, x0: Float[Tensor, "B C H W"], noise: Float[Tensor, "B C H W"], t: Tensor
               ) -> Float[Tensor, "B C H W"]:
        """What the network should output for that input."""

    @abstractmethod
    def weight(self, t: Tensor) -> Float[Tensor, "B"]:
        """Each sample's weight of its mean squared error."""

    def loss(self, pred: Float[Tensor, "B C H W"], x0: Float[Tensor, "B C H W"], noise: Float[Tensor, "B C H W"],
             t: Tensor) -> Float[Tensor, ""]:
        """The batch's weighted mean squared error of ``pred`` against the target."""
        per = (pred - self.target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3)) * self.weight(t)
        return per.mean()


class DDPMObjective(Objective):
    """DDPM noising at integer timesteps; epsilon or v target as ``cfg.prediction_type`` says; Min-SNR weights."""

    def __init__(self, cfg: DiffusionTrainConfig):
        self.cfg = cfg
        self.scheduler = build_scheduler(cfg)
        self.alphas = self.scheduler.alphas_cumprod

    def timesteps(self, batch: int, generator: torch.Generator) -> Int[Tensor, "B"]:
        return torch.randint(0, self.cfg.train_timesteps, (batch,), generator=generator)

    def noisy(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.add_noise(x0, noise, t)  # type: ignore[arg-type]

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.cfg.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, t)  # type: ignore[arg-type]

    def weight(self, t: Tensor) -> Tensor:
        cfg = self.cfg
        return min_snr_weight(self.alphas[t], cfg.min_snr_gamma, cfg.snr_floor, cfg.prediction_type)
