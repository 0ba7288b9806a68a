"""One training loop for every toy prior: each prior plugs in its data, networks and outputs.

:func:`train_prior` owns what every toy prior's training shares -- seeding, AdamW with a linear warm-up,
the objective (:mod:`threed.toyworld.train_objective`), gradient clipping, an EMA of the weights, a NaN
guard, a log line with step, loss, it/s and ETA, a wall-time budget summed over resumes, resumable
checkpoints beside the output folder, and the final save with the EMA weights, sample grid and model
card. A :class:`ToyPrior` says what differs: which networks, which batches, how the networks turn a
noised batch into a prediction, and how the result is saved and described.

The order of every random draw is fixed (the global torch RNG seeds the networks, ``seed`` renders the
data cache, ``seed + 1`` draws the batches, the noise and the timesteps), so a seed gives the same weights
on every run and a resumed run continues the same stream.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import save_torch_atomic
from threed.toyworld.train_config import DiffusionTrainConfig
from threed.toyworld.train_objective import DDPMObjective, Objective

Log = Callable[[str], None]


class EMA:
    """Exponential moving average of a list of tensors, with the usual warm-up ramp."""

    def __init__(self, params: Sequence[Tensor], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)  # pyright: ignore[reportPrivateImportUsage]

    @torch.no_grad()
    def copy_to(self, params: Sequence[Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


class ToyPrior(ABC):
    """A toy prior's part of the training: its networks, data, forward pass, saved layout and model card."""

    cfg: DiffusionTrainConfig
    modules: dict[str, nn.Module]
    """The trained networks by checkpoint key, in the order their parameters are optimised."""
    views_per_sample: int = 1
    """Consecutive rows of a batch that are views of one sample and share one noise level (a multi-view
    prior's group of views, as MVDream trains); 1 = every row its own."""

    @abstractmethod
    def build(self) -> None:
        """Build the networks into :attr:`modules` (from the global torch RNG, which the loop has seeded)."""

    @abstractmethod
    def describe(self) -> tuple[str, dict[str, Any]]:
        """A log line about the networks and data, and the same facts for the run summary."""

    @abstractmethod
    def load_data(self, generator: torch.Generator, log: Log) -> dict[str, Any]:
        """Render the training data from ``generator``; returns facts about it for the run summary."""

    @abstractmethod
    def batch(self, generator: torch.Generator) -> tuple[Tensor, Any]:
        """``cfg.batch_size`` clean training samples (``B x C x H x W`` in [-1, 1]) and their conditioning."""

    @abstractmethod
    def predict(self, noisy: Tensor, t: Tensor, condition: Any) -> Tensor:
        """The networks' output for the noised samples at levels ``t``."""

    @abstractmethod
    def save(self, out: Path, scheduler: Any) -> None:
        """Write the trained prior (its EMA weights, in eval mode) to ``out`` with the objective's scheduler."""

    @abstractmethod
    def evaluate(self, out: Path) -> list[dict[str, Any]]:
        """Write ``out/samples.png`` from the saved prior and judge every sample (the card's table rows)."""

    @abstractmethod
    def card(self, summary: dict[str, Any]) -> str:
        """The model card (README.md) of a finished run."""


def checkpoint_path(out: Path) -> Path:
    """Where the resumable state of training into ``out`` lives: ``<out>-train-ckpt/state.pt``."""
    return out.parent / f"{out.name}-train-ckpt" / "state.pt"


