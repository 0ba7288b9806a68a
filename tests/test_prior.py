"""Frozen diffusion priors: loading the real folder layouts, errors, text cache, diffusion math."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler

from threed.errors import ThreedError
from threed.guidance import loading
from threed.guidance.loading import PriorCache
from threed.guidance.prior import LatentPrior, PixelPrior, load_prior
from tiny_models import FixedOutput, KnownDenoiser, with_unet


def _frozen(module: torch.nn.Module) -> bool:
    return not module.training and all(not p.requires_grad for p in module.parameters())


def test_sd_layout_loads_as_frozen_latent_prior(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    assert isinstance(prior, LatentPrior) and prior.latent
    assert prior.dtype == torch.float32  # fp32 on CPU
    assert prior.resolution == 16  # UNet sample_size 8 x VAE factor 2
    assert prior.num_train_timesteps == 1000 and prior.alphas_cumprod.shape == (1000,)
    assert all(_frozen(m) for m in (prior.unet, prior.vae, prior.text_encoder))
    cache = PriorCache()
    cached = load_prior(str(tiny_sd_dir), "cpu", cache=cache)
    assert load_prior(str(tiny_sd_dir), "cpu", cache=cache) is cached and len(cache) == 1  # loaded once per owner
    assert load_prior(str(tiny_sd_dir), "cpu") is not cached  # no owner: a fresh load
    cache.clear()
    assert len(cache) == 0 and load_prior(str(tiny_sd_dir), "cpu", cache=cache) is not cached
    x0 = prior.encode_images(torch.rand(2, 16, 16, 3))
    assert x0.shape == (2, 4, 8, 8) and x0.dtype == torch.float32
    img = prior.decode(x0)
    assert img.shape == (2, 16, 16, 3) and 0 <= img.min() and img.max() <= 1


def test_latents_follow_the_stable_diffusion_convention(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    rgb = torch.rand(2, 16, 16, 3)
    with torch.no_grad():  # SD: images in [-1, 1] in, posterior mean times the VAE's scaling_factor out
        expected = prior.vae.encode(rgb.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * prior.vae.config.scaling_factor
    torch.testing.assert_close(prior.encode_images(rgb), expected, rtol=0, atol=1e-6)  # same ops, same order


def test_if_layout_loads_as_pixel_prior_keeping_the_noise_half(tiny_if_dir):
    prior = load_prior(str(tiny_if_dir), "cpu")
    assert isinstance(prior, PixelPrior) and not prior.latent
    assert prior.learned_variance and prior.channels == 3 and prior.resolution == 16
    assert all(_frozen(m) for m in (prior.unet, prior.text_encoder))
    rgb = torch.stack([torch.zeros(16, 16, 3), torch.ones(16, 16, 3)])
    x0 = prior.encode_images(rgb)
    assert x0.shape == (2, 3, 16, 16)
    assert torch.equal(x0[0], -torch.ones_like(x0[0])) and torch.equal(x0[1], torch.ones_like(x0[1]))  # [0,1] -> [-1,1]
    emb = prior.encode_text(["a red chair", ""])
    eps = prior.predict_noise(x0, torch.tensor([10, 500]), emb[:1].expand(2, -1, -1), emb[1:].expand(2, -1, -1), 20.0)
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()


def test_toy_layout_loads_through_the_same_code(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    assert isinstance(prior, PixelPrior) and not prior.learned_variance
    assert prior.max_length == 16  # the tokenizer's model_max_length, below CLIP's 77
    assert prior.encode_text(["a blue cube, front view"]).shape == (1, 16, 32)


def test_toyworld_short_name_maps_to_the_package_folder(tmp_path, monkeypatch, tiny_toy_dir):
    monkeypatch.setattr(loading, "PACKAGE_ROOT", tmp_path)
    expected = tmp_path / "priors" / "toyworld"
    with pytest.raises(ThreedError, match="toyworld") as err:
        load_prior("toyworld", "cpu")
    assert str(expected) in str(err.value)
    shutil.copytree(tiny_toy_dir, expected)
    assert isinstance(load_prior("toyworld", "cpu"), PixelPrior)


def test_missing_folder_names_the_path_and_how_to_download(tmp_path):
    missing = tmp_path / "weights" / "sd21"
    with pytest.raises(ThreedError) as err:
        load_prior(str(missing), "cpu")
    msg = str(err.value)
    assert str(missing) in msg and "download" in msg and f"model={missing}" in msg


def test_hub_id_not_available_offline_names_the_id():
    with pytest.raises(ThreedError) as err:  # conftest sets HF_HUB_OFFLINE=1
        load_prior("threed-tests/no-such-model", "cpu")
    msg = str(err.value)
    assert "threed-tests/no-such-model" in msg and "download" in msg


def test_missing_component_is_named(tmp_path, tiny_sd_dir):
    no_folder = tmp_path / "no-unet-folder"
    shutil.copytree(tiny_sd_dir, no_folder)
    shutil.rmtree(no_folder / "unet")
    with pytest.raises(ThreedError, match="'unet'"):
        load_prior(str(no_folder), "cpu")
    not_listed = tmp_path / "no-tokenizer-entry"
    shutil.copytree(tiny_sd_dir, not_listed)
    index = json.loads((not_listed / "model_index.json").read_text())
    del index["tokenizer"]
    (not_listed / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ThreedError, match="'tokenizer'"):
        load_prior(str(not_listed), "cpu")
    no_index = tmp_path / "no-index"
    shutil.copytree(tiny_sd_dir, no_index)
    (no_index / "model_index.json").unlink()
    with pytest.raises(ThreedError, match="model_index.json"):
        load_prior(str(no_index), "cpu")


def test_unknown_words_of_a_word_level_tokenizer_are_named(tiny_if_dir):
    prior = load_prior(str(tiny_if_dir), "cpu")
    with pytest.raises(ThreedError) as err:
        prior.encode_text(["a purple chair on a zebra"])
    msg = str(err.value)
    assert "'purple'" in msg and "'zebra'" in msg and "'chair'" not in msg.split("it knows")[0]
    assert "it knows:" in msg and "chair" in msg.split("it knows")[1]  # small vocabulary: listed
    assert prior.encode_text(["A Red Chair"]).shape[0] == 1  # the tokenizer lower-cases: known
    with pytest.raises(ThreedError) as err:  # a view suffix glued on: the word, not "zebra,"
        prior.encode_text(["a red zebra, front view"])
    assert "'zebra'" in str(err.value) and "'zebra,'" not in str(err.value)


def test_unknown_characters_of_a_bpe_tokenizer_are_named(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")  # the tiny CLIP vocabulary has letters only
    with pytest.raises(ThreedError, match="'chair7'") as err:
        prior.encode_text(["a red chair7"])
    assert "it knows" not in str(err.value)  # only word-level vocabularies are listed


def test_text_embeddings_are_cached_on_disk_by_model_and_prompt(tmp_path, monkeypatch, tiny_if_dir, tiny_toy_dir):
    monkeypatch.setenv("THREED_CACHE", str(tmp_path))
    cache = tmp_path / "text_embeddings"

    def fresh(folder):
        prior = load_prior(str(folder), "cpu")  # a new prior object: its in-memory cache is empty
        calls = []
        prior.text_encoder.register_forward_hook(lambda *a: calls.append(1))
        return prior, calls

    prior, calls = fresh(tiny_if_dir)
    first = prior.encode_text(["a red chair"])
    assert len(calls) == 1 and len(list(cache.glob("*.pt"))) == 1
    prior, calls = fresh(tiny_if_dir)
    again = prior.encode_text(["a red chair"])
    assert calls == [] and torch.equal(first, again)  # read back from the file, bit for bit
    prior.encode_text(["a blue chair"])
    assert len(calls) == 1 and len(list(cache.glob("*.pt"))) == 2  # another prompt: another file
    toy, toy_calls = fresh(tiny_toy_dir)
    toy.encode_text(["a red chair"])
    assert len(toy_calls) == 1 and len(list(cache.glob("*.pt"))) == 3  # another model: another file
    assert not list(cache.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_a_corrupt_cache_file_is_recomputed(tmp_path, monkeypatch, tiny_if_dir):
    monkeypatch.setenv("THREED_CACHE", str(tmp_path))
    prior = load_prior(str(tiny_if_dir), "cpu")
    good = prior.encode_text(["a dog"])
    (path,) = (tmp_path / "text_embeddings").glob("*.pt")
    path.write_bytes(b"not a tensor")
    assert torch.equal(load_prior(str(tiny_if_dir), "cpu").encode_text(["a dog"]), good)


def test_add_noise_matches_the_diffusers_scheduler(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 421, 999])
    expected = prior.scheduler.add_noise(x0, noise, t)  # an independent implementation of q(x_t | x0)
    torch.testing.assert_close(prior.add_noise(x0, noise, t), expected, rtol=0, atol=1e-6)  # float32 rounding


def test_classifier_free_guidance_formula(tiny_if_dir):
    prior = with_unet(load_prior(str(tiny_if_dir), "cpu"), KnownDenoiser(3, 16, learned_variance=True))
    emb = prior.encode_text(["a red chair", "a blue dog"])
    cond, uncond = emb[:1].expand(2, -1, -1), emb[1:].expand(2, -1, -1)
    x_t, t, s = torch.randn(2, 3, 16, 16), torch.tensor([100, 800]), 7.5
    eps_c, eps_u = KnownDenoiser.formula(x_t, t.float(), cond), KnownDenoiser.formula(x_t, t.float(), uncond)
    expected = eps_u + s * (eps_c - eps_u)  # diffusers' convention; the variance half is dropped
    torch.testing.assert_close(prior.predict_noise(x_t, t, cond, uncond, s), expected, rtol=0, atol=1e-5)  # float32
    torch.testing.assert_close(prior.predict_noise(x_t, t, cond), eps_c, rtol=0, atol=1e-6)  # no uncond: conditional


def test_v_prediction_becomes_the_noise_prediction(tiny_sd_v_dir):
    base = load_prior(str(tiny_sd_v_dir), "cpu")
    assert isinstance(base.scheduler, DDIMScheduler) and base.prediction_type == "v_prediction"
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([50, 900])
    a = base.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho 2022: v = alpha eps - sigma x0
    prior = with_unet(base, FixedOutput(v, 8))
    x_t = prior.add_noise(x0, eps, t)
    emb = prior.encode_text([""]).expand(2, -1, -1)
    by_hand = a.sqrt() * v + (1 - a).sqrt() * x_t
    got = prior.predict_noise(x_t, t, emb)
    torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-6)  # same formula, float32 rounding
    torch.testing.assert_close(got, eps, rtol=0, atol=1e-5)  # and it recovers the true noise exactly


def test_weighting_formulas(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    t = torch.tensor([20, 500, 980])
    a = prior.alphas_cumprod[t]
    torch.testing.assert_close(prior.weighting(t, "sds"), 1 - a)
    torch.testing.assert_close(prior.weighting(t, "uniform"), torch.ones(3))
    torch.testing.assert_close(prior.weighting(t, "fantasia"), a.sqrt() * (1 - a))
    assert (prior.weighting(t, "sds").diff() > 0).all()  # more noise, more weight


def test_encode_images_is_differentiable_and_the_vae_stays_frozen(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    rgb = torch.rand(2, 24, 24, 3, requires_grad=True)  # resized to 16 on the way in
    prior.encode_images(rgb).square().sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.vae.parameters())
