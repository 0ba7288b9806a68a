"""A Scene: one representation's geometry, background and renderer, built from a stage config.

This is the only place that knows which renderer goes with which geometry; the stage loop, the
checkpoints and the exporters talk to a Scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from threed.cameras import Cameras
from threed.config import build
from threed.errors import ThreedError
from threed.geometry.base import Geometry, OptimizerConfig
from threed.geometry.densify import DensifyState, DensifyStrategy
from threed.geometry.dmtet import DMTet, DMTetConfig
from threed.geometry.gaussians import Gaussians, GaussiansConfig
from threed.geometry.nerf import NeRFField, NeRFFieldConfig
from threed.geometry.textured_mesh import TexturedMesh, TexturedMeshConfig
from threed.render.background import Background, BackgroundConfig
from threed.render.output import RenderOut
from threed.render.raster import MeshRenderer, MeshRendererConfig
from threed.render.shading import Shading, ShadingConfig
from threed.render.splat import SplatRenderer, SplatRendererConfig
from threed.render.volume import VolumeRenderer, VolumeRendererConfig

if TYPE_CHECKING:
    from threed.checkpoint import Checkpoint


@dataclass
class NeRFSceneConfig:
    """A NeRF field rendered by volume rendering (DreamFusion's representation)."""

    kind: Literal["nerf"] = "nerf"
    geometry: NeRFFieldConfig = field(default_factory=NeRFFieldConfig)
    renderer: VolumeRendererConfig = field(default_factory=VolumeRendererConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)


@dataclass
class FromDensityConfig:
    """How a scene that can start from a previous stage's density (NeRF or Gaussians) finds that density's
    surface: DMTet starts on it, Gaussians are drawn inside it (:meth:`Scene.init_from`)."""

    init_level: float | None = None
    """Density level of the previous stage's surface; None chooses it automatically, as mesh export does
    (threed.export.isosurface)."""
    init_grid_size: int = 64
    """Points per axis of the grid on which that automatic level is judged."""


@dataclass
class DMTetSceneConfig(FromDensityConfig):
    """A DMTet surface rendered by rasterization (Magic3D's and Fantasia3D's refinement representation)."""

    kind: Literal["dmtet"] = "dmtet"
    geometry: DMTetConfig = field(default_factory=DMTetConfig)
    renderer: MeshRendererConfig = field(default_factory=MeshRendererConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    train: Literal["all", "geometry", "texture"] = "all"
    """What this stage optimises: ``geometry`` (SDF and deformation; Fantasia3D's first stage, often with
    normal-map shading), ``texture`` (only the albedo field, on a fixed surface: Magic3D's and
    ProlificDreamer's texture stages) or ``all``."""


@dataclass
class GaussianSceneConfig(FromDensityConfig):
    """3D Gaussians rendered by splatting (DreamGaussian's and GaussianDreamer's representation)."""

    kind: Literal["gaussian"] = "gaussian"
    geometry: GaussiansConfig = field(default_factory=GaussiansConfig)
    renderer: SplatRendererConfig = field(default_factory=SplatRendererConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)


@dataclass
class MeshSceneConfig:
    """A fixed mesh (a user's, ``threed texture``) with a trainable albedo field, rendered by rasterization."""

    kind: Literal["mesh"] = "mesh"
    geometry: TexturedMeshConfig = field(default_factory=TexturedMeshConfig)
    renderer: MeshRendererConfig = field(default_factory=MeshRendererConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)


SceneConfig = NeRFSceneConfig | DMTetSceneConfig | GaussianSceneConfig | MeshSceneConfig
SCENE_CONFIGS: dict[str, type] = {"nerf": NeRFSceneConfig, "dmtet": DMTetSceneConfig,
                                  "gaussian": GaussianSceneConfig, "mesh": MeshSceneConfig}
"""Scene config class per ``kind``."""


class Scene(nn.Module):
    """Geometry + background + renderer; ``forward(cameras, shading)`` renders a RenderOut."""

    def __init__(self, cfg: SceneConfig):
        super().__init__()
        self.cfg = cfg
        # The renderer owns geometry and background, so each parameter is saved once, under renderer.*.
        self.renderer: VolumeRenderer | MeshRenderer | SplatRenderer
        if cfg.kind == "nerf":
            self.renderer = VolumeRenderer(cfg.renderer, NeRFField(cfg.geometry), Background(cfg.background),
                                           cfg.shading)
        elif cfg.kind == "dmtet":
            self.renderer = MeshRenderer(cfg.renderer, DMTet(cfg.geometry), Background(cfg.background), cfg.shading)
        elif cfg.kind == "gaussian":
            self.renderer = SplatRenderer(cfg.renderer, Gaussians(cfg.geometry), Background(cfg.background),
                                          cfg.shading)
        elif cfg.kind == "mesh":
            self.renderer = MeshRenderer(cfg.renderer, TexturedMesh(cfg.geometry), Background(cfg.background),
                                         cfg.shading)
        else:
            raise ValueError(f"unknown scene kind {cfg.kind!r}; choose nerf, dmtet, gaussian or mesh")
        self.densify: DensifyState | None = None
        """Gaussian scenes: the densification statistics (saved with the scene, so a resume is exact)."""
        self.strategy: DensifyStrategy | None = None
        """Gaussian scenes: adaptive density control, run after each optimiser step (:meth:`post_step`)."""
        if isinstance(cfg, GaussianSceneConfig):
            self.densify = DensifyState(cfg.geometry.count)
            self.strategy = DensifyStrategy(cfg.geometry.densify, cfg.geometry.radius)

    @classmethod
    def from_checkpoint(cls, ckpt: "Checkpoint", device: torch.device | str = "cpu") -> "Scene":
        """The scene a checkpoint holds, rebuilt from its own ``scene_config``, weights loaded, in eval mode."""
        if ckpt.scene_kind not in SCENE_CONFIGS:
            raise ThreedError(f"checkpoint of stage {ckpt.stage!r} holds an unknown scene kind {ckpt.scene_kind!r}")
        scene = cls(build(SCENE_CONFIGS[ckpt.scene_kind], ckpt.scene_config, "scene")).to(device)
        scene.load_state_dict(ckpt.scene)
        return scene.eval()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before densification had its own state kept its statistics on the geometry."""
        for name in ("grad_sum", "grad_views"):
            old = f"{prefix}renderer.geometry.{name}"
            if old in state_dict:
                state_dict[f"{prefix}densify.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def geometry(self) -> Geometry:
        geometry = self.renderer.geometry
        assert isinstance(geometry, Geometry)  # a scene's renderer always draws one of its kind's geometries
        return geometry

    @property
    def background(self) -> Background:
        return self.renderer.background

    @property
    def radius(self) -> float:
        return self.cfg.geometry.radius

    def forward(self, cameras: Cameras, shading: Shading = "albedo") -> RenderOut:
        return self.renderer(cameras, shading)

    @torch.no_grad()
    def render_eval(self, cameras: Cameras, shading: Shading = "albedo", chunk: int = 4) -> RenderOut:
        """Render without gradients, a few cameras at a time so memory stays bounded."""
        was_training = self.training
        self.eval()
        outs = [self.renderer(cameras[i:i + chunk], shading) for i in range(0, len(cameras), chunk)]
        self.train(was_training)
        cat = lambda name: torch.cat([getattr(o, name) for o in outs])  # noqa: E731
        normal = cat("normal") if outs[0].normal is not None else None
        return RenderOut(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"), normal=normal)

    def update(self, step: int) -> None:
        """Per-step state that is not a gradient (occupancy grids, schedules), before step ``step``."""
        self.geometry.update(step)  # first: the renderer's occupancy grid reads the geometry's schedules
        self.renderer.update(step)

    def post_step(self, done: int, optimizer: torch.optim.Optimizer | None, out: RenderOut | None = None
                  ) -> dict[str, int]:
        """After optimiser step ``done`` (1-based), given the step's training render ``out``: Gaussian
        densification and pruning on its schedule (:mod:`threed.geometry.densify`).

        A no-op (empty report) for the other kinds. A non-empty report means parameters may have been
        replaced (in ``optimizer`` too, with their Adam state): refresh any list of them.
        """
        if self.strategy is None or self.densify is None or not isinstance(self.geometry, Gaussians):
            return {}
        return self.strategy.step_post_backward(self.geometry, optimizer, self.densify, done,
                                                out.view_gradients if out is not None else None)

    def parameter_groups(self, opt: OptimizerConfig) -> list[dict]:
        """Adam groups: the geometry's (:meth:`Geometry.parameter_groups`), then the background's.

        Parameters a stage does not train (``train: texture`` or ``geometry`` on DMTet) are frozen here,
        so no gradient is computed for them, and left out of every group.
        """
        for p in self._frozen_parameters():
            p.requires_grad_(False)
        groups = self.geometry.parameter_groups(opt)
        background = list(self.background.parameters())
        if background:
            groups.append({"params": background, "lr": opt.lr_background, "name": "background"})
        return [g for g in groups if g["params"]]

    def _frozen_parameters(self) -> list[nn.Parameter]:
        if not isinstance(self.cfg, DMTetSceneConfig) or not isinstance(self.geometry, DMTet):
            return []
        if self.cfg.train == "texture":
            return self.geometry.geometry_parameters()
        if self.cfg.train == "geometry":
            return self.geometry.texture_parameters()
        return []

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Density at world points (N x 3 -> N x 1), for isosurface extraction (NeRF and Gaussian scenes)."""
        if not self.has_density:
            raise ThreedError(f"a {self.cfg.kind} scene has no density field; take its surface from Scene.mesh()")
        return self.geometry.density(points)

    @property
    def has_density(self) -> bool:
        """Whether :meth:`density` answers (a NeRF's field, the Gaussians' kernel sum)."""
        return self.geometry.surface == "density"

    def mesh(self):
        """The surface as a :class:`threed.geometry.mesh.Mesh` (DMTet and mesh scenes)."""
        if self.geometry.surface != "mesh":
            raise ThreedError(f"a {self.cfg.kind} scene has no explicit mesh; extract one from Scene.density")
        return self.geometry.mesh()

    @torch.no_grad()
    def init_from(self, previous: "Scene", level: float) -> dict:
        """Start this scene's geometry from another stage's scene (NeRF or Gaussians -> DMTet, NeRF -> Gaussians).

        The DMTet SDF is set from the previous density's isosurface at ``level`` (the stage passes
        ``init_level``, or the automatic level of mesh export: the level whose silhouettes best match the
        volume render), and the albedo field is copied when both fields have the same shape, else fitted to
        the previous albedo. Gaussians are drawn inside the same isosurface, coloured by the previous albedo.
        The background is copied when both stages configure it alike. Returns ``{"level": ...,
        "albedo": "copied" | "fitted"}`` (DMTet) or ``{"level": ..., "count": ...}`` (Gaussians).
        """
        if not (self.cfg.kind in ("dmtet", "gaussian") and previous.has_density
                and (self.cfg.kind, previous.cfg.kind) != ("gaussian", "gaussian")):
            raise ThreedError(f"a {self.cfg.kind} scene cannot start from a {previous.cfg.kind} scene; "
                              "supported: nerf -> dmtet, gaussian -> dmtet, nerf -> gaussian")
        info = self.geometry.start_from(previous.geometry, level)
        if self.densify is not None and isinstance(self.geometry, Gaussians):
            self.densify.reset(self.geometry.count)
        if self.cfg.background == previous.cfg.background:
            self.background.load_state_dict(previous.background.state_dict())
        return {"level": float(level), **info}

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo at world points (N x 3 -> N x 3), for vertex colours and texture baking."""
        return self.geometry.albedo(points)
