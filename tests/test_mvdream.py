"""MVDream's published UNet loaded as a diffusers UNet (:mod:`threed.guidance.mvdream_unet`), against a
reimplementation of MVDream's own class (``mvdream_reference``), and threed's camera condition against MVDream's
own camera code. All on a tiny random MVDream in the layout of its diffusers-format conversion."""

from __future__ import annotations

import json

import pytest
import torch
from mvdream_reference import MultiViewUNetModel, get_camera, normalize_camera, randomize, save_mvdream_unet
from safetensors.torch import load_file
from tiny_models import TINY_MVDREAM_UNET

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.multiview import (MultiViewAttnProcessor, MultiViewConditioner, MultiViewLatentPrior,
                                       camera_features, load_multiview_prior, make_multiview)
from threed.guidance.mvdream_unet import load_mvdream_unet

V = 4
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOLERANCE = 1e-5
"""Of the output's largest value: float32, the same sums in another order (SDPA against a written-out softmax,
diffusers' fused norms), measured about 1e-6."""

LAYOUTS = [(15.0, 0.0), (5.0, 40.0)]
"""(elevation, first azimuth) of each object in a batch, MVDream's camera layout."""


@pytest.fixture(scope="module")
def state(tiny_mvdream_dir) -> dict[str, torch.Tensor]:
    return load_file(tiny_mvdream_dir / "unet" / WEIGHTS)


@pytest.fixture(scope="module")
def reference(state) -> MultiViewUNetModel:
    model = MultiViewUNetModel(**TINY_MVDREAM_UNET)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def converted(tiny_mvdream_dir):
    return make_multiview(load_mvdream_unet(tiny_mvdream_dir / "unet", torch.float32), V)


def mvdream_cameras(objects: int) -> torch.Tensor:
    return torch.cat([normalize_camera(get_camera(V, el, az)) for el, az in LAYOUTS[:objects]])


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool((got - want).abs().max() <= TOLERANCE * want.abs().max())


@pytest.mark.parametrize("objects", [1, 2])
def test_converted_unet_reproduces_mvdream(reference, converted, objects):
    g = torch.Generator().manual_seed(objects)
    n = objects * V
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (objects,), generator=g).repeat_interleave(V)  # one timestep per object, as MVDream
    context = torch.randn(n, 7, TINY_MVDREAM_UNET["context_dim"], generator=g)
    cameras = mvdream_cameras(objects)
    with torch.no_grad():
        want = reference(x, t, context, cameras, num_frames=V)
        got = converted(x, t, encoder_hidden_states=context, class_labels=cameras).sample
        alone = reference(x, t, context, cameras, num_frames=1)
    assert close(got, want)
    assert not close(alone, want)  # the views do attend to each other, so a per-view UNet would fail this


def test_every_weight_is_mapped(reference, converted):
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in reference.parameters())
    assert len(converted.state_dict()) == len(reference.state_dict())
    assert torch.equal(converted.class_embedding.linear_2.bias, reference.camera_embed[2].bias)


def _rename(old: str, new: str):
    return lambda s: s.update({new: s.pop(old)})


@pytest.mark.parametrize("edit, names", [
    (_rename("input_blocks.1.1.proj_in.weight", "input_blocks.1.1.proj_inn.weight"),
     ["input_blocks.1.1.proj_inn.weight", "down_blocks.0.attentions.0.proj_in.weight"]),
    (lambda s: s.pop("output_blocks.2.0.skip_connection.bias"), ["up_blocks.0.resnets.2.conv_shortcut.bias"]),
    (lambda s: s.update({"input_blocks.1.1.extra": torch.zeros(3)}), ["input_blocks.1.1.extra"]),
    (lambda s: s.update({"label_emb.0.0.weight": torch.zeros(3)}), ["label_emb.0.0.weight"]),
    (lambda s: s.update({"middle_block.1.proj_in.weight": s["middle_block.1.proj_in.weight"][:, :8]}),
     ["mid_block.attentions.0.proj_in.weight (64, 8) != (64, 64)"]),
    (_rename("camera_embed.2.bias", "camera_embedding.2.bias"), ["camera_embed.2.bias"]),
])
def test_weights_that_do_not_fit_are_named(tmp_path, tiny_mvdream_dir, state, edit, names):
    broken = dict(state)
    edit(broken)
    folder = save_mvdream_unet(MultiViewUNetModel(**TINY_MVDREAM_UNET), tmp_path / "unet", broken)
    with pytest.raises(ThreedError) as err:
        load_mvdream_unet(folder, torch.float32)
    assert all(name in str(err.value) for name in names), str(err.value)


