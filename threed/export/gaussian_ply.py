"""3D Gaussians as the PLY file 3DGS viewers read (Kerbl et al. 2023's ``point_cloud.ply`` layout).

One binary little-endian ``vertex`` element, one float32 property each, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

``f_dc_*`` are degree-0 spherical-harmonic coefficients (``rgb = 0.5 + C0 * f_dc``, ``C0 = 0.2821``),
``opacity`` is the logit, ``scale_*`` the log-scales and ``rot_*`` the unit quaternion (w, x, y, z); the
normals are zeros, as 3DGS writes them. Positions are threed's world coordinates, unchanged (+Y up, front
toward +Z, like the meshes in :mod:`threed.export.formats`); viewers made for COLMAP captures assume -Y up,
so flip the view there if the object stands on its head. The file is written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from threed.errors import ThreedError
from threed.files import write_bytes_atomic
from threed.geometry.gaussians import Gaussians

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic, ``1 / (2 sqrt(pi))``."""

PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


@torch.no_grad()
def gaussians_to_ply(gaussians: Gaussians) -> bytes:
    """The Gaussians as 3DGS PLY bytes (layout in the module docstring)."""
    n = gaussians.count
    rgb = gaussians.colors.float()
    columns = [gaussians.positions.float(), torch.zeros(n, 3), (rgb - 0.5) / SH_C0,
               gaussians.opacity_logits.float()[:, None], gaussians.log_scales.float(),
               torch.nn.functional.normalize(gaussians.quaternions.float(), dim=-1)]
    table = torch.cat([c.cpu() for c in columns], dim=1).numpy().astype("<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", "comment threed 3D Gaussians (3DGS layout)",
                        f"element vertex {n}", *[f"property float {p}" for p in PROPERTIES], "end_header"]) + "\n"
    return header.encode("ascii") + np.ascontiguousarray(table).tobytes()


def write_gaussians_ply(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    """Write the Gaussians to ``path`` as a 3DGS PLY, atomically; returns ``path``."""
    return write_bytes_atomic(path, gaussians_to_ply(gaussians))


def read_gaussians_ply(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A 3DGS PLY (ours or another tool's, binary little-endian float properties, extra properties ignored)
    as ``Gaussians`` parameters: ``positions``, ``log_scales``, ``quaternions``, ``opacity_logits``,
    ``color_logits`` (from ``f_dc_*``; higher SH bands are dropped). Load them with ``load_state_dict``.
    """
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ThreedError(f"{path} is not a PLY file")
    lines = data[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ThreedError(f"{path}: only binary little-endian 3DGS PLY files are read")
    count, names, in_vertex = 0, [], False
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            count = int(words[2]) if in_vertex else count
        elif words[:1] == ["property"] and in_vertex:
            if words[1] != "float":
                raise ThreedError(f"{path}: vertex property {words[-1]} is {words[1]}; 3DGS files use float")
            names.append(words[2])
    missing = [p for p in PROPERTIES if p not in names and not p.startswith("n")]
    if missing:
        raise ThreedError(f"{path} is not a 3DGS PLY: it lacks {', '.join(missing)}")
    table = np.frombuffer(data, dtype="<f4", count=count * len(names), offset=end + len("end_header\n"))
    table = torch.from_numpy(table.reshape(count, len(names)).copy())

    def cols(*wanted: str) -> torch.Tensor:
        return table[:, [names.index(w) for w in wanted]]

    rgb = (0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2")).clamp(1e-6, 1 - 1e-6)
    return {"positions": cols("x", "y", "z"), "log_scales": cols("scale_0", "scale_1", "scale_2"),
            "quaternions": cols("rot_0", "rot_1", "rot_2", "rot_3"), "opacity_logits": cols("opacity")[:, 0],
            "color_logits": torch.logit(rgb)}


def load_gaussians_ply(gaussians: Gaussians, path: str | os.PathLike) -> Gaussians:
    """Replace ``gaussians``' parameters (and count) by those of a 3DGS PLY; returns it."""
    state = read_gaussians_ply(path)
    gaussians.load_state_dict(state)
    if not math.isfinite(float(gaussians.positions.detach().sum())):
        raise ThreedError(f"{path} holds non-finite positions")
    return gaussians
