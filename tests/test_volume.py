"""The volume renderer against fields whose renders are known in closed form."""

import math

import pytest
import torch
from torch import nn

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.geometry.encoding import HashGridConfig
from threed.geometry.nerf import NeRFField, NeRFFieldConfig
from threed.render.background import Background, BackgroundConfig
from threed.render.shading import ShadingConfig
from threed.render.volume import VolumeRenderer, VolumeRendererConfig, ray_box
from type_checks import refused


class Analytic(nn.Module):
    """A field given by formulas: density(x), constant albedo, normal(x); counts evaluated points."""

    def __init__(self, density, normal=None, albedo=(0.8, 0.3, 0.1), radius=1.0):
        super().__init__()
        self.radius = radius
        self._density, self._normal = density, normal
        self.register_buffer("_albedo", torch.tensor(albedo))
        self.evaluated = 0

    def density(self, x):
        return self._density(x).reshape(-1, 1)

    def forward(self, x):
        self.evaluated += x.shape[0]
        return self.density(x), self._albedo.expand(x.shape[0], 3)

    def normal(self, x):
        return self._normal(x)


def slab(sigma, half, normal=None):
    """Density sigma for |z| < half (the whole box in x and y)."""
    default = lambda x: torch.nn.functional.normalize(x * torch.tensor([0.0, 0.0, 1.0]) + 1e-9, dim=-1)  # noqa: E731
    return Analytic(lambda x: sigma * (x[:, 2].abs() < half).float(), normal or default)


def sphere(sigma, r):
    return Analytic(lambda x: sigma * (x.norm(dim=-1) < r).float(),
                    lambda x: torch.nn.functional.normalize(x, dim=-1))


def voxel_ball(peak=50.0, r=0.5, res=16):
    """Constant density in the occupancy cells whose centres lie within r: the grid sees it exactly."""
    def density(x):
        centre = (torch.floor((x + 1) / 2 * res).clamp(0, res - 1) + 0.5) / res * 2 - 1
        return peak * (centre.norm(dim=-1) < r).float()
    return Analytic(density, lambda x: torch.nn.functional.normalize(x, dim=-1))


def gaussian_blob(peak=200.0, width=0.25):
    return Analytic(lambda x: peak * torch.exp(-(x.norm(dim=-1) / width) ** 2),
                    lambda x: torch.nn.functional.normalize(x, dim=-1))


def renderer(geometry, background="solid", color=(1.0, 1.0, 1.0), **cfg):
    bg = Background(BackgroundConfig(kind=background, color=color, hidden_dim=8, n_hidden_layers=1))
    return VolumeRenderer(VolumeRendererConfig(backend="torch", **cfg), geometry, bg, ShadingConfig(ambient=0.2))


def front_camera(size, distance=3.0, fovy=40.0, width=None, batch=1):
    return Cameras.orbit([0.0] * batch, [0.0] * batch, distance, fovy, size, width)


def test_ray_box_clip():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.2, 0.1, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_box(o, d, 1.0)
    assert hit.tolist() == [True, False, True]
    assert torch.allclose(near[[0, 2]], torch.tensor([2.0, 0.0]))  # a ray starting inside enters at 0
    assert torch.allclose(far[[0, 2]], torch.tensor([4.0, 0.8]))


def test_constant_slab_opacity_is_beer_lambert():
    sigma, half, S = 1.5, 0.27, 128  # faces off the sample grid, so the quadrature error shows
    r = renderer(slab(sigma, half), num_samples=S).eval()
    cams = front_camera(17)
    out = r(cams)
    _, dirs = cams.rays()
    centre = slice(4, 13)
    dz = dirs[0, centre, centre, 2].abs()
    expected = 1.0 - torch.exp(-sigma * 2 * half / dz)
    got = out.opacity[0, centre, centre, 0]
    # midpoint quadrature: each slab face can misplace half a sample interval (box chord / S <= 2.1 / S)
    tol = sigma * 2.1 / S
    assert (got - expected).abs().max() < tol
    # colour over a white background: albedo * opacity + (1 - opacity)
    albedo = torch.tensor([0.8, 0.3, 0.1])
    rgb = out.rgb[0, centre, centre]
    assert torch.allclose(rgb, got[..., None] * albedo + (1 - got[..., None]), atol=1e-5)


