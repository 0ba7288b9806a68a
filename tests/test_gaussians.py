"""The Gaussians geometry: density control with consistent Adam state, resume at a changed count, PLY, hand-offs."""

import pytest
import torch

from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.config import build
from threed.errors import ThreedError
from threed.export.gaussian_ply import load_gaussians_ply, read_gaussians_ply, write_gaussians_ply
from threed.export.isosurface import extract_mesh
from threed.geometry.densify import DensifyConfig, DensifyState, DensifyStrategy
from threed.geometry.gaussians import Gaussians, GaussiansConfig
from threed.scene import DMTetSceneConfig, GaussianSceneConfig, NeRFSceneConfig, OptimizerConfig, Scene
from threed.stage import RunContext, Stage, StageConfig, hand_off_level

ENCODING = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4, "max_resolution": 64}


def trained_gaussians(n=200, **densify):
    """Gaussians after two Adam steps (so every moment is non-zero), with the optimiser."""
    torch.manual_seed(0)
    g = Gaussians(GaussiansConfig(count=n, densify=DensifyConfig(**densify)))
    opt = torch.optim.Adam(g.parameter_groups(OptimizerConfig()), eps=1e-15)
    for _ in range(2):
        opt.zero_grad()
        loss = sum((p * torch.randn_like(p)).sum() for p in g.parameters())
        loss.backward()
        opt.step()
    return g, opt


def strategy(g: Gaussians) -> DensifyStrategy:
    return DensifyStrategy(g.cfg.densify, g.cfg.radius)


def test_densify_and_prune_keep_the_adam_state_rows_of_the_gaussians_they_keep():
    g, opt = trained_gaussians(clone_max_scale=0.05, min_opacity=0.01, max_scale=1.0)
    n = g.count
    with torch.no_grad():
        g.log_scales[:50] = torch.log(torch.tensor(0.01))  # small: cloned
        g.log_scales[50:100] = torch.log(torch.tensor(0.2))  # large: split
        g.opacity_logits[150:] = -10.0  # transparent: pruned
    stats = DensifyState(n)
    stats.grad_sum[:100] = 1.0
    stats.grad_views[:100] = 1.0
    before = {name: (getattr(g, name).detach().clone(), opt.state[getattr(g, name)]["exp_avg"].clone())
              for name in g.ATTRIBUTES}
    report = strategy(g).densify_and_prune(g, opt, stats)
    assert report == {"cloned": 50, "split": 50, "pruned": 50, "count": n - 50 - 50 + 50 + 100, "before": n}
    kept = torch.tensor([i for i in range(n) if not (50 <= i < 100 or i >= 150)])
    for name in g.ATTRIBUTES:
        param = getattr(g, name)
        old, old_moment = before[name]
        group = next(grp for grp in opt.param_groups if grp["name"] == name)
        assert group["params"] == [param]  # swapped into the optimiser
        state = opt.state[param]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == param.shape
        torch.testing.assert_close(param[: len(kept)], old[kept])
        torch.testing.assert_close(state["exp_avg"][: len(kept)], old_moment[kept])
        assert float(state["exp_avg"][len(kept):].abs().max()) == 0.0  # new rows start without momentum
        if name != "positions" and name != "log_scales":
            torch.testing.assert_close(param[len(kept): len(kept) + 50], old[:50])  # clones are copies
    # split children: half the parent's scale / 1.6, drawn around it
    torch.testing.assert_close(g.scales[len(kept) + 50:], (0.2 / 1.6) * torch.ones(100, 3))
    assert stats.grad_sum.shape == (g.count,) and float(stats.grad_sum.abs().sum()) == 0
    # the optimiser keeps working on the new tensors
    opt.zero_grad()
    sum(p.square().sum() for p in g.parameters()).backward()
    opt.step()


def test_the_count_never_exceeds_max_count_and_the_largest_gradients_win():
    g, opt = trained_gaussians(n=100, max_count=110, clone_max_scale=1.0, min_opacity=0.0, max_scale=1.0)
    stats = DensifyState(100)
    stats.grad_sum[:] = torch.arange(100.0)
    stats.grad_views[:] = 1.0
    g.cfg.densify.grad_threshold = 0.0
    positions = g.positions.detach().clone()
    strategy(g).densify_and_prune(g, opt, stats)
    assert g.count == 110
    torch.testing.assert_close(g.positions[100:], positions[torch.arange(99, 89, -1)])  # largest first


def test_opacity_reset_clamps_opacities_and_zeroes_their_moments():
    g, opt = trained_gaussians(opacity_reset_value=0.01)
    g.clamp_opacity(g.cfg.densify.opacity_reset_value, opt)
    assert float(g.opacity.detach().max()) <= 0.01 + 1e-6
    assert float(opt.state[g.opacity_logits]["exp_avg"].abs().max()) == 0


def test_a_state_dict_with_another_count_loads_with_that_count():
    g, opt = trained_gaussians(clone_max_scale=1.0, min_opacity=0.0, max_scale=1.0)
    stats = DensifyState(g.count)
    stats.grad_sum[:30] = 1.0
    stats.grad_views[:30] = 1.0
    strategy(g).densify_and_prune(g, opt, stats)
    fresh = Gaussians(GaussiansConfig(count=200))
    fresh.load_state_dict(g.state_dict())
    assert fresh.count == g.count == 230
    for name in g.ATTRIBUTES:
        torch.testing.assert_close(getattr(fresh, name), getattr(g, name))


