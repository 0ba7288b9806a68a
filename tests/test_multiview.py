"""The multi-view prior (MVDream-style): attention across the views of one object, the camera condition, the
camera layout, the conditioner's refusals, the mvdream rule's math, and the toy multi-view trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from threed.cameras import Cameras, CameraSampler, CameraSamplerConfig
from threed.errors import ThreedError
from threed.guidance.distillation import NoisyBatch
from threed.guidance.loading import PriorCache
from threed.guidance.multiview import (MultiViewConditioner, MultiViewSpec, camera_features, load_multiview_prior,
                                       make_multiview)
from threed.guidance.registry import make_guidance
from threed.guidance.rules.mvdream import MVDreamConfig
from threed.guidance.text import PromptConfig
from threed.render.background import Background, BackgroundConfig


@pytest.fixture(scope="module")
def mv(tiny_toy_mv_dir):
    return load_multiview_prior(str(tiny_toy_mv_dir), cache=PriorCache())


def four_cameras(elevation: float = 10.0, start: float = 20.0, size: int = 16) -> Cameras:
    return Cameras.orbit(torch.full((4,), elevation), start + torch.arange(4.0) * 90.0, 2.5, 40.0, size)


def eps(prior, x, cams, text="a red cube"):
    cond = MultiViewConditioner(prior, text).conditioning(cams)
    return prior.noise_predictions(x, torch.full((len(x),), 400), [cond.cond], class_labels=cond.class_labels)[0]


def test_attention_runs_across_the_views_of_one_object_and_no_further(mv):
    """Views 0-1 are one object and 2-3 another (2 views each): changing view 1 changes what the prior predicts
    for view 0 of the same object, and nothing of the other object."""
    cams = Cameras.orbit(torch.tensor([10.0, 10.0, 25.0, 25.0]), torch.tensor([0.0, 180.0, 40.0, 220.0]), 2.5, 40.0, 16)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[1] += 1.0
    a, b = eps(mv, x, cams), eps(mv, x2, cams)
    assert (a[0] - b[0]).abs().max() > 1e-4
    assert torch.equal(a[2:], b[2:])


def test_the_views_of_an_object_are_treated_alike_in_any_order(mv):
    """Swapping two views of an object (images and cameras together) swaps their predictions: cross-view
    attention has no notion of a view's slot, only of its camera."""
    cams = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 180.0]), 2.5, 40.0, 16)
    swapped = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([180.0, 0.0]), 2.5, 40.0, 16)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = eps(mv, x, cams), eps(mv, x.flip(0), swapped)
    torch.testing.assert_close(a, b.flip(0), atol=1e-5, rtol=1e-4)


def test_the_camera_is_a_condition(mv):
    cams = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 180.0]), 2.5, 40.0, 16)
    turned = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([10.0, 190.0]), 2.5, 40.0, 16)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert (eps(mv, x, cams) - eps(mv, x, turned)).abs().max() > 1e-5


def test_camera_features_are_the_normalised_camera_to_world_matrix_in_mvdreams_z_up_frame():
    cams = Cameras.orbit(torch.tensor([0.0, 30.0, 89.0]), torch.tensor([0.0, 90.0, 45.0]), torch.tensor([2.5, 4.0, 1.2]),
                         40.0, 16)
    ours = camera_features(cams, "threed").view(-1, 4, 4)
    theirs = camera_features(cams, "mvdream").view(-1, 4, 4)
    assert torch.allclose(ours[:, :3, 3].norm(dim=-1), torch.ones(3))  # distance divided out
    torch.testing.assert_close(ours[:, :3, :3], cams.c2w[:, :3, :3])
    # threed's +Y up is MVDream's +Z up, threed's front (+Z) its -Y; rotations stay rotations
    torch.testing.assert_close(theirs[0, :3, 3], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs[:, :3, 1] @ torch.tensor([0.0, 0.0, 1.0]), ours[:, :3, 1] @ torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(torch.linalg.det(theirs[:, :3, :3]), torch.ones(3), atol=1e-5)


def test_the_sampler_draws_mvdreams_camera_layout():
    cfg = CameraSamplerConfig(batch_size=8, views_per_object=4)
    cams = CameraSampler(cfg).sample(16, generator=torch.Generator().manual_seed(0))
    az = cams.azimuth.view(2, 4)
    steps = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0))
    for field in (cams.elevation, cams.distance, cams.fovy):
        group = field.view(2, 4)
        assert torch.equal(group, group[:, :1].expand_as(group)) and group[0, 0] != group[1, 0]
    light = cams.light.view(2, 4, 3)
    assert torch.equal(light, light[:, :1].expand_as(light))
    with pytest.raises(ValueError, match="multiple of 4"):
        CameraSampler(cfg).sample(16, batch_size=6)
    with pytest.raises(ValueError, match="views_per_object"):
        CameraSamplerConfig(views_per_object=0)


