"""The NeRF field: density and albedo ranges, the Magic3D blob, normals, trunc_exp, seeding."""

import pytest
import torch

from threed.config import build
from threed.errors import ThreedError
from threed.geometry.encoding import HashGridConfig
from threed.geometry.nerf import NeRFField, NeRFFieldConfig, trunc_exp

SMALL_GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64)


def field(**overrides) -> NeRFField:
    torch.manual_seed(0)
    return NeRFField(NeRFFieldConfig(encoding=SMALL_GRID, **overrides))


def test_density_and_albedo_shapes_and_ranges():
    f = field()
    x = torch.rand(100, 3) * 2 - 1
    density, albedo = f(x)
    assert density.shape == (100, 1) and albedo.shape == (100, 3)
    assert (density >= 0).all() and ((albedo >= 0) & (albedo <= 1)).all()
    assert torch.equal(f.density(x), density) and torch.equal(f.albedo(x), albedo)


def test_zero_density_outside_the_box():
    f = field(radius=0.8)
    outside = torch.tensor([[0.9, 0.0, 0.0], [0.0, -0.81, 0.0], [0.5, 0.5, 1.5]])
    assert torch.equal(f.density(outside), torch.zeros(3, 1))
    assert (f.density(torch.tensor([[0.1, 0.2, 0.3]])) > 0).all()


