"""Scores from rendered views: a run's field against the truth, and an image-to-3D reconstruction of a toy
photo against the scene's other sides.

:func:`field_agreement` renders the last checkpoint's scene (the field itself, before any export) and the
truth from the export's contact-sheet cameras, in albedo over white: the silhouette IoU (opacity > 0.5)
and the PSNR of the frames. Beside the exported mesh's F-scores it says where fidelity went: a field that
matches the truth while its mesh does not lost it in the export (isosurface level, floaters removed);
fog around the field shows as a low PSNR with a high IoU.

For image-to-3D, the reconstruction is rendered from the reference camera's orbit (its elevation and distance) at
several azimuths; the ground truth is sphere-traced from the same directions. Image-to-3D framed the
photo to a fixed fill ratio (:mod:`threed.reference.image`), which scales the object by
``s = fill_ratio / natural fill``; scaling a scene by ``s`` about the origin looks exactly like
moving an orbit camera to distance ``d / s``, so the ground truth is rendered from ``d / s``.
Per view: the IoU of the two masks (opacity > 0.5) and whether the dominant colour agrees
(hue-disc naming of :func:`threed.toyworld.score.name_colour`, immune to shading baked into albedo).
Generation never reads any of this; it is for reporting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from threed.cameras import Cameras
from threed.reference.image import ReferenceViewConfig
from threed.render.output import RenderOut
from threed.toyworld.colour import name_colour
from threed.toyworld.raycast import render
from threed.toyworld.scenes import parse_prompt
from threed.toyworld.train_card import reference_view


@torch.no_grad()
def field_agreement(run_dir: str | Path, prompt: str, views: int = 8, resolution: int = 64) -> dict:
    """Silhouette IoU and PSNR of a run's last field against the truth of ``prompt`` (see the module docstring)."""
    from threed.export.views import psnr, view_cameras
    from threed.recipe import last_checkpoint, load_run_config, resolve_device
    from threed.scene import Scene

    cfg = load_run_config(Path(run_dir))
    device = resolve_device(cfg.device)
    scene = Scene.from_checkpoint(last_checkpoint(Path(run_dir), cfg), device)
    cams = view_cameras(views, resolution, scene.radius)
    out = scene.render_eval(cams.to(device), "albedo")
    alpha = out.opacity.cpu()
    background = scene.background(cams.rays()[1].to(device), training=False).cpu()
    field = out.rgb.cpu() - (1.0 - alpha) * background + (1.0 - alpha)  # the same field over white
    truth = render(parse_prompt(prompt), cams, "albedo", (1.0, 1.0, 1.0))
    ious = []
    for k in range(views):
        a, b = alpha[k, ..., 0] > 0.5, truth.opacity[k, ..., 0] > 0.5
        ious.append(float((a & b).sum()) / max(1, int((a | b).sum())))
    return {"iou": round(float(np.mean(ious)), 4), "psnr": round(psnr(field.clamp(0, 1), truth.rgb), 2)}


def example_name(caption: str, elevation: float = 0.0) -> str:
    """File name of an example photo in assets/examples (scripts/make_toy_examples.py): the caption's slug,
    plus ``-el<degrees>`` when it is not seen from elevation 0."""
    from threed.recipe import slugify

    slug = slugify(caption.removeprefix("a ").removeprefix("an "))
    return f"{slug}-el{elevation:g}.png" if elevation else f"{slug}.png"


