"""Score rules beyond SDS: each residual against a hand computation, the shared plumbing they use,
the timestep schedules, and a short CPU run of each recipe through the command line. (RFDS, on a flow
prior, is tested in test_flow.py; every rule's common contract in test_guidance_conformance.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from small_recipes import small
from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.config import build
from threed.errors import ThreedError
from threed.guidance.lora import camera_features
from threed.guidance.prior import DiffusionPrior, load_prior
from threed.guidance.registry import make_guidance
from threed.guidance.rules.csd import CSD, CSDConfig
from threed.guidance.rules.ism import ISM, ISMConfig
from threed.guidance.rules.nfsd import NFSD, NFSDConfig
from threed.guidance.rules.sdi import SDI, SDIConfig
from threed.guidance.rules.sds import SDS, SDSConfig
from threed.guidance.rules.sds_bridge import SDSBridge, SDSBridgeConfig
from threed.guidance.rules.vsd import VSD, VSDConfig
from threed.guidance.text import PromptConfig, PromptProcessor
from threed.guidance.timesteps import DreamTimeConfig, TimestepSampler
from threed.recipe import load_recipe
from threed.render.output import RenderOut
from tiny_models import KnownDenoiser, ProjectingDenoiser, with_unet

CAMS = Cameras.orbit(elevation=[0, 10], azimuth=[30, 150], distance=3.0, fovy_deg=40, height=16)
T_SMALL_AND_LARGE = torch.tensor([30, 700])  # one view on each side of NFSD's small_t = 200


def _render(batch: int = 2, size: int = 16) -> RenderOut:
    rgb = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(size), requires_grad=True)
    return RenderOut(rgb=rgb, opacity=torch.ones(batch, size, size, 1), depth=torch.ones(batch, size, size, 1))


def _x0(out: RenderOut) -> torch.Tensor:
    return out.rgb.detach().permute(0, 3, 1, 2) * 2 - 1  # a 16 px pixel prior: no resize


def _check_render_grad(prior, out, t, residual, weighting="sds", atol=1e-5):
    """The render gradient is d/d rgb of the distillation loss: 2 w(t) r / B for a pixel prior at its size."""
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    w = {"sds": 1 - a, "ism": ((1 - a) / a).sqrt()}[weighting]
    # Default tolerance: float32 rounding of stub values of order 1-10.
    torch.testing.assert_close(out.rgb.grad.permute(0, 3, 1, 2), 2 * w * residual / len(t), rtol=1e-5, atol=atol)


@pytest.fixture
def stub_prior(tiny_if_dir):
    """A pixel prior whose noise prediction is known in closed form: eps = 0.5 x_t + mean(y) + t / 1000."""
    return with_unet(load_prior(str(tiny_if_dir), "cpu"), KnownDenoiser(3, 16, learned_variance=True))


def eps(prior, x_t, t, text):
    """The stub's prediction for a prompt (one for all views), a prompt per view, or embeddings."""
    if isinstance(text, str):
        text = [text] * len(t)
    emb = prior.encode_text(text) if isinstance(text, list) else text
    return KnownDenoiser.formula(x_t, t.float(), emb)


# --------------------------------------------------------------------------- NFSD


