"""The mesh rasterizer against hand computations: coverage, ray intersections, occlusion, silhouette gradients."""

import math

import pytest
import torch
import trimesh
from torch import nn

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.geometry.mesh import Mesh
from threed.render.background import Background, BackgroundConfig
from threed.render.raster import (
    MeshRenderer,
    MeshRendererConfig,
    antialias,
    edge_opposites,
    interpolate,
    NVDIFFRAST,
    project,
    rasterize,
    render_mesh,
)
from type_checks import refused

FRONT = dict(elevation=0.0, azimuth=0.0, distance=3.0, fovy_deg=40.0)
"""Camera on +Z at distance 3 looking toward -Z: world +X is image-right, +Y image-up."""
ONE = torch.tensor([[0, 1, 2]])


def pixel_area(pixels: torch.Tensor) -> float:
    a, b, c = pixels
    return 0.5 * abs(float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])))


def min_angle_deg(p: torch.Tensor) -> float:
    angles = []
    for k in range(3):
        e1, e2 = p[(k + 1) % 3] - p[k], p[(k + 2) % 3] - p[k]
        angles.append(math.degrees(math.acos(float(e1 @ e2 / (e1.norm() * e2.norm())))))
    return min(angles)


def well_shaped_triangles(n: int, seed: int, cams: Cameras):
    """Random triangles inside the view whose projected angles are all >= 20 degrees (no slivers)."""
    g = torch.Generator().manual_seed(seed)
    while n:
        v = torch.rand(3, 3, generator=g) * 1.6 - 0.8
        v[:, 2] = torch.rand(3, generator=g) - 0.5
        pix = project(v[None], cams)[0][0]
        if min_angle_deg(pix) >= 20.0:
            n -= 1
            yield v, pix


def ray_triangle(o: torch.Tensor, d: torch.Tensor, v: torch.Tensor):
    """Möller-Trumbore: distance t and barycentrics (w0, w1, w2) of the hit of ray o + t d with triangle v."""
    e1, e2 = v[1] - v[0], v[2] - v[0]
    p = torch.linalg.cross(d, e2.expand_as(d), dim=-1)
    det = (e1 * p).sum(-1)
    s = o - v[0]
    u = (s * p).sum(-1) / det
    q = torch.linalg.cross(s, e1.expand_as(s), dim=-1)
    w = (d * q).sum(-1) / det
    t = (e2 * q).sum(-1) / det
    return t, torch.stack([1 - u - w, u, w], dim=-1)


def test_single_triangle_coverage_matches_area():
    """Antialiased coverage sums to the projected area within a pixel's worth (hard coverage is far off)."""
    cams = Cameras.orbit(**FRONT, height=64)
    errors, hard_errors = [], []
    for v, pix in well_shaped_triangles(25, seed=1, cams=cams):
        frags = rasterize(v, ONE, cams)
        mask = frags.covered.float()[..., None]
        area = pixel_area(pix)
        errors.append(float(antialias(mask, frags).sum()) - area)
        hard_errors.append(float(mask.sum()) - area)
    # Each of the three corners can lose up to about half a pixel where no pixel-centre pair straddles
    # the edge near the tip; straight edges are exact up to float error.
    assert max(abs(e) for e in errors) < 1.5, errors
    assert sum(abs(e) for e in errors) / len(errors) < 0.6, errors
    assert sum(abs(e) for e in hard_errors) > 2 * sum(abs(e) for e in errors)


