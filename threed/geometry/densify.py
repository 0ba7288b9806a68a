"""Adaptive density control of 3D Gaussians as a strategy with explicit state (the shape of gsplat's
``strategy/default.py``): a config (:class:`DensifyConfig`), the state it keeps between steps
(:class:`DensifyState`) and the logic that reads and changes both (:class:`DensifyStrategy`).

Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering" (SIGGRAPH 2023), sec. 5.2:
the view-space positional gradient of each Gaussian is averaged over the training views that saw it;
Gaussians whose average is large are cloned (small ones) or split in two (large ones), transparent or huge
ones are pruned, and the opacities are reset now and then. The Gaussians change their own parameters
(:meth:`threed.geometry.gaussians.Gaussians.replace_rows`), swapping the new tensors into the optimiser with
the Adam state rows of the kept, cloned and split Gaussians.

The state is a module of buffers so that it is saved with the scene and a checkpoint resumes exactly; a
state dict with another count (written after densification) resizes it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

if TYPE_CHECKING:
    from threed.geometry.gaussians import Gaussians


@dataclass
class DensifyConfig:
    """3DGS adaptive density control (Kerbl et al. 2023, sec. 5.2) on a step schedule; steps count from 1."""

    start: int = 100
    """First step after which view-space gradients are accumulated and densification may run."""
    stop: int = 1000
    """No densification, pruning or opacity reset after this step."""
    every: int = 100
    """Densify and prune every this many steps (between ``start`` and ``stop``)."""
    grad_threshold: float = 0.01
    """Clone/split Gaussians whose mean view-space positional gradient norm (NDC units, as gsplat's
    default strategy) exceeds this; DreamGaussian's SDS value (3DGS's photometric one is 0.0002)."""
    clone_max_scale: float = 0.01
    """A Gaussian to densify is cloned when its largest scale is at most this fraction of ``radius``, else split."""
    split_shrink: float = 1.6
    """A split Gaussian's two children have its scales divided by this (3DGS)."""
    min_opacity: float = 0.01
    """Prune Gaussians more transparent than this."""
    max_scale: float = 0.5
    """Prune Gaussians whose largest scale exceeds this fraction of ``radius``."""
    max_count: int = 100_000
    """Densification never makes more Gaussians than this (the largest gradients win)."""
    opacity_reset_every: int = 0
    """Clamp every opacity to ``opacity_reset_value`` every this many steps (3DGS: 3000); 0 disables."""
    opacity_reset_value: float = 0.01
    """Opacity after a reset."""

    def __post_init__(self):
        if self.every < 1 or self.start < 0 or self.stop < self.start:
            raise ValueError(f"need every >= 1 and 0 <= start <= stop, got {self.every}, {self.start}, {self.stop}")
        if self.split_shrink <= 1 or self.max_count < 1 or self.opacity_reset_every < 0:
            raise ValueError("need split_shrink > 1, max_count >= 1 and opacity_reset_every >= 0")
        if not 0 < self.opacity_reset_value < 1 or not 0 <= self.min_opacity < 1:
            raise ValueError("opacity_reset_value must lie in (0, 1) and min_opacity in [0, 1)")


@dataclass
class ViewGradients:
    """What one training render leaves for densification: its projected centres (with their gradient after
    backward) and which Gaussians each camera saw."""

    means2d: Float[Tensor, "B N 2"]
    """Projected centres, (column, row) pixels; their ``.grad`` is read after backward."""
    visible: Bool[Tensor, "B N"]
    width: int
    height: int