def test_nfsd_residual_is_domain_plus_scaled_condition_without_noise(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    guidance = NFSD(NFSDConfig(guidance_scale=7.5, negative_prompt="a dog"), stub_prior, prompts)
    out, t, noise = _render(), T_SMALL_AND_LARGE, torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    a = stub_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * _x0(out) + (1 - a).sqrt() * noise
    cond, _ = prompts.embeddings(CAMS)
    e_y, e_null, e_neg = eps(stub_prior, x_t, t, cond), eps(stub_prior, x_t, t, ""), eps(stub_prior, x_t, t, "a dog")
    delta_c = e_y - e_null
    delta_d = torch.cat([e_null[:1], (e_null - e_neg)[1:]])  # t = 30 < 200: eps(null); t = 700: eps(null) - eps(neg)
    _check_render_grad(stub_prior, out, t, delta_d + 7.5 * delta_c)


def test_nfsd_with_an_empty_negative_prompt_keeps_only_the_condition_term_at_large_t(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    guidance = NFSD(NFSDConfig(guidance_scale=7.5, negative_prompt=""), stub_prior, prompts)
    out, t, noise = _render(), torch.tensor([500, 900]), torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    a = stub_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * _x0(out) + (1 - a).sqrt() * noise
    cond, _ = prompts.embeddings(CAMS)
    _check_render_grad(stub_prior, out, t, 7.5 * (eps(stub_prior, x_t, t, cond) - eps(stub_prior, x_t, t, "")))


def test_nfsd_refuses_a_cfg_negative_prompt_and_names_unknown_negative_words(stub_prior):
    with pytest.raises(ThreedError, match="guidance.negative_prompt"):
        prompts = PromptProcessor(stub_prior, "a red chair", PromptConfig(negative_prompt="a dog"))
        NFSD(NFSDConfig(), stub_prior, prompts)
    with pytest.raises(ThreedError, match=r"'unrealistic,?'.*guidance.negative_prompt"):  # the paper's p_neg
        NFSD(NFSDConfig(), stub_prior, PromptProcessor(stub_prior, "a red chair"))


# --------------------------------------------------------------------------- ISM


def _ddim(x, e, a_from, a_to):
    x0_hat = (x - (1 - a_from).sqrt() * e) / a_from.sqrt()
    return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * e


def test_ism_residual_follows_the_ddim_inverted_interval(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    cfg = ISMConfig(guidance_scale=7.5, delta_t=0.05, inversion_steps=2)
    guidance = ISM(cfg, stub_prior, prompts)
    out, t, noise = _render(), torch.tensor([30, 700]), torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    ab = stub_prior.alphas_cumprod
    null = stub_prior.encode_text(["", ""])
    cond, uncond = prompts.embeddings(CAMS)
    expected = []
    for i, (t_i, s_i) in enumerate([(30, 0), (700, 650)]):  # s = max(t - 50, 0)
        x = ab[0].sqrt() * _x0(out)[i:i + 1] + (1 - ab[0]).sqrt() * noise[i:i + 1]  # x0 noised to t = 0
        for a, b in [(0, s_i // 2), (s_i // 2, s_i)]:  # two unconditional DDIM inversion steps to s
            e = KnownDenoiser.formula(x, torch.tensor([float(a)]), null[:1])
            x = _ddim(x, e, ab[a], ab[b])
        e_s = KnownDenoiser.formula(x, torch.tensor([float(s_i)]), null[:1])
        x_t = _ddim(x, e_s, ab[s_i], ab[t_i])  # one more step: x_s -> x_t
        tt = torch.tensor([float(t_i)])
        e_c, e_u = KnownDenoiser.formula(x_t, tt, cond[i:i + 1]), KnownDenoiser.formula(x_t, tt, uncond[i:i + 1])
        expected.append(e_u + 7.5 * (e_c - e_u) - e_s)
    _check_render_grad(stub_prior, out, t, torch.cat(expected), weighting="ism")


def test_ddim_step_matches_diffusers_and_inverts_exactly(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    ddim = DDIMScheduler.from_config(prior.scheduler.config, prediction_type="epsilon", set_alpha_to_one=False,
                                     steps_offset=0, clip_sample=False)
    ddim.set_timesteps(20)  # stride 50: 950, 900, ...
    x, e, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([500])
    expected = ddim.step(e, 500, x, eta=0.0).prev_sample  # an independent DDIM implementation
    torch.testing.assert_close(prior.ddim_step(x, e, t, t - 50), expected, rtol=0, atol=1e-5)  # float32
    up = prior.ddim_step(x, e, t, torch.tensor([800]))  # inversion: up the trajectory with the same eps
    torch.testing.assert_close(prior.ddim_step(up, e, torch.tensor([800]), t), x, rtol=0, atol=1e-4)  # float32


def test_ism_weighting_formula(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), "cpu")
    t = torch.tensor([20, 500, 980])
    a = prior.alphas_cumprod[t]
    torch.testing.assert_close(prior.weighting(t, "ism"), ((1 - a) / a).sqrt())


# --------------------------------------------------------------------------- Perp-Neg through SDS


def test_perp_neg_removes_only_the_perpendicular_part_of_each_negative(tiny_if_dir):
    base = load_prior(str(tiny_if_dir), "cpu")
    unet = ProjectingDenoiser(3, 16, text_dim=32)
    prior = with_unet(base, unet)
    prompts = PromptProcessor(prior, "a red chair", PromptConfig(perp_neg=True, perp_neg_weight=1.5))
    guidance = SDS(SDSConfig(guidance_scale=20.0), prior, prompts)
    out, t, noise = _render(), torch.tensor([300, 600]), torch.randn(2, 3, 16, 16)
    guidance(out, CAMS, t=t, noise=noise).loss.backward()
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * _x0(out) + (1 - a).sqrt() * noise

    def e(texts):
        return unet.formula(x_t, t.float(), prior.encode_text(texts))

    e_c, e_u = e(["a red chair, front view", "a red chair, back view"]), e(["", ""])  # azimuths 30 and 150
    # azimuth 30: negatives front (weight 1.5 * 30/90) and side (1.5 * 60/90);
    # azimuth 150: negatives side (perp_neg_back_side_weight 0.394 * 60/90) and front (1.5: at least 90 deg away).
    negs = [(["a red chair, front view", "a red chair, side view"], torch.tensor([0.5, 0.394 * 2 / 3])),
            (["a red chair, side view", "a red chair, front view"], torch.tensor([1.0, 1.5]))]
    delta = e_c - e_u
    guided = delta.clone()
    for texts, w in negs:
        n = e(texts) - e_u
        along = (n * delta).flatten(1).sum(1) / delta.flatten(1).square().sum(1)
        perp = n - along.view(-1, 1, 1, 1) * delta
        assert perp.abs().max() > 0.1 * n.abs().max()  # the negatives are not parallel to the prompt
        guided -= w.view(-1, 1, 1, 1) * perp
    _check_render_grad(prior, out, t, e_u + 20.0 * guided - noise, atol=1e-4)  # float32, values ~20


def test_guide_without_negatives_is_diffusers_cfg_and_perpendicular_negatives_are_orthogonal():
    e_c, e_u, e_n, e_m = torch.randn(4, 2, 4, 8, 8).unbind(0)
    torch.testing.assert_close(DiffusionPrior.guide(e_c, e_u, 7.5), e_u + 7.5 * (e_c - e_u), rtol=0, atol=1e-6)
    w = torch.tensor([1.0, 2.0])
    shift = (e_u + 7.5 * (e_c - e_u)) - DiffusionPrior.guide(e_c, e_u, 7.5, [(e_n, w), (e_m, w.flip(0))])
    # What Perp-Neg removes is orthogonal to the positive direction, per view (cosine: float32 rounding).
    cosine = F.cosine_similarity(shift.flatten(1), (e_c - e_u).flatten(1), dim=1)
    assert shift.abs().max() > 0.1 and cosine.abs().max() < 1e-5
    parallel = e_u + 0.3 * (e_c - e_u)  # a negative along the prompt direction changes nothing
    torch.testing.assert_close(DiffusionPrior.guide(e_c, e_u, 7.5, [(parallel, w)]), e_u + 7.5 * (e_c - e_u),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- CSD


def test_csd_residual_is_the_classifier_score_with_an_annealed_negative(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    cfg = CSDConfig(guidance_scale=20.0, negative_prompt="a dog", negative_scale=2.0, negative_steps=10)
    csd = CSD(cfg, stub_prior, prompts)
    assert csd.negative_weight == 0.0  # the negative anneals in from 0 ...
    csd.update(5, 100)
    assert csd.negative_weight == pytest.approx(1.0)  # ... linearly ...
    out, t, noise = _render(), torch.tensor([300, 600]), torch.randn(2, 3, 16, 16)
    csd(out, CAMS, t=t, noise=noise).loss.backward()
    a = stub_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * _x0(out) + (1 - a).sqrt() * noise
    cond, _ = prompts.embeddings(CAMS)
    e_c, e_null, e_neg = eps(stub_prior, x_t, t, cond), eps(stub_prior, x_t, t, ""), eps(stub_prior, x_t, t, "a dog")
    # No generative term eps(null) - eps: only the (negative) classifier scores.
    _check_render_grad(stub_prior, out, t, 20.0 * (e_c - e_null) - 1.0 * (e_neg - e_null))
    csd.update(50, 100)
    assert csd.negative_weight == pytest.approx(2.0)  # ... to negative_scale, then stays
    plain = CSD(CSDConfig(guidance_scale=20.0), stub_prior, prompts)  # no negative prompt: one CFG call
    out2 = _render()
    plain(out2, CAMS, t=t, noise=noise).loss.backward()
    _check_render_grad(stub_prior, out2, t, 20.0 * (e_c - e_null))


# --------------------------------------------------------------------------- SDS-Bridge


def test_sds_bridge_replaces_the_unconditional_branch_by_the_view_dependent_source_prompt(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    cfg = SDSBridgeConfig(guidance_scale=30.0, sds_guidance_scale=100.0, source_suffix=", small", sds_fraction=0.5)
    bridge = SDSBridge(cfg, stub_prior, prompts)
    t, noise = torch.tensor([300, 600]), torch.randn(2, 3, 16, 16)
    a = stub_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    cond, _ = prompts.embeddings(CAMS)

    def run(step):
        bridge.update(step, 10)
        out = _render()
        bridge(out, CAMS, t=t, noise=noise).loss.backward()
        return out, a.sqrt() * _x0(out) + (1 - a).sqrt() * noise

    out, x_t = run(4)  # the first half of the stage is plain SDS at its own scale
    e_c, e_u = eps(stub_prior, x_t, t, cond), eps(stub_prior, x_t, t, "")
    _check_render_grad(stub_prior, out, t, e_u + 100.0 * (e_c - e_u) - noise, atol=1e-4)  # float32, values ~100
    out, x_t = run(5)  # then the bridge: the prompt against the prompt + its artefacts, per view (azimuths 30, 150)
    e_src = eps(stub_prior, x_t, t, ["a red chair, small, front view", "a red chair, small, back view"])
    _check_render_grad(stub_prior, out, t, 30.0 * (eps(stub_prior, x_t, t, cond) - e_src))
    with pytest.raises(ThreedError, match="source_suffix"):
        build(SDSBridgeConfig, {"source_suffix": ", "})


# --------------------------------------------------------------------------- SDI


def test_sdi_noise_is_the_one_that_ddim_inversion_of_the_render_implies(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    cfg = SDIConfig(guidance_scale=7.5, inversion_steps=2, inversion_guidance_scale=-6.5, inversion_eta=0.0)
    sdi = SDI(cfg, stub_prior, prompts)
    out, t = _render(), torch.tensor([30, 700])
    sdi(out, CAMS, t=t, noise=torch.randn(2, 3, 16, 16)).loss.backward()
    ab = stub_prior.alphas_cumprod
    cond, uncond = prompts.embeddings(CAMS)
    expected = []
    for i, t_i in enumerate(t.tolist()):
        x0 = _x0(out)[i:i + 1]

        def guided(x, k, s):
            kk = torch.tensor([float(k)])
            e_c, e_u = KnownDenoiser.formula(x, kk, cond[i:i + 1]), KnownDenoiser.formula(x, kk, uncond[i:i + 1])
            return e_u + s * (e_c - e_u)

        x = _ddim(x0, guided(x0, 0, -6.5), torch.tensor(1.0), ab[t_i // 2])  # from the clean render (abar = 1)
        x = _ddim(x, guided(x, t_i // 2, -6.5), ab[t_i // 2], ab[t_i])  # guided inversion steps 0 -> t/2 -> t
        kappa = (x - ab[t_i].sqrt() * x0) / (1 - ab[t_i]).sqrt()
        expected.append(guided(x, t_i, 7.5) - kappa)
    # The random noise of the core plays no part (another one was drawn above).
    _check_render_grad(stub_prior, out, t, torch.cat(expected), weighting="ism", atol=1e-4)  # float32 inversion

    def grad(seed, eta):
        g = SDI(SDIConfig(inversion_steps=2, inversion_eta=eta), stub_prior, prompts,
                generator=torch.Generator().manual_seed(seed))
        o = _render()
        g(o, CAMS, t=t).loss.backward()
        return o.rgb.grad
    assert torch.equal(grad(0, 0.3), grad(0, 0.3)) and not torch.equal(grad(0, 0.3), grad(1, 0.3))


def test_linear_schedule_anneals_one_timestep_per_step():
    sampler = TimestepSampler(SDSConfig(schedule="linear", t_min=0.02, t_max=0.98), 1000)
    ts = []
    for step in (0, 25, 50, 100, 200):
        sampler.update(step, 100)
        ts.append(sampler.bounds)
    assert ts == [(980, 980), (740, 740), (500, 500), (20, 20), (20, 20)]
    assert torch.equal(sampler.sample(3), torch.full((3,), 20))


# --------------------------------------------------------------------------- VSD


@pytest.fixture
def toy_prior(tiny_toy_dir):
    return load_prior(str(tiny_toy_dir), "cpu")


def _randomise_adapters(vsd: VSD, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vsd.lora.adapter_parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_vsd_residual_is_pretrained_cfg_minus_the_camera_conditioned_lora(toy_prior):
    prompts = PromptProcessor(toy_prior, "a red cube")
    vsd = VSD(VSDConfig(guidance_scale=7.5), toy_prior, prompts, generator=torch.Generator().manual_seed(0))
    _randomise_adapters(vsd)  # a trained-looking eps_phi, different from the pretrained UNet
    out, t, noise = _render(), torch.tensor([100, 800]), torch.randn(2, 3, 16, 16)
    vsd(out, CAMS, t=t, noise=noise).loss.backward()
    a = toy_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * _x0(out) + (1 - a).sqrt() * noise
    cond, uncond = prompts.embeddings(CAMS)
    plain = toy_prior.encode_text(["a red cube"] * 2)  # eps_phi sees the view-independent prompt
    with torch.no_grad():
        e_c, e_u = (toy_prior.unet(x_t, t, encoder_hidden_states=e).sample for e in (cond, uncond))
        e_phi = vsd.lora.unet(x_t, t, encoder_hidden_states=plain, class_labels=camera_features(CAMS)).sample
    assert (e_phi - e_c).abs().max() > 1e-3  # the adapters and the camera really act
    # A real UNet run on a batch of 4 (guidance) vs 2 (here) sums in another order: float32 noise of
    # ~1e-6 on outputs of order 1, amplified by the guidance scale 7.5.
    _check_render_grad(toy_prior, out, t, e_u + 7.5 * (e_c - e_u) - e_phi, atol=1e-4)


def test_vsd_trains_the_adapters_and_leaves_the_pretrained_unet_untouched(toy_prior):
    prompts = PromptProcessor(toy_prior, "a red cube")
    vsd = VSD(VSDConfig(lora_lr=1e-2), toy_prior, prompts, generator=torch.Generator().manual_seed(0))
    base = {k: v.clone() for k, v in toy_prior.unet.state_dict().items()}
    x_t, t, emb = torch.randn(2, 3, 16, 16), torch.tensor([300, 600]), toy_prior.encode_text(["a red cube"] * 2)
    with torch.no_grad():
        before = toy_prior.unet(x_t, t, encoder_hidden_states=emb).sample
    adapters = [p.detach().clone() for p in vsd.lora.adapter_parameters()]
    opt = torch.optim.Adam(vsd.parameter_groups())  # as the stage adds them to its Adam
    assert opt.param_groups[0]["lr"] == 1e-2
    for _ in range(3):
        result = vsd(_render(), CAMS)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
    assert result.terms["lora"] > 0 and all(isinstance(v, float) for v in result.terms.values())
    changed = [not torch.equal(p, q) for p, q in zip(vsd.lora.adapter_parameters(), adapters)]
    assert all(changed)  # every LoRA matrix and the camera embedding moved
    for k, v in toy_prior.unet.state_dict().items():
        assert torch.equal(v, base[k]), k  # the frozen weights (shared with the copy) did not
    assert all(not p.requires_grad and p.grad is None for p in toy_prior.unet.parameters())
    with torch.no_grad():
        torch.testing.assert_close(toy_prior.unet(x_t, t, encoder_hidden_states=emb).sample, before, rtol=0, atol=0)


def test_vsd_adapters_round_trip_through_a_checkpoint(toy_prior, tmp_path):
    prompts = PromptProcessor(toy_prior, "a red cube")
    vsd = VSD(VSDConfig(), toy_prior, prompts)
    _randomise_adapters(vsd, seed=3)
    ckpt = Checkpoint(stage="coarse", step=1, total_steps=2, scene_kind="nerf", scene={}, scene_config={},
                      guidance=vsd.state_dict())
    ckpt.save(tmp_path / "last.pt")
    fresh = VSD(VSDConfig(), toy_prior, prompts)
    fresh.load_state_dict(Checkpoint.load(tmp_path / "last.pt").guidance)
    for p, q in zip(fresh.lora.adapter_parameters(), vsd.lora.adapter_parameters()):
        assert torch.equal(p, q)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 900])
    with torch.no_grad():
        torch.testing.assert_close(fresh.phi(x_t, t, CAMS), vsd.phi(x_t, t, CAMS), rtol=0, atol=0)
    with pytest.raises(ThreedError, match="lora_rank"):
        VSD(VSDConfig(lora_rank=2), toy_prior, prompts).load_state_dict(vsd.state_dict())
    with pytest.raises(ThreedError, match="another guidance kind"):
        fresh.load_state_dict({})
    with pytest.raises(ThreedError, match="another guidance kind"):
        SDS(SDSConfig(), toy_prior, prompts).load_state_dict(vsd.state_dict())


def test_the_lora_training_target_is_the_models_own_parameterisation(tiny_sd_dir, tiny_sd_v_dir):
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    eps_prior, v_prior = load_prior(str(tiny_sd_dir), "cpu"), load_prior(str(tiny_sd_v_dir), "cpu")
    assert torch.equal(eps_prior.training_target(x0, noise, t), noise)
    expected = v_prior.scheduler.get_velocity(x0, noise, t)  # diffusers' own velocity
    torch.testing.assert_close(v_prior.training_target(x0, noise, t), expected, rtol=0, atol=1e-6)  # float32


# --------------------------------------------------------------------------- schedules and configs


def test_dreamtime_schedule_decreases_monotonically_and_follows_its_prior():
    cfg = SDSConfig(schedule="dreamtime", t_min=0.02, t_max=0.98)
    sampler, n = TimestepSampler(cfg, 1000), 1000
    ts = []
    for step in range(n + 1):
        sampler.update(step, n)
        lo, hi = sampler.bounds
        assert lo == hi  # one timestep for the whole batch
        ts.append(lo)
    assert ts[0] == 980 and ts[-1] == 20 and all(a >= b for a, b in zip(ts, ts[1:]))
    # Steps spent in the flat part [500, 800] match its share of the prior's mass (within one step per end).
    grid = torch.arange(20, 981).double()
    p = DreamTimeConfig().density(grid / 1000)
    share = float(p[(grid >= 500) & (grid <= 800)].sum() / p.sum())
    spent = sum(500 <= t <= 800 for t in ts[:-1]) / n
    assert spent == pytest.approx(share, abs=2 / n)
    assert torch.equal(sampler.sample(3), torch.full((3,), 20))
    with pytest.raises(ValueError, match="anneal: none"):
        SDSConfig(schedule="dreamtime", anneal="linear")


@pytest.mark.parametrize("name,kind,rule", [("nfsd", "nfsd", NFSD), ("prolificdreamer", "vsd", VSD),
                                            ("quickstart", "sds", SDS)])
def test_recipes_select_their_rule_by_kind(name, kind, rule, toy_prior):
    (cfg,) = load_recipe(name).stages[0].guidance
    assert cfg.kind == kind and cfg.guidance_scale == (20.0 if kind == "sds" else 7.5)
    negative = ["stages.0.guidance.negative_prompt=\"\""] if kind == "nfsd" else []
    (cfg,) = load_recipe(name, negative).stages[0].guidance
    assert isinstance(make_guidance(cfg, toy_prior, PromptProcessor(toy_prior, "a red cube")), rule)
    with pytest.raises(ThreedError, match="lora_rank"):  # a key of another kind is an unknown key
        load_recipe(name, ["stages.0.guidance.kind=ism", "stages.0.guidance.lora_rank=2"])


def test_rule_configs_validate_their_values():
    for cls, bad in [(NFSDConfig, {"small_t": 2.0}), (VSDConfig, {"lora_rank": 0}), (VSDConfig, {"camera_dropout": 2}),
                     (ISMConfig, {"delta_t": 0.0}), (ISMConfig, {"inversion_steps": 0}), (CSDConfig, {"negative_steps": -1}),
                     (SDSBridgeConfig, {"sds_fraction": 1.5}), (SDIConfig, {"inversion_eta": -1}),
                     (SDSConfig, {"weight": -1})]:
        with pytest.raises(ThreedError, match=next(iter(bad))):
            build(cls, bad)


# --------------------------------------------------------------------------- CPU smoke runs of each recipe

@pytest.mark.parametrize("recipe,extra", [
    ("nfsd", ["stages.0.guidance.negative_prompt=\"\""]),  # the toy vocabulary has none of the paper's words
    ("prolificdreamer", []),
    ("quickstart", ["stages.0.guidance.kind=ism", "stages.0.guidance.inversion_steps=2"]),
    ("quickstart", ["stages.0.prompt.perp_neg=true", "stages.0.prompt.view_interpolation=true"]),
    ("csd", ["stages.0.guidance.negative_prompt=\"a blue sphere\"", "stages.0.guidance.negative_steps=2"]),
    ("sds-bridge", ["stages.0.guidance.source_suffix=\", small\"", "stages.0.guidance.sds_fraction=0.5"]),
    ("sdi", ["stages.0.guidance.inversion_steps=2"]),
], ids=["nfsd", "prolificdreamer", "ism", "sds-perp-neg", "csd", "sds-bridge", "sdi"])
def test_each_recipe_runs_offline_on_cpu_with_the_toy_prior_layout(recipe, extra, tiny_toy_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--recipe", recipe, "--out", str(run), f"model={tiny_toy_dir}",
                 *small(recipe), *extra]) == 0
    ckpt = Checkpoint.load(run / "stages" / "0-coarse" / "last.pt")
    assert ckpt.step == 3 and (run / "export" / "model.glb").stat().st_size > 0
    assert all(torch.isfinite(v).all() for v in ckpt.scene.values() if v.is_floating_point())
    assert set(ckpt.guidance["0"]) == ({"lora"} if recipe == "prolificdreamer" else set())  # one guidance