def train_prior(prior: ToyPrior, out: str | Path, resume: bool = False, log: Log = print) -> dict[str, Any]:
    """Train ``prior`` and write it to ``out`` (its layout + README.md + samples.png); returns the run summary.

    Checkpoints go to :func:`checkpoint_path` every ``cfg.ckpt_minutes``; ``resume`` continues from there
    (the data cache is rebuilt from the seed), and refuses a checkpoint of another model, data or seed.
    """
    cfg, out = prior.cfg, Path(out)
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    prior.build()
    objective: Objective = DDPMObjective(cfg)
    params = [p for module in prior.modules.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay)
    line, facts = prior.describe()
    log(line)

    ckpt = checkpoint_path(out)
    step, elapsed_before, history = 0, 0.0, []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume:
        if not ckpt.exists():
            raise ThreedError(f"--resume: no checkpoint at {ckpt}; run without --resume to start training")
        state = torch.load(ckpt, weights_only=False)
        saved, current = state["config"], to_dict(cfg)
        keys = ("model", "base", "data", "seed")
        if any(saved.get(k) != current.get(k) for k in keys):
            raise ThreedError(f"--resume: checkpoint {ckpt} was made with another model/data config or seed")
        for key, module in prior.modules.items():
            module.load_state_dict(state[key])
        opt.load_state_dict(state["optimizer"])
        ema.shadow = state["ema"]
        gen.set_state(state["generator"])
        step, elapsed_before, history = state["step"], state["elapsed"], state["history"]
        log(f"resumed from {ckpt} at step {step} ({elapsed_before / 60:.1f} min done)")

    facts.update(prior.load_data(torch.Generator().manual_seed(cfg.seed), log))
    log(f"training data ready in {time.time() - t_start:.0f} s")
    budget = cfg.minutes * 60.0

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def save_ckpt() -> None:
        save_torch_atomic({**{key: m.state_dict() for key, m in prior.modules.items()}, "optimizer": opt.state_dict(),
                           "ema": ema.shadow, "generator": gen.get_state(), "step": step, "elapsed": elapsed(),
                           "history": history, "config": to_dict(cfg)}, ckpt)

    for module in prior.modules.values():
        module.train()
    last_log = last_ckpt = t_window = time.time()
    window: list[float] = []
    log_steps = 0
    while step < cfg.steps and elapsed() < budget:
        x0, condition = prior.batch(gen)
        noise = torch.randn(x0.shape, generator=gen)
        g = prior.views_per_sample
        t = objective.timesteps(len(x0) // g, gen).repeat_interleave(g)
        noisy = objective.noisy(x0, noise, t)
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = objective.loss(prior.predict(noisy, t, condition), x0, noise, t)
        if not torch.isfinite(loss):
            raise ThreedError(f"loss became {loss.item()} at step {step}; last good checkpoint: {ckpt}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema.update(step)
        step += 1
        window.append(loss.item())
        log_steps += 1
        now = time.time()
        if now - last_log >= cfg.log_seconds or step == cfg.steps:
            rate = log_steps / (now - t_window)
            eta = min((cfg.steps - step) / max(rate, 1e-9), budget - elapsed())
            history.append((step, float(np.mean(window)), round(elapsed(), 1)))
            log(f"step {step} loss {np.mean(window):.4f} lr {lr:.2e} {rate:.2f} it/s "
                f"({1 / max(rate, 1e-9):.2f} s/step) elapsed {elapsed() / 60:.1f} min ETA {max(eta, 0) / 60:.1f} min")
            window, log_steps, t_window, last_log = [], 0, now, now
        if now - last_ckpt >= cfg.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = now
    if window:
        history.append((step, float(np.mean(window)), round(elapsed(), 1)))
    save_ckpt()
    train_seconds = elapsed()
    log(f"training stopped at step {step} after {train_seconds / 60:.1f} min; writing {out}")

    ema.copy_to(params)
    for module in prior.modules.values():
        module.eval()
    prior.save(out, objective.scheduler)
    summary = {"steps": step, "train_minutes": round(train_seconds / 60, 2), **facts, "history": history,
               "config": to_dict(cfg)}
    summary["eval"] = prior.evaluate(out)
    summary["folder_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20, 2)
    (out / "README.md").write_text(prior.card(summary))
    log(f"wrote {out} ({summary['folder_mb']} MB) in {(time.time() - t_start) / 60:.1f} min this session")
    return summary
