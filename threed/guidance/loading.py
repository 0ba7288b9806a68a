"""Model loading: a hub id, a local folder or a short name -> the frozen components of a diffusers folder.

A prior is a diffusers folder: ``model_index.json`` plus one subfolder per component. It is given as
a hub id (fetched into the Hugging Face cache unless offline), a local path, or a short name of a
prior that ships inside the package (``toyworld``). Every component is loaded with its own class's
``from_pretrained`` (no pipeline class, no remote code), in float16 on CUDA and float32 elsewhere,
picking the ``fp16`` variant when a folder holds only that. Every failure is a :class:`ThreedError`
that names the path or id it looked for and how to get the weights.

:class:`PriorCache` holds what a run (or a worker that serves many runs) has loaded, so a recipe
whose stages share a prior loads it once, and dropping the cache frees it.
"""

from __future__ import annotations

import hashlib
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

EXAMPLE_ID = "stabilityai/stable-diffusion-2-1-base"
"""The hub id error messages suggest for a text-to-image prior."""

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


def _from_hub(repo_id: str, components: Sequence[str], key: str, allow_bin: bool) -> Path:
    """The local snapshot of a hub repo (its ``components``): from the HF cache, else downloaded unless offline.
    ``allow_bin`` also fetches PyTorch ``.bin`` weights (repos converted before safetensors ship only those)."""
    from huggingface_hub import snapshot_download

    allow = ["model_index.json"] + [f"{c}/*" for c in components]
    ignore = ["*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ot", "*fp16*", "*non_ema*"]
    ignore += [] if allow_bin else ["*.bin"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow))
    except Exception:
        pass
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    local = f"If you meant a local folder, {Path(repo_id).resolve()} does not exist. Otherwise "
    if offline:
        raise ThreedError(f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                          + local + _download_hint(repo_id, key))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ThreedError(f"model {repo_id!r} is not in the local Hugging Face cache and could not be downloaded "
                          f"({type(exc).__name__}: {reason}). " + local + _download_hint(repo_id, key)) from exc


def resolve_model(model: str, aliases: dict[str, str], components: Sequence[str], key: str = "model",
                  example: str = EXAMPLE_ID, allow_bin: bool = False) -> Path:
    """The diffusers folder for a short name, local path or hub id (raising an actionable ThreedError).

    ``aliases`` maps short names to folders under :data:`PACKAGE_ROOT`; ``components`` are the subfolders
    fetched from the hub; ``key`` (the recipe key that names the model) and ``example`` word the errors.
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
        return _from_hub(model, components, key, allow_bin)
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


def _weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when a component folder only holds fp16-variant weights, else None."""
    names = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if ".fp16" not in n]
    return "fp16" if names and not plain else None


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
    if not name.startswith(("tokenizer", "scheduler", "feature_extractor")):
        if variant := _weights_variant(folder / name):
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