def test_a_random_background_is_one_colour_per_object():
    bg = Background(BackgroundConfig(kind="random", group=4)).train()
    out = bg(torch.nn.functional.normalize(torch.randn(8, 2, 2, 3), dim=-1))
    colours = out[:, 0, 0].view(2, 4, 3)
    assert torch.equal(colours, colours[:, :1].expand_as(colours)) and not torch.equal(colours[0, 0], colours[1, 0])


def test_the_conditioner_refuses_what_a_multi_view_prior_cannot_denoise(mv):
    proc = MultiViewConditioner(mv, "a red cube")
    with pytest.raises(ThreedError, match="views_per_object=2"):
        proc.conditioning(Cameras.orbit(torch.zeros(3), torch.tensor([0.0, 180.0, 90.0]), 2.5, 40.0, 16))
    with pytest.raises(ThreedError, match="share an elevation"):
        proc.conditioning(Cameras.orbit(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 180.0]), 2.5, 40.0, 16))
    with pytest.raises(ThreedError, match="perp_neg"):
        MultiViewConditioner(mv, "a red cube", PromptConfig(perp_neg=True))


def test_view_prompts_follow_the_spec(mv, tiny_toy_mv_dir, tmp_path):
    """The toy prior's views get their view suffixes (it was trained on them); MVDream's get the bare prompt."""
    cams = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 180.0]), 2.5, 40.0, 16)
    with_suffix = MultiViewConditioner(mv, "a red cube").conditioning(cams).cond
    assert not torch.equal(with_suffix[0], with_suffix[1])  # front view, back view
    bare = load_multiview_prior(str(tiny_toy_mv_dir), cache=PriorCache())
    bare.spec = MultiViewSpec(num_views=2, camera_frame="threed", view_prompts=False)
    cond = MultiViewConditioner(bare, "a red cube").conditioning(cams).cond
    torch.testing.assert_close(cond[0], cond[1])
    torch.testing.assert_close(cond[0], bare.encode_text(["a red cube"])[0])


def test_a_folder_without_a_spec_or_camera_embedding_is_refused(tiny_toy_dir, tiny_toy_mv_dir, tmp_path):
    with pytest.raises(ThreedError, match="multiview.json"):
        load_multiview_prior(str(tiny_toy_dir))
    import shutil

    shutil.copytree(tiny_toy_dir, tmp_path / "m")
    (tmp_path / "m" / "multiview.json").write_text(json.dumps({"num_views": 2}))
    with pytest.raises(ThreedError, match="class embedding"):
        load_multiview_prior(str(tmp_path / "m"))
    (tmp_path / "m" / "multiview.json").write_text("{not json")
    with pytest.raises(ThreedError, match="multi-view spec"):
        load_multiview_prior(str(tmp_path / "m"))


def _rule(mv, **kw):
    cfg = MVDreamConfig(guidance_scale=7.0, **kw)
    return make_guidance(cfg, mv, MultiViewConditioner(mv, "a red cube"), torch.Generator().manual_seed(0))


def test_one_timestep_per_object_each_view_its_own_noise(mv):
    rule = _rule(mv)
    t = rule.sample_timesteps(8)
    assert torch.equal(t.view(4, 2), t.view(4, 2)[:, :1].expand(4, 2)) and len(set(t.tolist())) > 1
    with pytest.raises(ThreedError, match="views_per_object=2"):
        rule.sample_timesteps(3)


