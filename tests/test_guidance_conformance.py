"""Every registered guidance rule meets the same contract, on every kind of prior it takes (tiny random models
through the real loading path): it builds from its config through the registry, returns a finite scalar loss and
float terms, its gradient reaches the render (and only the render and its own state), and its checkpoint state
round-trips. Per-rule closed-form checks live in test_sds.py, test_guidance_rules.py, test_zero123.py and
test_flow.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threed.cameras import Cameras
from threed.guidance.build import GuidanceInputs, build_guidance
from threed.guidance.loading import PriorCache
from threed.guidance.registry import GUIDANCES
from threed.reference.image import ReferenceViewConfig
from threed.render.output import RenderOut

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "red-cube.png"

PRIORS = {
    "text": ["tiny_sd_dir", "tiny_sd_v_dir", "tiny_toy_dir", "tiny_if_dir"],
    "view": ["tiny_zero123_dir", "tiny_toy_zero123_dir"],
    "flow": ["tiny_sd3_dir"],
    "multiview": ["tiny_toy_mv_dir", "tiny_mvdream_dir"],
}
"""Every tiny prior layout of each ``prior_kind``: latent and pixel, epsilon and v, learned variance."""

TINY = {"nfsd": {"negative_prompt": "a blue dog"}, "csd": {"negative_prompt": "a blue dog"},
        "sds_bridge": {"source_suffix": ", small"}, "ism": {"inversion_steps": 2}, "sdi": {"inversion_steps": 2},
        "rfds": {"resolution": None}, "dds": {"source_prompt": "a blue chair"}, "pds": {"source_prompt": "a blue chair"}}
"""Settings a rule needs on the tiny models: prompts in their few words, fewer inversion steps, the native size."""



def rule(kind: str):
    return GUIDANCES.implementation(GUIDANCES.config(kind)())


def cameras(kind: str, size: int) -> Cameras:
    """Two views at different elevations; a multi-view rule gets whole objects instead (4 views at one elevation,
    90 degrees apart: one object of a 4-view prior, two of a 2-view one)."""
    if rule(kind).prior_kind == "multiview":
        return Cameras.orbit(elevation=[15.0] * 4, azimuth=[20, 110, 200, 290], distance=3.0, fovy_deg=40, height=size)
    return Cameras.orbit(elevation=[0, 30], azimuth=[20, 200], distance=3.0, fovy_deg=40, height=size)


CASES = [(kind, layout) for kind in GUIDANCES.kinds() for layout in PRIORS[rule(kind).prior_kind]]


@pytest.fixture(scope="module")
def priors() -> PriorCache:
    return PriorCache()


@pytest.mark.parametrize("kind,layout", CASES, ids=[f"{k}-{layout.removeprefix('tiny_').removesuffix('_dir')}"
                                                    for k, layout in CASES])
def test_every_rule_runs_on_every_prior_it_takes(kind, layout, request, priors):
    cfg = GUIDANCES.config(kind)(**TINY.get(kind, {}))
    inputs = GuidanceInputs(device=torch.device("cpu"), priors=priors, prompt="a red chair", model=None,
                            image=str(EXAMPLE), view=ReferenceViewConfig(resolution=16),
                            generator=torch.Generator().manual_seed(0))
    model = str(request.getfixturevalue(layout))
    inputs.model = inputs.image_model = model
    guidance = build_guidance(cfg, inputs)
    assert type(guidance) is GUIDANCES.implementation(cfg) and guidance.prior.name == model
    guidance.update(1, 4)
    cams = cameras(kind, 20)
    n = len(cams)
    rgb = torch.rand(n, 20, 20, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)  # resized
    ones = torch.ones(n, 20, 20, 1)
    source = RenderOut(rgb=torch.rand(n, 20, 20, 3, generator=torch.Generator().manual_seed(2)), opacity=ones,
                       depth=ones)  # the original asset's render, which editing rules compare with (others ignore it)
    result = guidance(RenderOut(rgb=rgb, opacity=ones, depth=ones), cams, source=source)
    assert result.loss.shape == () and torch.isfinite(result.loss)
    assert {"t", "t_max", "w", "grad_norm"} <= set(result.terms)
    assert all(isinstance(v, float) and v == v for v in result.terms.values())
    result.loss.backward()
    assert rgb.grad.shape == rgb.shape and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    own = {id(p) for group in guidance.parameter_groups() for p in group["params"]}
    frozen = [p for p in guidance.prior.__dict__.values() if isinstance(p, torch.nn.Module)]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters() if id(p) not in own)
    assert all(p.grad is not None for group in guidance.parameter_groups() for p in group["params"])
    state = guidance.state_dict()
    build_guidance(cfg, inputs).load_state_dict(state)  # a fresh copy takes its checkpoint state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", GUIDANCES.kinds())
def test_every_rule_moves_to_cuda_in_half_precision(kind, request):
    layout = PRIORS[rule(kind).prior_kind][0]
    model = str(request.getfixturevalue(layout))
    inputs = GuidanceInputs(device=torch.device("cuda"), prompt="a red chair", model=model, image_model=model,
                            image=str(EXAMPLE), view=ReferenceViewConfig(resolution=16))
    guidance = build_guidance(GUIDANCES.config(kind)(**TINY.get(kind, {})), inputs)
    assert guidance.prior.dtype == torch.float16
    cams = cameras(kind, 16).to("cuda")
    rgb = torch.rand(len(cams), 16, 16, 3, device="cuda", requires_grad=True)
    source = RenderOut(rgb=rgb.detach().flip(1), opacity=rgb[..., :1].detach(), depth=rgb[..., :1].detach())
    guidance(RenderOut(rgb=rgb, opacity=rgb[..., :1], depth=rgb[..., :1]), cams, source=source).loss.backward()
    assert rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()


def test_every_rule_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "guidance.md").read_text()
    assert [kind for kind in GUIDANCES.kinds() if f"`{kind}`" not in doc] == []
