"""VSD: Variational Score Distillation (ProlificDreamer, Wang et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.core import DiffusionCore
from threed.guidance.distillation import NoisyBatch, ScoreConfig, ScoreDistillation
from threed.guidance.lora import CameraLoRA, camera_features, scale_gradient
from threed.guidance.registry import register
from threed.guidance.text import PromptProcessor
from threed.guidance.timesteps import Anneal


@dataclass
class VSDConfig(ScoreConfig):
    """Variational Score Distillation (ProlificDreamer, Wang et al. 2023)."""

    kind: Literal["vsd"] = "vsd"
    """Selects this rule."""
    guidance_scale: float = 7.5
    """CFG scale of the pretrained branch; VSD works at ordinary scales."""
    anneal: Anneal = "step"
    """ProlificDreamer drops t_max once, after ``anneal_steps``."""
    anneal_steps: int | None = 5000
    """Steps before t_max switches to ``t_max_end``."""
    lora_rank: int = 4
    """Rank of the LoRA adapters of eps_phi."""
    lora_alpha: float | None = None
    """LoRA alpha (the update is scaled by alpha / rank); None = rank, a scale of 1."""
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Names of the UNet modules that get adapters (diffusers' attention projections)."""
    lora_lr: float = 1e-4
    """Learning rate of the adapters and the camera embedding in the stage's Adam."""
    camera_dropout: float = 0.1
    """Probability of training eps_phi on a view without its camera (zeroed features)."""

    def __post_init__(self):
        super().__post_init__()
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not self.lora_lr > 0:
            raise ValueError(f"lora_lr must be > 0, got {self.lora_lr}")
        if not 0 <= self.camera_dropout <= 1:
            raise ValueError(f"camera_dropout must be in [0, 1], got {self.camera_dropout}")


class VSD(ScoreDistillation[DiffusionCore, PromptProcessor]):
    """Variational Score Distillation (ProlificDreamer, Wang et al. 2023): r = eps_hat(x_t; y) -
    eps_phi(x_t; y, c), where eps_phi (:class:`CameraLoRA`, view-independent prompt, camera c) models
    the renders themselves and is trained every step with the diffusion loss on the detached renders.

    Training: the adapters join the *stage's* Adam as their own group (``lora_lr``) through
    :meth:`parameter_groups`, and their loss is part of the guidance loss (it reaches only the
    adapters; the render gradient reaches only the scene). One optimiser, one backward pass, and the
    stage's checkpoint already saves that optimiser's moments, so a resumed run continues exactly;
    :meth:`state_dict` holds the adapter weights. (A private optimiser would duplicate the stage's
    zero_grad/step/NaN and checkpoint logic.) Adam is invariant to the constant weights the stage
    applies (this guidance's ``weight``, ``loss.guidance``), so they do not change the adapters'
    effective learning rate.

    fp16: the mean-squared loss gives each element of eps_phi's output a gradient of about 2 / numel (4e-5
    for a batch of SD's 64 x 64 latents), under float16's smallest normal number, before the backward pass
    through the float16 UNet, which then loses it to underflow. So the gradient entering that backward pass
    is scaled by numel (as if the loss were summed; a static loss scale, as threestudio's gradient scaler
    does dynamically): each element's gradient is about 2 (eps_phi - target). The loss value and its logs
    are unchanged, and because the adapters are a group of their own in Adam, which is invariant to a
    constant scale of a group's gradients (up to its epsilon), their updates are those of the unscaled loss.
    """

    cfg: VSDConfig

    def __init__(self, cfg: VSDConfig, prior: DiffusionCore, prompts: PromptProcessor,
                 generator: torch.Generator | None = None):
        super().__init__(cfg, prior, prompts, generator)
        self.lora = CameraLoRA(prior.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        self._prompt = prompts.repeat(prompts.prompt, 1)

    def phi(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"], cameras: Cameras,
            keep_camera: Tensor | None = None, raw: bool = False) -> Float[Tensor, "B C h w"]:
        """eps_phi(x_t; y, c) of the renders' model (``raw``: the model's own epsilon or v output);
        ``keep_camera`` (per view, 0 or 1) drops the camera condition where 0."""
        feats = camera_features(cameras).to(self.prior.device)
        if keep_camera is not None:
            feats = feats * keep_camera.view(-1, 1).to(feats)
        call = self.prior.model_outputs if raw else self.prior.noise_predictions
        return call(x_t, t, [self._prompt.expand(x_t.shape[0], -1, -1)], unet=self.lora.unet, class_labels=feats)[0]

    def residual(self, batch: NoisyBatch) -> Float[Tensor, "B C h w"]:
        eps_hat, _, _ = self.guided(batch.x_t, batch.t, batch.text)
        return eps_hat - self.phi(batch.x_t, batch.t, batch.cameras)

    def auxiliary_losses(self, batch: NoisyBatch) -> dict[str, Float[Tensor, ""]]:
        """eps_phi's diffusion loss on the detached renders, at its own t ~ U{0..T-1} and noise."""
        prior, b = self.prior, batch.x0.shape[0]
        t = (self.rand(b) * prior.num_train_timesteps).long().clamp_max(prior.num_train_timesteps - 1)
        noise = self.randn(batch.x0)
        keep = self.rand(b) >= self.cfg.camera_dropout
        with torch.enable_grad():
            pred = self.phi(prior.add_noise(batch.x0, noise, t), t, batch.cameras, keep, raw=True)
            pred = scale_gradient(pred, float(pred.numel()))  # see the class docstring: fp16
            loss = F.mse_loss(pred, prior.training_target(batch.x0, noise, t))
        return {"lora": loss}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.lora.adapter_parameters(), "lr": self.cfg.lora_lr, "weight_decay": 0.0,
                 "name": "guidance.lora"}]

    def state_dict(self) -> dict[str, Any]:
        return {"lora": self.lora.adapter_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"lora"}:
            raise ThreedError(f"the checkpoint's guidance state {sorted(state)[:5]} is not VSD's: it was written "
                              f"by another guidance kind")
        self.lora.load_adapter_state(state["lora"])


register(VSDConfig, VSD)
