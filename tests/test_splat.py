"""Gaussian splatting: the analytic single-Gaussian image, tiled vs dense parity, gradients, gsplat parity."""

import math

import pytest
import torch

from threed.cameras import Cameras
from threed.config import build
from threed.render.splat import SplatRendererConfig, splat
from threed.scene import GaussianSceneConfig, Scene
from splat_reference import dense_splat


def random_gaussians(n: int, seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Anisotropic, rotated Gaussians of mixed opacity inside the unit ball."""
    g = torch.Generator().manual_seed(seed)
    params = {"means": (torch.rand(n, 3, generator=g) - 0.5) * 1.2,
              "quats": torch.randn(n, 4, generator=g),
              "log_scales": math.log(0.04) + 0.5 * torch.randn(n, 3, generator=g),
              "opacity_logits": 2.0 * torch.randn(n, generator=g),
              "colors": torch.rand(n, 3, generator=g)}
    return {k: v.requires_grad_(requires_grad) for k, v in params.items()}


def render(params, cameras, fn, **kwargs):
    features = params["colors"][None].expand(len(cameras), -1, -1)
    out = fn(params["means"], params["quats"], params["log_scales"].exp(), torch.sigmoid(params["opacity_logits"]),
             features, cameras, **kwargs)
    return (out.features, out.depth, out.alpha) if hasattr(out, "features") else out


def test_a_single_isotropic_gaussian_renders_the_analytic_2d_gaussian():
    """At the image centre the projection is exact: sigma_px = f s / d, plus the 0.3 px^2 low-pass."""
    s, d, opacity, colour = 0.05, 2.5, 0.8, torch.tensor([0.2, 0.6, 0.9])
    cams = Cameras.orbit(0.0, 0.0, d, 40.0, 64)
    means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    out = splat(means, quats, torch.full((1, 3), s), torch.tensor([opacity]), colour.view(1, 1, 3), cams)
    f = float(cams.focal[0])
    var = (f * s / d) ** 2 + 0.3
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r2 = (rows + 0.5 - 32.0) ** 2 + (cols + 0.5 - 32.0) ** 2
    alpha = (opacity * torch.exp(-0.5 * r2 / var)).clamp(max=0.99)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out.alpha[0, ..., 0], alpha, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.features[0], alpha[..., None] * colour, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.depth[0, ..., 0], alpha * d, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_tiled_splatting_matches_the_dense_reference(tile_size):
    """Values and gradients of every input agree with every-Gaussian-every-pixel compositing.

    Tolerance: both drop exactly the alpha < 1/255 contributions, so the only difference is the order of
    float32 operations (log-sum vs cumprod transmittance, blockwise sums): 1e-5 absolute on [0, 1] images,
    and 1e-4 relative on gradients, which sum thousands of such terms.
    """
    params = random_gaussians(400, requires_grad=True)
    cams = Cameras.orbit([10.0, 50.0], [0.0, 130.0], 2.6, 40.0, 36, 44)  # not a multiple of the tile size
    cfg = SplatRendererConfig(tile_size=tile_size, max_evaluations=20_000)  # several tile batches
    weights = [torch.rand(2, 36, 44, c, generator=torch.Generator().manual_seed(c)) for c in (3, 1, 1)]

    def values_and_grads(fn, **kw):
        outs = render(params, cams, fn, cfg=cfg, **kw)
        loss = sum((w * o).sum() for w, o in zip(weights, outs))
        grads = torch.autograd.grad(loss, list(params.values()))
        return [o.detach() for o in outs], grads

    tiled, tiled_grads = values_and_grads(splat)
    dense, dense_grads = values_and_grads(dense_splat)
    assert float(dense[2].amax()) > 0.9 and float((dense[2] > 0.01).float().mean()) > 0.2  # a real scene
    for a, b in zip(tiled, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(params, tiled_grads, dense_grads):
        assert float(b.abs().sum()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4, msg=name)


def test_gradients_reach_every_gaussian_parameter_through_the_scene():
    cfg = build(GaussianSceneConfig, {"geometry": {"count": 300}, "background": {"kind": "mlp"}})
    torch.manual_seed(0)
    scene = Scene(cfg).train()
    cams = Cameras.orbit([15.0, 30.0], [0.0, 200.0], 2.75, 40.0, 32)
    out = scene(cams, "lambertian")
    assert out.rgb.shape == (2, 32, 32, 3) and out.opacity.shape == out.depth.shape == (2, 32, 32, 1)
    assert out.normal.shape == (2, 32, 32, 3)
    (out.rgb.mean() + out.depth.mean() + out.normal.square().mean()).backward()
    for name, p in scene.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_empty_pixels_show_the_background_and_depth_is_distance_along_the_ray():
    cfg = build(GaussianSceneConfig, {"geometry": {"count": 50, "init_radius": 0.2},
                                      "background": {"kind": "solid", "color": [0.1, 0.2, 0.3]}})
    torch.manual_seed(0)
    scene = Scene(cfg).eval()
    cams = Cameras.orbit(20.0, 45.0, 2.75, 40.0, 48)
    out = scene.render_eval(cams, "albedo")
    empty = out.opacity[..., 0] < 1e-6
    assert empty.float().mean() > 0.5
    torch.testing.assert_close(out.rgb[empty], torch.tensor([0.1, 0.2, 0.3]).expand(int(empty.sum()), 3))
    covered = out.opacity[..., 0] > 0.5
    distance = out.depth[covered] / out.opacity[covered]
    assert float((distance - 2.75).abs().max()) < 0.35  # the Gaussians lie within 0.2 + 3 sigma of the origin


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA device")
def test_gsplat_matches_the_torch_path_on_cuda():
    """Values and gradients of gsplat's CUDA rasterizer against the torch tiles on the same Gaussians.

    Tolerance: gsplat stops compositing a pixel once transmittance falls below 1e-4 and bounds each
    footprint by 3 sigma where we use the exact 1/255 ellipse, so pixels differ by up to ~1e-3; gradients
    are compared by cosine similarity, which those pixels barely move.
    """
    pytest.importorskip("gsplat")
    params = {k: v.detach().cuda().requires_grad_(True) for k, v in random_gaussians(2000).items()}
    cams = Cameras.orbit([10.0, 50.0], [0.0, 130.0], 2.6, 40.0, 64).to("cuda")
    results = []
    for backend in ("torch", "cuda"):
        outs = render(params, cams, splat, cfg=SplatRendererConfig(backend=backend))
        loss = sum(o.square().sum() for o in outs)
        results.append(([o.detach() for o in outs], torch.autograd.grad(loss, list(params.values()))))
    (ref, ref_grads), (fast, fast_grads) = results
    for a, b in zip(fast, ref):
        assert float((a - b).abs().mean()) < 1e-3 and float((a - b).abs().max()) < 0.05
    for name, a, b in zip(params, fast_grads, ref_grads):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))
