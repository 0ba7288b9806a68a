"""Reporting toy-world scores: the headline numbers of one asset, their summary over prompts, and the
fidelity ladder (prior, ceiling, score distillation) side by side as a table and as pictures.

:func:`headline` reads a :func:`threed.toyworld.score.score_mesh` / ``score_run`` result of any prompt kind
(one object, a painted front, two objects) into the same flat numbers; :func:`summarise` turns a list of
them into the issue's target columns (mean and worst F@0.05, mean F@0.02, height/width error, colour
Delta E, pieces). Rendering here draws ground truth and exported assets from one display camera, the
asset as written (export transform undone) so a wrong size or place shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.export.video import image_grid, to_uint8
from threed.export.views import AssetRenderer
from threed.toyworld.raycast import render
from threed.toyworld.scenes import parse_prompt
from threed.toyworld.score import export_mesh_path, export_to_world, load_mesh

DISPLAY = {"elevation": 15.0, "azimuth": 30.0, "distance": 2.75, "fovy": 40.0}
"""The display camera of ladder pictures: a front three-quarter view, as the contact sheet's default."""


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def headline(scores: dict) -> dict:
    """The flat numbers of one scored asset: ``f05``, ``f02``, ``chamfer_l1``, ``hw_error`` (relative, signed;
    for two objects the one further from 0), ``delta_e`` (for two objects their mean), ``pieces`` (objects
    counted), ``largest`` (area share of the largest piece), ``psnr`` (export vs field), ``field_size``,
    ``field_iou`` and ``field_psnr`` (the field itself against the truth, when measured) and ``right`` (the
    nearest-class verdict: colour and shape right, and for two objects the sides)."""
    fid = scores["fidelity"]
    if "objects" in scores:
        objects = [o for o in scores["objects"] if o is not None]
        errors = [o["fidelity"]["height_width_error"] for o in objects]
        hw = max(errors, key=abs) if errors else None
        de = float(np.mean([o["colour"]["delta_e"] for o in objects])) if objects else None
    else:
        hw, de = fid["height_width_error"], scores["colour"]["delta_e"]
    export, field = scores.get("export") or {}, scores.get("field") or {}
    return {"f05": fid["f"]["0.05"], "f02": fid["f"]["0.02"], "chamfer_l1": fid["chamfer_l1"], "hw_error": hw,
            "delta_e": _round(de, 3), "pieces": scores["components"]["n_components"],
            "largest": scores["components"]["largest_area_fraction"], "psnr": export.get("mean_psnr"),
            "field_size": export.get("field_size"), "field_iou": field.get("iou"), "field_psnr": field.get("psnr"),
            "right": bool(scores["correct"])}


def summarise(rows: list[dict]) -> dict:
    """Over :func:`headline` rows: mean and worst F@0.05, mean F@0.02, mean and worst |height/width error|,
    mean and worst Delta E, the share with one piece and the most pieces, mean PSNR; None when empty."""
    if not rows:
        return {}

    def values(key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) is not None]

    def stat(key: str, how) -> float | None:
        v = values(key)
        return _round(how(v)) if v else None

    abs_hw = [abs(v) for v in values("hw_error")]
    return {"n": len(rows), "mean_f05": stat("f05", np.mean), "worst_f05": stat("f05", min),
            "mean_f02": stat("f02", np.mean), "mean_hw_error": _round(np.mean(abs_hw)) if abs_hw else None,
            "worst_hw_error": _round(max(abs_hw)) if abs_hw else None, "mean_delta_e": stat("delta_e", np.mean),
            "worst_delta_e": stat("delta_e", max), "one_piece": _round(np.mean([r["pieces"] == 1 for r in rows])),
            "max_pieces": int(max(r["pieces"] for r in rows)), "mean_psnr": stat("psnr", np.mean),
            "mean_field_iou": stat("field_iou", np.mean)}


def separator(header: str) -> str:
    """The markdown separator row under a table header row."""
    return "|---" * (header.count("|") - 1) + "|"


SUMMARY_HEADER = ("| recipe | seeds | runs | mean F@0.05 | worst F@0.05 | mean F@0.02 "
                  "| height/width error mean / worst | colour ΔE mean / worst | one piece | most pieces | export PSNR "
                  "| field IoU |")


def summary_row(label: str, seeds: str, s: dict) -> str:
    """One markdown row of :data:`SUMMARY_HEADER` from :func:`summarise`."""
    if not s:
        return f"| {label} | {seeds} | 0 |" + " · |" * 9

    def pct(v: float | None) -> str:
        return "·" if v is None else f"{100 * v:.0f} %"

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "·" if v is None else format(v, fmt)

    return (f"| {label} | {seeds} | {s['n']} | {num(s['mean_f05'])} | {num(s['worst_f05'])} | {num(s['mean_f02'])} | "
            f"{pct(s['mean_hw_error'])} / {pct(s['worst_hw_error'])} | {num(s['mean_delta_e'], '.1f')} / "
            f"{num(s['worst_delta_e'], '.1f')} | {pct(s['one_piece'])} | {s['max_pieces']} | "
            f"{num(s['mean_psnr'], '.1f')} | {num(s['mean_field_iou'])} |")


