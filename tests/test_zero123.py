"""Image to 3D: Zero123-family priors (tiny random weights through the real loading path), the relative-pose
convention, the reference input, and reference-view reconstruction on a toy-world example."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.registry import make_guidance
from threed.guidance.rules.sds import SDS
from threed.guidance.rules.zero123 import Zero123Config
from threed.guidance.zero123 import (ImageConditioning, LatentViewPrior, PixelViewPrior, auto_convention,
                                     load_view_prior, relative_pose)
from threed.reference.image import ReferenceViewConfig, frame_object, load_reference, read_reference
from threed.render.output import RenderOut

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def _write(path: Path, array: np.ndarray) -> Path:
    import imageio.v3 as iio

    iio.imwrite(path, (np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    return path


# --------------------------------------------------------------------------- pose convention


def test_relative_pose_zero123_convention():
    """Δazimuth = +90 is the camera on +X, which sees the side on the right of the reference image."""
    pose = relative_pose(torch.tensor([0.0, 30.0]), torch.tensor([90.0, -90.0]), torch.tensor([3.0, 2.5]),
                         0.0, 0.0, 2.75, "zero123")
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.25], [-math.radians(30.0), -1.0, 0.0, -0.25]])
    assert torch.allclose(pose, expected, atol=1e-6)
    ref = Cameras.orbit(0.0, 0.0, 2.75, 40.0, 64)
    side = Cameras.orbit(0.0, 90.0, 2.75, 40.0, 64)
    assert side.position[0, 0] > 2.7  # the Δaz = +90 camera sits on +X ...
    pixels, _ = ref.world_to_pixels(torch.tensor([[[0.5, 0.0, 0.0]]]))
    assert pixels[0, 0, 0] > 32  # ... and +X is in the right half of the reference image


def test_relative_pose_stable_zero123_uses_reference_polar():
    pose = relative_pose(torch.tensor([20.0]), torch.tensor([45.0]), torch.tensor([3.8]), 10.0, 0.0, 3.8,
                         "stable-zero123")
    assert torch.allclose(pose, torch.tensor([[math.radians(-10.0), math.sin(math.radians(45.0)),
                                               math.cos(math.radians(45.0)), math.radians(80.0)]]), atol=1e-6)


# --------------------------------------------------------------------------- loading and guidance


@pytest.mark.parametrize("projection_name", ["cc_projection", "clip_camera_projection"])
def test_tiny_zero123_loads_through_the_real_path(tiny_zero123_dir, tmp_path, projection_name):
    folder = tiny_zero123_dir
    if projection_name != "cc_projection":  # bennyguo's and ashawkey's conversions name it clip_camera_projection
        folder = Path(shutil.copytree(tiny_zero123_dir, tmp_path / "z"))
        (folder / "cc_projection").rename(folder / projection_name)
        index = json.loads((folder / "model_index.json").read_text())
        index[projection_name] = index.pop("cc_projection")
        (folder / "model_index.json").write_text(json.dumps(index))
    prior = load_view_prior(str(folder))
    assert isinstance(prior, LatentViewPrior) and prior.latent
    assert (prior.channels, prior.concat_channels, prior.image_dim, prior.resolution) == (4, 4, 16, 16)
    assert prior.convention == "zero123"
    assert all(not p.requires_grad for p in prior.projection.parameters())
    # the token is projection([CLIP image embedding, pose]) and depends on the pose
    emb = prior.image_embedding(torch.rand(1, 40, 40, 3))
    plus = relative_pose(torch.zeros(1), torch.tensor([90.0]), torch.full((1,), 2.75), 0, 0, 2.75, "zero123")
    minus = relative_pose(torch.zeros(1), torch.tensor([-90.0]), torch.full((1,), 2.75), 0, 0, 2.75, "zero123")
    tok = prior.tokens(emb, plus)
    assert tok.shape == (1, 1, 32)
    assert torch.allclose(tok[:, 0], prior.projection(torch.cat([emb, plus], -1)), atol=1e-6)
    assert not torch.allclose(tok, prior.tokens(emb, minus))


def test_stable_name_picks_the_stable_convention(tiny_zero123_dir, tmp_path):
    folder = shutil.copytree(tiny_zero123_dir, tmp_path / "stable-zero123-tiny")
    assert load_view_prior(str(folder)).convention == "stable-zero123"
    assert load_view_prior(str(folder), convention="zero123").convention == "zero123"


def test_only_the_folder_or_repository_name_decides_the_automatic_convention(tiny_zero123_dir, tmp_path):
    runs = shutil.copytree(tiny_zero123_dir, tmp_path / "stable-runs" / "zero123-xl")  # "stable" higher up only
    assert load_view_prior(str(runs)).convention == "zero123"
    assert load_view_prior(str(runs), convention="stable-zero123").convention == "stable-zero123"  # the key wins
    assert auto_convention("/data/stable-runs/zero123-xl") == auto_convention("bennyguo/zero123-xl-diffusers") \
        == auto_convention("stabilityai/zero123-xl") == auto_convention("/data/stable/") == "zero123"
    for name in ("ashawkey/stable-zero123-diffusers", "/data/runs/stable_zero123/", "my-stablezero123"):
        assert auto_convention(name) == "stable-zero123", name


def test_missing_view_model_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ThreedError, match="image_model=") as err:
        load_view_prior(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    with pytest.raises(ThreedError, match="cc_projection"):
        load_view_prior(str(tmp_path / "sd"))


def test_zero123_sds_conditions_on_the_image_and_drops_it_for_cfg(tiny_zero123_dir):
    prior = load_view_prior(str(tiny_zero123_dir))
    ref = load_reference(str(EXAMPLES / "red-cube.png"), ReferenceViewConfig(), size=prior.resolution)
    seen = {}

    def spy(module, args, kwargs):
        seen["x"], seen["tokens"] = args[0].detach(), kwargs["encoder_hidden_states"].detach()

    handle = prior.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        guidance = make_guidance(Zero123Config(), prior, ImageConditioning(prior, ref, ReferenceViewConfig()),
                                 torch.Generator().manual_seed(0))
        assert isinstance(guidance, SDS)
        rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
        cams = Cameras.orbit(0.0, [90.0, 180.0], 2.75, 40.0, 16)
        out = guidance(RenderOut(rgb=rgb, opacity=torch.ones(2, 16, 16, 1), depth=torch.zeros(2, 16, 16, 1)), cams)
        out.loss.backward()
    finally:
        handle.remove()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    x, tokens = seen["x"], seen["tokens"]
    assert x.shape == (4, 8, 8, 8)  # [cond, uncond] x 2 views, 4 noisy + 4 reference channels
    cond_ref = prior.reference_concat(ref.rgb)
    assert torch.allclose(x[:2, 4:], cond_ref.expand(2, -1, -1, -1), atol=1e-5)
    assert x[2:, 4:].abs().max() == 0 and tokens[2:].abs().max() == 0  # unconditional: no image, no token
    assert not torch.allclose(tokens[0], tokens[1])  # two poses, two tokens


# --------------------------------------------------------------------------- reference input


def test_rgba_uses_alpha_and_is_framed_to_the_fill_ratio(tmp_path):
    img = np.ones((80, 120, 4))
    img[..., 3] = 0
    img[10:30, 20:60, :3] = [1.0, 0.0, 0.0]  # a 40 x 20 red box off centre
    img[10:30, 20:60, 3] = 1
    path = _write(tmp_path / "box.png", img)
    ref = load_reference(str(path), ReferenceViewConfig(fill_ratio=0.5, resolution=64))
    rows = torch.nonzero(ref.mask[0, :, :, 0].amax(1) > 0.5).flatten()
    cols = torch.nonzero(ref.mask[0, :, :, 0].amax(0) > 0.5).flatten()
    assert abs(int(cols[-1] - cols[0] + 1) - 32) <= 1  # the larger side spans 0.5 of 64 px
    assert abs(int(rows[-1] - rows[0] + 1) - 16) <= 1
    assert abs(float(cols.float().mean()) - 31.5) <= 1 and abs(float(rows.float().mean()) - 31.5) <= 1
    assert torch.allclose(ref.rgb[0, 32, 32], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(ref.rgb[0, 2, 2], torch.ones(3))  # composited over white


def test_rgb_without_mask_is_an_error_that_says_how_to_fix_it(tmp_path):
    rgb = _write(tmp_path / "photo.png", np.full((32, 32, 3), 0.5))
    with pytest.raises(ThreedError, match="--mask"):
        read_reference(rgb)
    mask = np.zeros((32, 32))
    mask[8:24, 8:24] = 1
    _, alpha, _ = read_reference(rgb, _write(tmp_path / "mask.png", mask))
    assert float(alpha.sum()) == 256
    with pytest.raises(ThreedError, match="same size"):
        read_reference(rgb, _write(tmp_path / "small.png", np.zeros((8, 8))))
    with pytest.raises(ThreedError, match="no object"):
        frame_object(torch.ones(1, 8, 8, 3), torch.zeros(1, 8, 8, 1), 0.5, 8)


def test_cli_rgb_without_mask_exits_with_the_explanation(tmp_path, capsys):
    from threed.cli import main

    rgb = _write(tmp_path / "photo.png", np.full((32, 32, 3), 0.5))
    assert main(["generate", "--image", str(rgb), "--out", str(tmp_path / "run")]) == 2
    assert "--mask" in capsys.readouterr().err
    assert main(["generate", "--mask", str(rgb), "a cube"]) == 2
    assert "--image" in capsys.readouterr().err
    rgba = _write(tmp_path / "cutout.png", np.concatenate([np.full((32, 32, 3), 0.5), np.ones((32, 32, 1))], -1))
    assert main(["generate", "--image", str(rgba), "--recipe", "quickstart", "--out", str(tmp_path / "r2")]) == 2
    assert "image-to-3D recipe" in capsys.readouterr().err


# --------------------------------------------------------------------------- reconstruction


def test_reference_view_is_reproduced_on_a_toy_example(tiny_toy_zero123_dir, tmp_path):
    """The reference-view losses alone (guidance weight 0) reproduce the photo at the reference camera."""
    from threed.recipe import load_recipe
    from threed.stage import RunContext, Stage

    prior = load_view_prior(str(tiny_toy_zero123_dir))
    assert isinstance(prior, PixelViewPrior) and prior.pose_as_class
    image = str(EXAMPLES / "blue-cube-with-a-yellow-front.png")
    cfg = load_recipe("quickstart-image", ["stages.0.steps=100", "stages.0.loss.guidance=0",
                                           "stages.0.cameras.batch_size=1", "stages.0.render_size=16",
                                           "stages.0.val_every=0"],
                      image=image, image_model=str(tiny_toy_zero123_dir))
    ctx = RunContext(prompt="", model="toyworld", device=torch.device("cpu"), seed=0, max_steps=None,
                     run_dir=tmp_path, image=cfg.image, image_model=cfg.image_model)
    stage = Stage(cfg.stages[0], ctx, 0)
    tr, _ = stage.setup()
    while tr.step < 100:
        _, g = stage.train_step(tr)
    assert {"ref_rgb", "ref_mask"} <= set(g.terms)
    with torch.no_grad():
        out = tr.scene.render_eval(tr.reference.camera, "albedo")
    psnr = -10 * math.log10(float((out.rgb - tr.reference.reference.rgb).square().mean()))
    assert psnr >= 25.0, psnr


@pytest.mark.parametrize("recipe", ["zero123", "magic123"])
def test_image_recipes_run_coarse_to_fine_offline(recipe, tiny_zero123_dir, tiny_toy_dir, tmp_path):
    """NeRF -> DMTet with the reference losses in both stages; Magic123 adds its text SDS on the prompt."""
    from small_recipes import small
    from threed.checkpoint import Checkpoint
    from threed.cli import main

    run = tmp_path / "run"
    prompt = ["a red cube"] if recipe == "magic123" else []
    assert main(["generate", *prompt, "--image", str(EXAMPLES / "red-cube.png"), "--recipe", recipe, "--out", str(run),
                 f"image_model={tiny_zero123_dir}", f"model={tiny_toy_dir}", "stages.*.reference.view.resolution=16",
                 *small(recipe)]) == 0
    ckpts = [Checkpoint.load(run / "stages" / f"{i}-{name}" / "last.pt") for i, name in enumerate(["coarse", "refine"])]
    assert [c.step for c in ckpts] == [3, 3] and ckpts[-1].scene_kind == "dmtet"
    assert (run / "export" / "model.glb").is_file()


def test_view_training_pairs_mirror_with_the_azimuth_change_negated():
    """Each pair is (target, framed reference, pose of target relative to reference); a mirrored pair
    negates sin(Δazimuth), since the mirror image of a view at azimuth a is the view at -a."""
    from threed.toyworld.scenes import Scene
    from threed.toyworld.train_config import ViewDataConfig
    from threed.toyworld.train_data import render_views, training_pairs

    cfg = ViewDataConfig(image_size=16, supersample=1, views_per_scene=2, p_overhead=0.0)
    cache = render_views(cfg, [Scene.single("cube", "blue", "yellow")], torch.Generator().manual_seed(3),
                         log=lambda _: None)
    target, ref, pose = training_pairs(cache, cfg, 64, torch.Generator().manual_seed(0))
    views = cache.images.float().permute(0, 3, 1, 2) / 127.5 - 1
    flips = 0
    for k in range(64):
        j = next((j for j in range(2) for flip in (False, True)
                  if torch.allclose(target[k], views[j].flip(-1) if flip else views[j], atol=1e-5)))
        flipped = not torch.allclose(target[k], views[j], atol=1e-5)
        flips += flipped
        i = [i for i in range(2) if torch.allclose(
            pose[k, [0, 3]], relative_pose(cache.elevation[j:j + 1], cache.azimuth[j:j + 1], cache.distance[j:j + 1],
                                           cache.elevation[i], cache.azimuth[i], cache.distance[i], "zero123")[0, [0, 3]],
            atol=1e-5)][0]
        want = relative_pose(cache.elevation[j:j + 1], cache.azimuth[j:j + 1], cache.distance[j:j + 1],
                             cache.elevation[i], cache.azimuth[i], cache.distance[i], "zero123")[0]
        want[1] = -want[1] if flipped else want[1]
        assert torch.allclose(pose[k], want, atol=1e-5)
    assert 10 < flips < 54
    assert ref.shape == target.shape and ref.min() >= -1 and ref.max() <= 1


def test_depth_losses_ignore_scale_and_shift_and_need_a_depth_map(tmp_path):
    from threed.reference.losses import ReferenceConfig, ReferenceLosses, pearson_loss, scale_shift_mse

    d = torch.rand(500)
    assert float(pearson_loss(3 * d + 2, d)) < 1e-6 and float(scale_shift_mse(3 * d + 2, d)) < 1e-8
    assert float(pearson_loss(-d, d)) > 1.99
    rgba = np.zeros((32, 32, 4))
    rgba[8:24, 8:24] = 1
    depth = np.tile(np.linspace(0.2, 0.8, 32), (32, 1))
    image, depth_map = _write(tmp_path / "a.png", rgba), _write(tmp_path / "d.png", depth)
    cfg = ReferenceConfig(view=ReferenceViewConfig(resolution=32))

    def losses(depth_path):
        return ReferenceLosses(cfg, str(image), torch.device("cpu"), depth=depth_path)

    with_depth = losses(str(depth_map))
    ref = with_depth.reference
    out = RenderOut(rgb=ref.rgb, opacity=ref.mask, depth=1.0 / (0.1 + ref.depth))  # depth = 1 / (disparity + c)
    terms = with_depth.terms(out)
    assert terms["ref_rgb"] < 1e-8 and terms["ref_mask"] < 1e-8 and terms["ref_depth"] < 0.01
    assert "ref_depth" not in losses(None).terms(out)


def test_tiny_view_training_run_writes_a_loadable_zero123_folder(tmp_path):
    """The view trainer writes Zero123's layout (UNet, CLIP image encoder, projection of [embedding, pose]),
    v-prediction, loadable by ``load_view_prior``; resume continues and refuses another model config."""
    from threed.config import build
    from threed.toyworld.train_config import ViewTrainConfig
    from threed.toyworld.train_views import train_views

    cfg = build(ViewTrainConfig, {
        "model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "attention_head_dim": 4, "token_dim": 16,
                  "image_dim": 8, "encoder_width": 16, "encoder_layers": 1},
        "data": {"views_per_scene": 2}, "steps": 2, "batch_size": 4, "log_seconds": 0,
        "sample_scenes": ["a purple torus"], "sample_steps": 2})
    out = tmp_path / "views"
    lines = []
    summary = train_views(cfg, out, log=lines.append)
    assert summary["steps"] == 2 and any(line.startswith("step 2 loss") for line in lines)
    index = json.loads((out / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    prior = load_view_prior(str(out))
    assert isinstance(prior, PixelViewPrior) and prior.image_dim == 8 and prior.prediction_type == "v_prediction"
    emb = prior.image_embedding(torch.rand(1, 32, 32, 3))
    assert emb.shape == (1, 8) and emb.abs().sum() > 0
    card = (out / "README.md").read_text()
    assert "CLIPVisionModelWithProjection" in card and "| a purple torus | yes |" in card
    cfg.steps = 3
    assert train_views(cfg, out, resume=True, log=lines.append)["steps"] == 3
    assert any("resumed" in line and "step 2" in line for line in lines)
    cfg.model.image_dim = 4
    with pytest.raises(ThreedError, match="another model/data config"):
        train_views(cfg, out, resume=True, log=lines.append)


def test_view_agreement_scores_the_truth_perfect_and_other_objects_wrong(tmp_path):
    """The image-to-3D score: the ground truth itself (scaled as framing scales it) gets IoU 1 and every colour
    right, and writes its comparison grid; a sphere loses IoU, a red cube fails the blue cube's sides."""
    from threed.toyworld.raycast import render
    from threed.toyworld.scenes import parse_prompt
    from threed.toyworld.score_views import framing_scale, view_agreement

    truth = "a blue cube with a yellow front"
    view = ReferenceViewConfig(fill_ratio=0.5, resolution=32)
    s = framing_scale(truth, view)

    def renderer(caption):
        def fn(cams):
            moved = Cameras.orbit(cams.elevation, cams.azimuth, cams.distance / s, torch.rad2deg(cams.fovy), cams.height)
            return render(parse_prompt(caption), moved, "albedo", (1.0, 1.0, 1.0))
        return fn

    grid = tmp_path / "views.png"
    same = view_agreement(renderer(truth), truth, view, resolution=32, grid_path=grid)
    assert same["novel_iou"] > 0.99 and same["novel_colour_ok"] == 1.0
    assert [v["colour"] for v in same["views"]] == ["yellow", "blue", "blue", "blue"]
    assert grid.stat().st_size > 0
    sphere = view_agreement(renderer("a blue sphere"), truth, view, resolution=32)
    assert sphere["novel_iou"] < 0.9 and sphere["novel_colour_ok"] == 1.0
    red = view_agreement(renderer("a red cube"), truth, view, resolution=32)
    assert red["novel_iou"] > 0.99 and red["novel_colour_ok"] == 0.0
