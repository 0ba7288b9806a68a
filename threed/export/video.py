"""Turntable videos and image grids (validation contact sheets).

A turntable is ``n_frames`` orbit cameras at one elevation, starting at azimuth 0 (the front, camera on +Z)
and turning with increasing azimuth (the camera moves toward +X), one full circle without repeating the
first frame, so the video loops seamlessly. It is written as H.264 MP4 through imageio-ffmpeg; where no
ffmpeg binary can be found it falls back to an animated GIF next to the requested path (same name, ``.gif``)
and logs a warning. Files are written atomically (see :func:`threed.files.atomic_path`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from threed.cameras import Cameras
from threed.files import atomic_path
from threed.render.output import RenderOut

log = logging.getLogger(__name__)

RenderFn = Callable[[Cameras], RenderOut]


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """``... x C`` images, float in [0, 1] (clipped) or already uint8, as a uint8 numpy array."""
    if isinstance(images, Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def turntable_cameras(n_frames: int = 60, resolution: int = 256, elevation: float = 15.0, distance: float = 2.75,
                      fovy: float = 40.0) -> Cameras:
    """``n_frames`` cameras at azimuths ``0, 360/n, ...`` (degrees), starting at the front."""
    azimuth = torch.arange(n_frames, dtype=torch.float32) * 360.0 / n_frames
    return Cameras.orbit(elevation, azimuth, distance, fovy, resolution)


def render_frames(render_fn: RenderFn, cameras: Cameras, chunk: int = 4) -> Iterator[np.ndarray]:
    """Render ``cameras`` ``chunk`` at a time under no_grad; yields ``H x W x 3`` uint8 frames in order.

    No-grad is entered inside the loop (not as a decorator), so it holds whenever the generator resumes,
    whatever wraps this function."""
    for start in range(0, len(cameras), chunk):
        with torch.no_grad():
            out = render_fn(cameras[start:start + chunk])
        yield from to_uint8(out.rgb[..., :3])


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg is installed and finds an ffmpeg binary."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad the bottom/right edge to even height and width, which H.264's 4:2:0 chroma needs."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int = 30) -> Path:
    """Write ``H x W x 3`` uint8 frames as MP4 (H.264), or GIF when ffmpeg is missing; returns the path written."""
    path = Path(path)
    if not ffmpeg_available():
        path = path.with_suffix(".gif")
        log.warning("ffmpeg not found (install imageio-ffmpeg): writing a GIF instead, %s", path)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        with atomic_path(path) as tmp:
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    import imageio_ffmpeg

    with atomic_path(path) as tmp:
        writer = None
        try:
            for frame in frames:
                frame = _even(frame)
                if writer is None:
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (frame.shape[1], frame.shape[0]), fps=fps, codec="libx264", quality=8,
                        pix_fmt_out="yuv420p", macro_block_size=1, output_params=["-movflags", "+faststart"])
                    writer.send(None)
                writer.send(np.ascontiguousarray(frame))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError("no frames to write")
    return path


def write_turntable(render_fn: RenderFn, path: str | os.PathLike, n_frames: int = 60, resolution: int = 256,
                    elevation: float = 15.0, distance: float = 2.75, fovy: float = 40.0, fps: int = 30,
                    chunk: int = 4, device: str | torch.device = "cpu") -> Path:
    """Render a turntable with ``render_fn(cameras) -> RenderOut`` and write it; returns the path written.

    ``render_fn`` is called with ``chunk`` cameras at a time (on ``device``) under no_grad; frames are
    streamed to the encoder, so memory does not grow with ``n_frames``. The returned path ends in ``.gif``
    when ffmpeg was unavailable.
    """
    cameras = turntable_cameras(n_frames, resolution, elevation, distance, fovy).to(device)
    return write_video(render_frames(render_fn, cameras, chunk), path, fps)


def image_grid(images: Sequence[Tensor | np.ndarray] | Tensor | np.ndarray, ncols: int | None = None,
               padding: int = 2) -> np.ndarray:
    """Tile ``B x H x W x C`` images (C = 1, 3 or 4; float in [0, 1] or uint8) into one uint8 image.

    Row-major, ``ncols`` per row (default: about square), ``padding`` white pixels between tiles;
    single-channel images (opacity, depth) are repeated to RGB so they sit beside colour renders.
    """
    tiles = [to_uint8(im) for im in images]
    tiles = [t[..., None] if t.ndim == 2 else t for t in tiles]
    if not tiles:
        raise ValueError("write_grid needs at least one image")
    if len({t.shape[:2] for t in tiles}) > 1:
        raise ValueError(f"grid images must share one size, got {sorted({t.shape[:2] for t in tiles})}")
    channels = 4 if any(t.shape[-1] == 4 for t in tiles) else 3
    tiles = [_channels(t, channels) for t in tiles]
    ncols = ncols or math.ceil(math.sqrt(len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    h, w = tiles[0].shape[:2]
    grid = np.full((nrows * h + (nrows - 1) * padding, ncols * w + (ncols - 1) * padding, channels), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + padding):r * (h + padding) + h, c * (w + padding):c * (w + padding) + w] = tile
    return grid


def _channels(tile: np.ndarray, channels: int) -> np.ndarray:
    """Gray to RGB(A), RGB to RGBA with opaque alpha."""
    if tile.shape[-1] == 1:
        tile = np.repeat(tile, 3, axis=-1)
    if tile.shape[-1] == 3 and channels == 4:
        tile = np.concatenate([tile, np.full(tile.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    return tile


def write_grid(images: Sequence[Tensor | np.ndarray] | Float[Tensor, "B H W C"] | np.ndarray,
               path: str | os.PathLike, ncols: int | None = None, padding: int = 2) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG contact sheet (atomically); returns ``path``."""
    path = Path(path)
    grid = image_grid(images, ncols, padding)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path
