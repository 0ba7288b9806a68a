"""scripts/gpu_check.sh and its Python half: the parts that run without a GPU (the shell script parses, the
SD-2.1-base-size configs, the random prior's folder loads, the markdown table)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
assert spec is not None and spec.loader is not None
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_the_shell_script_parses_and_names_every_step():
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for step in ("step parity", "step bench", "step lora", "step memory", "gpu_check.py table"):
        assert step in text
    assert "--backends torch cuda" in text and "--resolutions 64 128" in text


def test_the_unet_config_is_stable_diffusion_2_1_base_size():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # no memory: only the shapes
        unet = UNet2DConditionModel(**gpu_check.sd21_unet_config())
    assert sum(p.numel() for p in unet.parameters()) == gpu_check.SD21_UNET_PARAMETERS
    assert unet.config.cross_attention_dim == 1024 and unet.config.sample_size == 64


def test_the_random_prior_folder_loads_through_threed(tmp_path, monkeypatch):
    """The folder's layout at a small size (the real sizes take 3.5 GB of memory to build)."""
    from threed.guidance.prior import LatentPrior, load_prior

    small_unet = dict(gpu_check.sd21_unet_config(), block_out_channels=(32, 32, 64, 64), attention_head_dim=4,
                      layers_per_block=1, cross_attention_dim=1024)
    small_vae = dict(gpu_check.sd21_vae_config(), block_out_channels=(8, 8, 16, 16), norm_num_groups=4,
                     layers_per_block=1)
    monkeypatch.setattr(gpu_check, "sd21_unet_config", lambda: small_unet)
    monkeypatch.setattr(gpu_check, "sd21_vae_config", lambda: small_vae)
    folder = gpu_check.make_prior(tmp_path / "sd21-random", dtype="float32")
    prior = load_prior(str(folder), "cpu")
    assert isinstance(prior, LatentPrior) and prior.prediction_type == "epsilon" and prior.resolution == 512
    assert prior.encode_text([gpu_check.PROMPT + ", front view"]).shape[-1] == 1024


RESULTS = {
    "device": "NVIDIA H200", "torch": "2.11.0+cu130", "date": "2026-12-03",
    "bench": {"nerf_stage": [{"backend": "cuda", "resolution": 64, "median_step_s": 0.1234, "steps_per_s": 8.1,
                              "phases_s": {"render": 0.01, "guidance": 0.09, "prior": 0.08, "backward": 0.02,
                                           "optimizer": 0.001}, "outside_prior_share": 0.352}]},
    "lora": {"latent_size": 64, "relative_error": 0.0012, "zero_share_fp16": 0.01, "zero_share_fp32": 0.01,
             "finite": True},
    "memory": [{"recipe": "magic3d", "stage": "refine", "render_size": 512, "batch": 1, "steps": 3, "seconds": 4.2,
                "peak_gib": 11.5}],
}


def test_the_table_writer():
    text = gpu_check.markdown(RESULTS)
    assert text.startswith("GPU check on NVIDIA H200, torch 2.11.0+cu130, 2026-12-03.")
    assert "| cuda | 64 | 0.1234 s | 8.1 | 0.0100 s | 0.0900 s | 0.0800 s | 0.0200 s | 0.0010 s | 35% |" in text
    assert "relative error 0.12%" in text and "| magic3d | refine | 512 | 1 | 3 | 4.2 | 11.50 GiB |" in text
    assert gpu_check.markdown({}).startswith("GPU check on an unnamed device")  # every part may be missing


def test_collect_reads_what_the_script_leaves(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"device": "NVIDIA H200", "torch": "2.11.0", "date": "d"}))
    (tmp_path / "bench.json").write_text(json.dumps(RESULTS["bench"]))
    (tmp_path / "parity.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_volume" name="test_a"/>'
        '<testcase classname="tests.test_splat" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_raster" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    (tmp_path / "errors.txt").write_text("memory: exit 124 (over 100 s)\n")
    results = gpu_check.collect(tmp_path)
    assert results["parity"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1,
                                 "failed": ["tests.test_splat::test_b"]}
    text = gpu_check.markdown(results)
    assert "3 run, 1 failed, 1 skipped (failed: tests.test_splat::test_b)" in text
    assert "- `memory` did not finish: exit 124 (over 100 s)" in text and "| torch |" not in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU half runs in scripts/gpu_check.sh")
def test_the_lora_check_runs_on_a_gpu(tiny_sd_dir):
    result = gpu_check.lora_check(str(tiny_sd_dir), size=8)
    assert result["finite"] and result["relative_error"] < 0.05
