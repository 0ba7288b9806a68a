"""Editing a finished asset (``threed edit``): the DDS and PDS rules in closed form, and the edit run end to end on
the toy prior -- it starts from the source's checkpoint, records where it came from, never changes the source,
and refuses bad input without leaving a run directory behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from small_recipes import TINY_QUICKSTART
from threed.api import Run, edit, generate
from threed.cameras import Cameras
from threed.checkpoint import Checkpoint
from threed.cli import main
from threed.commands import Edit, parse
from threed.config import to_dict
from threed.errors import ThreedError
from threed.files import exclusive_lock
from threed.guidance.prior import load_prior
from threed.guidance.rules.dds import DDS, DDSConfig
from threed.guidance.rules.pds import PDS, PDSConfig
from threed.guidance.rules.sds import SDS, SDSConfig
from threed.guidance.text import PromptProcessor
from threed.recipe import load_recipe
from threed.render.output import RenderOut
from threed.run import RunLayout
from tiny_models import KnownDenoiser, with_unet

CAMS = Cameras.orbit(elevation=[0, 10], azimuth=[30, 150], distance=3.0, fovy_deg=40, height=16)
T = torch.tensor([30, 700])


@pytest.fixture
def stub_prior(tiny_if_dir):
    """A 16 px pixel prior whose noise prediction is known: eps = 0.5 x_t + mean(y) + t / 1000."""
    return with_unet(load_prior(str(tiny_if_dir), "cpu"), KnownDenoiser(3, 16, learned_variance=True))


def _render(seed: int) -> RenderOut:
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return RenderOut(rgb=rgb, opacity=torch.ones(2, 16, 16, 1), depth=torch.ones(2, 16, 16, 1))


def _grad(rule, out: RenderOut, noise: torch.Tensor, source: RenderOut | None = None) -> torch.Tensor:
    rule(out, CAMS, source=source, t=T, noise=noise).loss.backward()
    assert out.rgb.grad is not None
    return out.rgb.grad


def test_dds_is_the_difference_of_two_sds_residuals_at_the_same_noise_and_t(stub_prior):
    target, source, noise = _render(1), _render(2), torch.randn(2, 3, 16, 16)
    prompts = PromptProcessor(stub_prior, "a blue chair")
    dds = _grad(DDS(DDSConfig(guidance_scale=7.5, source_prompt="a red chair"), stub_prior, prompts), target, noise,
                RenderOut(rgb=source.rgb.detach(), opacity=source.opacity, depth=source.depth))
    sds_target = _grad(SDS(SDSConfig(guidance_scale=7.5), stub_prior, prompts), _render(1), noise)
    sds_source = _grad(SDS(SDSConfig(guidance_scale=7.5), stub_prior, prompts.with_prompt("a red chair")), source,
                       noise)
    torch.testing.assert_close(dds, sds_target - sds_source, rtol=1e-5, atol=1e-6)  # the -eps terms cancel
    assert dds.abs().sum() > 0


@pytest.mark.parametrize("rule,config", [(DDS, DDSConfig), (PDS, PDSConfig)])
def test_an_editing_rule_is_zero_while_the_edit_equals_the_original_under_the_same_prompt(stub_prior, rule, config):
    out = _render(1)
    same = RenderOut(rgb=out.rgb.detach().clone(), opacity=out.opacity, depth=out.depth)
    guidance = rule(config(guidance_scale=7.5, source_prompt="a red chair"), stub_prior,
                    PromptProcessor(stub_prior, "a red chair"), torch.Generator().manual_seed(0))
    assert _grad(guidance, out, torch.randn(2, 3, 16, 16), same).abs().max() == 0


def test_pds_matches_the_stochastic_latents_of_the_two_posteriors(stub_prior):
    target, source, noise = _render(1), _render(2), torch.randn(2, 3, 16, 16)
    prompts = PromptProcessor(stub_prior, "a blue chair")
    pds = PDS(PDSConfig(guidance_scale=7.5, source_prompt="a red chair"), stub_prior, prompts,
              torch.Generator().manual_seed(5))
    grad = _grad(pds, target, noise, RenderOut(rgb=source.rgb.detach(), opacity=source.opacity, depth=source.depth))
    noise_prev = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # the rule's second draw
    ab = stub_prior.alphas_cumprod
    a, a_prev = ab[T].view(-1, 1, 1, 1), ab[T - 1].view(-1, 1, 1, 1)
    alpha, beta = a / a_prev, 1 - a / a_prev

    def z(rgb, prompt):
        x0 = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond, uncond = prompts.with_prompt(prompt).embeddings(CAMS)
        e_c, e_u = (KnownDenoiser.formula(x_t, T.float(), e) for e in (cond, uncond))
        x0_hat = (x_t - (1 - a).sqrt() * (e_u + 7.5 * (e_c - e_u))) / a.sqrt()
        mean = a_prev.sqrt() * beta / (1 - a) * x0_hat + alpha.sqrt() * (1 - a_prev) / (1 - a) * x_t
        std = ((1 - a_prev) / (1 - a) * beta).sqrt()
        return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise_prev - mean) / std

    residual = z(target.rgb, "a blue chair") - z(source.rgb, "a red chair")
    torch.testing.assert_close(grad.permute(0, 3, 1, 2), (1 - a) * residual, rtol=1e-4, atol=1e-4)  # 2 w r / B


def test_pds_with_shared_noises_is_dds_with_its_own_timestep_weight(stub_prior):
    """x_{t-1} - mu is linear in x0 with coefficient 0, so only the predictions' difference is left:
    r_PDS = k(t) r_DDS, k = c0 sqrt(1 - abar_t) / (sqrt(abar_t) sigma_t)."""
    noise, prompts = torch.randn(2, 3, 16, 16), PromptProcessor(stub_prior, "a blue chair")
    grads = []
    for rule, config in ((DDS, DDSConfig), (PDS, PDSConfig)):
        target, source = _render(1), _render(2)
        guidance = rule(config(guidance_scale=7.5, source_prompt="a red chair", weighting="sds"), stub_prior, prompts,
                        torch.Generator().manual_seed(3))
        grads.append(_grad(guidance, target, noise, RenderOut(rgb=source.rgb.detach(), opacity=source.opacity,
                                                               depth=source.depth)))
    ab = stub_prior.alphas_cumprod
    a, a_prev = ab[T].view(-1, 1, 1, 1), ab[T - 1].view(-1, 1, 1, 1)
    beta = 1 - a / a_prev
    k = a_prev.sqrt() * beta / (1 - a) * (1 - a).sqrt() / a.sqrt() / ((1 - a_prev) / (1 - a) * beta).sqrt()
    expected = k.view(-1, 1, 1, 1) * grads[0]
    # float32: PDS forms the difference from terms ~1/sigma_t larger than the result, which cancel.
    torch.testing.assert_close(grads[1], expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_an_editing_rule_without_the_original_or_its_prompt_is_a_clear_error(stub_prior):
    prompts = PromptProcessor(stub_prior, "a red chair")
    with pytest.raises(ThreedError, match="source_prompt"):
        DDS(DDSConfig(), stub_prior, prompts)
    with pytest.raises(ThreedError, match="threed edit"):
        DDS(DDSConfig(source_prompt="a red chair"), stub_prior, prompts)(_render(1), CAMS)


# --------------------------------------------------------------------------- the edit run


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


EDIT = {"stages.0.steps": 2, "stages.0.val_every": 2, "stages.0.ckpt_every": 2}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A finished 4-step toy run of "a red cube"."""
    out = tmp_path_factory.mktemp("edit") / "red"
    generate("a red cube", out=out, overrides=TINY_QUICKSTART)
    return out


