"""One optimisation stage: render random views, score them with guidance, step the optimiser.

The stage owns the loop: seeded cameras and shading, per-group learning rates, regularisers,
validation grids, atomic checkpoints, resume, a NaN guard, and a progress bar.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from threed.cameras import CameraSampler, CameraSamplerConfig
from threed.checkpoint import Checkpoint, capture_rng, restore_rng
from threed.config import to_dict
from threed.errors import ThreedError
from threed.export.video import write_grid
from threed.guidance.build import GuidanceInputs, build_guidances
from threed.guidance.combined import GuidanceSet
from threed.guidance.distillation import GuidanceOut
from threed.guidance.loading import PriorCache
from threed.guidance.registry import GuidanceConfig
from threed.guidance.rules.sds import SDSConfig
from threed.guidance.text import PromptConfig
from threed.profiling import PhaseTimer
from threed.progress import StageProgress
from threed.reference.losses import ReferenceConfig, ReferenceLosses
from threed.render.output import RenderOut
from threed.render.shading import choose_shading
from threed.scene import NeRFSceneConfig, OptimizerConfig, Scene, SceneConfig


@dataclass
class LossWeights:
    """Weights of the terms summed into a step's loss."""

    guidance: float = 1.0
    """Score-distillation term: the weighted sum of the stage's guidances."""
    orient: float = 0.01
    """DreamFusion orientation loss: penalises normals facing away from the camera."""
    sparsity: float = 0.0
    """Mean of sqrt(opacity^2 + 0.01): discourages fog and floaters."""
    opaque: float = 0.0
    """Binary entropy of opacity: pushes each pixel to fully empty or fully opaque."""
    normal_consistency: float = 0.0
    """Mesh stages: mean 1 - cos between neighbouring face normals; keeps a refined surface smooth."""


@dataclass
class StageConfig:
    """One stage of a recipe."""

    name: str = "coarse"
    """Name used for the stage's folder in the run directory."""
    steps: int = 5000
    """Optimisation steps (capped by the recipe's ``max_steps``)."""
    resolution: int = 64
    """Render resolution (pixels, square) during training."""
    model: str | None = None
    """Prior of this stage's text and flow guidances that name none of their own; None uses the recipe's ``model``."""
    scene: SceneConfig = field(default_factory=NeRFSceneConfig)
    guidance: list[GuidanceConfig] = field(default_factory=lambda: [SDSConfig()])
    """The stage's guidances, each with its ``weight`` (a single mapping is a list of one)."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    cameras: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    reference: ReferenceConfig | None = None
    """Image-to-3D: the reference view rendered every step and its losses (threed.reference.losses); None = none."""
    grad_clip: float | None = None
    """Clip the total gradient norm of the scene's parameters; None disables."""
    val_every: int = 200
    """Write a validation grid every this many steps (and at the end); 0 disables."""
    val_views: int = 4
    val_resolution: int = 96
    ckpt_every: int = 100
    """Checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Refresh the progress bar's loss every this many steps."""


@dataclass
class RunContext:
    """What every stage of one run shares."""

    prompt: str
    model: str
    device: torch.device
    seed: int
    max_steps: int | None
    run_dir: Path
    image: str | None = None
    """Reference image of an image-to-3D run, and its optional mask and depth map."""
    mask: str | None = None
    depth: str | None = None
    image_model: str | None = None
    """View-conditioned prior of an image-to-3D run (``zero123`` guidance)."""
    priors: PriorCache = field(default_factory=PriorCache)
    """The priors the run's stages have loaded (each once)."""


def regulariser_terms(out: RenderOut) -> dict[str, torch.Tensor]:
    """Regularisers computed from a render (see LossWeights for each)."""
    opacity = out.opacity.clamp(1e-5, 1 - 1e-5)
    terms = {
        "sparsity": (opacity.square() + 0.01).sqrt().mean(),
        "opaque": -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean(),
    }
    terms.update(out.aux)
    return terms


@dataclass
class Training:
    """The mutable state of a stage being optimised (apart from its config)."""

    scene: Scene
    guidance: GuidanceSet
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    """Scene parameters, for gradient clipping."""
    rng: random.Random
    """Draws shading modes."""
    step: int = 0
    """Steps completed."""
    last: Checkpoint | None = None
    """The last checkpoint written or resumed from: what a NaN stop keeps."""
    reference: ReferenceLosses | None = None
    """The reference-view losses of an image-to-3D stage."""


