"""The default command with the shipped toy-world prior, end to end, scored against the toy world's truth."""

import pytest

from threed.cli import main
from threed.toyworld.score import score_run


def test_short_default_run_exports_a_green_sphere(tmp_path):
    """100 steps of the default recipe already give one green, round object.

    The field starts as a grey blob, so the colour comes only from the prior's score; the shape check
    guards against the run collapsing, bursting into pieces, or growing a box-filling cloud.
    """
    run = tmp_path / "run"
    assert main(["generate", "a green sphere", "--out", str(run), "max_steps=100", "export.video=false",
                 "export.grid_size=64"]) == 0
    score = score_run(run)
    assert score["colour"]["name"] == "green", score["colour"]
    assert score["shape"]["name"] == "sphere", score["shape"]
    assert score["shape"]["distances"]["sphere"] < 0.12, score["shape"]  # 0.05 is the sampling floor
    assert score["components"]["single_object"], score["components"]


@pytest.mark.slow
def test_full_quickstart_makes_a_red_cube(tmp_path):
    """The whole quickstart recipe (600 steps, GLB and turntable): a cube, not the blob it started as."""
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--out", str(run)]) == 0
    assert (run / "export" / "turntable.mp4").stat().st_size > 0
    score = score_run(run)
    assert score["colour"]["name"] == "red", score["colour"]
    assert score["shape"]["name"] == "cube", score["shape"]
    assert score["components"]["single_object"], score["components"]
