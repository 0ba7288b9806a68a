"""Image files a person hands to threed (``--image``, ``--mask``, ``--depth``, the app's uploads), checked by content.

A file is judged by what it holds, not by its name. Pillow identifies the format from the file's first
bytes (its magic number), trying only the formats in :data:`FORMATS`. The width and height in the
header are checked against :data:`MAX_PIXELS` before any pixel is decoded: a PNG of a few hundred
bytes can claim 100 000 x 100 000 pixels and would otherwise ask for 40 GB. Then the whole file is
verified and decoded, so a file cut short fails here, with its name and what to do, instead of as
imageio's advice to install video plugins or deep inside a run.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

from threed.errors import ThreedError

FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
"""Pillow format names threed reads; anything else is refused whatever its name (a smaller parser surface)."""
MAX_PIXELS = 40_000_000
"""Largest width x height read (40 megapixels: a 7300 x 5500 photo). The object is framed at 64-256 px."""
SAVE_AS = "save it again as a PNG (or JPEG) and use that file"


def _describe(data: bytes) -> str:
    """What a file that is not an image seems to hold, for the error message."""
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"its first bytes are {head[:16].hex(' ')}"
    return f"it holds text ({text.splitlines()[0][:40]!r}…)" if text.strip() else "it holds only blank text"


def _too_large(what: str, name: str, claimed: str) -> str:
    return (f"the {what} {name} is too large ({claimed} by its header; threed reads at most "
            f"{MAX_PIXELS // 10**6} megapixels): scale it down, e.g. to 1024 pixels on the longer side "
            f"(the object is framed at 64-256 pixels anyway)")


def check_image_file(path: str | Path, what: str, max_bytes: int | None = None,
                     formats: tuple[str, ...] = FORMATS, shown: str | None = None
                     ) -> tuple[bytes, str, tuple[int, int]]:
    """The bytes, Pillow format name and ``(width, height)`` of an image file that passes every check.

    ``what`` says what the file is in messages ("reference image", "mask", "uploaded image") and
    ``shown`` how to name it (default: its path). Raises a :class:`ThreedError` naming the file, what
    is wrong with it and what to do, for a missing or unreadable file, an empty one, one larger than
    ``max_bytes``, one whose content is not an image in ``formats``, one over :data:`MAX_PIXELS`, and
    one that is damaged (truncated, a bad checksum).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = shown or str(path)
    if not path.exists():
        raise ThreedError(f"the {what} {name} does not exist")
    if not path.is_file():
        raise ThreedError(f"the {what} {name} is not a file (a folder?): give the path of an image file")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ThreedError(f"the {what} {name} is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB "
                          f"allowed: scale it down (e.g. to 1024 pixels on the longer side) or save it as JPEG")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ThreedError(f"cannot read the {what} {name}: {exc.strerror or exc}") from exc
    if not data:
        raise ThreedError(f"the {what} {name} is empty (0 bytes): the copy or download was cut short; {SAVE_AS}")
    names = ", ".join(formats[:-1]) + f" or {formats[-1]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError as exc:
        raise ThreedError(f"the {what} {name} is not an image: its content is not {names}, whatever its name "
                          f"says ({_describe(data)}); {SAVE_AS}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own, larger limit
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise ThreedError(_too_large(what, name, f"{int(claimed[1]) / 1e6:.0f} megapixels" if claimed
                                     else "an image size Pillow refuses")) from exc
    except Exception as exc:  # a broken header: Pillow's plugins raise SyntaxError, ValueError, struct.error ...
        raise ThreedError(f"the {what} {name} is damaged: {exc}; {SAVE_AS}") from exc
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ThreedError(_too_large(what, name, f"{width}x{height} pixels, {width * height / 1e6:.0f} megapixels"))
    if width < 1 or height < 1:
        raise ThreedError(f"the {what} {name} has no pixels ({width}x{height}); {SAVE_AS}")
    fmt = im.format
    try:
        im.verify()  # checksums and structure, without decoding (PNG: every chunk's CRC)
        with Image.open(io.BytesIO(data), formats=(fmt,)) as full:
            full.load()  # every pixel: a file cut short fails here
    except Exception as exc:  # OSError "image file is truncated", SyntaxError "broken PNG file", zlib errors ...
        raise ThreedError(f"the {what} {name} is damaged ({exc}): the file was probably cut short in a copy or "
                          f"download; {SAVE_AS}") from exc
    return data, fmt, (width, height)


def read_image_file(path: str | Path, what: str) -> np.ndarray:
    """The pixels of a checked image file (:func:`check_image_file`) as imageio reads them: ``H x W [x C]``.

    Palette images come out as RGB(A); 16-bit PNGs as ``uint16``.
    """
    import imageio.v3 as iio

    data, fmt, _ = check_image_file(path, what)
    try:
        return np.asarray(iio.imread(data, plugin="pillow", extension=f".{fmt.lower()}"))
    except Exception as exc:  # checked above, so this is rare: a mode imageio cannot convert
        raise ThreedError(f"cannot read the {what} {path} ({fmt}): {exc}; {SAVE_AS}") from exc
