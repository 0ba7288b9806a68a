"""``threed doctor``: what this machine has for threed, and whether a recipe can run here.

It reports torch and its CUDA build, the device, which CUDA fast path imports (tiny-cuda-nn, nerfacc,
nvdiffrast, gsplat) and why one does not, the Hugging Face cache and which priors the shipped recipes name
are in it, the text-embedding cache's size and the free disk. With a recipe it also checks what that recipe
needs: the device it asks for, the fast paths it insists on (``backend: cuda``), its priors (present, or
downloadable: not offline, not withdrawn, a login for gated ones), and the packages its priors and rules
need (sentencepiece and protobuf for DeepFloyd IF, peft for VSD). Each problem says what to do, and any
problem makes the exit status non-zero. Nothing is downloaded and nothing is loaded onto the GPU.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threed.backends import FastPath, import_error
from threed.errors import ThreedError

GATED_PREFIXES = ("DeepFloyd/", "stabilityai/stable-diffusion-3")
"""Hub repositories that need a login and an accepted license before they download."""


@dataclass
class Finding:
    """One line of the report; ``problem`` lines say what to do and fail the check."""

    topic: str
    text: str
    problem: bool = False


@dataclass
class Report:
    """What ``threed doctor`` found: the machine, then (with a recipe) what the recipe needs."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, topic: str, text: str, problem: bool = False) -> None:
        self.findings.append(Finding(topic, text, problem))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    def text(self) -> str:
        width = max((len(f.topic) for f in self.findings), default=0)
        lines = [f"{f.topic:<{width}}  {'PROBLEM: ' if f.problem else ''}{f.text}" for f in self.findings]
        return "\n".join(lines)


def fast_paths() -> list[FastPath]:
    """The four CUDA fast paths, as the kernels that use them declare them."""
    from threed.geometry.encoding import TCNN
    from threed.render.raster import NVDIFFRAST
    from threed.render.splat import GSPLAT
    from threed.render.volume import NERFACC

    return [TCNN, NERFACC, NVDIFFRAST, GSPLAT]