def test_without_rescale_the_residual_is_sds_and_rescale_one_matches_the_conditional_spread(mv):
    cams = Cameras.orbit(torch.tensor([10.0, 10.0]), torch.tensor([0.0, 180.0]), 2.5, 40.0, 16)
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([500, 500])
    cond = MultiViewConditioner(mv, "a red cube").conditioning(cams)
    batch = NoisyBatch(x0=x0, x_t=mv.add_noise(x0, noise, t), noise=noise, t=t, text=cond, cameras=cams)
    eps_c, eps_u = mv.noise_predictions(batch.x_t, t, [cond.cond, cond.uncond], class_labels=cond.class_labels)
    torch.testing.assert_close(_rule(mv, rescale=0.0).residual(batch), eps_u + 7.0 * (eps_c - eps_u) - noise)
    abar = mv.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_of = lambda e: (batch.x_t - (1 - abar).sqrt() * e) / abar.sqrt()  # noqa: E731
    x0_r = x0_of(_rule(mv, rescale=1.0).residual(batch) + noise)
    torch.testing.assert_close(x0_r.flatten(1).std(1), x0_of(eps_c).flatten(1).std(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rescale"):
        MVDreamConfig(rescale=1.5)


def test_the_multi_view_trainer_starts_from_the_text_prior_and_keeps_its_words():
    """Before any step, the inflated UNet (its camera embedding zero, one view per object) is the text prior's
    UNet exactly, and the extended tokenizer gives every old caption its old ids."""
    from diffusers import UNet2DConditionModel
    from transformers import PreTrainedTokenizerFast

    from threed.guidance.loading import PACKAGE_ROOT
    from threed.toyworld.train_config import MultiViewTrainConfig, MultiViewDataConfig
    from threed.toyworld.train_models import tokenize
    from threed.toyworld.train_multiview import MultiViewToyPrior

    torch.manual_seed(0)
    prior = MultiViewToyPrior(MultiViewTrainConfig(data=MultiViewDataConfig(pairs=4)))
    prior.build()
    base = PACKAGE_ROOT / "priors" / "toyworld"
    old = PreTrainedTokenizerFast.from_pretrained(base / "tokenizer")
    texts = ["a red cube, front view", "a blue cube with a yellow front, back view"]
    assert torch.equal(tokenize(old, texts), tokenize(prior.tokenizer, texts))
    assert prior.new_words == 1 and "and" in prior.tokenizer.get_vocab()
    base_unet = UNet2DConditionModel.from_pretrained(base / "unet")
    make_multiview(prior.unet, 1)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 700])
    emb = torch.randn(2, 16, 64)
    with torch.no_grad():
        ours = prior.unet(x, t, emb, class_labels=torch.randn(2, 16)).sample
        theirs = base_unet(x, t, emb).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_tiny_multi_view_training_run_shares_a_noise_level_per_group_and_saves_a_loadable_prior(tmp_path):
    from threed.toyworld.train_config import MultiViewDataConfig, MultiViewTrainConfig
    from threed.toyworld.train_multiview import MultiViewToyPrior, train_multiview  # noqa: F401
    from threed.toyworld import train_loop

    levels = []

    class Recording(MultiViewToyPrior):
        def predict(self, noisy, t, condition):
            levels.append(t.clone())
            ids, cams = condition
            assert cams.shape == (len(noisy), 16) and ids.shape[0] == len(noisy)
            return super().predict(noisy, t, condition)

    cfg = MultiViewTrainConfig(steps=2, batch_size=8, data=MultiViewDataConfig(groups=6, pairs=2),
                               sample_prompts=("a blue cube with a yellow front",), samples_per_prompt=1,
                               sample_steps=2, log_seconds=0.0)
    summary = train_loop.train_prior(Recording(cfg), tmp_path / "mv", log=lambda _: None)
    assert len(levels) == 2 and all(torch.equal(t.view(2, 4), t.view(2, 4)[:, :1].expand(2, 4)) for t in levels)
    prior = load_multiview_prior(str(tmp_path / "mv"))
    assert prior.spec == MultiViewSpec(num_views=4, camera_frame="threed", view_prompts=True)
    card = (tmp_path / "mv" / "README.md").read_text()
    assert "a blue cube with a yellow front" in card and summary["steps"] == 2
    assert (tmp_path / "mv" / "samples.png").is_file() and math.isfinite(summary["history"][-1][1])
    with pytest.raises(ThreedError, match="multiple of num_views"):
        MultiViewToyPrior(MultiViewTrainConfig(batch_size=6)).build()