@pytest.mark.parametrize("change, name", [({"use_scale_shift_norm": True}, "use_scale_shift_norm"),
                                          ({"ip_dim": 16}, "ip_dim"), ({"frobnicate": 1}, "frobnicate"),
                                          ({"camera_dim": None}, "camera_dim")])
def test_config_options_without_counterpart_are_named(tmp_path, state, change, name):
    config = {**MultiViewUNetModel(**TINY_MVDREAM_UNET).config, **change}
    folder = save_mvdream_unet(MultiViewUNetModel(**TINY_MVDREAM_UNET), tmp_path / "unet", state, config=config)
    with pytest.raises(ThreedError, match=name):
        load_mvdream_unet(folder, torch.float32)


def test_weight_files_fp16_variant_and_bin(tmp_path, state):
    model = MultiViewUNetModel(**TINY_MVDREAM_UNET)
    other = {k: v.half() for k, v in randomize(model, seed=7).state_dict().items()}
    folder = save_mvdream_unet(model, tmp_path / "both", state)
    save_mvdream_unet(model, folder, other, name="diffusion_pytorch_model.fp16.safetensors")
    key, source = "conv_in.weight", "input_blocks.0.0.weight"
    assert torch.equal(load_mvdream_unet(folder, torch.float16).state_dict()[key], other[source])
    assert torch.equal(load_mvdream_unet(folder, torch.float32).state_dict()[key], state[source])
    bin_only = save_mvdream_unet(model, tmp_path / "bin", state, name="diffusion_pytorch_model.bin")
    assert torch.equal(load_mvdream_unet(bin_only, torch.float32).state_dict()[key], state[source])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(model.config))
    with pytest.raises(ThreedError, match="diffusion_pytorch_model.safetensors"):
        load_mvdream_unet(tmp_path / "empty", torch.float32)


def test_camera_features_are_mvdreams_get_camera():
    """threed's orbit (+Y up, azimuth 0 on +Z, 90 on +X, OpenGL camera axes) is the world MVDream builds its
    cameras in before ``convert_opengl_to_blender``, so elevation and azimuth carry over unchanged."""
    for elevation, start in [(15.0, 0.0), (0.0, 30.0), (30.0, -45.0), (-10.0, 200.0), (89.0, 10.0)]:
        cameras = Cameras.orbit(elevation, [start + 360.0 / V * i for i in range(V)], 2.5, 40.0, 8)
        want = normalize_camera(get_camera(V, elevation, start))
        assert torch.allclose(camera_features(cameras, "mvdream"), want, atol=1e-6)


def test_load_multiview_prior_runs_mvdream(tiny_mvdream_dir, reference):
    prior = load_multiview_prior(str(tiny_mvdream_dir))
    assert isinstance(prior, MultiViewLatentPrior)
    assert (prior.spec.num_views, prior.spec.camera_frame, prior.spec.view_prompts) == (4, "mvdream", False)
    processors: dict[str, object] = getattr(prior.unet, "attn_processors")
    assert all(isinstance(p, MultiViewAttnProcessor) == name.endswith("attn1.processor")
               for name, p in processors.items())
    elevation, start = LAYOUTS[0]
    cameras = Cameras.orbit(elevation, [start + 90.0 * i for i in range(V)], 2.0, 40.0, 16)
    cond = MultiViewConditioner(prior, "a red chair").conditioning(cameras)
    x_t = torch.randn(V, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.full((V,), 500)
    eps = prior.noise_predictions(x_t, t, [cond.cond, cond.uncond], class_labels=cond.class_labels)
    with torch.no_grad():
        for got, emb in zip(eps, (cond.cond, cond.uncond)):
            assert close(got, reference(x_t, t, emb, mvdream_cameras(1), num_frames=V))
