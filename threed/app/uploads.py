"""The app's uploads: limits on size and pixels, the type read from the content, and the page's image widget.

Gradio refuses a file over :data:`MAX_UPLOAD_BYTES` while it is being uploaded (``max_file_size``).
The page's image inputs hand the uploaded file's path to the app untouched (:func:`image_input`):
gradio's own ``gr.Image`` opens every upload with Pillow before the app sees it, so a broken file
would end as a bare "Error" and a huge one would be decoded. The app then checks each upload with
:func:`check_upload` before anything is made or queued, and keeps it under the suffix of what it
is, not of what it was called.
"""

from __future__ import annotations

from pathlib import Path

from threed.errors import ThreedError
from threed.image_files import check_image_file
from threed.mesh_files import MESH_SUFFIXES

MAX_UPLOAD_BYTES = 25 * 2**20
"""Largest upload in bytes (25 MB: a 12-megapixel JPEG is 3-8 MB, a 4096 x 4096 RGBA PNG up to ~60 MB raw)."""
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
"""Formats an upload may be (what browsers show), by content, with the suffix it is kept under."""


def check_upload(path: Path, what: str) -> str:
    """The suffix to keep upload ``path`` under; a ThreedError (naming the file as uploaded) when it fails a check."""
    _, fmt, _ = check_image_file(path, what, max_bytes=MAX_UPLOAD_BYTES, formats=tuple(UPLOAD_FORMATS),
                                 shown=Path(path).name)
    return UPLOAD_FORMATS[fmt]


def check_mesh_upload(path: Path) -> str:
    """The suffix to keep an uploaded mesh under (its own, lower-cased: trimesh reads by suffix); a ThreedError for
    a type threed does not read or a file over the size limit. Its content is read by
    :class:`threed.app.request.JobRequest`'s checks, before anything is made."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ThreedError(f"uploaded mesh {path.name}: threed paints {', '.join(MESH_SUFFIXES)} files "
                          "(Blender or MeshLab convert the others)")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise ThreedError(f"uploaded mesh {path.name} is over {MAX_UPLOAD_BYTES // 2**20} MB: decimate it first, or "
                          "run threed texture on the command line, which has no upload limit")
    return suffix


def image_input(**kwargs):
    """An image upload of the page (``gr.Image`` arguments) whose value is the uploaded file's path, unopened.

    The instance's ``preprocess`` is replaced rather than ``gr.Image`` subclassed: gradio writes a
    ``.pyi`` stub next to the module of every component class it sees defined.
    """
    import gradio as gr

    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path:
            return payload.path
        return decode(payload)  # pasted data: URLs, decoded by gradio

    image.preprocess = preprocess
    return image