@pytest.mark.parametrize("rule", ["dds", "pds", "sds"])
def test_an_edit_starts_from_the_source_checkpoint_and_records_it_leaving_the_source_as_it_was(
        source_run, tmp_path, rule):
    before = _hashes(source_run)
    run = edit(source_run, "a blue cube", rule=rule, out=tmp_path / "blue", overrides=EDIT)
    assert _hashes(source_run) == before
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["prompt"] == "a blue cube" and cfg["stages"][0]["guidance"][0]["kind"] == rule
    assert cfg["stages"][0]["scene"]["background"]["kind"] == "solid"
    assert cfg["stages"][0]["loss"]["preserve"] == {"rgb": 0.0, "opacity": 1000.0}  # the silhouette is held
    source_ckpt = source_run / "stages" / "0-coarse" / "last.pt"
    origin = {"run": str(source_run.resolve()), "prompt": "a red cube", "stage": "coarse", "step": 4,
              "checkpoint": str(source_ckpt.resolve()), "sha256": hashlib.sha256(source_ckpt.read_bytes()).hexdigest()}
    assert cfg["edit"] == origin
    assert json.loads((run.path / "export" / "export.json").read_text())["edit"] == origin
    assert (run.path / "source.pt").read_bytes() == source_ckpt.read_bytes()
    if rule != "sds":
        assert cfg["stages"][0]["guidance"][0]["source_prompt"] == "a red cube"
    ckpt = Checkpoint.load(run.path / "stages" / "0-edit" / "last.pt")
    assert ckpt.step == 2 and ckpt.scene_kind == "nerf"


def test_an_edit_at_step_zero_is_the_source_asset(source_run, tmp_path):
    """The first stage loads the source's weights: with no step taken, the edit renders as the original."""
    run = edit(source_run, "a blue cube", out=tmp_path / "same", overrides={"stages.0.steps": 0})
    original, edited = Run.load(source_run).render(frames=2, size=16), run.render(frames=2, size=16)
    assert (original == edited).all()


