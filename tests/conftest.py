"""Shared fixtures: tiny random-weight prior folders (built once per session) and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jaxtyping import install_import_hook

# Shapes in signatures are checked at run time in the tests: every function of threed with jaxtyping
# annotations is wrapped by jaxtyping + beartype on import (installed before threed is imported), the whole
# package (guidance included). THREED_SHAPE_CHECKS=0 turns them off (e.g. to time the suite without their overhead).
CHECKED = ["threed"]
if os.environ.get("THREED_SHAPE_CHECKS", "1") != "0":
    _SHAPE_CHECKS = install_import_hook(CHECKED, "type_checks.checker")  # kept for the whole session

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: the N workers share the cores, so each takes its share of torch's threads, and so do the
    # runs it starts (app jobs, notebook kernels: torch reads OMP_NUM_THREADS on import). With -n 2 on 2 busy
    # cores the suite took 628 s at two threads a worker, 533 s at one. Processes that set their own thread
    # count (batch workers, the kill harness) keep it.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

from threed.runtime import tune_cpu_runtime  # noqa: E402

tune_cpu_runtime()  # as the CLI does, before tiny_models imports torch

from tiny_models import (make_tiny_if, make_tiny_mvdream, make_tiny_sd, make_tiny_sd3, make_tiny_toy,
                         make_tiny_toy_zero123, make_tiny_zero123)


@pytest.fixture(scope="session", autouse=True)
def _isolated_threed_cache(tmp_path_factory):
    """Keep text-embedding caches of the test session out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THREED_CACHE", str(tmp_path_factory.mktemp("threed-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """Stable Diffusion 1.x layout (epsilon prediction, PNDM scheduler)."""
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_v_dir(tmp_path_factory) -> Path:
    """Stable Diffusion 2.1 layout (v-prediction, DDIM scheduler)."""
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_if_dir(tmp_path_factory) -> Path:
    """DeepFloyd IF stage I layout (T5, word-level tokenizer, learned-range variance)."""
    return make_tiny_if(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture(scope="session")
def tiny_toy_dir(tmp_path_factory) -> Path:
    """Toy-world prior layout (pixel UNet, CLIP text encoder, word-level tokenizer, DDPM)."""
    return make_tiny_toy(tmp_path_factory.mktemp("tiny-toy"))


@pytest.fixture(scope="session")
def tiny_toy_mv_dir(tmp_path_factory) -> Path:
    """The toy multi-view prior's layout (the toy layout with a camera class embedding, 2 views, multiview.json)."""
    return make_tiny_toy(tmp_path_factory.mktemp("tiny-toy-mv"), num_views=2)


@pytest.fixture(scope="session")
def tiny_zero123_dir(tmp_path_factory) -> Path:
    """Zero-1-to-3 diffusers-conversion layout (8-channel UNet, VAE, CLIP image encoder, cc_projection)."""
    return make_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123"))


@pytest.fixture(scope="session")
def tiny_toy_zero123_dir(tmp_path_factory) -> Path:
    """The toy-world view prior's layout (pixel UNet with the reference concatenated, pose projection)."""
    return make_tiny_toy_zero123(tmp_path_factory.mktemp("tiny-toy-zero123") / "model")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    """Stable Diffusion 3 layout (MMDiT flow model, flow-matching scheduler, two CLIPs + T5)."""
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_mvdream_dir(tmp_path_factory) -> Path:
    """MVDream's diffusers-format conversion (its own MultiViewUNetModel, LDM weight names, SD 2.1 parts)."""
    return make_tiny_mvdream(tmp_path_factory.mktemp("tiny-mvdream"))