def test_barycentrics_and_depth_match_ray_intersection():
    """Perspective-correct barycentrics and depth equal the ray-triangle intersection at every pixel centre."""
    cams = Cameras.orbit(**FRONT, height=48)
    v = torch.tensor([[-0.6, -0.5, 0.3], [0.7, -0.4, -0.4], [0.0, 0.6, 0.1]])  # tilted: perspective matters
    frags = rasterize(v, ONE, cams)
    o, d = cams.rays()
    t, bary = ray_triangle(o[0], d[0], v)
    inside = (bary >= 1e-3).all(-1)
    edge = ((bary > -1e-3).all(-1)) & ~inside
    covered = frags.covered[0]
    assert inside.sum() > 300
    assert torch.equal(covered & ~edge, inside)  # pixel centres on an edge may go either way
    torch.testing.assert_close(frags.bary[0][inside], bary[inside], atol=2e-5, rtol=0)
    # The z-buffer depth is the view-axis depth: the camera looks down -Z from z = 3.
    hit = o[0] + t[..., None] * d[0]
    torch.testing.assert_close(frags.zbuf[0][inside], 3.0 - hit[..., 2][inside], atol=1e-5, rtol=0)
    positions = interpolate(v, frags)[0]
    torch.testing.assert_close(positions[inside], hit[inside], atol=1e-5, rtol=0)
    assert (positions[~covered] == 0).all()
    out = render_mesh(Mesh(v, ONE), cams, cfg=MeshRendererConfig(antialias=False))
    torch.testing.assert_close(out.depth[0, ..., 0][inside], t[inside], atol=1e-5, rtol=0)
    normal = torch.nn.functional.normalize(torch.linalg.cross(v[1] - v[0], v[2] - v[0], dim=0), dim=0)
    torch.testing.assert_close(out.normal[0][inside], normal.expand(int(inside.sum()), 3), atol=1e-5, rtol=0)


def test_image_orientation_follows_camera_convention():
    """At azimuth 0, world +X lands right of centre and +Y above (row 0 is the top)."""
    cams = Cameras.orbit(**FRONT, height=32)
    pix, depth, _ = project(torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]]), cams)
    assert pix[0, 0, 0] > 16 and abs(pix[0, 0, 1] - 16) < 1e-4
    assert pix[0, 1, 1] < 16 and abs(pix[0, 1, 0] - 16) < 1e-4
    torch.testing.assert_close(pix[0, 2], torch.tensor([16.0, 16.0]))
    torch.testing.assert_close(depth[0], torch.tensor([3.0, 3.0, 3.0]))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_zbuffer_keeps_the_nearer_of_two_overlapping_triangles(order):
    cams = Cameras.orbit(**FRONT, height=32)
    near = torch.tensor([[-0.8, -0.6, 0.3], [0.6, -0.6, 0.3], [0.0, 0.7, 0.3]])
    far = torch.tensor([[-0.5, -0.8, -0.3], [0.9, -0.2, -0.3], [-0.3, 0.8, -0.3]])
    verts = torch.cat([near, far])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])[list(order)]
    colors = torch.tensor([[1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 1.0]] * 3)
    frags = rasterize(verts, faces, cams)
    near_id = order.index(0)
    centre = frags.face_id[0, 14:18, 14:18]
    assert (centre == near_id).all()
    torch.testing.assert_close(frags.zbuf[0, 14:18, 14:18], torch.full((4, 4), 2.7), atol=1e-5, rtol=0)
    # Where only the far triangle is seen, it is seen.
    only_far = (frags.face_id[0] == 1 - near_id)
    assert only_far.sum() > 5
    out = render_mesh(Mesh(verts, faces, colors), cams, Background(BackgroundConfig(color=(0.0, 1.0, 0.0))))
    torch.testing.assert_close(out.rgb[0, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    # Antialiasing blends the occluding edge into its neighbours by at most half a pixel's worth.
    seen_far = out.rgb[0][only_far & (out.opacity[0, ..., 0] == 1)]
    assert (seen_far[:, 2] >= seen_far[:, 0]).all() and (seen_far[:, 1] < 1e-6).all()
    assert (seen_far[:, 2] > 0.99).sum() > len(seen_far) / 2


def test_chunking_does_not_change_the_result():
    mesh = Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=2, radius=0.7))
    cams = Cameras.orbit([10.0, 40.0], [20.0, 200.0], 2.5, 40.0, 40)
    whole = rasterize(mesh.vertices, mesh.faces, cams)
    chunked = rasterize(mesh.vertices, mesh.faces, cams, max_pairs=50)
    assert torch.equal(whole.face_id, chunked.face_id)
    torch.testing.assert_close(whole.bary, chunked.bary)


