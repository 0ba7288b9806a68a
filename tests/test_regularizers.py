"""Typed regularisers: each term from its own config, unknown terms and absent terms are errors."""

import pytest
import torch

from threed.config import build
from threed.errors import ThreedError
from threed.regularizers import Eikonal, LossConfig, NormalConsistency, Opaque, Orientation, Sparsity
from threed.render.output import RenderOut


def render(opacity: torch.Tensor, **terms) -> RenderOut:
    b, h, w, _ = opacity.shape
    return RenderOut(rgb=torch.zeros(b, h, w, 3), opacity=opacity, depth=torch.zeros(b, h, w, 1), **terms)


def test_a_weight_alone_or_a_whole_config_builds_the_same_term():
    cfg = build(LossConfig, {"orient": 0.5, "sparsity": {"weight": 0.1, "eps": 0.04}, "opaque": 0})
    assert cfg.orient == Orientation(weight=0.5) and cfg.sparsity == Sparsity(weight=0.1, eps=0.04)
    assert cfg.opaque == Opaque(weight=0.0) and [t.name for t in cfg.regularizers] == ["sparsity", "orient"]


def test_unknown_terms_and_settings_are_errors():
    with pytest.raises(ThreedError, match="unknown key orientation.*valid keys.*normal_consistency"):
        build(LossConfig, {"orientation": 0.1})
    with pytest.raises(ThreedError, match="unknown key sparsity.epsilon"):
        build(LossConfig, {"sparsity": {"epsilon": 0.1}})


def test_terms_match_their_formulas():
    opacity = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 2, 2, 1)
    clamped = opacity.clamp(1e-5, 1 - 1e-5)
    out = render(opacity)
    torch.testing.assert_close(Sparsity(weight=1.0)(out), (clamped ** 2 + 0.01).sqrt().mean())
    entropy = -(clamped * clamped.log() + (1 - clamped) * (1 - clamped).log()).mean()
    torch.testing.assert_close(Opaque(weight=1.0)(out), entropy)
    assert float(Opaque(weight=1.0)(render(torch.ones(1, 2, 2, 1)))) < 1e-3  # fully opaque: no entropy


def test_total_weighs_each_term_and_skips_zero_weights():
    opacity = torch.full((1, 2, 2, 1), 0.5)
    out = render(opacity, orient=torch.tensor(2.0), normal_consistency=torch.tensor(3.0))
    cfg = LossConfig(guidance=0.5, orient=Orientation(0.25), sparsity=Sparsity(0.0),
                     normal_consistency=NormalConsistency(10.0))
    total = cfg.total(torch.tensor(4.0), out)
    torch.testing.assert_close(total, torch.tensor(0.5 * 4.0 + 0.25 * 2.0 + 10.0 * 3.0))


def test_a_weighted_term_the_renderer_does_not_compute_is_an_error():
    """A DMTet render has no orientation term: a non-zero weight on it says so instead of counting nothing."""
    with pytest.raises(ThreedError, match="loss.orient has weight 0.01.*volume renderer"):
        LossConfig().total(torch.tensor(1.0), render(torch.full((1, 2, 2, 1), 0.5)))
    with pytest.raises(ThreedError, match="loss.normal_consistency.*mesh renderer"):
        LossConfig(orient=Orientation(0.0), normal_consistency=NormalConsistency(1.0)).total(
            torch.tensor(1.0), render(torch.full((1, 2, 2, 1), 0.5)))


def test_eikonal_term_comes_from_a_volume_render_of_an_sdf_field_only():
    from threed.cameras import CameraSampler, CameraSamplerConfig
    from threed.geometry.encoding import HashGridConfig
    from threed.geometry.nerf import NeRFField, NeRFFieldConfig
    from threed.render.background import Background, BackgroundConfig
    from threed.render.volume import VolumeRenderer, VolumeRendererConfig

    grid = HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=4, max_resolution=16)
    cams = CameraSampler(CameraSamplerConfig(batch_size=1)).sample(8, 8, generator=torch.Generator().manual_seed(0))
    outs = {}
    for kind in ("density", "sdf"):
        renderer = VolumeRenderer(VolumeRendererConfig(num_samples=8, eikonal_samples=64),
                                  NeRFField(NeRFFieldConfig(encoding=grid, field=kind)), Background(BackgroundConfig()))
        outs[kind] = renderer.train()(cams)
    loss = LossConfig(guidance=0.0, orient=Orientation(weight=0.0), eikonal=Eikonal(weight=1.0))
    assert outs["sdf"].eikonal is not None and float(loss.total(torch.zeros(()), outs["sdf"]).detach()) >= 0.0
    with pytest.raises(ThreedError, match="loss.eikonal has weight 1.0.*SDF field"):
        loss.total(torch.zeros(()), outs["density"])
