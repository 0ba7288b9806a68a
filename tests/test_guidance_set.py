"""Several guidances per stage: configured as a list (a single mapping is a list of one), summed with their weights,
each checkpointed on its own, resumed exactly; overrides reach into the list; the registry behind config loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
import yaml

from small_recipes import small
from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.config import Registry, build, to_dict
from threed.errors import ThreedError
from threed.guidance.combined import GuidanceSet
from threed.guidance.prior import load_prior
from threed.guidance.registry import GUIDANCES
from threed.guidance.rules.sds import SDS, SDSConfig
from threed.guidance.rules.vsd import VSD, VSDConfig
from threed.guidance.rules.zero123 import Zero123Config
from threed.guidance.text import PromptProcessor
from threed.recipe import load_recipe
from threed.render.output import RenderOut
from threed.stage import RunContext, Stage, StageConfig

CAMS = Cameras.orbit(elevation=[0, 10], azimuth=[30, 150], distance=3.0, fovy_deg=40, height=16)


def test_a_single_mapping_is_a_list_of_one_and_a_list_keeps_order_and_weights():
    one = build(StageConfig, {"guidance": {"kind": "nfsd", "guidance_scale": 5}})
    assert [type(g) for g in one.guidance] == [GUIDANCES.config("nfsd")] and one.guidance[0].guidance_scale == 5
    assert [type(g) for g in build(StageConfig, {"guidance": {}}).guidance] == [SDSConfig]  # kind defaults to sds
    two = build(StageConfig, {"guidance": [{"kind": "sds"}, {"kind": "zero123", "weight": 40}]})
    assert [(g.kind, g.weight) for g in two.guidance] == [("sds", 1.0), ("zero123", 40.0)]
    assert isinstance(two.guidance[1], Zero123Config)
    with pytest.raises(ThreedError, match=r"unknown guidance kind 'sdx' at 'guidance\[1\]'; choose one of: .*sds"):
        build(StageConfig, {"guidance": [{"kind": "sds"}, {"kind": "sdx"}]})
    with pytest.raises(ThreedError, match=r"guidance\[0\]\.lora_rank"):  # another kind's key is an unknown key
        build(StageConfig, {"guidance": [{"kind": "sds", "lora_rank": 2}]})
    assert build(StageConfig, to_dict(two)).guidance == two.guidance  # what a run directory saves loads back


def test_overrides_reach_into_a_guidance_list(tmp_path):
    cfg = load_recipe("magic123", ["stages.0.guidance.1.weight=20", "stages.*.guidance.*.t_min=0.05"])
    assert [(g.weight, g.t_min) for g in cfg.stages[0].guidance] == [(1.0, 0.05), (20.0, 0.05)]
    assert cfg.stages[1].guidance[1].t_min == 0.05
    with pytest.raises(ThreedError, match=r"stages\.0\.guidance has 2 entries.*stages\.0\.guidance\.\*"):
        load_recipe("magic123", ["stages.0.guidance.guidance_scale=5"])
    with pytest.raises(ThreedError, match=r"stages\.0\.guidance has 2 entries \(use stages\.0\.guidance\.0"):
        load_recipe("magic123", ["stages.0.guidance.2.weight=5"])
    # A run directory saves a single guidance as a list of one: the plain key still edits it.
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(to_dict(load_recipe("quickstart"))))
    (g,) = load_recipe(str(saved), ["stages.0.guidance.guidance_scale=7"]).stages[0].guidance
    assert g.kind == "sds" and g.guidance_scale == 7
    replaced = load_recipe("quickstart", ["stages.0.guidance=[{kind: sds}, {kind: csd, weight: 0.5}]"])
    assert [(g.kind, g.weight) for g in replaced.stages[0].guidance] == [("sds", 1.0), ("csd", 0.5)]


def _render(seed: int = 0) -> RenderOut:
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return RenderOut(rgb=rgb, opacity=torch.ones(2, 16, 16, 1), depth=torch.ones(2, 16, 16, 1))


def test_the_loss_is_the_weighted_sum_and_terms_are_labelled(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    prompts = PromptProcessor(prior, "a red cube")

    def member(scale):
        return SDS(SDSConfig(guidance_scale=scale), prior, prompts, generator=torch.Generator().manual_seed(3))

    both = GuidanceSet([(2.0, member(10.0)), (0.5, member(20.0))])
    assert both.labels == ["sds0", "sds1"]
    out = both(_render(), CAMS)
    alone = [member(10.0)(_render(), CAMS), member(20.0)(_render(), CAMS)]  # the same draws, one at a time
    torch.testing.assert_close(out.loss, 2.0 * alone[0].loss + 0.5 * alone[1].loss, rtol=1e-6, atol=0)
    assert out.terms["sds0.grad_norm"] == alone[0].terms["grad_norm"] and out.terms["sds1"] == pytest.approx(
        0.5 * float(alone[1].loss.detach()))
    single = GuidanceSet([(1.0, member(10.0))])
    assert set(single(_render(), CAMS).terms) == set(alone[0].terms)  # one guidance: its terms as they are
    skipped = GuidanceSet([(0.0, member(10.0)), (1.0, member(20.0))])(_render(), CAMS)
    assert "sds0.t" not in skipped.terms and "sds1.t" in skipped.terms  # weight 0 is not run


def test_each_guidance_keeps_its_own_state_and_an_old_single_state_is_the_first(tiny_toy_dir):
    prior = load_prior(str(tiny_toy_dir), "cpu")
    prompts = PromptProcessor(prior, "a red cube")
    guidances = GuidanceSet([(1.0, VSD(VSDConfig(lora_rank=2), prior, prompts)), (1.0, SDS(SDSConfig(), prior, prompts)),
                             (0.5, VSD(VSDConfig(lora_rank=2), prior, prompts))])
    with torch.no_grad():
        for i, g in enumerate((guidances[0], guidances[2])):
            for p in g.lora.adapter_parameters():
                p.fill_(0.01 * (i + 1))
    state = guidances.state_dict()
    assert set(state) == {"0", "1", "2"} and state["1"] == {} and set(state["0"]) == set(state["2"]) == {"lora"}
    fresh = GuidanceSet([(1.0, VSD(VSDConfig(lora_rank=2), prior, prompts)), (1.0, SDS(SDSConfig(), prior, prompts)),
                         (0.5, VSD(VSDConfig(lora_rank=2), prior, prompts))])
    fresh.load_state_dict(state)
    assert all(torch.equal(p, q) for i in (0, 2) for p, q in zip(fresh[i].lora.adapter_parameters(),
                                                                    guidances[i].lora.adapter_parameters()))
    assert not torch.equal(fresh[0].lora.adapter_parameters()[0], fresh[2].lora.adapter_parameters()[0])
    legacy = GuidanceSet([(1.0, VSD(VSDConfig(lora_rank=2), prior, prompts))])
    legacy.load_state_dict(state["0"])  # a checkpoint from before guidance lists: {"lora": ...}
    assert torch.equal(legacy[0].lora.adapter_parameters()[0], guidances[0].lora.adapter_parameters()[0])
    with pytest.raises(ThreedError, match="another guidance list"):
        legacy.load_state_dict(state)


def test_a_stage_of_two_lora_guidances_resumes_exactly(tiny_toy_dir, tmp_path):
    """Two VSD guidances, each with its own LoRA: 2 steps, stop, resume to 4 = 4 steps straight."""
    two = "stages.0.guidance=[{kind: vsd, lora_rank: 2}, {kind: vsd, lora_rank: 2, weight: 0.5, guidance_scale: 3}]"
    args = ["a red cube", "--recipe", "quickstart", f"model={tiny_toy_dir}", *small("quickstart"), two]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["generate", *args, "--out", str(straight), "max_steps=4"]) == 0
    assert main(["generate", *args, "--out", str(resumed), "max_steps=2"]) == 0
    assert main(["generate", "--resume", str(resumed), "max_steps=4"]) == 0
    a, b = (Checkpoint.load(run / "stages" / "0-coarse" / "last.pt") for run in (straight, resumed))
    assert a.step == b.step == 4 and set(a.guidance) == {"0", "1"}
    for key in a.scene:
        assert torch.equal(a.scene[key], b.scene[key]), key
    for i in ("0", "1"):
        for key in a.guidance[i]["lora"]:
            assert torch.equal(a.guidance[i]["lora"][key], b.guidance[i]["lora"][key]), (i, key)
    key = next(iter(a.guidance["0"]["lora"]))
    assert not torch.equal(a.guidance["0"]["lora"][key], a.guidance["1"]["lora"][key])  # two models, trained apart


def test_every_guidance_of_a_stage_draws_from_the_stages_own_generator(tiny_toy_dir, tmp_path):
    """The timesteps and noise of all a stage's guidances come from one generator of the stage (saved in its
    checkpoints as rng["guidance"]): draws from torch's global generator, the renderer's, do not move them."""
    two = "stages.0.guidance=[{kind: sds}, {kind: sds, weight: 0.5, guidance_scale: 3}]"
    cfg = load_recipe("quickstart", [f"model={tiny_toy_dir}", *small("quickstart"), two], prompt="a red cube")
    ctx = RunContext(prompt="a red cube", model=str(tiny_toy_dir), device=torch.device("cpu"), seed=0, max_steps=3,
                     run_dir=tmp_path)

    def timesteps(disturb: bool) -> list[float]:
        stage = Stage(cfg.stages[0], ctx, 0)
        tr, _ = stage.setup()
        assert all(g.generator is tr.noise for g in tr.guidance)
        drawn = []
        for _ in range(3):
            if disturb:
                torch.rand(1000)  # a renderer that samples more points this step
            drawn += [v for k, v in stage.train_step(tr)[1].terms.items() if k.endswith(".t")]
        return drawn

    undisturbed = timesteps(False)
    assert len(undisturbed) == 6 and undisturbed == timesteps(True)


def test_a_registry_refuses_configs_without_a_kind_and_duplicates():
    registry = Registry("widget", default="a", package="threed.guidance.rules")

    @dataclass
    class NoKind:
        size: int = 1

    @dataclass
    class A:
        kind: Literal["a"] = "a"

    with pytest.raises(TypeError, match="kind"):
        registry.register(NoKind, object)
    registry.register(A, object)

    @dataclass
    class AlsoA:
        kind: Literal["a"] = "a"

    with pytest.raises(TypeError, match="twice"):
        registry.register(AlsoA, object)
