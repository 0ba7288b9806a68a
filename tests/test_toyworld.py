"""The toy world: exact SDFs, the sphere tracer's camera convention, captions, tokenizer, prior training."""

import json
import math

import pytest
import torch

from threed.cameras import Cameras
from threed.config import build
from threed.errors import ThreedError
from threed.toyworld.raycast import render
from threed.toyworld.scenes import (COLOURS, PRIMITIVES, SHAPES, VIEW_LABELS, Scene, catalogue, ground_truth,
                                    parse_prompt, sample_surface, view_caption)
from threed.toyworld.train import train
from threed.toyworld.train_config import ToyworldDataConfig, ToyworldTrainConfig
from threed.toyworld.train_data import caption_table, render_cache, vocabulary
from threed.toyworld.train_models import SPECIAL_TOKENS, build_tokenizer, tokenize


@pytest.mark.parametrize("shape", SHAPES)
def test_sdf_is_exact_and_signed(shape):
    sdf = ground_truth(shape)
    pts, normals = sample_surface(shape, 20000, torch.Generator().manual_seed(0))
    assert sdf(pts).abs().max() < 1e-5  # float32 rounding of values ~0.5
    assert sdf(torch.tensor([PRIMITIVES[shape].interior_point])) < -0.1
    assert (sdf(torch.tensor([[0.95, 0.95, 0.95], [-0.95, -0.95, 0.0]])) > 0.3).all()
    # Every shape fits the sphere of radius 0.7 inside the unit scene box.
    assert pts.norm(dim=-1).max() < 0.7
    # Exactness: |sdf| equals the distance to the surface. The dense samples overestimate that
    # distance by at most about their spacing (area <= 3.5 over 20k samples: spacing ~0.013).
    x = torch.rand(400, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    nearest = torch.cdist(x, pts).min(dim=1).values
    assert (sdf(x).abs() <= nearest + 1e-5).all()
    assert (nearest - sdf(x).abs()).max() < 0.03
    # The sampler's normals are the SDF gradient (central differences, away from edges).
    h = 1e-3
    grad = torch.stack([sdf(pts[:500] + h * e) - sdf(pts[:500] - h * e) for e in torch.eye(3)], -1) / (2 * h)
    cos = (torch.nn.functional.normalize(grad, dim=-1) * normals[:500]).sum(-1)
    assert (cos > 0.99).float().mean() > 0.95  # a few samples sit within h of an edge or apex
    # Sign: the negative region has the shape's analytic volume (Monte Carlo over the box, 8 units^3;
    # 200k samples give a standard error below 0.004 units^3).
    q = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert (sdf(q) < 0).float().mean().item() * 8 == pytest.approx(PRIMITIVES[shape].volume, abs=0.015)


def test_renderer_front_face_pins_the_camera_convention():
    """The +Z face is the front: azimuth 0 sees it, azimuth 180 sees the other colour."""
    scene = parse_prompt("a blue cube with a yellow front")
    out = render(scene, Cameras.orbit(0.0, [0.0, 180.0], 2.75, 40.0, 32), "albedo")
    centre = out.rgb[:, 12:20, 12:20].reshape(2, -1, 3)
    yellow, blue = torch.tensor(COLOURS["yellow"]), torch.tensor(COLOURS["blue"])
    assert ((centre[0] - yellow).abs().max(dim=-1).values < 0.02).float().mean() > 0.95
    assert ((centre[1] - blue).abs().max(dim=-1).values < 0.02).float().mean() > 0.95
    assert out.opacity[:, 16, 16].min() == 1.0 and out.opacity[:, 0, 0].max() == 0.0
    assert out.depth[0, 16, 16, 0] == pytest.approx(2.75 - 0.38, abs=2e-3)  # the face plane at z = 0.38
    assert torch.allclose(out.normal[0, 16, 16], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)
    assert torch.allclose(out.normal[1, 16, 16], torch.tensor([0.0, 0.0, -1.0]), atol=1e-3)


def test_sphere_mask_matches_the_analytic_disc():
    res, dist, fov = 48, 2.6, 40.0
    cams = Cameras.orbit(20.0, 33.0, dist, fov, res)
    out = render(Scene.single("sphere", "red"), cams, "lambertian", supersample=4)
    # A sphere of radius r seen from distance D projects to a disc of angular radius asin(r / D).
    radius_px = cams.focal[0] * math.tan(math.asin(0.52 / dist))
    rows = torch.arange(res) + 0.5
    r = torch.sqrt((rows[:, None] - res / 2) ** 2 + (rows[None, :] - res / 2) ** 2)
    disc = (radius_px - r + 0.5).clamp(0, 1)  # pixel coverage, linear across the rim
    opacity = out.opacity[0, ..., 0]
    assert (opacity - disc).abs().max() < 0.3  # rim pixels: 4x4 samples vs linear ramp
    assert opacity.sum().item() == pytest.approx(math.pi * radius_px.item() ** 2, rel=0.01)


def test_shading_modes_follow_threed_shading():
    cams = Cameras.orbit(10.0, 0.0, 2.75, 40.0, 16)
    scene = Scene.single("sphere", "red")
    alb, lam, tex = (render(scene, cams, m, (0.0, 0.0, 0.0)).rgb[0, 8, 8]
                     for m in ("albedo", "lambertian", "textureless"))
    assert torch.allclose(alb, torch.tensor(COLOURS["red"]), atol=1e-5)
    # Light at the headlight: the centre of the sphere faces it, so lambertian ~ albedo and textureless ~ 1.
    assert torch.allclose(lam, alb, atol=0.02) and torch.allclose(tex, torch.ones(3), atol=0.02)
    assert render(scene, cams, "textureless", (0.2, 0.4, 0.6)).rgb[0, 0, 0].tolist() == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize("el,az,suffix", [(10, 0, ", front view"), (30, -40, ", front view"), (0, 90, ", side view"),
                                          (20, 180, ", back view"), (-5, -140, ", back view"),
                                          (70, 180, ", overhead view")])
def test_captions_carry_the_view_suffix(el, az, suffix):
    label = Cameras.orbit(el, az, 2.75, 40.0, 8).view_labels()[0]
    assert view_caption("an orange cone", label) == "an orange cone" + suffix
    assert view_caption("an orange cone", None) == "an orange cone"


def test_training_renders_match_their_view_labels():
    """Front-labelled renders of the asymmetric cubes show the front colour, back-labelled never do."""
    cfg = ToyworldDataConfig(cache_size=96, p_asymmetric=1.0, p_albedo=1.0, p_textureless=0.0, p_overhead=0.0,
                             p_white_background=1.0)
    scenes = catalogue()
    cache = render_cache(cfg, scenes, torch.Generator().manual_seed(0), log=lambda _: None)
    counts = {}
    for img, s, lab in zip(cache.images, cache.scene.tolist(), cache.label.tolist()):
        obj = scenes[s].objects[0]
        assert obj.front_colour is not None
        front = (torch.tensor(COLOURS[obj.front_colour]) * 255).round()
        share = ((img.permute(1, 2, 0).float() - front).abs().max(dim=-1).values < 2).float().mean().item()
        counts.setdefault(VIEW_LABELS[lab], []).append(share)
    assert min(counts["front"]) > 0.04  # the +Z face covers >= ~10 % of pixels from |azimuth| <= 45
    assert max(counts["back"]) == 0.0
    assert set(counts) <= {"front", "side", "back"}


def test_catalogue_holds_out_prompts_and_parse_round_trips():
    held = ("a purple torus", "an orange cone")
    scenes = catalogue(held_out=held)
    captions = {s.caption for s in scenes}
    assert not captions & set(held)
    assert len(scenes) == len(SHAPES) * len(COLOURS) - 2 + len(COLOURS) * (len(COLOURS) - 1)
    for s in scenes[::7]:
        assert parse_prompt(view_caption(s.caption, "side")) == s
    pair = parse_prompt("a red cube and a green sphere")
    assert [o.shape for o in pair.objects] == ["cube", "sphere"] and pair.radius <= 1.0
    with pytest.raises(ThreedError, match="unknown word 'blob'.*cube, sphere"):
        parse_prompt("a red blob")
    with pytest.raises(ThreedError, match="colour then a shape"):
        parse_prompt("a cube red")
    with pytest.raises(ThreedError, match="not toy-world scenes"):
        catalogue(held_out=("a pink cube",))


def test_tokenizer_round_trip_and_unknown_words(tmp_path):
    from transformers import PreTrainedTokenizerFast

    scenes = catalogue()
    words = vocabulary(scenes)
    assert words[:4] == list(SPECIAL_TOKENS) and {"purple", "torus", "front", "overhead", ","} <= set(words)
    tok = build_tokenizer(words, 16)
    tok.save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    ids = tokenize(tok, ["a blue cube with a yellow front, overhead view", "A Red Blob"])
    assert ids.shape == (2, 16) and tok.model_max_length == 16
    assert tok.decode(ids[0], skip_special_tokens=True) == "a blue cube with a yellow front , overhead view"
    assert ids[0, 0] == tok.bos_token_id and ids[0, 11] == tok.eos_token_id and (ids[0, 12:] == tok.pad_token_id).all()
    assert ids[1, 3] == tok.unk_token_id and ids[1, 1] != tok.unk_token_id  # case-insensitive
    table = caption_table(tok, scenes[:3])  # red, green, blue cubes
    assert tok.decode(table[2, 1 + VIEW_LABELS.index("back")], skip_special_tokens=True) == "a blue cube , back view"
    assert not (table == tok.unk_token_id).any()


def test_tiny_training_run_writes_a_loadable_diffusers_folder(tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    cfg = build(ToyworldTrainConfig, {
        "model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "attention_head_dim": 4,
                  "text_hidden": 16, "text_heads": 2},
        "data": {"cache_size": 24, "held_out": ["a purple torus"]}, "steps": 3, "batch_size": 4, "log_seconds": 0,
        "sample_prompts": ["a purple torus, front view", "a blue cube with a yellow front, back view"],
        "samples_per_prompt": 1, "sample_steps": 2, "eval_bank_views": 2})
    out = tmp_path / "toyworld"
    lines = []
    summary = train(cfg, out, log=lines.append)
    assert summary["steps"] == 3 and any(line.startswith("step 3 loss") for line in lines)
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    text = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    tok = PreTrainedTokenizerFast.from_pretrained(out, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "epsilon"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists() and not (out / "vae").exists()
    emb = text(tokenize(tok, ["a purple torus, front view"])).last_hidden_state
    assert emb.shape == (1, 16, 16)
    assert unet(torch.zeros(1, 3, 32, 32), 10, emb).sample.shape == (1, 3, 32, 32)
    card = (out / "README.md").read_text()
    assert "'a purple torus'" in card and "| a purple torus, front view | yes |" in card
    assert (out / "samples.png").stat().st_size > 0
    # Resume continues from the checkpoint beside the folder.
    cfg.steps = 4
    assert train(cfg, out, resume=True, log=lines.append)["steps"] == 4
    assert any("resumed" in line and "step 3" in line for line in lines)
    cfg.seed = 1
    with pytest.raises(ThreedError, match="another model/data config or seed"):
        train(cfg, out, resume=True, log=lines.append)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_weights_weigh_x0_errors_by_the_clamped_snr(prediction_type):
    """Whatever the UNet predicts, the weighted squared error of an output off by an x0 error delta is
    min(max(SNR, floor), gamma) |delta|^2: the weighting the trainers' docstrings promise."""
    from diffusers import DDPMScheduler

    from threed.toyworld.train_objective import min_snr_weight

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([20, 300, 600, 900, 990])
    x0, noise, delta = (torch.randn(5, 3, 4, 4, generator=gen) for _ in range(3))
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = sched.add_noise(x0, noise, t)
    x0_hat = x0 + delta
    if prediction_type == "epsilon":  # the output whose implied x0 is x0_hat, and the training target
        out, target = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt(), noise
    else:
        out, target = (a.sqrt() * x_t - x0_hat) / (1 - a).sqrt(), sched.get_velocity(x0, noise, t)
    snr = (a / (1 - a)).flatten()
    for floor, gamma in ((0.0, 5.0), (1.0, 5.0), (0.0, 0.0)):
        w = min_snr_weight(sched.alphas_cumprod[t], gamma, floor, prediction_type)
        got = (out - target).pow(2).mean(dim=(1, 2, 3)) * w
        want_w = snr.clamp(min=floor) if floor else snr
        want_w = want_w.clamp(max=gamma) if gamma else want_w
        if not gamma and not floor and prediction_type == "epsilon":
            assert torch.allclose(w, torch.ones_like(w))
        assert torch.allclose(got, want_w * delta.pow(2).mean(dim=(1, 2, 3)), rtol=1e-3), (floor, gamma)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_saved_scheduler_says_what_the_unet_learned(prediction_type, tmp_path):
    """A short run's UNet is closer to the target its saved scheduler names than to the other one (the text
    trainer once trained against the noise whatever ``prediction_type`` said, and ignored ``snr_floor``)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    cfg = build(ToyworldTrainConfig, {
        "model": {"block_out_channels": [8, 16], "norm_num_groups": 8, "attention_head_dim": 4, "text_hidden": 16,
                  "text_heads": 2, "text_layers": 1},
        "data": {"cache_size": 32, "image_size": 16, "supersample": 1}, "steps": 40, "batch_size": 8,
        "lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.0, "prediction_type": prediction_type, "snr_floor": 1.0,
        "log_seconds": 1000, "sample_prompts": ["a red cube, front view"], "samples_per_prompt": 1,
        "sample_steps": 1, "eval_bank_views": 1})
    out = tmp_path / "prior"
    train(cfg, out, log=lambda line: None)
    sched = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    text = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    tok = PreTrainedTokenizerFast.from_pretrained(out, subfolder="tokenizer")
    assert sched.config.prediction_type == prediction_type
    gen = torch.Generator().manual_seed(5)
    x0 = render_cache(cfg.data, catalogue(), gen, log=lambda line: None).images[:16].float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(300, 1000, (16,), generator=gen)
    with torch.no_grad():
        pred = unet(sched.add_noise(x0, noise, t), t, text(tokenize(tok, [""] * 16)).last_hidden_state).sample
    velocity = sched.get_velocity(x0, noise, t)
    errors = {"epsilon": (pred - noise).pow(2).mean(), "v_prediction": (pred - velocity).pow(2).mean()}
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    assert errors[prediction_type] < 0.85 * errors[other], errors