def _size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_machine(report: Report) -> None:
    """torch, CUDA, the fast paths, the caches and the disk."""
    import torch
    from huggingface_hub import constants

    from threed.guidance.cache import cache_root
    from threed.guidance.loading import offline

    cuda = torch.cuda.is_available()
    report.add("torch", f"{torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only wheel)'}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        report.add("device", f"cuda:0 {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                             f"{props.major}.{props.minor} ({torch.cuda.device_count()} visible)")
    else:
        report.add("device", f"CPU only ({os.cpu_count()} cores): the real priors need a CUDA GPU in practice; "
                             "the toy-world recipes run here")
    for fast in fast_paths():
        error = import_error(fast.module)
        if error is None:
            state = "imports" + ("" if cuda else ", unused without a CUDA device")
        else:
            state = f"not used: {error} (install: {fast.install})"
        report.add("fast path", f"{fast.what} ({fast.module}): {state}")
    hub = Path(constants.HF_HUB_CACHE)
    n, size = _size(hub)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    report.add("hub cache", f"{hub}: {n} files, {_gb(size)}; {'offline (HF_HUB_OFFLINE)' if offline() else endpoint}")
    for model, recipes in known_priors().items():
        report.add("prior", f"{model} ({', '.join(recipes)}): {prior_status(model)[0]}")
    emb = cache_root() / "text_embeddings"
    n, size = _size(emb)
    report.add("embeddings", f"{emb}: {n} cached prompts, {_gb(size)}")
    seen: set[int] = set()
    for what, path in (("hub cache", hub), ("embedding cache", cache_root()), ("outputs", Path.cwd())):
        path = _existing(path)
        if path.stat().st_dev in seen:  # one line per file system
            continue
        seen.add(path.stat().st_dev)
        usage = shutil.disk_usage(path)
        report.add("disk", f"{_gb(usage.free)} free of {_gb(usage.total)} at {path} ({what})")


def _models(cfg: Any) -> Iterator[tuple[str, str]]:
    """(prior kind, model) of every guidance of a recipe config, as the stage resolves them."""
    from threed.guidance.registry import rule_of

    for stage in cfg.stages:
        for g in stage.guidance:
            kind = rule_of(g).prior_kind
            name = g.model or (cfg.image_model if kind == "view" else stage.model or cfg.model)
            if name:
                yield kind, name


def known_priors() -> dict[str, list[str]]:
    """Every prior a shipped recipe names -> those recipes (plus the withdrawn ids the mirrors replace)."""
    from threed.guidance.loading import WITHDRAWN
    from threed.recipe import load_recipe
    from threed.recipes import available_recipes

    found: dict[str, list[str]] = {}
    for name in available_recipes():
        for _, model in _models(load_recipe(name)):
            if name not in found.setdefault(model, []):
                found[model].append(name)
    for old in WITHDRAWN:
        found.setdefault(old, ["withdrawn, accepted when cached"])
    return found


def prior_status(model: str) -> tuple[str, Path | None, str]:
    """How ``model`` would resolve here, without downloading: (state, local folder or None, what to do when it
    cannot be resolved, else "")."""
    import huggingface_hub

    from threed.guidance.loading import PACKAGE_ROOT, WITHDRAWN, _looks_like_hub_id, offline
    from threed.guidance.multiview import MULTIVIEW_ALIASES
    from threed.guidance.prior import PRIOR_ALIASES
    from threed.guidance.zero123 import VIEW_PRIOR_ALIASES

    aliases = {**PRIOR_ALIASES, **VIEW_PRIOR_ALIASES, **MULTIVIEW_ALIASES}
    if model in aliases:
        folder = PACKAGE_ROOT / aliases[model]
        if folder.is_dir():
            return "embedded in the package", folder, ""
        return f"missing from the package ({folder})", None, "reinstall threed"
    path = Path(model).expanduser()
    if path.exists() or not _looks_like_hub_id(model):
        if path.is_dir():
            return f"local folder {path}", path, ""
        return f"no such folder {path.resolve()}", None, "give a diffusers folder or a hub id"
    cached = huggingface_hub.try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return "in the local hub cache", Path(cached).parent, ""
    state = "not in the local hub cache"
    if model in WITHDRAWN:
        return state, None, f"Stability AI withdrew it: pass model={WITHDRAWN[model]} (the same weights)"
    if offline():
        return state, None, f"HF_HUB_OFFLINE is set: download it first (`hf download {model}`) or unset it"
    if model.startswith(GATED_PREFIXES) and huggingface_hub.get_token() is None:
        return state + " (gated)", None, "accept its license on huggingface.co and `hf auth login` first"
    return state + " (downloads on first use)", None, ""


def _dataclass_fields(obj: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, owning config, value) of every field under a config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield f"{path}{f.name}", obj, value
            yield from _dataclass_fields(value, f"{path}{f.name}.")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _dataclass_fields(item, f"{path}{i}.")


def check_recipe(report: Report, recipe: str, overrides: Sequence[str] = ()) -> None:
    """What ``recipe`` (name or path, with ``KEY=VALUE`` overrides) needs, and whether this machine has it."""
    import torch

    from threed.guidance.loading import is_sentencepiece_tokenizer, missing_modules, missing_sentencepiece

    try:
        from threed.recipe import load_recipe

        cfg = load_recipe(recipe, list(overrides))
    except ThreedError as exc:
        report.add("recipe", f"{recipe} does not load: {exc}", problem=True)
        return
    topic = f"recipe {recipe}"
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        report.add(topic, "asks for device=cuda and torch sees no CUDA device: run it on a GPU machine (a CUDA "
                          "build of torch, `nvidia-smi` working) or pass device=cpu", problem=True)
    owners = {"threed.geometry.encoding": 0, "threed.render.volume": 1, "threed.render.raster": 2,
              "threed.render.splat": 3}
    paths = fast_paths()
    for where, owner, value in _dataclass_fields(cfg):
        if where.endswith(".backend") and value == "cuda":
            fast = paths[owners[type(owner).__module__]] if type(owner).__module__ in owners else None
            if not cuda:
                report.add(topic, f"{where}=cuda needs a CUDA device: run on a GPU or set {where}=auto", problem=True)
            elif fast is not None and (why := import_error(fast.module)):
                report.add(topic, f"{where}=cuda needs {fast.module} ({why}): {fast.install}, or set {where}=auto",
                           problem=True)
    rules = {type(g).__name__ for stage in cfg.stages for g in stage.guidance}
    if "VSDConfig" in rules and missing_modules(["peft"]):
        report.add(topic, "VSD needs peft, which does not import: pip install peft", problem=True)
    real = False
    for _, model in dict.fromkeys(_models(cfg)):
        state, folder, fix = prior_status(model)
        real = real or model != "toyworld"
        tokenizer = folder / "tokenizer" if folder is not None else None
        sentencepiece = model.startswith("DeepFloyd/") if tokenizer is None else is_sentencepiece_tokenizer(tokenizer)
        missing = missing_sentencepiece() if sentencepiece else []
        if missing and not fix:
            fix = (f"its sentencepiece tokenizer needs {' and '.join(missing)}: "
                   'pip install "threed[if]"')
        report.add(topic, f"prior {model}: {state}" + (f"; {fix}" if fix else ""), problem=bool(fix))
    if real and not cuda and cfg.device != "cuda":
        report.add(topic, "runs on the CPU here: a real prior at these resolutions takes hours to days; "
                          "fine for a smoke run with max_steps=2")
    if not report.problems:
        report.add(topic, "can run here")


def run(recipe: str | None = None, overrides: Sequence[str] = ()) -> tuple[int, str]:
    """(exit status, report text): 1 when the recipe cannot run here, else 0."""
    report = Report()
    check_machine(report)
    if recipe is not None:
        check_recipe(report, recipe, overrides)
    return (1 if report.problems else 0), report.text()