def test_blob_bias_makes_a_ball_at_initialisation():
    f = field(blob_density=10.0, blob_radius=0.5)
    r = torch.linspace(0.0, 0.95, 20)
    density = f.density(torch.stack([r, 0.3 * r, -0.2 * r], dim=1)).squeeze(1)
    # the 1e-4 table makes the MLP output nearly constant, so the blob term orders the densities
    assert (density[1:] < density[:-1]).all()
    centre, edge = f.density(torch.zeros(1, 3)), f.density(torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(centre / edge, torch.exp(torch.tensor(10.0)), rtol=1e-2)  # exp(blob_density)
    flat = field(density_bias="none")
    d = flat.density(torch.stack([r, r * 0, r * 0], dim=1))
    assert d.max() / d.min() < 1.01  # no bias: nearly uniform at initialisation


def test_softplus_activation():
    f = field(density_activation="softplus")
    raw = f._raw(torch.zeros(1, 3))[0]
    assert torch.allclose(f.density(torch.zeros(1, 3)), torch.nn.functional.softplus(raw))


@pytest.mark.parametrize("normals", ["finite_difference", "analytic"])
def test_normals_of_the_blob_point_outward_and_are_unit(normals):
    f = field(normals=normals)
    torch.manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    x = dirs * torch.empty(50, 1).uniform_(0.2, 0.7)
    n = f.normal(x)
    assert torch.allclose(n.norm(dim=1), torch.ones(50), atol=1e-5)
    # the blob's radial falloff dominates the tiny hash-grid perturbation: cos > 0.99
    assert ((n * dirs).sum(1) > 0.99).all()


@pytest.mark.parametrize("normals", ["finite_difference", "analytic"])
def test_normals_are_differentiable_into_the_field(normals):
    f = field(normals=normals)
    n = f.normal(torch.rand(32, 3) - 0.5)
    (n * torch.tensor([0.3, -0.5, 0.8])).sum().backward()
    assert f.encoding.params.grad.abs().sum() > 0
    # through the density head (a constant bias cannot change a gradient direction)
    assert f.mlp[0].weight.grad.abs().sum() > 0 and f.mlp[-1].weight.grad[0].abs().sum() > 0


def test_analytic_normals_without_grad_mode():
    f = field(normals="analytic")
    with torch.no_grad():
        n = f.normal(torch.tensor([[0.3, 0.0, 0.0]]))
    assert not n.requires_grad and n[0, 0] > 0.99


def test_finite_difference_and_analytic_normals_agree_on_a_smooth_field():
    a, b = field(normals="analytic"), field(normals="finite_difference", fd_eps=1e-3)
    x = torch.tensor([[0.3, 0.1, -0.2], [-0.1, 0.4, 0.1]])
    assert ((a.normal(x) * b.normal(x)).sum(1) > 0.999).all()


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([0.0, 3.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    assert torch.allclose(y, torch.exp(x.detach()))
    y.sum().backward()
    expected = torch.exp(torch.tensor([0.0, 3.0, 15.0]))
    assert torch.allclose(x.grad, expected)


def test_initialisation_follows_the_global_seed():
    a, b = field(), field()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    torch.manual_seed(1)
    c = NeRFField(NeRFFieldConfig(encoding=SMALL_GRID))
    assert not torch.equal(a.encoding.params, c.encoding.params)


def test_mlp_depth_and_width():
    f = field(hidden_dim=32, n_hidden_layers=2)
    linears = [m for m in f.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [32, 32, 4]
    assert linears[0].in_features == f.encoding.n_output_dims


def test_config_from_plain_data():
    cfg = build(NeRFFieldConfig, {"radius": 1.5, "encoding": {"n_levels": 4}, "normals": "analytic"})
    assert cfg.radius == 1.5 and cfg.encoding.n_levels == 4
    with pytest.raises(ThreedError, match="density_activation"):
        build(NeRFFieldConfig, {"density_activation": "relu"})
    with pytest.raises(ThreedError, match="radius"):
        build(NeRFFieldConfig, {"radius": -1.0})


def test_sdf_field_starts_as_the_sphere_with_volsdf_density():
    f = field(field="sdf", sdf_init_radius=0.4, beta_start=0.05)
    x = torch.nn.functional.normalize(torch.randn(64, 3), dim=1) * torch.rand(64, 1) * 0.9
    assert torch.allclose(f.sdf(x), x.norm(dim=1, keepdim=True) - 0.4, atol=1e-6)  # the sphere exactly
    # VolSDF: half the peak density 1 / beta on the surface, Laplace tails either side
    on = torch.tensor([[0.4, 0.0, 0.0]])
    assert torch.allclose(f.density(on), torch.tensor([[0.5 / 0.05]]))
    deep, far = f.density(torch.zeros(1, 3)), f.density(torch.tensor([[0.0, 0.8, 0.0]]))
    assert torch.allclose(deep, torch.tensor([[(1 - 0.5 * torch.exp(torch.tensor(-0.4 / 0.05))) / 0.05]]))
    assert torch.allclose(far, torch.tensor([[0.5 * torch.exp(torch.tensor(-0.4 / 0.05)) / 0.05]]))
    n = f.normal(x[x.norm(dim=1) > 0.1])
    radial = torch.nn.functional.normalize(x[x.norm(dim=1) > 0.1], dim=1)
    assert ((n * radial).sum(1) > 0.99).all()  # normals point out of the sphere


def test_sdf_sharpness_follows_its_schedule_and_is_saved():
    f = field(field="sdf", beta_start=0.1, beta_end=0.01, beta_steps=100)
    f.update(0)
    assert float(f.beta) == pytest.approx(0.1)
    f.update(50)
    assert float(f.beta) == pytest.approx(0.1 ** 0.5 * 0.01 ** 0.5)  # geometric halfway
    f.update(500)
    assert float(f.beta) == pytest.approx(0.01)
    assert "beta" in f.state_dict()
    assert "beta" not in field().state_dict()  # density fields keep their checkpoint layout


def test_eikonal_term_is_zero_for_a_distance_and_trains_towards_one():
    f = field(field="sdf")
    x = torch.rand(256, 3) * 2 - 1
    assert float(f.eikonal(x).detach()) < 1e-8  # |x| - r has a unit gradient
    with torch.no_grad():  # break the distance: a rough offset on top of the sphere
        for p in f.encoding.parameters():
            p.normal_(0.0, 1.0)
        f.mlp[-1].weight[0].normal_(0.0, 1.0)
    before = float(f.eikonal(x).detach())
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    for _ in range(50):
        opt.zero_grad()
        f.eikonal(x).backward()
        opt.step()
    assert before > 0.01 and float(f.eikonal(x).detach()) < 0.5 * before
    with pytest.raises(ThreedError, match="set geometry.field=sdf"):
        field().eikonal(x)
