"""The text-embedding cache: a prompt's embedding is computed once per text encoder, kept in memory, and on disk.

Encoding a prompt is cheap next to a training step, but a run encodes its view prompts at every
start, and a batch of jobs encodes the same prompts over and over; large encoders (T5-XXL) take
seconds. An :class:`EmbeddingCache` belongs to one prior's text side: its ``key`` names the encoder
(the model folder and the sizes and times of its tokenizer and encoder files, so retrained weights
miss), the token length and the dtype. Files live in ``cache_root()/text_embeddings`` and are
written atomically (:func:`threed.files.save_torch_atomic`), so concurrent runs never leave a torn file; an unreadable file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from threed.files import save_torch_atomic

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$THREED_CACHE``, else ``$XDG_CACHE_HOME/threed``, else ``~/.cache/threed``."""
    if os.environ.get("THREED_CACHE"):
        return Path(os.environ["THREED_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "threed"


class EmbeddingCache:
    """Embeddings of one text encoder by prompt: in memory, and (when ``key`` is given) on disk.

    ``name`` (the model's name) only makes the file names readable; ``key`` identifies the encoder,
    None keeps the cache in memory (a prior no one could load again, e.g. a test's stand-in).
    """

    def __init__(self, name: str, key: str | None, root: Path | None = None):
        self.key = key
        self.root = (root or cache_root()) / "text_embeddings"
        self._slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[-40:] or "model"
        self._memory: dict[str, Tensor] = {}

    def path(self, prompt: str) -> Path:
        """The file of ``prompt``'s embedding."""
        digest = hashlib.sha256(json.dumps([self.key, prompt]).encode()).hexdigest()[:32]
        return self.root / f"{self._slug}-{digest}.pt"

    def get(self, prompt: str) -> Tensor | None:
        """The cached embedding of ``prompt`` (CPU, float32), from memory or disk; None when absent."""
        if prompt in self._memory:
            return self._memory[prompt]
        if self.key is None or not (path := self.path(prompt)).exists():
            return None
        try:
            emb = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or foreign file: recompute and overwrite
            log.warning("ignoring unreadable text-embedding cache %s: %s", path, exc)
            return None
        self._memory[prompt] = emb
        return emb

    def put(self, prompt: str, emb: Tensor) -> None:
        """Keep ``emb`` for ``prompt``; a disk that cannot be written is a warning, never an error."""
        self._memory[prompt] = emb
        if self.key is None:
            return
        try:
            save_torch_atomic(emb, self.path(prompt))
        except OSError as exc:
            log.warning("cannot write the text-embedding cache under %s: %s", self.root, exc)
