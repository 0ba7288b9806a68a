"""VSD's camera-conditioned LoRA copy: shares the frozen weights, starts as the pretrained UNet,
trains only its adapters, and its adapter state round-trips."""

from __future__ import annotations

import copy

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


def _cpu_half_works() -> bool:
    try:
        conv = torch.nn.Conv2d(2, 2, 3).half()
        conv(torch.ones(1, 2, 4, 4, dtype=torch.half, requires_grad=True)).sum().backward()
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _cpu_half_works(), reason="this torch has no float16 convolution on the CPU")
def test_vsd_adapter_gradients_agree_in_float16_and_float32(tiny_toy_dir):
    """The LoRA loss at a realistic size (64 x 64, the numel of SD's latents at batch 1) on a narrow UNet: its
    per-element gradient is under fp16's smallest normal, so without VSD's loss scale the float16 backward
    loses it (2.7 % relative error here); with it the fp16 gradients match fp32's to rounding (0.15 %)."""
    from diffusers import UNet2DConditionModel

    from threed.guidance.distillation import NoisyBatch
    from threed.guidance.rules.vsd import VSD, VSDConfig
    from threed.guidance.text import PromptProcessor
    from tiny_models import with_unet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                    layers_per_block=1, norm_num_groups=4, cross_attention_dim=32,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    cams = Cameras.orbit(elevation=[10], azimuth=[30], distance=[3.0], fovy_deg=40, height=16)
    x0 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)

    def adapter_gradients(dtype: torch.dtype) -> torch.Tensor:
        prior = with_unet(load_prior(str(tiny_toy_dir), "cpu", dtype=dtype), copy.deepcopy(unet))
        rule = VSD(VSDConfig(), prior, PromptProcessor(prior, "a red cube"), torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in rule.lora.adapter_parameters():  # the same non-zero adapters in both dtypes
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        batch = NoisyBatch(x0=x0, x_t=x0, noise=x0, t=torch.tensor([500]), text=rule.conditioner.conditioning(cams),
                           cameras=cams)
        rule.auxiliary_losses(batch)["lora"].backward()
        return torch.cat([p.grad.flatten() for p in rule.lora.adapter_parameters()])

    full, half = adapter_gradients(torch.float32), adapter_gradients(torch.float16)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert ((half - full).norm() / full.norm()).item() < 0.01