def framing_scale(caption: str, view: ReferenceViewConfig, probe: int = 256) -> float:
    """How much framing the front photo of ``caption`` (rendered at ``view``'s camera) scaled the object."""
    _, mask = reference_view(caption, probe, view.elevation, view.distance, view.fovy)
    m = mask[0, :, :, 0] > 0.5
    rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
    side = max(int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
    return view.fill_ratio / (side / probe)


def _colour(rgb: torch.Tensor, mask: torch.Tensor) -> str | None:
    px = rgb[mask]
    return None if len(px) < 4 else name_colour(px.median(dim=0).values.numpy())


@torch.no_grad()
def view_agreement(render_fn: Callable[[Cameras], RenderOut], caption: str, view: ReferenceViewConfig,
                   azimuths: Sequence[float] = (0.0, 90.0, 180.0, 270.0), resolution: int = 64,
                   grid_path: str | Path | None = None) -> dict:
    """Mask IoU and colour agreement per azimuth of ``render_fn`` (the reconstruction, albedo) against the
    ground truth of ``caption``; azimuth 0 is the reference view itself. ``grid_path``: also write a PNG,
    ground truth on top, the reconstruction below, one column per azimuth."""
    s = framing_scale(caption, view)
    az = torch.tensor(list(azimuths), dtype=torch.float32)
    cams = Cameras.orbit(view.elevation, view.azimuth + az, view.distance, view.fovy, resolution)
    truth = render(parse_prompt(caption), Cameras.orbit(view.elevation, view.azimuth + az, view.distance / s,
                                                         view.fovy, resolution), "albedo", (1.0, 1.0, 1.0))
    out = render_fn(cams)
    rows = []
    for k, a in enumerate(azimuths):
        m_t, m_r = truth.opacity[k, ..., 0] > 0.5, out.opacity[k, ..., 0].cpu() > 0.5
        iou = float((m_t & m_r).sum()) / max(1, int((m_t | m_r).sum()))
        want, got = _colour(truth.rgb[k], m_t), _colour(out.rgb[k].cpu(), m_r)
        rows.append({"d_azimuth": float(a), "iou": round(iou, 3), "colour_truth": want, "colour": got,
                     "colour_ok": want == got})
    if grid_path is not None:
        import imageio.v3 as iio

        grid = torch.cat([torch.cat(list(truth.rgb), dim=1), torch.cat(list(out.rgb.cpu()), dim=1)], dim=0)
        iio.imwrite(grid_path, (grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    novel = [r for r in rows if r["d_azimuth"] % 360 != 0]
    return {"caption": caption, "framing_scale": round(s, 3), "views": rows,
            "novel_iou": round(float(np.mean([r["iou"] for r in novel])), 3) if novel else None,
            "novel_colour_ok": round(float(np.mean([r["colour_ok"] for r in novel])), 3) if novel else None}


def reconstruct_and_score(recipe: str, caption: str, image: str | Path, overrides: Sequence[str], run_dir: Path,
                          grid_path: str | Path | None = None) -> dict:
    """Run every stage of an image recipe on ``image`` in ``run_dir`` (no export), then score the last
    stage's scene: PSNR against the framed photo at the reference camera, and :func:`view_agreement`
    with ``caption``'s ground truth at the other sides."""
    from threed.export.views import psnr
    from threed.recipe import load_recipe, resolve_device
    from threed.stage import RunContext, Stage

    cfg = load_recipe(recipe, list(overrides), image=str(image))
    device = resolve_device(cfg.device)
    ctx = RunContext(prompt=cfg.prompt, model=cfg.model, device=device, seed=cfg.seed, max_steps=cfg.max_steps,
                     run_dir=Path(run_dir), image=cfg.image, mask=cfg.mask, depth=cfg.depth, image_model=cfg.image_model)
    ckpt = None
    for i, stage_cfg in enumerate(cfg.stages):
        stage = Stage(stage_cfg, ctx, i)
        ckpt = stage.run(init=ckpt)
    tr, _ = stage.setup()  # the finished stage, reloaded from its checkpoint
    scene, ref = tr.scene.eval(), tr.reference
    with torch.no_grad():
        front = scene.render_eval(ref.camera, "albedo")
    report = view_agreement(lambda cams: scene.render_eval(cams.to(device), "albedo"), caption,
                            stage_cfg.reference.view, grid_path=grid_path)
    report["reference_psnr"] = round(psnr(front.rgb, ref.reference.rgb), 2)
    return report
