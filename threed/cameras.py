"""Cameras: the world convention, orbit cameras, random sampling and view labels.

The convention, written once here and tested in ``tests/test_cameras.py``:

* World: right-handed, +Y up. The object sits at the origin inside a sphere of radius ``radius``.
  Its *front* faces +Z (glTF's and Blender's "front" after import).
* Orbit parameters: ``elevation`` (degrees, 0 = horizon, +90 = straight above), ``azimuth``
  (degrees, 0 = front, i.e. camera on +Z looking toward -Z; +90 puts the camera on +X), ``distance``
  from the origin. Position = distance * (cos(el) sin(az), sin(el), cos(el) cos(az)).
* Camera frame: OpenGL. The camera looks down its local -Z, local +Y is image-up, local +X is
  image-right. ``c2w`` maps camera to world; its columns are right, up, back, position.
* Pixels: row 0 is the top of the image, column 0 the left; pixel centres at +0.5. Images are
  ``B x H x W x C``. A camera at azimuth 0 sees world +X on the right of its image (not mirrored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor

ViewLabel = str  # "front" | "side" | "back" | "overhead"


def look_at(eye: Float[Tensor, "B 3"], target: Float[Tensor, "B 3"] | None = None,
            up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices (OpenGL frame) for cameras at ``eye`` looking at ``target``."""
    if target is None:
        target = torch.zeros_like(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.linalg.cross(forward, up_t, dim=-1)
    # Straight above or below: any horizontal right vector will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    true_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    return c2w


def orbit_position(elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"],
                   distance: Float[Tensor, "B"]) -> Float[Tensor, "B 3"]:
    """World position of an orbit camera; angles in degrees (see the module docstring)."""
    el, az = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return torch.stack([distance * torch.cos(el) * torch.sin(az),
                        distance * torch.sin(el),
                        distance * torch.cos(el) * torch.cos(az)], dim=-1)


@dataclass
class Cameras:
    """A batch of pinhole orbit cameras that share one image size.

    ``light`` is a world-space point-light position per camera, used by lambertian shading.
    """

    c2w: Float[Tensor, "B 4 4"]
    fovy: Float[Tensor, "B"]
    """Vertical field of view in radians."""
    height: int
    width: int
    elevation: Float[Tensor, "B"]
    azimuth: Float[Tensor, "B"]
    distance: Float[Tensor, "B"]
    light: Float[Tensor, "B 3"]

    @classmethod
    def orbit(cls, elevation, azimuth, distance, fovy_deg, height: int, width: int | None = None,
              light: Tensor | None = None) -> "Cameras":
        """Cameras on an orbit around the origin. Scalars or 1-D sequences/tensors (degrees)."""
        vals = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (elevation, azimuth, distance, fovy_deg)]
        batch = max(v.numel() for v in vals)
        el, az, dist, fov = (v.expand(batch).clone() for v in vals)
        eye = orbit_position(el, az, dist)
        if light is None:
            light = eye * 1.5  # a headlight above-behind the camera
        return cls(c2w=look_at(eye), fovy=torch.deg2rad(fov), height=height, width=width or height,
                   elevation=el, azimuth=az, distance=dist, light=light)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Float[Tensor, "B 3"]:
        return self.c2w[:, :3, 3]

    @property
    def focal(self) -> Float[Tensor, "B"]:
        """Focal length in pixels (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    def to(self, device) -> "Cameras":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("c2w", "fovy", "elevation", "azimuth", "distance", "light")})

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return replace(self, **{k: getattr(self, k)[index] for k in
                                ("c2w", "fovy", "elevation", "azimuth", "distance", "light")})

    def resized(self, height: int, width: int | None = None) -> "Cameras":
        """The same cameras rendering at another resolution (same field of view)."""
        return replace(self, height=height, width=width or height)

    def rays(self) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
        """Ray origins and unit directions in world space for every pixel centre."""
        dev = self.device
        rows = torch.arange(self.height, device=dev, dtype=torch.float32) + 0.5
        cols = torch.arange(self.width, device=dev, dtype=torch.float32) + 0.5
        i, j = torch.meshgrid(rows, cols, indexing="ij")
        f = self.focal[:, None, None]
        x = (j[None] - 0.5 * self.width) / f
        y = -(i[None] - 0.5 * self.height) / f
        dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # B H W 3
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = torch.nn.functional.normalize(dirs, dim=-1)
        origins = self.position[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def world_to_pixels(self, points: Float[Tensor, "B N 3"]) -> tuple[Float[Tensor, "B N 2"], Float[Tensor, "B N"]]:
        """Project world points to (column, row) pixel coordinates and their depth along the view axis."""
        w2c = torch.linalg.inv(self.c2w)
        cam = torch.einsum("bij,bnj->bni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        depth = -cam[..., 2]
        f = self.focal[:, None]
        col = f * cam[..., 0] / depth + 0.5 * self.width
        row = -f * cam[..., 1] / depth + 0.5 * self.height
        return torch.stack([col, row], dim=-1), depth

    def view_labels(self, front_half_angle: float = 45.0, back_half_angle: float = 45.0,
                    overhead_elevation: float = 60.0) -> list[ViewLabel]:
        """DreamFusion's view labels: overhead above ``overhead_elevation``, else front/back/side by azimuth."""
        az = torch.remainder(self.azimuth + 180.0, 360.0) - 180.0  # (-180, 180]
        labels = []
        for e, a in zip(self.elevation.tolist(), az.abs().tolist()):
            if e > overhead_elevation:
                labels.append("overhead")
            elif a <= front_half_angle:
                labels.append("front")
            elif a >= 180.0 - back_half_angle:
                labels.append("back")
            else:
                labels.append("side")
        return labels


