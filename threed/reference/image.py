"""The reference photo of image-to-3D: read it, find the object, frame it the way the recipe's camera sees it.

Zero-1-to-3 (Liu et al. 2023) was trained on object-centred renders over a white background, and
the reference-view losses compare the photo with a render from one fixed camera, so every input is
brought to one framing: the object (its alpha) is recentred and rescaled so that the larger side of
its bounding box spans ``fill_ratio`` of the image, then composited over white. The same map is
applied to an optional depth map, and to the training pairs of the toy-world view-conditioned prior
(:mod:`threed.toyworld.train_views`), so training and use see identically framed references.

Inputs: an RGBA image uses its alpha. An RGB image needs a mask (white = object), given as a file;
without one the error explains how to make one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.image_files import read_image_file


@dataclass
class ReferenceViewConfig:
    """Where the reference photo is taken from, and how the object is framed in it."""

    elevation: float = 0.0
    """Elevation of the reference camera in degrees (0 = horizon); the photo's own viewpoint, usually unknown."""
    azimuth: float = 0.0
    """Azimuth of the reference camera in degrees: 0 makes the photo the object's front (+Z)."""
    distance: float = 2.75
    """Distance of the reference camera from the origin; match the stage's camera sampler."""
    fovy: float = 40.0
    """Vertical field of view of the reference camera in degrees; match the stage's camera sampler."""
    fill_ratio: float = 0.5
    """Share of the image side spanned by the larger side of the object's bounding box after framing."""
    resolution: int = 64
    """Side in pixels of the framed reference and of its render in the reference-view losses."""

    def __post_init__(self):
        if not 0.05 <= self.fill_ratio <= 1.0:
            raise ValueError(f"fill_ratio must be in [0.05, 1], got {self.fill_ratio}")
        if self.distance <= 0 or not 0 < self.fovy < 180 or self.resolution < 8:
            raise ValueError("need distance > 0, 0 < fovy < 180 and resolution >= 8")

    def camera(self, resolution: int | None = None) -> Cameras:
        """The reference camera (one view) at ``resolution`` (default :attr:`resolution`)."""
        return Cameras.orbit(self.elevation, self.azimuth, self.distance, self.fovy, resolution or self.resolution)


@dataclass
class ReferenceImage:
    """A framed reference: colour over white, the object mask and optionally depth, all ``1 x H x W x C``."""

    rgb: Float[Tensor, "1 H W 3"]
    mask: Float[Tensor, "1 H W 1"]
    depth: Float[Tensor, "1 H W 1"] | None = None

    def to(self, device) -> "ReferenceImage":
        return ReferenceImage(self.rgb.to(device), self.mask.to(device),
                              None if self.depth is None else self.depth.to(device))