def test_compositing_is_exact_when_the_slab_fills_whole_sample_intervals():
    """Box faces z = +-1 and slab faces z = +-0.25 fall on interval edges for every ray (S = 16), so the
    discrete sums are known exactly: T_i = exp(-sum_{j<i} sigma delta), w_i = T_i (1 - exp(-sigma delta))."""
    sigma, S = 3.0, 16
    r = renderer(slab(sigma, 0.25), num_samples=S).eval()
    cams = front_camera(9)
    out = r(cams)
    origins, dirs = cams.rays()
    dz = dirs[0, 2:7, 2:7, 2].abs()  # central rays: they enter and leave through the z faces
    delta = 2.0 / dz / S
    near = (origins[0, 2:7, 2:7, 2] - 1.0) / dz
    inside = torch.arange(6, 10)  # intervals 6..9 of 16 cover z in (-0.25, 0.25)
    trans = torch.exp(-sigma * delta[..., None] * (inside - 6))
    weights = trans * (1 - torch.exp(-sigma * delta[..., None]))
    t = near[..., None] + (inside + 0.5) * delta[..., None]
    assert torch.allclose(out.opacity[0, 2:7, 2:7, 0], 1 - torch.exp(-sigma * 0.5 / dz), atol=1e-5)
    assert torch.allclose(out.depth[0, 2:7, 2:7, 0], (weights * t).sum(-1), atol=1e-4)


def test_training_samples_are_stratified_and_unbiased():
    sigma, half, S = 1.5, 0.27, 32
    r = renderer(slab(sigma, half), num_samples=S).train()
    cams = front_camera(9)
    a, b = r(cams).opacity, r(cams).opacity
    assert not torch.equal(a, b)  # jittered
    expected = 1.0 - math.exp(-sigma * 2 * half)
    # stratified sampling is unbiased in optical depth; the mean over 5 centre pixels x 2 renders
    # sits well inside one interval's worth of optical depth
    centre = torch.cat([a[0, 3:6, 4, 0], b[0, 3:6, 4, 0]])
    assert abs(centre.mean().item() - expected) < sigma * 2.1 / S


@pytest.mark.parametrize("background", ["solid", "mlp"])
def test_empty_field_renders_exactly_the_background(background):
    torch.manual_seed(0)
    r = renderer(Analytic(lambda x: torch.zeros(x.shape[0])), background=background, color=(0.1, 0.5, 0.9))
    r.eval()
    cams = front_camera(12)
    out = r(cams)
    _, dirs = cams.rays()
    assert torch.equal(out.rgb, r.background(dirs, training=False))
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    assert torch.equal(out.depth, torch.zeros_like(out.depth))