class Stage:
    """Runs one StageConfig inside a run directory."""

    def __init__(self, cfg: StageConfig, ctx: RunContext, index: int):
        self.cfg = cfg
        self.ctx = ctx
        self.index = index
        self.dir = ctx.run_dir / "stages" / f"{index}-{cfg.name}"
        self.total_steps = cfg.steps if ctx.max_steps is None else min(cfg.steps, ctx.max_steps)
        self.sampler = CameraSampler(cfg.cameras)

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "last.pt"

    def setup(self, init: Checkpoint | None = None) -> tuple["Training", Checkpoint | None]:
        """Build the scene, prior, guidance and optimiser; load the stage's own checkpoint if it has one.

        ``init`` is the previous stage's final checkpoint (hand-off), used when the stage starts fresh.
        Returns the training state and the checkpoint it resumed from (None for a fresh start).
        """
        cfg, ctx = self.cfg, self.ctx
        resume = Checkpoint.load(self.checkpoint_path) if self.checkpoint_path.exists() else None
        torch.manual_seed(ctx.seed + 1000 * self.index)
        scene = Scene(cfg.scene).to(ctx.device)
        if resume is None and init is not None:
            self._hand_off(scene, init)
        guidance = build_guidances(cfg.guidance, GuidanceInputs(
            device=ctx.device, priors=ctx.priors, prompt=ctx.prompt, prompt_config=cfg.prompt,
            model=cfg.model or ctx.model, image_model=ctx.image_model, image=ctx.image, mask=ctx.mask,
            view=cfg.reference.view if cfg.reference else None))
        params = scene.parameter_groups(cfg.optimizer)
        optimizer = torch.optim.Adam(params + guidance.parameter_groups(), betas=cfg.optimizer.betas,
                                     eps=cfg.optimizer.eps)
        tr = Training(scene=scene, guidance=guidance, optimizer=optimizer,
                      params=[p for group in params for p in group["params"]],
                      rng=random.Random(ctx.seed + self.index),
                      reference=ReferenceLosses(cfg.reference, ctx) if cfg.reference else None)
        if resume is not None:
            scene.load_state_dict(resume.scene)
            if resume.optimizer is not None:
                optimizer.load_state_dict(resume.optimizer)
            guidance.load_state_dict(resume.guidance)
            restore_rng(resume.rng.get("global", {}))
            if "stage" in resume.rng:
                tr.rng.setstate(resume.rng["stage"])
            tr.step = resume.step
        scene.train()
        return tr, resume

    def train_step(self, tr: "Training", timer: PhaseTimer | None = None) -> tuple[torch.Tensor, GuidanceOut]:
        """One optimisation step; ``timer`` (if given) records render / guidance / backward / optimizer time."""
        cfg, step = self.cfg, tr.step
        phase = timer or PhaseTimer.off()
        tr.scene.update(step)
        tr.guidance.update(step, self.total_steps)
        with phase("render"):
            cameras = self.sampler.sample(cfg.resolution).to(self.ctx.device)
            out = tr.scene(cameras, choose_shading(cfg.scene.shading, step, tr.rng))
        with phase("guidance"):
            g = tr.guidance(out, cameras)
        terms = {"guidance": g.loss, **regulariser_terms(out)}
        loss = sum(getattr(cfg.loss, k) * v for k, v in terms.items()
                   if hasattr(cfg.loss, k) and getattr(cfg.loss, k) != 0)
        if tr.reference is not None:  # image-to-3D: the reference camera's losses, weighted by their own config
            with phase("reference"):
                ref = tr.reference(tr.scene, step)
            loss = loss + sum(ref.values())
            g.terms.update({k: float(v.detach()) for k, v in ref.items()})
        if not torch.isfinite(loss):
            self._nan_stop(step, "loss", tr.last)
        with phase("backward"):
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(tr.params, cfg.grad_clip or math.inf)
            if not torch.isfinite(grad_norm):
                self._nan_stop(step, "gradient", tr.last)
            tr.optimizer.step()
            if tr.scene.post_step(step + 1, tr.optimizer):  # Gaussians densified: new parameter tensors
                tr.params = [p for p in tr.scene.parameters() if p.requires_grad]
        tr.step = step + 1
        return loss.detach(), g

    def run(self, init: Checkpoint | None = None) -> Checkpoint:
        """Run (or resume) the stage; ``init`` is the previous stage's final checkpoint, if any."""
        cfg = self.cfg
        tr, resume = self.setup(init)
        if resume is not None and resume.step >= self.total_steps:
            return resume
        tr.last = resume
        start = tr.step
        bar = tqdm(total=self.total_steps, initial=start, desc=f"stage {self.index} {cfg.name}",
                   dynamic_ncols=True, mininterval=1.0)
        t0, loss_value = time.perf_counter(), float("nan")
        self._progress(start, None, start, t0)
        while tr.step < self.total_steps:
            loss, g = self.train_step(tr)
            done = tr.step
            bar.update(1)
            if done % cfg.log_every == 0 or done == self.total_steps:
                loss_value = float(loss)
                bar.set_postfix(loss=f"{loss_value:.4g}", t=f"{g.terms.get('t', float('nan')):.2f}", refresh=False)
                self._progress(done, loss_value, start, t0)
            if cfg.val_every and (done % cfg.val_every == 0 or done == self.total_steps):
                self.validate(tr.scene, done)
            if done % cfg.ckpt_every == 0 or done == self.total_steps:
                tr.last = self._checkpoint(tr, float(loss))
        bar.close()
        elapsed = time.perf_counter() - t0
        if self.total_steps > start:
            tqdm.write(f"stage {self.index} {cfg.name}: {self.total_steps - start} steps in {elapsed:.1f}s "
                       f"({(self.total_steps - start) / elapsed:.2f} it/s), final loss {loss_value:.4g}")
        if tr.last is None or tr.last.step < tr.step:  # zero-step stage: still hand on the geometry
            tr.last = self._checkpoint(tr, None)
        return tr.last

    def _progress(self, done: int, loss: float | None, start: int, t0: float) -> None:
        """Report the step to ``progress.json`` for watchers in other processes (:mod:`threed.progress`)."""
        StageProgress.measure(self.cfg.name, self.index, done, self.total_steps, loss, done - start,
                              time.perf_counter() - t0).write(self.dir)

    def _hand_off(self, scene: Scene, init: Checkpoint) -> None:
        """Start ``scene`` from the previous stage: its weights when the representation is the same, else
        a conversion (:meth:`Scene.init_from`, e.g. NeRF density -> DMTet SDF)."""
        if init.scene_kind == scene.cfg.kind:
            missing, unexpected = scene.load_state_dict(init.scene, strict=False)
            if unexpected or missing:
                raise ThreedError(f"stage {self.cfg.name!r} cannot take the geometry of stage {init.stage!r}: "
                                  f"their geometry settings differ (missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}); keep the grid/encoding settings equal across same-kind stages")
            return
        if not init.scene_config:
            raise ThreedError(f"stage {self.cfg.name!r} ({scene.cfg.kind}) cannot start from the {init.scene_kind} "
                              f"checkpoint of stage {init.stage!r}: it predates typed hand-offs (no scene_config)")
        previous = Scene.from_checkpoint(init, self.ctx.device)
        info = scene.init_from(previous)
        tqdm.write(f"stage {self.index} {self.cfg.name}: started from the {init.scene_kind} of stage "
                   f"{init.stage!r} ({', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in info.items())})")

    def _checkpoint(self, tr: "Training", loss: float | None) -> Checkpoint:
        ckpt = Checkpoint(stage=self.cfg.name, step=tr.step, total_steps=self.total_steps,
                          scene_kind=tr.scene.cfg.kind, scene=tr.scene.state_dict(),
                          scene_config=to_dict(tr.scene.cfg),
                          optimizer=tr.optimizer.state_dict(), guidance=tr.guidance.state_dict(),
                          rng={"global": capture_rng(), "stage": tr.rng.getstate()}, loss=loss)
        ckpt.save(self.checkpoint_path)
        return ckpt

    def _nan_stop(self, step: int, what: str, ckpt: Checkpoint | None) -> None:
        kept = (f"the last good checkpoint (step {ckpt.step}) is kept at {self.checkpoint_path}" if ckpt
                else "no checkpoint had been written yet")
        raise ThreedError(f"stage {self.cfg.name!r}: the {what} became NaN/inf at step {step + 1}; stopped, and "
                          f"{kept}. Lower the learning rates (optimizer.*) or the guidance scale, then "
                          f"resume with --resume {self.ctx.run_dir}")

    def validate(self, scene: Scene, step: int) -> Path:
        """Render ``val_views`` fixed views: albedo row, lit (textureless) row, opacity row."""
        cams = self.sampler.turntable(self.cfg.val_views, self.cfg.val_resolution).to(self.ctx.device)
        albedo = scene.render_eval(cams, "albedo")
        rows = [albedo.rgb, albedo.opacity.expand(-1, -1, -1, 3)]
        try:
            rows.insert(1, scene.render_eval(cams, "textureless").rgb)
        except ValueError:  # a renderer without normals
            pass
        path = self.dir / "val" / f"step-{step:06d}.png"
        write_grid(torch.cat(rows).cpu().numpy(), path, ncols=self.cfg.val_views)
        return path
