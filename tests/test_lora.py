"""VSD's camera-conditioned LoRA copy: shares the frozen weights, starts as the pretrained UNet,
trains only its adapters, and its adapter state round-trips."""

from __future__ import annotations

import pytest
import torch

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.lora import CameraLoRA, camera_features
from threed.guidance.prior import load_prior
from tiny_models import KnownDenoiser

CAMS = Cameras.orbit(elevation=[0, 20], azimuth=[0, 120], distance=[2.5, 3.0], fovy_deg=40, height=16)


def _inputs(prior, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, prior.channels, prior.sample_size, prior.sample_size, generator=g)
    return x_t, torch.tensor([250, 750])[:batch], prior.encode_text(["a red chair"] * batch)


@pytest.mark.parametrize("fixture", ["tiny_toy_dir", "tiny_sd_dir", "tiny_if_dir"])
def test_copy_shares_frozen_weights_and_starts_as_the_pretrained_unet(fixture, request):
    prior = load_prior(str(request.getfixturevalue(fixture)), "cpu")
    lora = CameraLoRA(prior.unet, rank=4)
    frozen = [p for p in lora.unet.parameters() if not p.requires_grad]
    assert {id(p) for p in frozen} == {id(p) for p in prior.unet.parameters()}  # no second copy of the UNet
    names = [n for n, p in lora.unet.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("class_embedding.") for n in names)
    assert all(p.dtype == torch.float32 for p in lora.adapter_parameters())
    x_t, t, emb = _inputs(prior)
    with torch.no_grad():
        base = prior.noise_predictions(x_t, t, [emb])[0]
        copy = prior.noise_predictions(x_t, t, [emb], unet=lora.unet, class_labels=camera_features(CAMS))[0]
    torch.testing.assert_close(copy, base, rtol=0, atol=0)  # zero-initialised B and camera layer: exactly equal


def test_adapters_and_the_camera_change_the_output_and_receive_gradients(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    lora = CameraLoRA(prior.unet, rank=2)
    with torch.no_grad():
        for p in lora.adapter_parameters():
            p.add_(0.05 * torch.randn_like(p))
    x_t, t, emb = _inputs(prior)
    out = prior.model_outputs(x_t, t, [emb], unet=lora.unet, class_labels=camera_features(CAMS))[0]
    flipped = prior.model_outputs(x_t, t, [emb], unet=lora.unet, class_labels=camera_features(CAMS).flip(0))[0]
    assert (out - flipped).abs().max() > 1e-4  # the prediction depends on the camera
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.adapter_parameters())
    assert all(p.grad is None for p in prior.unet.parameters())


def test_adapter_state_round_trips_and_rejects_other_settings(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    a, b = CameraLoRA(prior.unet, rank=4), CameraLoRA(prior.unet, rank=4)
    with torch.no_grad():
        for p in a.adapter_parameters():
            p.normal_()
    b.load_adapter_state({k: v.clone() for k, v in a.adapter_state().items()})
    assert all(torch.equal(p, q) for p, q in zip(a.adapter_parameters(), b.adapter_parameters()))
    with pytest.raises(ThreedError, match="lora_rank or lora_targets"):
        CameraLoRA(prior.unet, rank=2).load_adapter_state(a.adapter_state())
    with pytest.raises(ThreedError, match="lora_rank or lora_targets"):
        CameraLoRA(prior.unet, rank=4, target_modules=("to_q",)).load_adapter_state(a.adapter_state())


def test_bad_targets_and_foreign_unets_are_clear_errors(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    with pytest.raises(ThreedError, match="lora_targets"):
        CameraLoRA(prior.unet, target_modules=("no_such_projection",))
    with pytest.raises(ThreedError, match="UNet2DConditionModel"):
        CameraLoRA(KnownDenoiser(3, 16))


def test_camera_features_are_the_camera_to_world_rows():
    feats = camera_features(CAMS)
    assert feats.shape == (2, 12) and feats.dtype == torch.float32
    torch.testing.assert_close(feats[1, 3::4], CAMS.position[1], rtol=0, atol=0)  # the translation column


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float32_adapters_train_on_a_float16_unet(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cuda")
    assert prior.dtype == torch.float16
    lora = CameraLoRA(prior.unet, rank=4)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in lora.adapter_parameters())
    x_t, t, emb = (v.cuda() for v in _inputs(prior))
    out = prior.model_outputs(x_t, t, [emb], unet=lora.unet, class_labels=camera_features(CAMS.to("cuda")))[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in lora.adapter_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
