"""Editing a finished asset by a new prompt (``threed edit RUN_DIR PROMPT``): the source run checked, the edit
recipe built from it.

The edit recipe is the source run's recipe with one stage, ``edit``, made from the source stage that wrote the
run's final checkpoint: the same scene (its config read from that checkpoint, so any representation --
NeRF, DMTet, Gaussians -- edits as it was trained), cameras, render size, learning rates and regularisers,
with the editing defaults of :class:`EditDefaults`: an editing rule (DDS by default, PDS, or plain SDS for
comparison) whose source prompt is the source run's prompt, fewer steps, a lower ``t_max`` (an edit keeps
the coarse structure, which the largest timesteps would redraw), no albedo-only warm-up, the preservation
term's opacity part on (it holds the silhouette), and a solid background (the random colour per image of
text-to-3D training would differ between the edit's render and the original's, and show up in the editing
rules' difference). KEY=VALUE overrides apply to that recipe, as
for ``threed generate`` (``stages.0.steps=300``, ``stages.0.loss.preserve.opacity=0`` for a shape edit, ``seed=1``).

The source run is only read: it must be a finished run that nobody is writing (an unfinished one is refused:
finish it with ``threed generate --resume``; its last checkpoint is not the asset its export shows). docs/editing.md
has the measured edits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threed.checkpoint import read_stage_checkpoint
from threed.config import build, to_dict
from threed.errors import ThreedError
from threed.guidance.registry import GUIDANCES
from threed.recipe import RecipeConfig, load_run_config, recipe_from, run_layout
from threed.run import RunLayout
from threed.scene import SCENE_CONFIGS
from threed.source import EditSource, LoadedSource, sha256

EDIT_RULES = ("dds", "pds", "sds")
"""The rules ``threed edit --rule`` offers: the two editing rules, and plain SDS from the same start (for
comparison: it knows nothing of the original but its starting point)."""


@dataclass
class EditDefaults:
    """What an edit changes in the source stage's settings (everything else is kept)."""

    rule: str = "dds"
    """The guidance: ``dds`` (Delta Denoising Score, Hertz et al. 2023), ``pds`` (Posterior Distillation
    Sampling, Koo et al. 2024) or ``sds``."""
    steps: int = 200
    """Optimisation steps of the edit (the toy quickstart trains 600 from scratch)."""
    t_max: float = 0.6
    """Largest timestep (fraction), constant: the original's coarse structure is kept, not redrawn."""
    val_every: int = 100
    """Validation grid every this many steps (and at the end)."""
    preserve_opacity: float = 1000.0
    """Weight of the preservation term's opacity part (``loss.preserve.opacity``): holds the original's silhouette,
    without which a toy DDS edit collapsed into fog on one seed of two (docs/editing.md). The term is a mean
    over pixels, so 1000 is about one pixel's worth of the guidance at 32 px. A shape edit sets it to 0."""


def check_source_run(run_dir: str | Path) -> tuple[RecipeConfig, EditSource, LoadedSource]:
    """The recipe of the finished run in ``run_dir``, where its asset is (:class:`EditSource`) and that
    checkpoint, read once (its bytes, hashed here and copied into the edit run, and its contents), or a
    :class:`ThreedError` saying why it cannot be edited: missing, not a run, being written, unfinished."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ThreedError(f"run directory {path} does not exist")
    if not path.is_dir() or not RunLayout(path).is_run:
        raise ThreedError(f"{path} is not a threed run directory (no config.yaml): give the folder that "
                          f"threed generate wrote")
    holder = RunLayout(path).holder()
    if holder is not None:
        raise ThreedError(f"{path} is in use: {holder} is writing it. Edit it once that has finished")
    cfg = load_run_config(path)
    layout = run_layout(path, cfg)
    stage = layout.stages[-1]
    if not stage.has_checkpoint:
        raise ThreedError(f"{path} is unfinished (its last stage {stage.name!r} has no checkpoint): finish it "
                          f"with threed generate --resume {path}, then edit it")
    ckpt, file = read_stage_checkpoint(stage)
    if not ckpt.done:
        raise ThreedError(f"{path} is unfinished (stage {stage.name!r} at step {ckpt.step} of "
                          f"{ckpt.total_steps}): finish it with threed generate --resume {path}, then edit it")
    data = file.read_bytes()
    source = EditSource(run=str(path.resolve()), prompt=cfg.prompt, stage=ckpt.stage, step=ckpt.step,
                        checkpoint=str(file.resolve()), sha256=sha256(data))
    return cfg, source, LoadedSource(data, ckpt)


def edit_recipe(source_cfg: RecipeConfig, source: EditSource, prompt: str, scene_config: Mapping[str, Any],
                defaults: EditDefaults | None = None, source_prompt: str | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> RecipeConfig:
    """The recipe that edits ``source``'s asset toward ``prompt`` (module docstring); ``scene_config``: the
    source checkpoint's scene config; ``source_prompt`` replaces the source run's prompt in the editing rule."""
    defaults = defaults or EditDefaults()
    if not prompt.strip():
        raise ThreedError('the prompt is empty: give the new prompt, e.g. threed edit RUN_DIR "a blue cube"')
    if defaults.rule not in EDIT_RULES:
        raise ThreedError(f"unknown editing rule {defaults.rule!r}; choose one of {', '.join(EDIT_RULES)}")
    base = next(s for s in source_cfg.stages if s.name == source.stage)
    scene = build(SCENE_CONFIGS[str(scene_config["kind"])], dict(scene_config), "scene")
    if scene.background.kind == "random":
        scene.background = dataclasses.replace(scene.background, kind="solid")
    scene.shading = dataclasses.replace(scene.shading, albedo_only_steps=0)
    old = base.guidance[0]
    rule: dict[str, Any] = {"kind": defaults.rule, "guidance_scale": old.guidance_scale, "t_min": old.t_min,
                            "t_max": max(defaults.t_max, old.t_min + 1e-3)}
    if defaults.rule != "sds":
        rule["source_prompt"] = source.prompt if source_prompt is None else source_prompt
    loss = dataclasses.replace(base.loss, preserve=dataclasses.replace(base.loss.preserve,
                                                                        opacity=defaults.preserve_opacity))
    stage = dataclasses.replace(base, name="edit", steps=defaults.steps, scene=scene, loss=loss,
                                guidance=[build(GUIDANCES.config(defaults.rule), rule, "guidance")], reference=None,
                                val_every=defaults.val_every, ckpt_every=min(base.ckpt_every, defaults.steps))
    cfg = dataclasses.replace(source_cfg, prompt=prompt, stages=[stage], max_steps=None, image=None, mask=None,
                              depth=None, edit=source,
                              description=f"edit of {source.run} ({source.prompt!r} -> {prompt!r}) by {defaults.rule}")
    return recipe_from(to_dict(cfg), overrides, "the edit recipe")
