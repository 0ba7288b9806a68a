"""One optimisation stage: render random views, score them with guidance, step the optimiser.

The stage owns the loop: seeded cameras and shading, per-group learning rates, regularisers,
validation grids, atomic checkpoints, resume, a NaN guard, and a progress bar.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import trimesh
from tqdm import tqdm

from threed.cameras import CameraSampler, CameraSamplerConfig
from threed.checkpoint import Checkpoint, capture_rng, read_stage_checkpoint, restore_rng
from threed.config import to_dict
from threed.errors import ThreedError
from threed.export.isosurface import extract_mesh
from threed.export.meshops import decimate
from threed.export.video import write_grid
from threed.files import DiskFullError
from threed.guidance.build import GuidanceInputs, build_guidances
from threed.guidance.combined import GuidanceSet
from threed.guidance.distillation import GuidanceOut
from threed.guidance.loading import PriorCache
from threed.guidance.registry import GuidanceConfig
from threed.guidance.rules.sds import SDSConfig
from threed.guidance.text import PromptConfig
from threed.geometry.textured_mesh import TexturedMesh
from threed.mesh_files import UserMesh
from threed.profiling import PhaseTimer
from threed.progress import Progress
from threed.reference.losses import ReferenceConfig, ReferenceLosses
from threed.regularizers import LossConfig
from threed.render.output import RenderOut
from threed.render.shading import choose_shading
from threed.run import RunLayout
from threed.scene import FromDensityConfig, NeRFSceneConfig, OptimizerConfig, Scene, SceneConfig


@dataclass
class StageConfig:
    """One stage of a recipe."""

    name: str = "coarse"
    """Name used for the stage's folder in the run directory."""
    steps: int = 5000
    """Optimisation steps (capped by the recipe's ``max_steps``)."""
    render_size: int = 64
    """Pixels per side of the training renders (square images)."""
    model: str | None = None
    """Prior of this stage's text and flow guidances that name none of their own; None uses the recipe's ``model``."""
    scene: SceneConfig = field(default_factory=NeRFSceneConfig)
    """What is optimised: the representation (``kind``), its renderer, background and shading (threed.scene)."""
    guidance: list[GuidanceConfig] = field(default_factory=lambda: [SDSConfig()])
    """The stage's guidances, each a rule (``kind``: sds, nfsd, vsd, zero123, ...; threed.guidance.rules) with its
    ``weight``; a single mapping is a list of one."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """How the recipe's prompt is conditioned: view-dependent suffixes, negative prompt (threed.guidance.text)."""
    cameras: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)
    """Where the random training cameras are drawn from, and how many per step (``batch_size``)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Adam learning rates per parameter group (threed.geometry.base)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Weights of the guidance and of each regulariser (threed.regularizers)."""
    reference: ReferenceConfig | None = None
    """Image-to-3D: the reference view rendered every step and its losses (threed.reference.losses); None = none."""
    grad_clip: float | None = None
    """Clip the total gradient norm of the scene's parameters; None disables."""
    val_every: int = 200
    """Write a validation grid every this many steps (and at the end); 0 disables."""
    val_views: int = 4
    """Turntable views per validation grid (columns)."""
    val_resolution: int = 96
    """Pixels per side of each validation view."""
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
    mesh: UserMesh | None = None
    """The user's mesh a ``mesh`` scene paints (``threed texture``)."""
    priors: PriorCache = field(default_factory=PriorCache)
    """The priors the run's stages have loaded (each once)."""
    progress: Callable[[Progress], None] | None = None
    """Called with each progress report as the stage writes it (the Python API's ``progress`` callback)."""
    source: Scene | None = None
    """An edit run's original asset, frozen (:mod:`threed.source`): rendered at each step's cameras and shading
    for the editing rules (DDS, PDS) and ``loss.preserve``; None for other runs."""