class DensifyState(nn.Module):
    """The statistics densification keeps between steps, one row per Gaussian (buffers, so they are saved)."""

    def __init__(self, count: int):
        super().__init__()
        self.register_buffer("grad_sum", torch.zeros(count))
        """Sum over training views of the view-space positional gradient norm (NDC units)."""
        self.register_buffer("grad_views", torch.zeros(count))
        """Training views in which each Gaussian was visible."""

    grad_sum: Tensor
    grad_views: Tensor

    def reset(self, count: int) -> None:
        """Zero statistics for ``count`` Gaussians (after an initialisation or a densification)."""
        self.grad_sum = self.grad_sum.new_zeros(count)
        self.grad_views = self.grad_views.new_zeros(count)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Take the count of the checkpoint (it changes with densification), then load as usual."""
        key = prefix + "grad_sum"
        if key in state_dict:
            self.reset(state_dict[key].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DensifyStrategy:
    """Runs :class:`DensifyConfig`'s schedule on a :class:`Gaussians` and its :class:`DensifyState`."""

    def __init__(self, cfg: DensifyConfig, radius: float):
        self.cfg = cfg
        self.radius = radius
        """Scene radius: ``clone_max_scale`` and ``max_scale`` are fractions of it."""

    @torch.no_grad()
    def accumulate(self, state: DensifyState, views: ViewGradients) -> None:
        """Add each visible Gaussian's view-space positional gradient norm, per view, in NDC units (pixels x W/2)."""
        grad = views.means2d.grad
        if grad is None or grad.shape[1] != state.grad_sum.shape[0]:
            return
        scale = torch.tensor([0.5 * views.width, 0.5 * views.height], device=grad.device)
        norm = (grad * scale).norm(dim=-1) * views.visible
        state.grad_sum += norm.sum(0)
        state.grad_views += views.visible.sum(0)

    def step_post_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer | None,
                           state: DensifyState, done: int, views: ViewGradients | None) -> dict[str, int]:
        """After optimiser step ``done`` (1-based): accumulate ``views``' gradients, then densify, prune and reset
        opacities on the schedule. Returns what changed (empty when nothing did); a non-empty report means
        parameters may have been replaced, in ``optimizer`` too."""
        d = self.cfg
        if views is not None and d.start < done <= d.stop:
            self.accumulate(state, views)
        report: dict[str, int] = {}
        if d.start < done <= d.stop and done % d.every == 0:
            report.update(self.densify_and_prune(gaussians, optimizer, state))
        if d.opacity_reset_every and done <= d.stop and done % d.opacity_reset_every == 0:
            gaussians.clamp_opacity(d.opacity_reset_value, optimizer)
            report["opacity_reset"] = 1
        return report

    @torch.no_grad()
    def densify_and_prune(self, g: Gaussians, optimizer: torch.optim.Optimizer | None,
                          state: DensifyState) -> dict[str, int]:
        """Clone small and split large Gaussians with large mean view-space gradients; prune faint and huge ones.

        3DGS sec. 5.2: a split replaces a Gaussian by two drawn from it, with scales divided by
        ``split_shrink``; a clone is an exact copy (the gradient then moves the two apart). New rows start
        with zero Adam moments; kept rows keep theirs. The gradient statistics restart from zero.
        """
        d, r = self.cfg, self.radius
        n = g.count
        grads = state.grad_sum / state.grad_views.clamp(min=1.0)
        largest = g.scales.amax(-1)
        chosen = (grads >= d.grad_threshold).nonzero().squeeze(1)
        budget = max(0, d.max_count - n)
        if len(chosen) > budget:
            chosen = chosen[grads[chosen].argsort(descending=True)[:budget]]
        small = largest[chosen] <= d.clone_max_scale * r
        clone, split = chosen[small], chosen[~small]
        prune = (g.opacity < d.min_opacity) | (largest > d.max_scale * r)
        prune[split] = True
        if bool(prune.all()) and len(clone) + len(split) == 0:
            prune[g.opacity.argmax()] = False  # never leave an empty set
        extra = {name: getattr(g, name)[clone] for name in g.ATTRIBUTES}
        if len(split):
            rot, scales = g.rotations()[split], g.scales[split]
            samples = torch.einsum("nij,knj->kni", rot, scales * torch.randn(2, len(split), 3, device=scales.device))
            children = {"positions": (g.positions[split] + samples).reshape(-1, 3),
                        "log_scales": torch.log(scales / d.split_shrink).repeat(2, 1)}
            for name in g.ATTRIBUTES:
                part = children.get(name, getattr(g, name)[split].repeat(2, *[1] * (getattr(g, name).ndim - 1)))
                extra[name] = torch.cat([extra[name], part])
        g.replace_rows(~prune, extra, optimizer)
        state.reset(g.count)
        return {"cloned": len(clone), "split": len(split), "pruned": int(prune.sum()) - len(split),
                "count": g.count, "before": n}