def fidelity_cells(h: dict | None) -> str:
    """``F@0.05 / F@0.02 | h/w error | ΔE | pieces | field IoU`` cells of one asset (``·`` when missing)."""
    if h is None:
        return " · | · | · | · | · "
    hw = "·" if h["hw_error"] is None else f"{100 * h['hw_error']:+.0f} %"
    de = "·" if h["delta_e"] is None else f"{h['delta_e']:.1f}"
    field = "·" if h["field_iou"] is None else f"{h['field_iou']:.2f}"
    return f" {h['f05']:.2f} / {h['f02']:.2f} | {hw} | {de} | {h['pieces']} | {field} "


LADDER_HEADER = ("| prompt | seed | prior IoU | prior aspect error | prior ΔE "
                 "| ceiling F@0.05 / F@0.02 | ceiling h/w error | ceiling ΔE | ceiling pieces | ceiling field IoU "
                 "| SDS F@0.05 / F@0.02 | SDS h/w error | SDS ΔE | SDS pieces | SDS field IoU "
                 "| seconds: prior / ceiling / SDS |")


def ladder_row(prompt: str, seed: int, rungs: dict) -> str:
    """One markdown row of :data:`LADDER_HEADER`; ``rungs`` holds ``prior`` (a prior_fidelity report),
    ``ceiling`` and ``sds`` (score_run results), and ``seconds`` per rung, each possibly missing."""
    prior = rungs.get("prior")
    if prior:
        aspect = "·" if prior["aspect_error"] is None else f"{100 * prior['aspect_error']:+.0f} %"
        de = "·" if prior["delta_e"] is None else f"{prior['delta_e']:.1f}"
        first = f" {prior['iou']:.2f} | {aspect} | {de} "
    else:
        first = " · | · | · "
    cells = [fidelity_cells(headline(rungs[k]) if rungs.get(k) else None) for k in ("ceiling", "sds")]
    seconds = " / ".join("·" if rungs.get("seconds", {}).get(k) is None else f"{rungs['seconds'][k]:.0f}"
                         for k in ("prior", "ceiling", "sds"))
    return f"| {prompt} | {seed} |{first}|{cells[0]}|{cells[1]}| {seconds} |"


def display_camera(resolution: int) -> Cameras:
    return Cameras.orbit(DISPLAY["elevation"], DISPLAY["azimuth"], DISPLAY["distance"], DISPLAY["fovy"], resolution)


def truth_image(prompt: str, resolution: int = 128) -> np.ndarray:
    """The ground truth at the display camera, lambertian under a headlight, on white (uint8 ``H x W x 3``)."""
    return to_uint8(render(parse_prompt(prompt), display_camera(resolution), "lambertian").rgb[0])


def asset_image(run_dir: Path, resolution: int = 128) -> np.ndarray | None:
    """A run's exported asset (:func:`~threed.toyworld.score.export_mesh_path`, placed back in the field's frame
    by ``export.json``'s transform) at the display camera, lambertian, on white; None without an export."""
    try:
        path = export_mesh_path(run_dir)
    except ThreedError:
        return None
    renderer = AssetRenderer(load_mesh(path), export_to_world(run_dir), lambda dirs: torch.ones_like(dirs))
    return to_uint8(renderer(display_camera(resolution), "lambertian").rgb[0])


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def labelled(image: np.ndarray | None, lines: list[str], size: int = 128, label_height: int = 26,
             good: bool | None = None) -> np.ndarray:
    """A square tile (grey when ``image`` is None) with up to two label lines under it; the second line
    green when ``good``, red when not ``good``, black when None."""
    tile = Image.new("RGB", (size, size + label_height), (255, 255, 255))
    if image is None:
        tile.paste(Image.new("RGB", (size, size), (200, 200, 200)))
    else:
        tile.paste(Image.fromarray(np.asarray(image)[..., :3]).resize((size, size), Image.BILINEAR))
    draw, font = ImageDraw.Draw(tile), _font(10)
    colours = [(0, 0, 0), (0, 0, 0) if good is None else (0, 130, 0) if good else (190, 0, 0)]
    for k, (line, colour) in enumerate(zip(lines[:2], colours)):
        draw.text((2, size + 1 + 12 * k), line, fill=colour, font=font)
    return np.asarray(tile)


def prior_tile(samples: np.ndarray | None) -> np.ndarray | None:
    """The first sample of each view label (rows of a saved sample grid) as a 2 x 2 tile."""
    if samples is None:
        return None
    return image_grid([row[0] for row in samples], ncols=2, padding=0)