def test_opaque_sphere_silhouette_and_depth():
    radius, distance, size = 0.5, 2.75, 49
    r = renderer(sphere(1e3, radius), num_samples=64).eval()
    cams = front_camera(size, distance=distance)
    out = r(cams, "lambertian")
    origins, dirs = cams.rays()
    miss_distance = torch.linalg.cross(origins, dirs, dim=-1).norm(dim=-1)  # |o x d|: closest approach
    disc = miss_distance[0] < radius
    mask = out.opacity[0, ..., 0] > 0.5
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.95
    c = size // 2
    # the first sample inside the surface is opaque: depth is within one interval (chord / 64) of it
    assert abs(out.depth[0, c, c, 0].item() - (distance - radius)) < 2.1 / 64
    assert torch.allclose(out.normal[0, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=0.05)  # faces the camera
    assert out.opacity[0, 0, 0, 0] == 0 and out.depth[0, 0, 0, 0] == 0


def test_lit_shading_uses_the_camera_light():
    r = renderer(sphere(1e3, 0.5), num_samples=48).eval()
    cams = front_camera(33, distance=2.75)  # default light: a headlight behind the camera
    out = r(cams, "textureless")
    centre, rim = out.rgb[0, 16, 16], out.rgb[0, 16, 11]
    assert torch.allclose(centre, torch.ones(3), atol=0.03)  # n . l ~ 1 facing the light
    assert (rim < centre - 0.1).all()  # grazing: darker, but >= ambient
    assert (out.rgb[0][out.opacity[0, ..., 0] > 0.99] >= 0.2 - 1e-4).all()
    with refused("shading"):
        r(cams, "phong")


class CountingNormals(Analytic):
    """A soft blob whose normal() counts the points it is asked for."""

    def __init__(self):
        blob = gaussian_blob()
        super().__init__(blob._density, blob._normal)
        self.normals_asked = 0

    def normal(self, x):
        self.normals_asked += x.shape[0]
        return super().normal(x)


@pytest.mark.parametrize("shading", ["lambertian", "textureless"])
def test_evaluation_renders_light_only_the_samples_that_show(shading):
    """Outside training, normals are computed only where a sample's weight is above the threshold: the lit
    image is the same (every sample lit) to well under an 8-bit level, with a fraction of the normals."""
    cams = front_camera(24, distance=2.75)
    images, asked = {}, {}
    for threshold in (1e-4, -1.0):  # -1: every sample counts
        field = CountingNormals()
        images[threshold] = renderer(field, num_samples=64, normal_weight_threshold=threshold).eval()(cams, shading).rgb
        asked[threshold] = field.normals_asked
    assert (images[1e-4] - images[-1.0]).abs().max() < 1e-3
    assert asked[1e-4] < 0.6 * asked[-1.0]


def test_gradients_reach_hash_table_and_mlp():
    torch.manual_seed(0)
    grid = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64)
    field = NeRFField(NeRFFieldConfig(encoding=grid))
    r = renderer(field, num_samples=24).train()
    out = r(front_camera(12), "lambertian")
    (out.rgb.mean() + out.orient).backward()
    assert field.encoding.params.grad.abs().sum() > 0
    for name, p in field.mlp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_occupancy_grid_skips_empty_space_without_changing_the_render():
    cams = front_camera(24, distance=2.75)
    dense_geo, sparse_geo = voxel_ball(), voxel_ball()
    dense = renderer(dense_geo, occupancy_resolution=16, early_stop_eps=0.0).eval()
    sparse = renderer(sparse_geo, occupancy_resolution=16, occupancy_warmup_steps=2, occupancy_update_every=1,
                      early_stop_eps=0.0).eval()
    for step in range(3):
        sparse.update(step)
    assert bool(sparse.occupancy_active)
    occupied = sparse.occupied().float().mean().item()
    assert occupied == pytest.approx((voxel_ball().density(sparse_cell_centres(16)) > 0).float().mean().item())
    a, b = dense(cams), sparse(cams)
    assert sparse_geo.evaluated < 0.3 * dense_geo.evaluated
    # only zero-density samples were skipped: the same sums up to float rounding
    assert torch.allclose(a.opacity, b.opacity, atol=1e-6) and torch.allclose(a.rgb, b.rgb, atol=1e-6)


def sparse_cell_centres(res):
    idx = (torch.arange(res) + 0.5) / res * 2 - 1
    return torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), dim=-1).reshape(-1, 3)


def test_early_stop_skips_occluded_samples_without_changing_the_render():
    cams = front_camera(16)
    full_geo, stop_geo = sphere(1e3, 0.5), sphere(1e3, 0.5)
    full = renderer(full_geo, early_stop_eps=0.0).eval()
    stop = renderer(stop_geo, early_stop_eps=1e-4).eval()
    a, b = full(cams, "textureless"), stop(cams, "textureless")
    assert stop_geo.evaluated < full_geo.evaluated
    # dropped samples carry transmittance < 1e-4 each
    assert (a.rgb - b.rgb).abs().max() < 64 * 1e-4 and (a.opacity - b.opacity).abs().max() < 64 * 1e-4


