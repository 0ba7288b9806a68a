"""The ceiling: a recipe's own stages fitted straight to ground-truth renders, then exported and scored.

An evaluation tool, never a generation path: nothing in ``threed generate``, the recipes or the app
imports this module, and a recipe cannot ask for it. It answers "how good can this representation, at
this render size, step budget and export, be at all?", the rung of the fidelity ladder
(docs/toyworld.md) between the prior's own 2D samples and score distillation.

Everything comes from the recipe, so the ceiling follows recipe changes: each :class:`threed.stage.Stage`
builds its scene, optimiser groups, learning rates, camera sampler and shading schedule and hands its
geometry on to the next stage (NeRF -> DMTet, NeRF -> Gaussians) as in a run. Only the loss differs: in
place of the guidance, a photometric fit to the truth sphere-traced (:mod:`threed.toyworld.raycast`) at
the stage's own random cameras, in the step's own shading mode and light,

    loss = 0.5 * sum over pixels of (|rgb - rgb_true|^2 + (opacity - mask_true)^2) / batch

plus the stage's regularisers at the recipe's weights. The sum over pixels (not the mean) gives each
pixel a gradient of the size score distillation gives it, so the regularisers keep the weight they have
relative to the guidance. The truth is traced with one ray per pixel, as the stage's renderers cast: an
antialiased target would ask a volume to turn its silhouette into a half-transparent rim. Random solid backgrounds become the solid ``color`` of the stage's background
config, so the truth can be rendered over the same one; the background is no part of the exported asset.
The finished run directory is a normal one (:class:`threed.run.RunLayout`: ``config.yaml``, ``stages/``,
``export/`` from :func:`threed.recipe.export_run`), so :func:`threed.toyworld.score.score_run` scores it like any
other.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from threed.checkpoint import Checkpoint
from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import write_bytes_atomic
from threed.recipe import RecipeConfig, export_run, resolve_device, run_layout, save_config
from threed.render.output import RenderOut
from threed.render.shading import choose_shading
from threed.stage import RunContext, Stage
from threed.toyworld.raycast import render
from threed.toyworld.scenes import Scene, parse_prompt

MARKER = "ceiling.json"
"""Written into a ceiling run directory: what it is, and the fit's losses and time."""


def ceiling_recipe(cfg: RecipeConfig) -> RecipeConfig:
    """``cfg`` with random backgrounds made solid (their ``color``), the one change the fit needs."""
    stages = []
    for stage in cfg.stages:
        if stage.reference is not None:
            raise ThreedError(f"stage {stage.name!r} is image-to-3D (it has a reference view): the ceiling fits "
                              "text recipes' stages to the toy world's truth; use a text recipe such as quickstart")
        background = stage.scene.background
        if background.kind == "random":
            background = replace(background, kind="solid")
        stages.append(replace(stage, scene=replace(stage.scene, background=background)))
    return replace(cfg, stages=stages)


def photometric_loss(out: RenderOut, truth: RenderOut) -> torch.Tensor:
    """Half the squared colour and opacity errors, summed over pixels, averaged over the batch."""
    rgb = (out.rgb - truth.rgb.to(out.rgb)).square().sum()
    mask = (out.opacity - truth.opacity.to(out.opacity)).square().sum()
    return 0.5 * (rgb + mask) / out.rgb.shape[0]


def fit_stage(stage: Stage, truth: Scene, init: Checkpoint | None) -> tuple[Checkpoint, float]:
    """Fit one stage's scene to ``truth``'s renders for the stage's steps; returns its final checkpoint (written
    where the stage keeps it) and the last loss. A stage whose checkpoint is finished is not fitted again."""
    cfg, device = stage.cfg, stage.ctx.device
    tr, resume = stage.setup(init)
    if resume is not None and resume.done:
        return resume, float("nan") if resume.loss is None else resume.loss
    shading, background = cfg.scene.shading, tuple(cfg.scene.background.color)
    loss = torch.zeros(())
    for step in tqdm(range(tr.step, stage.total_steps), desc=f"ceiling {stage.index} {cfg.name}",
                     dynamic_ncols=True, mininterval=1.0):
        tr.scene.update(step)
        cameras = stage.sampler.sample(cfg.render_size, generator=tr.cameras).to(device)
        mode = choose_shading(shading, step, tr.rng)
        out = tr.scene(cameras, mode)
        target = render(truth, cameras, mode, background, ambient=shading.ambient, supersample=1)
        loss = cfg.loss.regularized(photometric_loss(out, target), out)
        if not torch.isfinite(loss):
            raise ThreedError(f"ceiling fit of stage {cfg.name!r}: the loss became NaN/inf at step {step + 1}")
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(tr.params, cfg.grad_clip)
        tr.optimizer.step()
        if tr.scene.post_step(step + 1, tr.optimizer, out):
            tr.params = [p for p in tr.scene.parameters() if p.requires_grad]
        tr.step = step + 1
    ckpt = Checkpoint(stage=cfg.name, step=tr.step, total_steps=stage.total_steps, scene_kind=tr.scene.cfg.kind,
                      scene=tr.scene.state_dict(), scene_config=to_dict(tr.scene.cfg), loss=float(loss.detach()))
    ckpt.save(stage.checkpoint_path)
    if cfg.val_every:
        stage.validate(tr.scene, tr.step)
    return ckpt, float(loss.detach())


def run_ceiling(cfg: RecipeConfig, run_dir: str | Path) -> dict:
    """Fit every stage of ``cfg`` to the truth of ``cfg.prompt`` in ``run_dir``, then export as the recipe does.

    Continues a run directory whose stages are partly done (finished stages are kept). Returns the report
    also written to ``run_dir/ceiling.json``: per stage the final loss, and the fit's wall time.
    """
    run_dir = Path(run_dir)
    truth = parse_prompt(cfg.prompt)
    cfg = ceiling_recipe(cfg)
    device = resolve_device(cfg.device)
    save_config(cfg, run_dir)
    ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=device, seed=cfg.seed, max_steps=cfg.max_steps,
                     run_dir=run_dir)
    start = time.perf_counter()
    ckpt, losses = None, {}
    for i, stage_cfg in enumerate(cfg.stages):
        ckpt, losses[stage_cfg.name] = fit_stage(Stage(stage_cfg, ctx, i), truth, ckpt)
    fit_seconds = time.perf_counter() - start
    export_run(cfg, run_layout(run_dir, cfg), ckpt, device)
    report = {"kind": "ceiling: the recipe's stages fitted to ground-truth renders (evaluation only)",
              "prompt": cfg.prompt, "final_loss": losses, "fit_seconds": round(fit_seconds, 1),
              "wall_seconds": round(time.perf_counter() - start, 1)}
    write_bytes_atomic(run_dir / MARKER, json.dumps(report, indent=1))
    return report