def test_sphere_render_matches_ray_sphere_intersection():
    """An off-centre icosphere: silhouette, distance and normals agree with the analytic sphere."""
    centre, r = torch.tensor([0.3, 0.2, -0.1]), 0.6
    tm = trimesh.creation.icosphere(subdivisions=4, radius=r)
    tm.apply_translation(centre.numpy())
    mesh = Mesh.from_trimesh(tm)
    cams = Cameras.orbit([0.0, 30.0], [0.0, 120.0], 2.75, 40.0, 64)
    out = render_mesh(mesh, cams, Background(), "lambertian")
    assert out.rgb.shape == (2, 64, 64, 3) and out.opacity.shape == (2, 64, 64, 1)
    o, d = cams.rays()
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + r * r
    hit = disc > 0
    mask = out.opacity[..., 0] > 0.5
    iou = (mask & hit).sum() / (mask | hit).sum()
    assert iou > 0.97
    t = -b - disc.clamp(min=0).sqrt()
    normal = torch.nn.functional.normalize(o + t[..., None] * d - centre, dim=-1)
    # Away from grazing angles (where a tiny radial offset is a long way along the ray), the flat faces
    # sit within r (1 - cos(half a face's angular size)) ~ 0.1 % of r of the sphere.
    solid = (out.opacity[..., 0] == 1) & hit & ((normal * d).sum(-1) < -0.5)
    assert solid.sum() > 1000
    assert (out.depth[..., 0][solid] - t[solid]).abs().max() < 0.005
    assert ((out.normal[solid] * normal[solid]).sum(-1) > 0.995).all()
    # Lit from the camera side: the sphere is brighter than the ambient term wherever it faces the light.
    assert out.rgb[solid].min() >= 0.5 * 0.3 - 1e-6


def test_gradients_reach_vertices_through_the_silhouette():
    """Opacity alone (no colour, no depth) moves every vertex; Adam fits a triangle to a target mask."""
    cams = Cameras.orbit(**FRONT, height=32)
    target_v = torch.tensor([[-0.6, -0.5, 0.0], [0.7, -0.3, 0.0], [0.0, 0.6, 0.0]])
    with torch.no_grad():
        frags = rasterize(target_v, ONE, cams)
        target = antialias(frags.covered.float()[..., None], frags)
    v = (target_v + torch.tensor([[0.15, -0.1, 0.0], [-0.1, 0.12, 0.0], [0.1, 0.1, 0.0]])).requires_grad_(True)

    def loss_of(v):
        frags = rasterize(v, ONE, cams)
        return (antialias(frags.covered.float()[..., None], frags) - target).square().sum()

    loss_of(v).backward()
    assert (v.grad[:, :2].abs().sum(-1) > 1e-3).all()
    opt = torch.optim.Adam([v], lr=0.01)
    start = float(loss_of(v).detach())
    for _ in range(120):
        opt.zero_grad()
        loss = loss_of(v)
        loss.backward()
        opt.step()
    assert float(loss_of(v).detach()) < 0.05 * start
    assert (v.detach() - target_v)[:, :2].norm(dim=-1).max() < 0.05  # about half a pixel at this zoom


def test_mesh_renderer_uses_geometry_mesh_and_albedo_field():
    class Ball(nn.Module):
        def __init__(self):
            super().__init__()
            tm = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
            self.vertices = nn.Parameter(torch.as_tensor(tm.vertices, dtype=torch.float32))
            self.register_buffer("faces", torch.as_tensor(tm.faces))
            self.tint = nn.Parameter(torch.tensor([0.2, 0.4, 0.6]))

        def mesh(self):
            return Mesh(self.vertices, self.faces)

        def albedo(self, points):
            return self.tint.expand(points.shape[0], 3)

    ball = Ball()
    renderer = MeshRenderer(MeshRendererConfig(), ball, Background(BackgroundConfig(color=(1.0, 1.0, 1.0))))
    cams = Cameras.orbit([0.0, 20.0, 45.0], [0.0, 90.0, 200.0], 2.5, 40.0, 24)
    out = renderer(cams, "albedo")
    torch.testing.assert_close(out.rgb[:, 12, 12], ball.tint.detach().expand(3, 3))
    torch.testing.assert_close(out.rgb[:, 0, 0], torch.ones(3, 3))
    (out.rgb.mean() + out.depth.mean()).backward()
    assert ball.vertices.grad.abs().sum() > 0 and ball.tint.grad.abs().sum() > 0
    # a trainable surface carries its smoothness regulariser (an icosphere's faces meet at about 14 degrees)
    assert out.normal_consistency is not None and 0.01 < float(out.normal_consistency) < 0.05
    assert renderer.eval()(cams, "albedo").normal_consistency is None


