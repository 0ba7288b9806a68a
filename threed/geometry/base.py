"""The Geometry protocol: what every representation answers to the stage, the hand-off and the export.

* ``parameter_groups(opt)``: its Adam groups and learning rates (from :class:`OptimizerConfig`);
* ``update(step)``: per-step state that is not a gradient (none of the shipped geometries has any; the
  volume renderer's occupancy grid is the renderer's);
* ``surface``: what it exports -- a ``"density"`` field (``density(points)``, whose isosurface marching
  cubes extracts: NeRF, Gaussians) or an explicit ``"mesh"`` (``mesh()``: DMTet);
* ``albedo(points)``: the colour at world points (vertex colours, texture baking, hand-offs);
* ``start_from(previous, level)``: begin from another stage's density at its isosurface ``level``;
* ``signed_distance`` and ``eikonal(points)``: whether it is an SDF, and then its eikonal term at ``points``.

A :class:`threed.scene.Scene` talks to its geometry only through these, so a new representation is one
more subclass and one more scene kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from jaxtyping import Float
from torch import Tensor, nn

from threed.errors import ThreedError

Surface = Literal["density", "mesh"]


@dataclass
class GaussianLearningRates:
    """Adam learning rate per Gaussian attribute (DreamGaussian's values)."""

    position: float = 0.001
    """Centres (world units)."""
    scale: float = 0.005
    """Log-scales."""
    rotation: float = 0.005
    """Quaternions (normalised when used)."""
    opacity: float = 0.05
    """Opacity logits."""
    color: float = 0.01
    """Colour logits."""


@dataclass
class OptimizerConfig:
    """Adam learning rates per parameter group."""

    lr_encoding: float = 0.01
    """Hash-grid tables (they want a large rate, as in Instant-NGP)."""
    lr_network: float = 0.001
    """MLP heads of the field."""
    lr_background: float = 0.001
    """Background MLP, when there is one."""
    lr_geometry: float = 0.01
    """Per-vertex parameters of a grid geometry (DMTet's SDF values and offsets)."""
    gaussian: GaussianLearningRates = field(default_factory=GaussianLearningRates)
    """Per-attribute rates of a Gaussian scene (positions, scales, rotations, opacities, colours)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's moment decays."""
    eps: float = 1e-15
    """Adam's epsilon (tiny: hash-grid entries see rare, small gradients)."""


class Geometry(nn.Module):
    """Base of the representations (see the module docstring for the protocol)."""

    surface: ClassVar[Surface]
    """What the geometry exports: a density field or an explicit mesh."""

    @property
    def radius(self) -> float:
        """Half side of the scene box ``[-radius, radius]^3``."""
        raise NotImplementedError

    def parameter_groups(self, opt: OptimizerConfig) -> list[dict]:
        """Adam groups (``params``, ``lr``, ``name``) of the parameters that require grad; may hold empty groups."""
        raise NotImplementedError

    def update(self, step: int) -> None:
        """Refresh per-step state before step ``step`` (nothing by default)."""

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        raise NotImplementedError

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 1"]:
        """Density at world points (``surface == "density"`` geometries)."""
        raise ThreedError(f"a {type(self).__name__} has no density field; take its surface from mesh()")

    def mesh(self):
        """The explicit surface, a :class:`threed.geometry.mesh.Mesh` (``surface == "mesh"`` geometries)."""
        raise ThreedError(f"a {type(self).__name__} has no explicit mesh; extract one from its density")

    @property
    def signed_distance(self) -> bool:
        """Whether the geometry is a signed-distance field (then :meth:`eikonal` answers)."""
        return False

    def eikonal(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, ""]:
        """Mean ``(|grad sdf| - 1)^2`` at ``points`` of a signed-distance geometry."""
        raise ThreedError(f"a {type(self).__name__} is not a signed-distance field; it has no eikonal term")

    def start_from(self, previous: Geometry, level: float) -> dict:
        """Start from ``previous``'s density at isosurface ``level``; returns a short report for the log."""
        raise ThreedError(f"a {type(self).__name__} cannot start from another stage's geometry")


def field_groups(geometry: nn.Module, opt: OptimizerConfig) -> list[dict]:
    """Adam groups of a field geometry: per-vertex grid values (``*_param``), hash-grid tables
    (``*encoding*``) and the MLPs, each at its own rate; parameters that do not require grad are left out."""
    named = [(n, p) for n, p in geometry.named_parameters() if p.requires_grad]
    grid = [p for name, p in named if name.endswith("_param")]
    encoding = [p for name, p in named if "encoding" in name.split(".")[0]]
    taken = {id(p) for p in grid + encoding}
    network = [p for _, p in named if id(p) not in taken]
    return [{"params": grid, "lr": opt.lr_geometry, "name": "geometry"},
            {"params": encoding, "lr": opt.lr_encoding, "name": "encoding"},
            {"params": network, "lr": opt.lr_network, "name": "network"}]


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``, then a linear head: the fields' small MLPs."""
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(n_in, hidden), nn.ReLU(inplace=True)]
        n_in = hidden
    modules.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*modules)