def frame_object(rgb: Float[Tensor, "B H W 3"], alpha: Float[Tensor, "B H W 1"], fill_ratio: float, size: int,
                 extra: Float[Tensor, "B H W C"] | None = None
                 ) -> tuple[Float[Tensor, "B S S 3"], Float[Tensor, "B S S 1"], Float[Tensor, "B S S C"] | None]:
    """Recentre and rescale each image so the bounding box of ``alpha > 0.5`` is centred and its larger side
    spans ``fill_ratio * size`` pixels of a ``size`` x ``size`` output; colour is composited over white.

    ``extra`` channels (a depth map) follow the same map, 0 outside the image. An image without any
    object pixel raises :class:`ThreedError`.
    """
    b, h, w, _ = rgb.shape
    theta = torch.zeros(b, 2, 3, dtype=torch.float32, device=rgb.device)
    for i in range(b):
        rows = torch.nonzero(alpha[i, :, :, 0].amax(dim=1) > 0.5).flatten()
        cols = torch.nonzero(alpha[i, :, :, 0].amax(dim=0) > 0.5).flatten()
        if rows.numel() == 0:
            raise ThreedError("the reference image has no object pixels: its alpha (or mask) is empty "
                              "everywhere; give an image whose object is opaque or a mask that is white on it")
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        cy, cx = (top + bottom) / 2, (left + right) / 2
        side = max(float(bottom - top), float(right - left))
        # Output pixel u (normalised to [-1, 1] over ``size``) samples input pixel c + u * side / (2 fill).
        half = side / (2 * fill_ratio)
        theta[i, 0, 0] = 2 * half / w
        theta[i, 1, 1] = 2 * half / h
        theta[i, 0, 2] = 2 * cx / w - 1
        theta[i, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, (b, 1, size, size), align_corners=False)
    # Sampling coordinates are normalised, so a large photo can be shrunk first (antialiased) to about
    # two input pixels per output pixel without moving anything.
    shrink = float(theta[:, 0, 0].min()) * w / size  # input pixels per output pixel

    def warp(x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).float()
        if shrink > 2:
            x = F.interpolate(x, size=(max(1, round(2 * h / shrink)), max(1, round(2 * w / shrink))),
                              mode="bilinear", antialias=True, align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.permute(0, 2, 3, 1)

    premult = warp(torch.cat([rgb * alpha, alpha], dim=-1))
    a = premult[..., 3:].clamp(0, 1)
    colour = (premult[..., :3] + (1 - a)).clamp(0, 1)
    return colour, a, None if extra is None else warp(extra)


def _read(path: Path, what: str) -> np.ndarray:
    img = read_image_file(path, what)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return img.astype(np.float32)


NO_MASK_HELP = ("an RGB image needs the object's mask: save the photo as RGBA with the background transparent "
                "(e.g. `pip install rembg` then `rembg i photo.jpg photo.png`), or pass a mask image that is white "
                "on the object and black elsewhere with --mask mask.png (mask=... in a recipe)")


def read_reference(image: str | Path, mask: str | Path | None = None, depth: str | Path | None = None
                   ) -> tuple[Float[Tensor, "1 H W 3"], Float[Tensor, "1 H W 1"], Float[Tensor, "1 H W 1"] | None]:
    """Colour, alpha and (optional) depth of a reference photo as read from disk, unframed.

    RGBA uses its alpha (a ``mask`` then replaces it); RGB or greyscale needs ``mask``. The depth
    map is one channel of any scale (it is compared up to scale and shift).
    """
    image = Path(image)
    img = _read(image, "reference image")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=-1), img[..., 1:]], axis=-1)
    rgb = img[..., :3]
    if mask is not None:
        m = _read(Path(mask), "mask")
        if m.ndim == 3:  # grey or colour; an alpha channel is ignored
            m = m[..., :1 if m.shape[-1] == 2 else 3].mean(-1)
        if m.shape != rgb.shape[:2]:
            raise ThreedError(f"the mask {mask} is {m.shape[1]}x{m.shape[0]} but the image {image} is "
                              f"{rgb.shape[1]}x{rgb.shape[0]}; give a mask of the same size")
        alpha = m
    elif img.shape[-1] == 4:
        alpha = img[..., 3]
        if alpha.min() > 0.99:
            raise ThreedError(f"the reference image {image} is RGBA but fully opaque, so it shows no object "
                              f"outline; {NO_MASK_HELP}")
    else:
        raise ThreedError(f"the reference image {image} has no alpha channel; {NO_MASK_HELP}")
    d = None
    if depth is not None:
        dm = _read(Path(depth), "depth map")
        dm = dm[..., 0] if dm.ndim == 3 else dm
        if dm.shape != rgb.shape[:2]:
            raise ThreedError(f"the depth map {depth} is {dm.shape[1]}x{dm.shape[0]} but the image {image} is "
                              f"{rgb.shape[1]}x{rgb.shape[0]}; give a depth map of the same size")
        d = torch.from_numpy(np.ascontiguousarray(dm))[None, ..., None]
    return (torch.from_numpy(np.ascontiguousarray(rgb))[None], torch.from_numpy(np.ascontiguousarray(alpha))[None, ..., None],
            d)


@lru_cache(maxsize=8)
def _load_cached(image: str, mask: str | None, depth: str | None, fill_ratio: float, size: int) -> ReferenceImage:
    rgb, alpha, d = read_reference(image, mask, depth)
    colour, a, dep = frame_object(rgb, alpha, fill_ratio, size, d)
    if dep is not None:
        dep = dep * (a > 0.5)
    return ReferenceImage(colour, a, dep)


def load_reference(image: str | Path | None, cfg: ReferenceViewConfig, mask: str | Path | None = None,
                   depth: str | Path | None = None, size: int | None = None) -> ReferenceImage:
    """The framed reference of a recipe's ``image`` (and ``mask``, ``depth``) at ``size`` (default ``cfg.resolution``)."""
    if image is None:
        raise ThreedError("this recipe is image-to-3D but no image was given: threed generate --image photo.png "
                          "[--mask mask.png] (or image=PATH)")
    key = (str(image), None if mask is None else str(mask), None if depth is None else str(depth))
    return _load_cached(*key, cfg.fill_ratio, size or cfg.resolution)
