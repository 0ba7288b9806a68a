"""Score distillation: the gradient reaching the render is exactly w(t) (eps_hat - eps), per the math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threed.cameras import Cameras
from threed.config import build
from threed.errors import ThreedError
from threed.guidance.prior import load_prior
from threed.guidance.distillation import distillation_loss
from threed.guidance.registry import GUIDANCES, make_guidance
from threed.guidance.rules.sds import SDS, SDSConfig
from threed.guidance.text import PromptConfig, PromptProcessor
from threed.guidance.timesteps import TimestepSampler
from threed.render.output import RenderOut
from tiny_models import KnownDenoiser, with_unet

CAMS = Cameras.orbit(elevation=[0, 10], azimuth=[0, 180], distance=3.0, fovy_deg=40, height=16)


def _render(size: int, batch: int = 2) -> RenderOut:
    rgb = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(size), requires_grad=True)
    return RenderOut(rgb=rgb, opacity=torch.ones(batch, size, size, 1), depth=torch.ones(batch, size, size, 1))


@pytest.fixture
def stub_setup(tiny_if_dir):
    """A pixel prior (IF layout, learned variance) whose UNet output is known in closed form."""
    prior = with_unet(load_prior(str(tiny_if_dir), "cpu"), KnownDenoiser(3, 16, learned_variance=True))
    prompts = PromptProcessor(prior, "a red chair", PromptConfig(negative_prompt="a dog"))
    return prior, prompts


def _expected_grad(prior, prompts, out, t, noise, scale, weighting):
    """w(t) (eps_hat - eps), computed by hand from the stub's formula."""
    x0 = out.rgb.detach().permute(0, 3, 1, 2)
    x0 = F.interpolate(x0, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    cond, uncond = prompts.embeddings(CAMS)
    eps_c, eps_u = KnownDenoiser.formula(x_t, t.float(), cond), KnownDenoiser.formula(x_t, t.float(), uncond)
    w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia": a.sqrt() * (1 - a)}[weighting]
    return w * (eps_u + scale * (eps_c - eps_u) - noise)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia"])
def test_gradient_on_the_render_is_the_weighted_residual(stub_setup, weighting):
    prior, prompts = stub_setup
    guidance = SDS(SDSConfig(guidance_scale=20.0, weighting=weighting), prior, prompts)
    out, t, noise = _render(16), torch.tensor([30, 700]), torch.randn(2, 3, 16, 16)
    result = guidance(out, CAMS, t=t, noise=noise)
    result.loss.backward()
    grad = _expected_grad(prior, prompts, out, t, noise, 20.0, weighting)
    # Render at the prior's resolution: the resize is the identity and x0 = 2 rgb - 1, so
    # d loss / d rgb = 2 grad / B. Tolerance: float32 rounding of values of order 1.
    torch.testing.assert_close(out.rgb.grad.permute(0, 3, 1, 2), 2 * grad / len(t), rtol=0, atol=1e-5)
    assert prior.unet.grad_enabled is False  # the UNet ran under no_grad
    assert result.loss.ndim == 0 and result.terms["t"] == pytest.approx((30 + 700) / 2 / 1000)


def test_gradient_passes_back_through_the_resize(stub_setup):
    prior, prompts = stub_setup
    guidance = SDS(SDSConfig(guidance_scale=7.5), prior, prompts)
    out, t, noise = _render(24), torch.tensor([500, 500]), torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    grad = _expected_grad(prior, prompts, out, t, noise, 7.5, "sds")
    rgb = out.rgb.detach().requires_grad_(True)
    resized = F.interpolate(rgb.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear", align_corners=False)
    (expected,) = torch.autograd.grad(resized, rgb, grad_outputs=2 * grad / len(t))  # the resize's transpose
    torch.testing.assert_close(out.rgb.grad, expected, rtol=0, atol=1e-5)  # float32 rounding


def test_grad_clip_clamps_each_entry(stub_setup):
    prior, prompts = stub_setup
    guidance = SDS(SDSConfig(guidance_scale=100.0, weighting="uniform", grad_clip=0.05), prior, prompts)
    out, t, noise = _render(16), torch.tensor([100, 900]), torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    grad = _expected_grad(prior, prompts, out, t, noise, 100.0, "uniform")
    assert grad.abs().max() > 0.05  # the clamp is active in this setting
    torch.testing.assert_close(out.rgb.grad.permute(0, 3, 1, 2), grad.clamp(-0.05, 0.05), rtol=0, atol=1e-6)


def test_distillation_loss_gradient_is_exactly_grad_over_batch():
    x0 = torch.randn(3, 4, 8, 8, requires_grad=True)
    grad = torch.randn(3, 4, 8, 8)
    distillation_loss(x0, grad).backward()
    torch.testing.assert_close(x0.grad, grad / 3, rtol=0, atol=1e-6)  # x0 - (x0 - grad): one ulp of |x0|


def test_sds_on_a_latent_prior_reaches_the_render_but_not_the_prior(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    prompts = PromptProcessor(prior, "a red chair")
    guidance = make_guidance(build(SDSConfig, {"guidance_scale": 50}), prior, prompts,
                             generator=torch.Generator().manual_seed(0))
    out = _render(32)
    result = guidance(out, CAMS)
    result.loss.backward()
    assert torch.isfinite(result.loss) and out.rgb.grad.abs().sum() > 0 and torch.isfinite(out.rgb.grad).all()
    for module in (prior.unet, prior.vae, prior.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert set(result.terms) >= {"t", "t_max", "w", "grad_norm"}
    assert all(isinstance(v, float) for v in result.terms.values())


def test_timestep_sampler_anneals_t_max():
    cfg = SDSConfig(t_min=0.02, t_max=0.98, anneal="linear", t_max_end=0.5, anneal_steps=100)
    sampler = TimestepSampler(cfg, 1000)
    assert sampler.bounds == (20, 980)
    sampler.update(50, 1000)
    assert sampler.t_max == pytest.approx(0.74) and sampler.bounds == (20, 740)
    sampler.update(500, 1000)
    assert sampler.t_max == pytest.approx(0.5)  # held at the end value after anneal_steps
    sq = TimestepSampler(SDSConfig(anneal="sqrt", t_max_end=0.5), 1000)
    sq.update(250, 1000)  # anneal_steps None: the whole stage, progress 1/4 -> sqrt = 1/2
    assert sq.t_max == pytest.approx(0.98 - 0.48 * 0.5)
    step = TimestepSampler(SDSConfig(anneal="step", t_max_end=0.5, anneal_steps=10), 1000)
    step.update(9, 100)
    assert step.t_max == pytest.approx(0.98)
    step.update(10, 100)
    assert step.t_max == pytest.approx(0.5)
    t = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 20 and t.max() == 500  # uniform over the inclusive range


def test_update_moves_the_sampled_timesteps(stub_setup):
    prior, prompts = stub_setup
    guidance = SDS(SDSConfig(anneal="linear", t_max=0.9, t_max_end=0.1, t_min=0.05), prior, prompts,
                   generator=torch.Generator().manual_seed(1))
    guidance.update(100, 100)
    result = guidance(_render(16), CAMS)
    assert result.terms["t_max"] == pytest.approx(0.1) and 0.05 <= result.terms["t"] <= 0.1


def test_configs_build_from_mappings_and_dispatch_on_kind(stub_setup):
    cfg = build(GUIDANCES.config("sds"), {"kind": "sds", "guidance_scale": 20, "t_max": 0.9, "grad_clip": 1})
    assert isinstance(cfg, SDSConfig) and cfg.grad_clip == 1.0
    with pytest.raises(ThreedError, match="valid keys"):
        build(SDSConfig, {"guidance": 20})
    with pytest.raises(ThreedError, match="t_min"):
        build(SDSConfig, {"t_min": 0.9, "t_max": 0.5})
    with pytest.raises(ThreedError, match="choose one of"):
        build(SDSConfig, {"weighting": "snr"})
    guidance = make_guidance(cfg, *stub_setup)
    assert isinstance(guidance, SDS) and guidance.state_dict() == {} and guidance.parameter_groups() == []
    guidance.load_state_dict({})
    with pytest.raises(ThreedError, match="another guidance kind"):
        guidance.load_state_dict({"lora.weight": torch.zeros(1)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_cuda_prior_matches_the_fp32_cpu_gradient(tiny_sd_dir):
    cpu = load_prior(str(tiny_sd_dir), "cpu")
    gpu = load_prior(str(tiny_sd_dir), "cuda")
    assert gpu.dtype == torch.float16 and next(gpu.unet.parameters()).is_cuda  # fp16 weights on CUDA
    t, noise = torch.tensor([200, 600]), torch.randn(2, 4, 8, 8)
    grads = []
    for prior, device in ((cpu, "cpu"), (gpu, "cuda")):
        guidance = SDS(SDSConfig(guidance_scale=7.5), prior, PromptProcessor(prior, "a red chair"))
        rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
        out = RenderOut(rgb=rgb, opacity=rgb[..., :1], depth=rgb[..., :1])
        guidance(out, CAMS.to(device), t=t, noise=noise).loss.backward()
        assert rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()
        grads.append(rgb.grad.cpu())
    # fp16 UNet/VAE: about 3 significant digits, amplified by the guidance scale.
    torch.testing.assert_close(grads[1], grads[0], rtol=0.05, atol=0.05 * grads[0].abs().max().item())