@pytest.mark.parametrize("recipe", ["quickstart-mv", "mvdream-sd"])
def test_the_multi_view_recipes_run_offline_on_cpu_with_the_toy_multi_view_layout(recipe, tiny_toy_mv_dir, tmp_path):
    """Whole objects reach the prior: the recipes' 4-view groups at CPU size, a checkpoint and an export."""
    from small_recipes import small

    from threed.checkpoint import Checkpoint
    from threed.cli import main

    run = tmp_path / "run"
    over = [o for o in small(recipe) if not o.startswith("stages.*.cameras.batch_size")]
    assert main(["generate", "a red cube", "--recipe", recipe, "--out", str(run), f"model={tiny_toy_mv_dir}", *over,
                 "stages.0.cameras.batch_size=4", "stages.0.scene.background.kind=random"]) == 0
    ckpt = Checkpoint.load(run / "stages" / "0-coarse" / "last.pt")
    assert ckpt.step == 3 and (run / "export" / "model.glb").stat().st_size > 0
    assert main(["generate", "a red cube", "--recipe", recipe, "--out", str(tmp_path / "bad"), f"model={tiny_toy_mv_dir}",
                 *over, "stages.0.cameras.batch_size=6"]) == 2  # not whole objects: refused before any folder exists
    assert not (tmp_path / "bad").exists()


def test_multi_view_guidance_drives_gaussians_and_a_mesh_too(tiny_toy_mv_dir, tmp_path):
    """The rule is representation-agnostic: the gaussian recipe (3D Gaussians, then a DMTet texture stage) with
    both stages switched to kind mvdream on whole objects."""
    from threed.cli import main

    over = ["max_steps=3", "stages.1.scene.init_grid_size=24", "stages.1.scene.geometry.grid_size=12",
            "stages.0.render_size=16", "stages.1.render_size=16", "export.video=false", "export.views=0",
            "export.grid_size=24", "export.texture=vertex", "export.formats=[glb]"]
    mv = [f"stages.{i}.{k}" for i in (0, 1) for k in ("guidance.kind=mvdream", "cameras.batch_size=4",
                                                      "cameras.views_per_object=4", "prompt.perp_neg=false")]
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--recipe", "gaussian", "--out", str(run), f"model={tiny_toy_mv_dir}",
                 *over, *mv]) == 0
    assert (run / "export" / "model.glb").stat().st_size > 0


def test_the_shipped_multi_view_prior_denoises_each_view_with_the_others():
    """The toy multi-view prior really uses the other views of an object: with the other 3 views replaced by
    another object's (same cameras and captions), its noise error on the first view rises (by 50-70 % over
    t = 300-900 when measured; the bar is 25 %). A single-view prior would not notice."""
    from threed.guidance.loading import PACKAGE_ROOT
    from threed.toyworld.scenes import VIEW_LABELS, view_caption
    from threed.toyworld.train_config import MultiViewDataConfig, MultiViewTrainConfig
    from threed.toyworld.train_multiview import render_groups, training_scenes

    cfg = MultiViewTrainConfig(data=MultiViewDataConfig(groups=16, pairs=4))
    scenes = training_scenes(cfg)
    cache = render_groups(cfg, scenes, torch.Generator().manual_seed(11), log=lambda _: None)
    prior = load_multiview_prior(str(PACKAGE_ROOT / "priors" / "toyworld-mv"))
    g, v = cache.images.shape[:2]
    x0 = (cache.images.float() / 127.5 - 1).reshape(g * v, 3, 32, 32)
    cams = Cameras.orbit(cache.elevation.flatten(), cache.azimuth.flatten(), cache.distance.flatten(),
                         cache.fovy.flatten(), 32)
    emb = prior.encode_text([view_caption(scenes[cache.scene[i]].caption, VIEW_LABELS[cache.label[i, j]])
                             for i in range(g) for j in range(v)])
    feats = prior.cameras_condition(cams)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((g * v,), 600)
    x_t = prior.add_noise(x0, noise, t)
    mixed = x_t.reshape(g, v, 3, 32, 32).clone()
    mixed[:, 1:] = mixed.roll(1, 0)[:, 1:]

    def first_view_error(x):
        e = prior.noise_predictions(x, t, [emb], class_labels=feats)[0]
        return float((e - noise).reshape(g, v, -1)[:, 0].square().mean())

    assert first_view_error(mixed.reshape(g * v, 3, 32, 32)) > 1.25 * first_view_error(x_t)