def test_an_edit_with_the_preservation_term_runs_and_resumes(source_run, tmp_path):
    run = edit(source_run, "a blue cube", out=tmp_path / "kept",
               overrides={**EDIT, "stages.0.loss.preserve.rgb": 1.0, "stages.0.loss.preserve.opacity": 1.0})
    run.resume({"stages.0.steps": 3})  # resumes from its own copy of the source (source.pt)
    assert Checkpoint.load(run.path / "stages" / "0-edit" / "last.pt").step == 3


def test_the_preservation_term_and_editing_rules_need_an_edit(tmp_path):
    with pytest.raises(ThreedError, match="threed edit"):
        generate("a red cube", out=tmp_path / "x", overrides={**TINY_QUICKSTART, "stages.0.loss.preserve.rgb": 1.0})
    with pytest.raises(ThreedError, match="threed edit"):
        generate("a red cube", out=tmp_path / "y",
                 overrides={**TINY_QUICKSTART, "stages.0.guidance": [{"kind": "dds", "source_prompt": "a red cube"}]})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bad_input_is_a_clear_error_and_writes_nothing(source_run, tmp_path):
    out = tmp_path / "new"
    (tmp_path / "plain").mkdir()
    cases = [(tmp_path / "missing", "a blue cube", "does not exist"),
             (tmp_path / "plain", "a blue cube", "not a threed run"),
             (source_run, "  ", "prompt is empty"),
             (source_run, "a pink cube", "pink")]
    for run_dir, prompt, message in cases:
        with pytest.raises(ThreedError, match=message):
            edit(run_dir, prompt, out=out, overrides=EDIT)
        assert not out.exists()
    with pytest.raises(ThreedError, match="source_prompt"):
        edit(source_run, "a blue cube", source_prompt="", out=out, overrides=EDIT)
    assert not out.exists()


def test_an_unfinished_or_locked_source_is_refused(source_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    generate("a red cube", out=unfinished, overrides={**TINY_QUICKSTART, "max_steps": 2})
    last = unfinished / "stages" / "0-coarse" / "last.pt"
    ckpt = Checkpoint.load(last)
    ckpt.total_steps = 4  # as if it had stopped at step 2 of 4
    ckpt.save(last)
    with pytest.raises(ThreedError, match="unfinished.*step 2 of 4.*--resume"):
        edit(unfinished, "a blue cube", out=tmp_path / "a", overrides=EDIT)
    before = _hashes(source_run)
    with exclusive_lock(RunLayout(source_run).lock, "threed generate"):
        with pytest.raises(ThreedError, match="in use"):
            edit(source_run, "a blue cube", out=tmp_path / "b", overrides=EDIT)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    after = _hashes(source_run)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_the_command_line_edits(source_run, tmp_path, capsys):
    request = parse(["edit", str(source_run), "a blue cube", "--rule", "pds", "--out", str(tmp_path / "cli"),
                     "stages.0.steps=1"])
    assert request == Edit(items=[str(source_run), "a blue cube", "stages.0.steps=1"], rule="pds",
                           out=str(tmp_path / "cli"))
    assert parse(request.argv()) == request
    assert main(request.argv()) == 0
    assert "glb:" in capsys.readouterr().out
    assert main(["edit", str(source_run)]) == 2
    assert "give the run and the new prompt" in capsys.readouterr().err


@pytest.mark.parametrize("stages,kind", [(slice(0, 1), "gaussian"), (slice(0, 2), "dmtet")],
                         ids=["gaussians", "gaussians-then-dmtet"])
def test_an_edit_starts_from_any_representation(tmp_path, stages, kind):
    """The gaussian recipe cut to its Gaussian stage, and whole (its last stage a DMTet texture stage)."""
    cfg = to_dict(load_recipe("gaussian"))
    cfg["stages"] = cfg["stages"][stages]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    source = tmp_path / "source"
    generate("a red cube", recipe=str(recipe), out=source,
             overrides=["max_steps=2", "stages.*.render_size=16", "stages.*.val_every=0", "export.video=false",
                        "export.views=0", "export.grid_size=24", "export.texture=vertex", "export.formats=[glb]"]
             + (["stages.1.scene.init_grid_size=24", "stages.1.scene.geometry.grid_size=12"] if kind == "dmtet" else []))
    before = _hashes(source)
    run = edit(source, "a blue cube", out=tmp_path / "blue", overrides=EDIT)
    assert _hashes(source) == before
    ckpt = Checkpoint.load(run.path / "stages" / "0-edit" / "last.pt")
    original = Checkpoint.load(source / "stages" / f"{len(cfg['stages']) - 1}-{cfg['stages'][-1]['name']}" / "last.pt")
    assert ckpt.scene_kind == original.scene_kind == kind and ckpt.step == 2
    assert ckpt.scene_config == original.scene_config | {"background": ckpt.scene_config["background"],
                                                          "shading": ckpt.scene_config["shading"]}