@dataclass
class CameraSamplerConfig:
    """Random training cameras (DreamFusion-style orbit sampling)."""

    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Elevation in degrees, sampled uniformly."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth in degrees, sampled uniformly (stratified across the batch)."""
    distance_range: tuple[float, float] = (2.5, 3.0)
    """Distance from the origin, in scene units (the object lies inside radius 1)."""
    fovy_range: tuple[float, float] = (35.0, 45.0)
    """Vertical field of view in degrees."""
    light_distance_range: tuple[float, float] = (2.0, 4.0)
    """Point light distance from the origin."""
    light_jitter_deg: float = 45.0
    """Maximum angle between the light direction and the camera direction."""
    batch_size: int = 1
    """Cameras per training step (the prior scores them as one batch)."""
    views_per_object: int = 1
    """Views of one object per group, for a multi-view prior (MVDream's layout, 4): each group of this many
    adjacent cameras has azimuths 360/views_per_object apart from a random start and shares one elevation,
    distance, field of view and light; ``batch_size`` must be a multiple of it. 1 = independent cameras."""
    eval_elevation: float = 15.0
    """Elevation of validation and turntable cameras."""
    eval_distance: float = 2.75
    eval_fovy: float = 40.0

    def __post_init__(self):
        if self.views_per_object < 1:
            raise ValueError(f"views_per_object must be >= 1, got {self.views_per_object}")
        if self.batch_size % self.views_per_object:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of views_per_object "
                             f"{self.views_per_object}: a batch holds whole objects")


@dataclass
class CameraSampler:
    """Draws random orbit cameras for training and fixed ones for validation."""

    cfg: CameraSamplerConfig = field(default_factory=CameraSamplerConfig)

    def sample(self, height: int, width: int | None = None, generator: torch.Generator | None = None,
               batch_size: int | None = None) -> Cameras:
        b, v = batch_size or self.cfg.batch_size, self.cfg.views_per_object
        if b % v:
            raise ValueError(f"a batch of {b} cameras cannot hold whole objects of views_per_object={v} views; "
                             f"make cameras.batch_size a multiple of {v}")
        g = b // v  # independent draws: one per object

        def uniform(lo_hi, n=g):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        el = uniform(self.cfg.elevation_range)
        lo, hi = self.cfg.azimuth_range
        az = lo + (hi - lo) * (torch.arange(g) + torch.rand(g, generator=generator)) / g
        dist = uniform(self.cfg.distance_range)
        fov = uniform(self.cfg.fovy_range)
        if v > 1:
            rep = lambda x: x.repeat_interleave(v)  # noqa: E731
            az = rep(az) + torch.arange(v).repeat(g) * (360.0 / v)
            az = torch.remainder(az + 180.0, 360.0) - 180.0
            el, dist, fov = rep(el), rep(dist), rep(fov)
        cams = Cameras.orbit(el, az, dist, fov, height, width)
        # Light: around the direction of the object's first camera, within light_jitter_deg (one light per object).
        jitter = math.radians(self.cfg.light_jitter_deg)
        d = torch.nn.functional.normalize(cams.position[::v], dim=-1)
        noise = torch.nn.functional.normalize(torch.randn(g, 3, generator=generator), dim=-1)
        angle = jitter * torch.rand(g, 1, generator=generator)
        tangent = torch.nn.functional.normalize(noise - (noise * d).sum(-1, keepdim=True) * d, dim=-1)
        light_dir = torch.cos(angle) * d + torch.sin(angle) * tangent
        cams.light = (light_dir * uniform(self.cfg.light_distance_range)[:, None]).repeat_interleave(v, 0)
        return cams

    def turntable(self, n: int, height: int, width: int | None = None) -> Cameras:
        """``n`` evenly spaced cameras around the object at the evaluation elevation, starting at the front."""
        az = torch.arange(n, dtype=torch.float32) * 360.0 / n
        return Cameras.orbit(self.cfg.eval_elevation, az, self.cfg.eval_distance, self.cfg.eval_fovy,
                             height, width)
