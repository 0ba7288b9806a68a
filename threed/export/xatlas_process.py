"""xatlas in a child process, so that its crashes become a clear error instead of killing the export.

xatlas segfaults on some inputs (jpcy/xatlas#151; here, e.g. a finely subdivided icosphere) and a
segfault cannot be caught in-process: it would end ``threed generate`` without a word. The unwrap
therefore runs in ``python -m threed.export.xatlas_process IN OUT``, which imports only numpy and
xatlas (about 0.2 s of overhead); arrays travel through ``.npz`` files in a temporary folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from threed.errors import ThreedError


def parametrize(vertices: np.ndarray, faces: np.ndarray, resolution: int, padding: int,
                timeout: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """xatlas charts of a triangle mesh packed for a ``resolution``-texel square atlas.

    Returns:
        ``source_vertex`` (``V'``, input index of each output vertex), ``faces`` (``F x 3`` into the
        output vertices, in the input's face order), ``uv`` (``V' x 2`` in [0, 1]) and the chart count.

    Raises:
        ThreedError: xatlas crashed, timed out, or needed more than one atlas image.
    """
    with tempfile.TemporaryDirectory(prefix="threed-xatlas-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, vertices=np.ascontiguousarray(vertices, np.float32),
                 faces=np.ascontiguousarray(faces, np.uint32), resolution=resolution, padding=padding)
        try:
            proc = subprocess.run([sys.executable, "-m", "threed.export.xatlas_process", str(src), str(dst)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ThreedError(f"xatlas took over {timeout:.0f} s to unwrap {len(faces)} faces; export with "
                              f"`threed export RUN_DIR` and fewer faces (--faces) or vertex colours (--texture vertex)"
                              ) from exc
        if proc.returncode != 0 or not dst.is_file():
            detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            if proc.returncode < 0:
                detail = [f"killed by signal {-proc.returncode}"]
            raise ThreedError(f"xatlas failed to unwrap the mesh ({len(faces)} faces): {detail[0]}. It crashes on "
                              f"some meshes; the run is intact: export it again with `threed export RUN_DIR` and "
                              f"another face count (--faces) or vertex colours (--texture vertex)")
        with np.load(dst) as out:
            if int(out["atlas_count"]) != 1:
                raise ThreedError(f"xatlas packed the charts into {int(out['atlas_count'])} images; threed writes "
                                  f"one texture: raise the texture size (now {resolution})")
            return (out["source_vertex"].astype(np.int64), out["faces"].astype(np.int64),
                    out["uv"].astype(np.float64), int(out["charts"]))


def _main(src: str, dst: str) -> None:
    import xatlas

    with np.load(src) as data:
        atlas = xatlas.Atlas()
        atlas.add_mesh(data["vertices"], data["faces"])
        pack = xatlas.PackOptions()
        pack.resolution = int(data["resolution"])
        pack.padding = int(data["padding"])
        pack.bilinear = True  # leave room for bilinear filtering at chart edges
    atlas.generate(xatlas.ChartOptions(), pack)
    source_vertex, faces, uv = atlas[0]
    tmp = Path(dst).with_name("partial.npz")
    np.savez(tmp, source_vertex=source_vertex, faces=faces, uv=uv, charts=atlas.chart_count,
             atlas_count=atlas.atlas_count)
    tmp.replace(dst)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