def test_warmup_then_skipping_and_state_dict():
    r = renderer(gaussian_blob(), occupancy_resolution=8, occupancy_warmup_steps=32, occupancy_update_every=16)
    r.update(0)
    assert not bool(r.occupancy_active) and r.occupied().all()  # no skipping during warm-up
    assert r.occupancy.max() > 0
    r.update(31)
    assert not bool(r.occupancy_active)
    r.update(32)
    assert bool(r.occupancy_active) and not r.occupied().all()
    state = r.state_dict()
    assert {"occupancy", "occupancy_active"} <= set(state)
    fresh = renderer(gaussian_blob(), occupancy_resolution=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.occupied(), r.occupied())


@pytest.mark.parametrize("shading", ["albedo", "textureless"])
def test_shapes_at_non_square_resolution(shading):
    torch.manual_seed(0)
    r = renderer(sphere(50.0, 0.6), num_samples=16).train()
    cams = Cameras.orbit([0.0, 20.0], [0.0, 90.0], 2.75, 40.0, 24, 40)
    out = r(cams, shading)
    assert out.rgb.shape == (2, 24, 40, 3) and out.opacity.shape == (2, 24, 40, 1)
    assert out.depth.shape == (2, 24, 40, 1) and out.normal.shape == (2, 24, 40, 3)
    assert out.orient.shape == ()
    assert out.opacity[0, 12, 20, 0] > 0.9 and out.opacity[0, 0, 0, 0] == 0  # centred, corners empty
    r.eval()
    assert r(cams).normal is None  # albedo at eval: no normals wanted


def test_orientation_loss_is_zero_when_normals_face_the_camera():
    cams = front_camera(10)
    facing = renderer(slab(3.0, 0.3, normal=lambda x: torch.tensor([0.0, 0.0, 1.0]).expand_as(x))).train()
    away = renderer(slab(3.0, 0.3, normal=lambda x: torch.tensor([0.0, 0.0, -1.0]).expand_as(x))).train()
    for shading in ("albedo", "lambertian"):
        assert facing(cams, shading).orient == 0
        out = away(cams, shading)
        # away-facing normals: sum_i w_i (n . d)^2 ~ opacity * d_z^2, averaged over rays
        assert out.orient > 0.8 * out.opacity.mean()
    assert facing.eval()(cams, "lambertian").orient is None


def test_chunked_render_matches_the_full_render():
    torch.manual_seed(0)
    grid = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64)
    r = renderer(NeRFField(NeRFFieldConfig(encoding=grid)), num_samples=16).eval()
    cams = front_camera(10, width=14, batch=2)
    with torch.no_grad():
        full = r._render(cams, "textureless", None)
    r.cfg.eval_chunk = 37
    with torch.no_grad():
        chunked = r(cams, "textureless")
    for name in ("rgb", "opacity", "depth", "normal"):
        assert torch.allclose(getattr(full, name), getattr(chunked, name), atol=1e-5), name
    assert not chunked.rgb.requires_grad


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_cuda_backend_on_cpu_names_the_problem():
    r = VolumeRenderer(VolumeRendererConfig(backend="cuda"), sphere(1.0, 0.5), Background(), ShadingConfig())
    with pytest.raises(ThreedError, match="CUDA"):
        r(front_camera(4))


def test_nerfacc_parity_on_cuda():
    """nerfacc's marcher (fixed step) and the torch path (stratified per ray) agree on a smooth field."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("nerfacc")
    cams = front_camera(32, distance=2.75).to("cuda")
    fast = renderer(gaussian_blob(), num_samples=256).cuda().eval()
    slow = renderer(gaussian_blob(), num_samples=256).cuda().eval()
    fast.cfg.backend = "cuda"
    a, b = fast(cams, "textureless"), slow(cams, "textureless")
    # different quadratures of the same integral; 256 samples over a chord <= 2: ~1% differences
    assert (a.opacity - b.opacity).abs().mean() < 0.01
    assert (a.rgb - b.rgb).abs().mean() < 0.01
