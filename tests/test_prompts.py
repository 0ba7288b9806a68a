"""Prompt processing: view-dependent prompts per camera, encoded once."""

from __future__ import annotations

import pytest
import torch

from threed.cameras import Cameras
from threed.config import build
from threed.errors import ThreedError
from threed.guidance.prior import load_prior
from threed.guidance.text import PromptConfig, PromptProcessor

# front, side (+X), back, side (-X), overhead
CAMS = Cameras.orbit(elevation=[0, 10, 0, 10, 80], azimuth=[0, 90, 180, -90, 30], distance=3.0, fovy_deg=40,
                     height=16)


@pytest.fixture
def prior(tiny_toy_dir):
    return load_prior(str(tiny_toy_dir), "cpu")


def test_empty_prompt_is_an_error(prior):
    with pytest.raises(ThreedError, match="empty"):
        PromptProcessor(prior, "   ")


def test_view_dependent_embeddings_follow_the_camera_labels(prior):
    pp = PromptProcessor(prior, "a red chair", PromptConfig(negative_prompt="a dog"))
    cond, uncond = pp.embeddings(CAMS)
    assert pp.labels(CAMS) == ["front", "side", "back", "side", "overhead"]
    texts = ["a red chair, front view", "a red chair, side view", "a red chair, back view", "a red chair, side view",
             "a red chair, overhead view"]
    torch.testing.assert_close(cond, prior.encode_text(texts), rtol=0, atol=0)  # same prompts, same tensors
    torch.testing.assert_close(uncond, prior.encode_text(["a dog"] * 5), rtol=0, atol=0)
    assert not torch.equal(cond[0], cond[2])  # front and back really are conditioned differently


def test_view_independent_prompts_ignore_the_camera(prior):
    cond, uncond = PromptProcessor(prior, "a red chair", PromptConfig(view_dependent=False)).embeddings(CAMS)
    torch.testing.assert_close(cond, prior.encode_text(["a red chair"] * 5), rtol=0, atol=0)
    torch.testing.assert_close(uncond, prior.encode_text([""] * 5), rtol=0, atol=0)


def test_label_angles_come_from_the_config(prior):
    cams = Cameras.orbit(elevation=[0, 50], azimuth=[30, 0], distance=3.0, fovy_deg=40, height=16)
    pp = PromptProcessor(prior, "a cube", PromptConfig(front_half_angle=20, overhead_elevation=45))
    assert pp.labels(cams) == ["side", "overhead"]


def test_embeddings_are_computed_once_not_per_step(prior):
    pp = PromptProcessor(prior, "a small wooden table")
    calls = []
    handle = prior.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        for _ in range(3):
            pp.embeddings(CAMS)
    finally:
        handle.remove()
    assert calls == []


def test_unknown_words_in_a_suffix_are_named(prior):
    with pytest.raises(ThreedError, match="'below'"):
        PromptProcessor(prior, "a red chair", PromptConfig(front_suffix=", front view from below"))


def test_config_builds_from_a_mapping_and_rejects_unknown_keys():
    assert build(PromptConfig, {"view_dependent": False, "negative_prompt": "blurry"}).negative_prompt == "blurry"
    with pytest.raises(ThreedError, match="valid keys"):
        build(PromptConfig, {"view_dependant": False})
    with pytest.raises(ThreedError, match="front_half_angle"):
        build(PromptConfig, {"front_half_angle": 120.0, "back_half_angle": 90.0})


def test_view_interpolation_blends_neighbouring_view_prompts_by_azimuth(prior):
    cams = Cameras.orbit(elevation=[0, 0, 0, 0, 80], azimuth=[0, 45, -135, 180, 45], distance=3.0, fovy_deg=40,
                         height=16)
    text = PromptProcessor(prior, "a red chair", PromptConfig(view_interpolation=True)).conditioning(cams)
    front, side, back, overhead = prior.encode_text([f"a red chair, {v} view" for v in ("front", "side", "back",
                                                                                          "overhead")])
    expected = torch.stack([front, (front + side) / 2, (side + back) / 2, back, overhead])  # overhead keeps its label
    torch.testing.assert_close(text.cond, expected, rtol=0, atol=1e-6)  # float32 lerp
    assert text.negatives == ()


def test_perp_neg_negatives_are_the_other_views_weighted_by_angular_distance(prior):
    cams = Cameras.orbit(elevation=[0, 0, 0, 0, 80], azimuth=[0, 60, 120, 180, 0], distance=3.0, fovy_deg=40,
                         height=16)
    pp = PromptProcessor(prior, "a red chair", PromptConfig(perp_neg=True))  # weights 1.5, back side 0.394
    text = pp.conditioning(cams)
    front, side = prior.encode_text(["a red chair, front view", "a red chair, side view"])
    (first, w1), (second, w2) = text.negatives
    # Front half: front (weight grows away from 0 deg) and side; back half: side (growing to threestudio's
    # 0.394 at the back) and front (always full weight).
    torch.testing.assert_close(first, torch.stack([front, front, side, side, front]), rtol=0, atol=0)
    torch.testing.assert_close(second, torch.stack([side, side, front, front, side]), rtol=0, atol=0)
    torch.testing.assert_close(w1, torch.tensor([0.0, 1.0, 0.394 / 3, 0.394, 0.0]), rtol=0, atol=1e-6)  # overhead: none
    torch.testing.assert_close(w2, torch.tensor([1.5, 0.5, 1.5, 1.5, 0.0]), rtol=0, atol=1e-6)
    other = PromptProcessor(prior, "a red chair", PromptConfig(perp_neg=True, perp_neg_back_side_weight=1.5))
    torch.testing.assert_close(other.conditioning(cams).negatives[0][1], torch.tensor([0.0, 1.0, 0.5, 1.5, 0.0]),
                               rtol=0, atol=1e-6)  # the key sets it (1.5: the weight before it existed)
    torch.testing.assert_close(text.cond, pp.embeddings(cams)[0], rtol=0, atol=0)  # labels unless interpolating


def test_interpolation_and_perp_neg_need_view_prompts():
    with pytest.raises(ThreedError, match="view_dependent"):
        build(PromptConfig, {"view_dependent": False, "perp_neg": True})
    with pytest.raises(ThreedError, match="perp_neg_weight"):
        build(PromptConfig, {"perp_neg_weight": -1.0})
    with pytest.raises(ThreedError, match="perp_neg_back_side_weight"):
        build(PromptConfig, {"perp_neg_back_side_weight": -1.0})
