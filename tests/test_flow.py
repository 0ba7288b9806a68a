"""Flow-matching priors (Stable Diffusion 3 layout, tiny random weights through the real loading path) and RFDS:
the condition is the SD3 pipeline's, the noising is the scheduler's, the gradient is the guided velocity residual."""

from __future__ import annotations

import pytest
import torch

from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.errors import ThreedError
from threed.guidance.flow import SD3Prior, load_flow_prior
from threed.guidance.loading import PriorCache
from threed.guidance.prior import load_prior
from threed.guidance.rules.rfds import RFDS, RFDSConfig
from threed.guidance.text import PromptProcessor
from threed.render.output import RenderOut

CAMS = Cameras.orbit(elevation=[0, 10], azimuth=[30, 150], distance=3.0, fovy_deg=40, height=16)


@pytest.fixture
def sd3(tiny_sd3_dir) -> SD3Prior:
    return load_flow_prior(str(tiny_sd3_dir), "cpu", resolution=None)


def _frozen(module: torch.nn.Module) -> bool:
    return not module.training and all(not p.requires_grad for p in module.parameters())


def test_sd3_layout_loads_as_a_frozen_flow_prior(tiny_sd3_dir, sd3):
    assert sd3.latent and sd3.prediction_type == "flow" and sd3.dtype == torch.float32
    assert (sd3.channels, sd3.resolution, sd3.num_train_timesteps) == (4, 16, 1000)  # 8x8 latents, VAE factor 2
    assert all(_frozen(m) for m in (sd3.transformer, sd3.vae, *(enc for _, enc in sd3.clips), sd3.t5[1]))
    assert sd3.sigmas[0] > 0 and sd3.sigmas[-1] == 1 and (sd3.sigmas.diff() > 0).all()  # increasing to pure noise
    cache = PriorCache()
    first = load_flow_prior(str(tiny_sd3_dir), "cpu", resolution=32, cache=cache)
    assert first.resolution == 32 and load_flow_prior(str(tiny_sd3_dir), "cpu", resolution=32, cache=cache) is first
    with pytest.raises(ThreedError, match="multiple of 2"):
        load_flow_prior(str(tiny_sd3_dir), "cpu", resolution=17)
    with pytest.raises(ThreedError, match="rfds"):  # a text-diffusion rule pointed at a flow model says what to use
        load_prior(str(tiny_sd3_dir), "cpu")


def test_the_condition_is_the_sd3_pipelines_prompt_embedding(tiny_sd3_dir, sd3):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)  # an independent construction of the condition
    hidden, pooled = sd3.unpack(sd3.encode_text(["a red chair", ""]))
    embeds, negative, pooled_embeds, negative_pooled = pipe.encode_prompt(
        "a red chair", None, None, do_classifier_free_guidance=True, max_sequence_length=sd3.t5_length)
    # Batched with "" vs alone: float32 reduction order, on values of order 1.
    for got, want in [(hidden[:1], embeds), (hidden[1:], negative), (pooled[:1], pooled_embeds),
                      (pooled[1:], negative_pooled)]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ThreedError, match="'zebra'"):  # each of the three tokenizers is checked (T5's is word-level)
        sd3.encode_text(["a red zebra"])


def test_flow_noising_and_noise_predictions_follow_the_scheduler(sd3):
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    expected = sd3.scheduler.scale_noise(x0, sd3.network_time(t), noise)  # diffusers' own forward process
    x_t = sd3.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, expected, rtol=0, atol=1e-6)  # float32
    emb = sd3.encode_text(["a red chair"]).expand(3, -1, -1)
    (v,) = sd3.model_outputs(x_t, t, [emb])
    hidden, pooled = sd3.unpack(emb)
    with torch.no_grad():
        direct = sd3.transformer(hidden_states=x_t, timestep=sd3.network_time(t), encoder_hidden_states=hidden,
                                 pooled_projections=pooled).sample
    torch.testing.assert_close(v, direct, rtol=0, atol=1e-6)  # the pipeline's call: timestep = sigma * 1000
    assert torch.equal(sd3.training_target(x0, noise, t), noise - x0)

    class TrueVelocity(torch.nn.Module):  # a network that knows the path: v = eps - x0
        def forward(self, hidden_states, **kwargs):
            from types import SimpleNamespace

            return SimpleNamespace(sample=(noise - x0).repeat(hidden_states.shape[0] // 3, 1, 1, 1))

    sd3.transformer = TrueVelocity()
    (eps,) = sd3.noise_predictions(x_t, t, [emb])
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-5)  # eps = x_t + (1 - sigma) v recovers the noise


def test_rfds_gradient_is_the_guided_velocity_residual(sd3):
    prompts = PromptProcessor(sd3, "a red chair")
    rfds = RFDS(RFDSConfig(guidance_scale=5.0), sd3, prompts)
    rgb = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = RenderOut(rgb=rgb, opacity=torch.ones(2, 24, 24, 1), depth=torch.ones(2, 24, 24, 1))
    t, noise = torch.tensor([100, 700]), torch.randn(2, 4, 8, 8)
    rfds(out, CAMS, t=t, noise=noise).loss.backward()
    with torch.no_grad():
        x0 = sd3.encode_images(rgb)
        s = sd3.sigmas[t].view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        cond, uncond = prompts.embeddings(CAMS)

        def v(emb):
            hidden, pooled = sd3.unpack(emb)
            return sd3.transformer(hidden_states=x_t, timestep=sd3.sigmas[t] * 1000, encoder_hidden_states=hidden,
                                   pooled_projections=pooled).sample

        v_u = v(uncond)
        residual = v_u + 5.0 * (v(cond) - v_u) - (noise - x0)
    x = rgb.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(sd3.encode_images(x), x, grad_outputs=residual / 2)  # w = 1, batch mean
    torch.testing.assert_close(rgb.grad, expected, rtol=0, atol=1e-5)  # float32 through the VAE
    with pytest.raises(ThreedError, match="uniform"):
        RFDS(RFDSConfig(weighting="sds"), sd3, prompts)


def test_rfds_recipe_runs_offline_with_a_tiny_sd3(tiny_sd3_dir, tmp_path):
    from small_recipes import small
    from threed.cli import main

    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--recipe", "rfds", "--out", str(run), f"model={tiny_sd3_dir}",
                 "stages.0.guidance.resolution=null", *small("rfds")]) == 0
    ckpt = Checkpoint.load(run / "stages" / "0-coarse" / "last.pt")
    assert ckpt.step == 3 and all(torch.isfinite(v).all() for v in ckpt.scene.values() if v.is_floating_point())
    assert (run / "export" / "model.glb").stat().st_size > 0
