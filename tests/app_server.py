"""Helpers of the app tests: a free loopback port, waiting for a condition, and ``threed app`` started in-process."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def wait_for(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(root: Path, **serve_kwargs):
    """``threed app`` on a free 127.0.0.1 port over output folder ``root``: yields (url, App); stops it after."""
    pytest.importorskip("gradio")
    from threed.app.server import serve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(root / ".gradio"))  # serve() sets it too; this restores it after
        blocks, app, url = serve("127.0.0.1", free_port(), root, block=False, **serve_kwargs)
        try:
            yield url, app
        finally:
            app.queue.close()
            blocks.close()
