"""VSD's score model of the renders: a camera-conditioned LoRA copy of the prior's UNet.

ProlificDreamer (Wang et al. 2023, sec. 4 and App. C) estimates the score of the distribution of
the *current* renders with a second diffusion model eps_phi, initialised from the pretrained UNet,
fine-tuned with low-rank adapters (LoRA, Hu et al. 2022) and conditioned on the camera pose through
the UNet's class embedding, which is added to the timestep embedding. It trains alongside the scene
with the ordinary diffusion loss on the detached renders.

Here the copy shares every frozen weight with the prior's UNet (only the module tree is copied),
so the copy costs the adapters and nothing else; the adapters are peft LoRA layers, kept in float32
even when the UNet runs in float16. The camera embedding's last layer starts at zero and the LoRA
``B`` matrices start at zero, so before any training eps_phi equals the pretrained model exactly.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError

CAMERA_FEATURES = 12
"""Size of the camera condition: the 3 x 4 camera-to-world matrix, row-major."""


def camera_features(cameras: Cameras) -> Float[Tensor, "B 12"]:
    """The camera condition of ProlificDreamer's eps_phi: each camera's 3 x 4 camera-to-world matrix."""
    return cameras.c2w[:, :3, :4].reshape(len(cameras), CAMERA_FEATURES).float()


class CameraEmbedding(torch.nn.Module):
    """Camera features -> an offset of the UNet's timestep embedding (Linear, SiLU, Linear).

    The last layer is zero-initialised, so the embedding starts as "no camera" and the copy starts
    as the pretrained UNet.
    """

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, features: Float[Tensor, "B F"]) -> Float[Tensor, "B D"]:
        return self.net(features.to(self.net[0].weight.dtype))


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with the gradient flowing back through it multiplied by ``scale`` (a static loss scale
    that leaves the loss value, and so its logs, as they are)."""
    return _ScaledGradient.apply(x, scale)  # type: ignore[return-value]


def shared_weight_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s module tree whose parameters and buffers are the original's tensors."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


class CameraLoRA(torch.nn.Module):
    """eps_phi of VSD: ``unet`` (a diffusers ``UNet2DConditionModel``) with LoRA adapters on
    ``target_modules`` and a camera embedding on its class-embedding slot. Only those train.

    Call the copy through :meth:`DiffusionPrior.noise_predictions` with ``unet=self.unet`` and
    ``class_labels=camera_features(cameras)``, so that its outputs go through the prior's plumbing.
    """

    def __init__(self, unet: torch.nn.Module, rank: int = 4, alpha: float | None = None,
                 target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0")):
        super().__init__()
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:  # a dependency of threed; only VSD needs it
            raise ThreedError("VSD needs the peft package: pip install peft") from exc
        time_embedding = getattr(unet, "time_embedding", None)
        if not hasattr(unet, "class_embedding") or not hasattr(time_embedding, "linear_2"):
            raise ThreedError(f"VSD needs a diffusers UNet2DConditionModel to copy; the prior's UNet is "
                              f"a {type(unet).__name__}")
        if unet.class_embedding is not None:
            raise ThreedError("VSD conditions its LoRA copy on the camera through the UNet's class embedding, "
                              "but this UNet already uses class labels")
        weight = next(unet.parameters())
        copied = shared_weight_copy(unet)
        config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank,
                            target_modules=list(target_modules), lora_dropout=0.0, bias="none")
        try:
            inject_adapter_in_model(config, copied)
        except ValueError as exc:
            raise ThreedError(f"VSD cannot put LoRA adapters on modules {list(target_modules)} of this UNet: "
                              f"{str(exc).splitlines()[0]}; set guidance.lora_targets to names of its "
                              f"attention projections") from exc
        for name, p in copied.named_parameters():
            is_adapter = "lora_" in name
            if is_adapter:
                p.data = p.data.float()  # train in float32 even on a float16 UNet
            p.requires_grad_(is_adapter)
        copied.class_embedding = CameraEmbedding(CAMERA_FEATURES, time_embedding.linear_2.out_features).to(
            weight.device)
        self.unet = copied
        if not any(p.requires_grad for p in self.adapter_parameters()):
            raise ThreedError("VSD found no trainable LoRA parameters")

    def adapter_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters: LoRA matrices and the camera embedding, in a fixed order."""
        return [p for p in self.unet.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, Tensor]:
        """The trainable tensors by name, for checkpoints (the frozen weights belong to the prior)."""
        return {name: p.detach() for name, p in self.unet.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`adapter_state`; a checkpoint from other LoRA settings is a clear error."""
        own = dict((name, p) for name, p in self.unet.named_parameters() if p.requires_grad)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [k for k in own.keys() & state.keys() if tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise ThreedError(f"the checkpoint's VSD adapters do not fit this guidance (missing {missing[:2]}, "
                              f"unexpected {unexpected[:2]}, other shape {wrong[:2]}): its lora_rank or "
                              f"lora_targets differ from the recipe's")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])
