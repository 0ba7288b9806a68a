"""Broken image files (cut short, random bytes, text, empty, a huge header) get threed's own error everywhere.

Each is tried as ``--image``, ``--mask`` and ``--depth`` on the command line and as an upload to the app:
the message names the file and says what to do, never imageio's advice to install plugins, and nothing is
left behind.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from threed.app import uploads
from threed.app.jobs import JobQueue
from threed.app.request import JobRequest
from threed.app.server import App
from threed.cli import main
from threed.errors import ThreedError
from threed.image_files import check_image_file, read_image_file


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGBA pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def cutout_png() -> bytes:
    """A 32x32 RGBA image: a noisy red square on a transparent background (noise: the file is not tiny)."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 30, 30, 255)
    rgba[8:24, 8:24, 1] = np.random.default_rng(0).integers(0, 64, (16, 16))
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


BROKEN = {
    "truncated": (cutout_png()[:len(cutout_png()) // 2], "is damaged"),
    "random-bytes": (np.random.default_rng(0).bytes(2000), "is not an image"),
    "text": (b"id,prompt\n1,a red cube\n", "is not an image"),
    "empty": (b"", "is empty"),
    "huge-header": (png_header(100_000, 100_000), "too large"),
    "over-the-limit": (png_header(7000, 6000), "too large"),
}
"""Name -> (file content, words the message must hold). Every file is named ``.png``."""


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_threeds_own(message: str, name: str, words: str) -> None:
    assert name in message and words in message, message
    assert "pip install" not in message and "backend" not in message and "plugin" not in message, message


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_file_is_refused_with_its_name_and_what_to_do(kind, tmp_path):
    data, words = BROKEN[kind]
    bad = write(tmp_path / f"{kind}.png", data)
    with pytest.raises(ThreedError) as err:
        check_image_file(bad, "reference image")
    assert_threeds_own(str(err.value), str(bad), words)
    assert "scale it down" in str(err.value) or "save it again" in str(err.value)


@pytest.mark.parametrize("kind", BROKEN)
@pytest.mark.parametrize("flag", ["--image", "--mask", "--depth"])
def test_cli_refuses_a_broken_image_mask_or_depth_before_making_the_run(kind, flag, tmp_path, capsys):
    data, words = BROKEN[kind]
    good = write(tmp_path / "cutout.png", cutout_png())
    bad = write(tmp_path / f"{kind}.png", data)
    files = {"--image": good, "--mask": None, "--depth": None, flag: bad}
    args = [a for f, p in files.items() if p is not None for a in (f, str(p))]
    run = tmp_path / "run"
    assert main(["generate", *args, "--recipe", "quickstart-image", "--out", str(run)]) == 2
    assert_threeds_own(capsys.readouterr().err, str(bad.resolve()), words)
    assert not run.exists()


@pytest.mark.parametrize("kind", BROKEN)
def test_app_refuses_a_broken_upload_and_makes_nothing(kind, tmp_path):
    data, words = BROKEN[kind]
    root = tmp_path / "out"
    app = App(root, JobQueue(root, envs=[]))  # no workers: nothing would run even if it were queued
    upload = write(tmp_path / f"{kind}.png", data)
    good = write(tmp_path / "cutout.png", cutout_png())
    for image, mask in ((upload, None), (good, upload)):
        with pytest.raises(ThreedError) as err:
            app.submit(JobRequest(image=image, mask=mask, recipe="quickstart-image"))
        assert_threeds_own(str(err.value), upload.name, words)
        assert str(tmp_path) not in str(err.value)  # the page is told the file's name, not the server's paths
    assert [p.name for p in root.iterdir()] == []


def test_uploads_are_typed_by_content_and_limited_in_size(tmp_path, monkeypatch):
    jpeg = tmp_path / "photo.png"  # a JPEG under a PNG name is kept as what it is
    Image.new("RGB", (16, 16), (200, 30, 30)).save(jpeg, format="JPEG")
    assert uploads.check_upload(jpeg, "uploaded image") == ".jpg"
    tiff = tmp_path / "scan.png"  # readable on the command line, but not a format the page takes
    Image.new("RGB", (16, 16)).save(tiff, format="TIFF")
    assert check_image_file(tiff, "depth map")[1] == "TIFF"
    with pytest.raises(ThreedError, match="not an image: its content is not PNG, JPEG or WEBP"):
        uploads.check_upload(tiff, "uploaded image")
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", jpeg.stat().st_size - 1)
    with pytest.raises(ThreedError, match=r"photo.png is 0.0 MB, more than the 0 MB allowed"):
        uploads.check_upload(jpeg, "uploaded image")


def test_pixels_read_as_imageio_reads_them(tmp_path):
    """The checked reader hands on the same arrays imageio gave before: palettes applied, 16 bits kept."""
    rng = np.random.default_rng(0)
    images = {"rgba": Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)),
              "grey-alpha": Image.fromarray(rng.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA"),
              "palette": Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).quantize(16),
              "depth16": Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16))}
    for name, im in images.items():
        path = tmp_path / f"{name}.png"
        im.save(path)
        ours, theirs = read_image_file(path, name), np.asarray(iio.imread(path))
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), name
    assert read_image_file(tmp_path / "depth16.png", "depth").dtype == np.uint16



def test_a_mask_with_an_alpha_channel_is_read_by_its_grey(tmp_path):
    """Masks now reach the reader as uploaded (gradio no longer converts them to greyscale first)."""
    from threed.reference.image import read_reference

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "photo.png")
    grey = np.zeros((16, 16), np.uint8)
    grey[4:12, 4:12] = 255
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "mask.png")
    _, alpha, _ = read_reference(tmp_path / "photo.png", tmp_path / "mask.png")
    assert np.array_equal(alpha[0, ..., 0].numpy(), grey / 255.0)