def test_per_camera_vertices_and_batch_shapes():
    cams = Cameras.orbit(0.0, [0.0, 90.0], 3.0, 40.0, 16, 24)
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    per_camera = torch.stack([v, v + torch.tensor([0.2, 0.0, 0.0])])
    frags = rasterize(per_camera, ONE, cams)
    assert frags.face_id.shape == (2, 16, 24) and frags.bary.shape == (2, 16, 24, 3)
    assert interpolate(torch.rand(2, 3, 5), frags).shape == (2, 16, 24, 5)
    # The second camera looks along -X at a triangle in the z = 0 plane: edge-on, nothing covered.
    assert frags.covered[0].sum() > 0 and frags.covered[1].sum() == 0


def test_edge_opposites_of_a_tetrahedron_and_a_boundary():
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 3, 2], [0, 2, 3]])
    opp = edge_opposites(faces)
    assert (opp >= 0).all()
    # Edge opposite vertex 0 of face 0 is (1, 2); the face across it is [1, 3, 2], whose other vertex is 3.
    assert opp[0, 0] == 3 and opp[0, 1] == 3 and opp[0, 2] == 3
    assert (edge_opposites(torch.tensor([[0, 1, 2]])) == -1).all()


def test_bad_input_is_reported():
    cams = Cameras.orbit(**FRONT, height=8)
    v = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="faces index vertices out of range"):
        rasterize(v, torch.tensor([[0, 1, 3]]), cams)
    with pytest.raises(ValueError, match="B x V x 3"):
        rasterize(torch.zeros(4, 3, 3), ONE, cams)
    with refused("integer"):
        rasterize(v, ONE.float(), cams)
    with refused("unknown rasterizer backend"):
        rasterize(v, ONE, cams, backend="opengl")
    with refused("shading mode"):
        render_mesh(Mesh(v, ONE), cams, shading="phong")
    if not torch.cuda.is_available():
        with pytest.raises(ThreedError, match="needs a CUDA device"):
            rasterize(v, ONE, cams, backend="cuda")


needs_nvdiffrast = pytest.mark.skipif(not (torch.cuda.is_available() and NVDIFFRAST.available()),
                                      reason="nvdiffrast parity needs CUDA and nvdiffrast")


@needs_nvdiffrast
def test_torch_path_matches_nvdiffrast():
    """Same faces, barycentrics, antialiased image and vertex gradients on both paths."""
    tm = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    mesh = Mesh.from_trimesh(tm, device="cuda")
    cams = Cameras.orbit([10.0, 35.0], [30.0, 250.0], 2.6, 40.0, 64).to("cuda")
    colors = torch.rand(len(mesh.vertices), 3, device="cuda")
    results = {}
    for backend in ("torch", "cuda"):
        v = mesh.vertices.clone().requires_grad_(True)
        frags = rasterize(v, mesh.faces, cams, backend=backend)
        image = antialias(interpolate(colors, frags), frags)
        image.square().sum().backward()
        results[backend] = frags, image.detach(), v.grad
    (ft, it, gt), (fc, ic, gc) = results["torch"], results["cuda"]
    # Pixel centres exactly on an edge may be given to either neighbour (different tie rules).
    same = ft.face_id == fc.face_id
    assert same.float().mean() > 0.995
    torch.testing.assert_close(ft.bary[same], fc.bary[same], atol=1e-4, rtol=0)  # float32 edge functions
    assert (it - ic).abs().mean() < 1e-3
    cosine = torch.nn.functional.cosine_similarity(gt.flatten(), gc.flatten(), dim=0)
    assert cosine > 0.99
