"""Score an image-to-3D reconstruction of a toy-world photo against the scene's other sides.

The reconstruction is rendered from the reference camera's orbit (its elevation and distance) at
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

import numpy as np
import torch

from threed.cameras import Cameras
from threed.reference.image import ReferenceViewConfig
from threed.render.output import RenderOut
from threed.toyworld.raycast import render
from threed.toyworld.scenes import parse_prompt
from threed.toyworld.score import name_colour
from threed.toyworld.train_views import reference_view


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
                   azimuths: Sequence[float] = (0.0, 90.0, 180.0, 270.0), resolution: int = 64) -> dict:
    """Mask IoU and colour agreement per azimuth of ``render_fn`` (the reconstruction, albedo) against the
    ground truth of ``caption``; azimuth 0 is the reference view itself."""
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
    novel = [r for r in rows if r["d_azimuth"] % 360 != 0]
    return {"caption": caption, "framing_scale": round(s, 3), "views": rows,
            "novel_iou": round(float(np.mean([r["iou"] for r in novel])), 3) if novel else None,
            "novel_colour_ok": round(float(np.mean([r["colour_ok"] for r in novel])), 3) if novel else None}