def hand_off_level(scene: Scene, previous: Scene) -> float:
    """The density level of ``previous``'s surface that ``scene`` starts on (:meth:`Scene.init_from`): the
    configured ``init_level``, else the automatic level of mesh export (threed.export.isosurface), judged on
    a grid of ``init_grid_size`` points per axis."""
    cfg = scene.cfg
    if not isinstance(cfg, FromDensityConfig) or not previous.has_density:
        raise ThreedError(f"a {cfg.kind} scene cannot start from a {previous.cfg.kind} scene; "
                          "supported: nerf -> dmtet, gaussian -> dmtet, nerf -> gaussian")
    if cfg.init_level is not None:
        return cfg.init_level
    _, info = extract_mesh(previous.density, radius=previous.radius, resolution=cfg.init_grid_size,
                           device=next(previous.parameters()).device)
    return float(info["level"])


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
    cameras: torch.Generator
    """Draws the training cameras (the stage's own stream: nothing else moves it)."""
    noise: torch.Generator
    """Draws the guidances' timesteps and noise (given to them through :class:`GuidanceInputs`)."""
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
        self.dir = RunLayout(ctx.run_dir).stage(index, cfg.name)
        """The stage's folder: checkpoint, progress, validation grids."""
        self.total_steps = cfg.steps if ctx.max_steps is None else min(cfg.steps, ctx.max_steps)
        self.sampler = CameraSampler(cfg.cameras)
        grids = self.dir.val_images()
        self.image: Path | None = grids[-1] if grids else None
        """The newest validation grid the stage's reports show (its own, else one the run hands in)."""
        self._keep_previous = True
        """Whether a new checkpoint keeps the one on disk as ``prev.pt``: not when that one is damaged (the
        stage resumed from ``prev.pt``), so the good previous checkpoint is never replaced by a bad one."""

    @property
    def checkpoint_path(self) -> Path:
        return self.dir.checkpoint

    def setup(self, init: Checkpoint | None = None) -> tuple["Training", Checkpoint | None]:
        """Build the scene, prior, guidance and optimiser; load the stage's own checkpoint if it has one.

        ``init`` is the previous stage's final checkpoint (hand-off), used when the stage starts fresh.
        Returns the training state and the checkpoint it resumed from (None for a fresh start).
        """
        cfg, ctx = self.cfg, self.ctx
        resume = None
        if self.dir.has_checkpoint:
            resume, source = read_stage_checkpoint(self.dir)
            self._keep_previous = source == self.dir.checkpoint
        torch.manual_seed(ctx.seed + 1000 * self.index)
        scene = Scene(cfg.scene).to(ctx.device)
        if resume is None and init is not None:
            self._hand_off(scene, init)
        elif resume is None and isinstance(scene.geometry, TexturedMesh):
            self._place_mesh(scene.geometry)
        # Cameras and guidance (timesteps, noise) draw from generators of their own, seeded per stage, so
        # neither the renderer's draws nor a changed camera batch shifts the other's stream.
        noise = torch.Generator().manual_seed(ctx.seed + 1000 * self.index + 2)
        guidance = build_guidances(cfg.guidance, GuidanceInputs(
            device=ctx.device, priors=ctx.priors, prompt=ctx.prompt, prompt_config=cfg.prompt,
            model=cfg.model or ctx.model, image_model=ctx.image_model, image=ctx.image, mask=ctx.mask,
            view=cfg.reference.view if cfg.reference else None, generator=noise))
        if ctx.source is None and (guidance.needs_source or cfg.loss.preserve.active):
            what = next((g.cfg.kind for g in guidance if g.needs_source), "loss.preserve")
            raise ThreedError(f"stage {cfg.name!r}: {what} compares with an original asset, which only an edit "
                              f"has: use it with threed edit RUN_DIR PROMPT")
        params = scene.parameter_groups(cfg.optimizer)
        optimizer = torch.optim.Adam(params + guidance.parameter_groups(), betas=cfg.optimizer.betas,
                                     eps=cfg.optimizer.eps)
        tr = Training(scene=scene, guidance=guidance, optimizer=optimizer,
                      params=[p for group in params for p in group["params"]],
                      rng=random.Random(ctx.seed + self.index),
                      cameras=torch.Generator().manual_seed(ctx.seed + 1000 * self.index + 1), noise=noise,
                      reference=ReferenceLosses(cfg.reference, ctx.image, ctx.device, ctx.mask, ctx.depth)
                      if cfg.reference else None)
        if resume is not None:
            scene.load_state_dict(resume.scene)
            if resume.optimizer is not None:
                optimizer.load_state_dict(resume.optimizer)
            guidance.load_state_dict(resume.guidance)
            restore_rng(resume.rng.get("global", {}))
            if "stage" in resume.rng:
                tr.rng.setstate(resume.rng["stage"])
            if "cameras" in resume.rng:
                tr.cameras.set_state(resume.rng["cameras"])
            if "guidance" in resume.rng:
                tr.noise.set_state(resume.rng["guidance"])
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
            cameras = self.sampler.sample(cfg.render_size, generator=tr.cameras).to(self.ctx.device)
            shading = choose_shading(cfg.scene.shading, step, tr.rng)
            out = tr.scene(cameras, shading)
        source = None
        if self.ctx.source is not None and (tr.guidance.needs_source or cfg.loss.preserve.active):
            with phase("source"):  # the original asset at the same cameras and shading (an edit)
                source = self.ctx.source.render_eval(cameras, shading)
        with phase("guidance"):
            g = tr.guidance(out, cameras, source)
        loss = cfg.loss.total(g.loss, out, source)
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
            if tr.scene.post_step(step + 1, tr.optimizer, out):  # Gaussians densified: new parameter tensors
                tr.params = [p for p in tr.scene.parameters() if p.requires_grad]
        tr.step = step + 1
        return loss.detach(), g

    def run(self, init: Checkpoint | None = None,
            prepared: tuple["Training", Checkpoint | None] | None = None) -> Checkpoint:
        """Run (or resume) the stage; ``init`` is the previous stage's final checkpoint, if any.

        ``prepared``: what :meth:`setup` returned, when the caller set the stage up first (a new run builds its
        first stage, and so checks the prompt against the prior, before it makes the run directory)."""
        cfg = self.cfg
        tr, resume = prepared or self.setup(init)
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
            if cfg.val_every and (done % cfg.val_every == 0 or done == self.total_steps):
                self.image = self.validate(tr.scene, done)
            if done % cfg.log_every == 0 or done == self.total_steps:
                loss_value = float(loss)
                bar.set_postfix(loss=f"{loss_value:.4g}", t=f"{g.terms.get('t', float('nan')):.2f}", refresh=False)
                self._progress(done, loss_value, start, t0)
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
        """Report the step to ``progress.json`` for watchers in other processes and to the run's progress
        callback (:mod:`threed.progress`)."""
        report = Progress.measure(self.cfg.name, self.index, done, self.total_steps, loss, done - start,
                                  time.perf_counter() - t0, self.image)
        report.write(self.dir)
        if self.ctx.progress is not None:
            self.ctx.progress(report)

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
        previous = Scene.from_checkpoint(init, self.ctx.device)
        info = scene.init_from(previous, hand_off_level(scene, previous))
        tqdm.write(f"stage {self.index} {self.cfg.name}: started from the {init.scene_kind} of stage "
                   f"{init.stage!r} ({', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in info.items())})")

    def _place_mesh(self, geometry: TexturedMesh) -> None:
        """A fresh ``mesh`` scene: the run's mesh in the scene frame, decimated to ``max_faces`` for the
        optimisation only (the export bakes onto the original), seams welded and windings made consistent so that lambertian
        shading lights its outside."""
        user = self.ctx.mesh
        if user is None:
            raise ThreedError(f"stage {self.cfg.name!r} paints a given mesh (scene kind mesh): run it with "
                              f"threed texture MESH PROMPT --recipe ...")
        cfg = geometry.cfg
        surface = trimesh.Trimesh(user.frame(cfg.extent).to_world(user.vertices), user.faces, process=False)
        surface.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split vertices; the field needs none
        if len(surface.faces) > cfg.max_faces:
            tqdm.write(f"stage {self.index} {self.cfg.name}: the mesh's {len(surface.faces):,} faces are decimated to "
                       f"{cfg.max_faces:,} for the optimisation; the texture is baked onto all of them")
            surface = decimate(surface, cfg.max_faces)
        else:
            trimesh.repair.fix_normals(surface, multibody=True)
        geometry.set_surface(torch.as_tensor(surface.vertices, dtype=torch.float32),
                             torch.as_tensor(surface.faces, dtype=torch.long))

    def _checkpoint(self, tr: "Training", loss: float | None) -> Checkpoint:
        ckpt = Checkpoint(stage=self.cfg.name, step=tr.step, total_steps=self.total_steps,
                          scene_kind=tr.scene.cfg.kind, scene=tr.scene.state_dict(),
                          scene_config=to_dict(tr.scene.cfg),
                          optimizer=tr.optimizer.state_dict(), guidance=tr.guidance.state_dict(),
                          rng={"global": capture_rng(), "stage": tr.rng.getstate(), "cameras": tr.cameras.get_state(),
                               "guidance": tr.noise.get_state()}, loss=loss)
        try:
            ckpt.save(self.dir.checkpoint, self.dir.previous_checkpoint if self._keep_previous else None)
        except DiskFullError as exc:
            raise ThreedError(f"stage {self.cfg.name!r}: the checkpoint of step {tr.step} could not be written: "
                              f"{exc}. {self._kept(tr.last)}; once there is space, continue with --resume "
                              f"{self.ctx.run_dir}") from exc
        self._keep_previous = True
        return ckpt

    def _kept(self, ckpt: Checkpoint | None) -> str:
        where = self.dir.checkpoint if self._keep_previous else self.dir.previous_checkpoint  # where it was read from
        return f"The last good checkpoint (step {ckpt.step}) is kept at {where}" if ckpt else \
            "No checkpoint had been written yet"

    def _nan_stop(self, step: int, what: str, ckpt: Checkpoint | None) -> None:
        raise ThreedError(f"stage {self.cfg.name!r}: the {what} became NaN/inf at step {step + 1}; stopped. "
                          f"{self._kept(ckpt)}. Lower the learning rates (optimizer.*) or the guidance scale, then "
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
        path = self.dir.val_image(step)
        write_grid(torch.cat(rows).cpu().numpy(), path, ncols=self.cfg.val_views)
        return path