@pytest.fixture
def one_thread():
    """Torch on one CPU thread for the test: with several, a threaded gradient accumulation of the splat path
    sums in no fixed order, so two runs differ in the last bits and densification (which clones the largest
    gradients) turns that into different Gaussians. With one thread a run repeats exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_densifying_stage_resumes_exactly_with_the_densified_count(tiny_toy_dir, tmp_path, one_thread):
    """Stopping after 4 steps (count changed at step 2 and 4) and resuming to 6 equals running 6 straight."""
    def stage(steps, run_dir):
        cfg = build(StageConfig, {
            "name": "gs", "steps": steps, "render_size": 24, "val_every": 0, "ckpt_every": 2,
            "scene": {"kind": "gaussian", "geometry": {"count": 300, "densify": {
                "start": 0, "stop": 6, "every": 2, "grad_threshold": 0.0, "max_count": 1000}}},
            "cameras": {"batch_size": 2}, "loss": {"orient": 0.0}})
        ctx = RunContext(prompt="a red cube", model=str(tiny_toy_dir), device=torch.device("cpu"), seed=0,
                         max_steps=None, run_dir=run_dir)
        return Stage(cfg, ctx, 0)

    straight = stage(6, tmp_path / "a").run()
    first = stage(4, tmp_path / "b")
    partial = first.run()
    counts = partial.scene["renderer.geometry.positions"].shape[0]
    assert 300 < counts <= 1000
    resumed_stage = stage(6, tmp_path / "b")
    tr, resume = resumed_stage.setup()
    assert resume.step == 4 and tr.scene.geometry.count == counts
    resumed = resumed_stage.run()
    for key, value in straight.scene.items():
        torch.testing.assert_close(resumed.scene[key], value, msg=key)
    assert Checkpoint.load(resumed_stage.checkpoint_path).step == 6


def test_ply_round_trip_keeps_every_gaussian(tmp_path):
    g, _ = trained_gaussians(n=64)
    path = write_gaussians_ply(g, tmp_path / "g.ply")
    text = path.read_bytes()[:600].decode("ascii", "replace")
    for prop in ("property float x", "property float f_dc_0", "property float opacity", "property float scale_2",
                 "property float rot_3", "element vertex 64"):
        assert prop in text
    state = read_gaussians_ply(path)
    torch.testing.assert_close(state["positions"], g.positions.detach())
    torch.testing.assert_close(state["log_scales"], g.log_scales.detach())
    torch.testing.assert_close(state["opacity_logits"], g.opacity_logits.detach())
    torch.testing.assert_close(torch.sigmoid(state["color_logits"]), g.colors.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(state["quaternions"], torch.nn.functional.normalize(g.quaternions.detach(), dim=-1))
    other = load_gaussians_ply(Gaussians(GaussiansConfig(count=8)), path)
    assert other.count == 64
    points = torch.rand(500, 3) - 0.5
    torch.testing.assert_close(other.density(points), g.density(points), atol=1e-5, rtol=1e-4)
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(ThreedError, match="binary little-endian"):
        read_gaussians_ply(tmp_path / "bad.ply")


def test_density_of_one_gaussian_is_its_kernel_and_meshes_to_an_ellipsoid():
    g = Gaussians(GaussiansConfig(count=1, init_opacity=0.9))
    with torch.no_grad():
        g.positions.zero_()
        g.log_scales.copy_(torch.log(torch.tensor([[0.2, 0.1, 0.1]])))
    x = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.9, 0.0, 0.0]])
    expected = 0.9 / (torch.tensor(2 * torch.pi).sqrt() * 0.1) * torch.exp(-0.5 * torch.tensor([0.25, 1.0, 0.0]))
    expected[2] = 0.0  # beyond the 1/255 cut-off
    torch.testing.assert_close(g.density(x)[:, 0], expected)
    mesh, info = extract_mesh(g.density, radius=1.0, resolution=48)
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert len(mesh.faces) > 100 and mesh.is_watertight
    assert 1.6 < extent[0] / extent[1] < 2.4 and abs(extent[1] - extent[2]) < 0.05  # a 2:1:1 ellipsoid


def test_hand_offs_nerf_to_gaussians_and_gaussians_to_dmtet():
    torch.manual_seed(0)
    nerf = Scene(build(NeRFSceneConfig, {"geometry": {"encoding": ENCODING, "hidden_dim": 16}})).eval()
    gauss = Scene(build(GaussianSceneConfig, {"geometry": {"count": 600}})).eval()
    info = gauss.init_from(nerf, hand_off_level(gauss, nerf))
    assert info["count"] == 600 and info["level"] > 0
    assert bool((nerf.density(gauss.geometry.positions.detach()) > info["level"] * 0.5).float().mean() > 0.9)
    torch.testing.assert_close(gauss.geometry.colors, nerf.albedo(gauss.geometry.positions).detach(),
                               atol=1e-3, rtol=0)
    cams = Cameras.orbit([15.0, 15.0, 60.0], [0.0, 120.0, 240.0], 2.75, 40.0, 32)
    dmtet = Scene(build(DMTetSceneConfig, {"geometry": {"grid_size": 16, "encoding": ENCODING, "hidden_dim": 16},
                                           "init_grid_size": 32}))
    info = dmtet.init_from(gauss, hand_off_level(dmtet, gauss))
    assert info["albedo"] == "fitted"
    with torch.no_grad():
        a = gauss.render_eval(cams).opacity[..., 0] > 0.5
        b = dmtet.render_eval(cams).opacity[..., 0] > 0.5
    assert float((a & b).sum() / (a | b).sum()) > 0.8
    with pytest.raises(ThreedError, match="nerf -> gaussian"):
        gauss.init_from(dmtet, hand_off_level(gauss, dmtet))
