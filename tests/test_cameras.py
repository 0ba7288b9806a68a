"""The world/camera convention of threed.cameras, pinned down."""

import math

import pytest
import torch

from threed.cameras import Cameras, CameraSampler, CameraSamplerConfig


def test_azimuth_zero_is_front_on_plus_z_looking_at_origin():
    cam = Cameras.orbit(0.0, 0.0, 3.0, 40.0, 9)
    assert torch.allclose(cam.position[0], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)
    _, dirs = cam.rays()
    centre = dirs[0, 4, 4]  # odd size: pixel (4, 4) is exactly the image centre
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_positive_azimuth_moves_camera_toward_plus_x_and_elevation_up():
    cam = Cameras.orbit([0.0, 90.0], [90.0, 0.0], 2.0, 40.0, 8)
    assert torch.allclose(cam.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(cam.position[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-5)
    assert torch.isfinite(cam.c2w).all()  # straight overhead has no degenerate frame


def test_render_is_not_mirrored():
    """From the front, world +X appears on the image's right and world +Y at the top."""
    cam = Cameras.orbit(0.0, 0.0, 3.0, 40.0, 32)
    px, depth = cam.world_to_pixels(torch.tensor([[[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]]))
    assert px[0, 0, 0] > 16 and abs(px[0, 0, 1] - 16) < 1e-4   # +X right of centre, same row
    assert px[0, 1, 1] < 16 and abs(px[0, 1, 0] - 16) < 1e-4   # +Y above centre (smaller row)
    assert torch.allclose(depth, torch.tensor([[3.0, 3.0]]))


def test_rays_and_projection_agree():
    """A point along a pixel's ray projects back onto that pixel's centre (any aspect ratio)."""
    cam = Cameras.orbit(20.0, 37.0, 2.5, 45.0, 12, 20)
    origins, dirs = cam.rays()
    assert origins.shape == dirs.shape == (1, 12, 20, 3)
    point = origins[0, 3, 17] + 1.7 * dirs[0, 3, 17]
    px, _ = cam.world_to_pixels(point[None, None])
    assert torch.allclose(px[0, 0], torch.tensor([17.5, 3.5]), atol=1e-3)


def test_fov_matches_focal_length():
    cam = Cameras.orbit(0.0, 0.0, 3.0, 60.0, 64)
    _, dirs = cam.rays()
    top = dirs[0, 0, 32]  # top edge pixel (half a pixel inside the frustum)
    angle = math.degrees(math.atan2(top[1].item(), -top[2].item()))
    assert angle == pytest.approx(30.0 * (1 - 0.5 / 32), abs=0.2)  # tan is ~linear over half a pixel


@pytest.mark.parametrize("az,label", [(0, "front"), (30, "front"), (-44, "front"), (90, "side"), (-100, "side"),
                                      (180, "back"), (-150, "back"), (540, "back")])
def test_view_labels(az, label):
    assert Cameras.orbit(10.0, az, 3.0, 40.0, 4).view_labels() == [label]


def test_overhead_label():
    assert Cameras.orbit(75.0, 0.0, 3.0, 40.0, 4).view_labels() == ["overhead"]


def test_sampler_ranges_and_seed():
    cfg = CameraSamplerConfig(elevation_range=(0.0, 30.0), distance_range=(2.0, 2.5), fovy_range=(40.0, 50.0),
                              batch_size=64)
    sampler = CameraSampler(cfg)
    a = sampler.sample(16, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.c2w, b.c2w)
    assert a.elevation.min() >= 0 and a.elevation.max() <= 30
    assert a.distance.min() >= 2 and a.distance.max() <= 2.5
    assert torch.rad2deg(a.fovy).min() >= 40 - 1e-4 and torch.rad2deg(a.fovy).max() <= 50 + 1e-4
    # stratified azimuth covers the circle: every 45-degree sector gets cameras
    sectors = torch.floor((a.azimuth + 180) / 45).long()
    assert len(sectors.unique()) == 8
    # lights stay within the configured angle of the camera direction
    cos = torch.nn.functional.cosine_similarity(a.light, a.position, dim=-1)
    assert (cos >= math.cos(math.radians(cfg.light_jitter_deg)) - 1e-5).all()


def test_turntable_starts_at_front_and_turns():
    cams = CameraSampler().turntable(4, 8)
    assert cams.view_labels() == ["front", "side", "back", "side"]
    assert cams.position[1, 0] > 0  # second frame: azimuth 90, camera on +X
