"""Text conditioning: prompts -> embeddings (vocabulary checks, cache), and the view-dependent prompt per camera.

:class:`TextEncoder` is the text side of a prior: every prompt is checked against the tokenizers'
vocabularies first (a word a tokenizer can only map to its unknown token is an error that names it),
then encoded once and kept in an :class:`~threed.guidance.cache.EmbeddingCache`. The empty prompt is
allowed: it is the unconditional prompt of classifier-free guidance.

:class:`PromptProcessor` is the text :class:`~threed.guidance.conditioning.Conditioner`. DreamFusion
(Poole et al. 2022, sec. 3.2) appends "front view", "side view", "back view" or "overhead view" to the
prompt according to the camera's azimuth and elevation, so the 2D prior is asked for the view the
camera actually sees and the object does not grow a face on every side.

Two refinements from Perp-Neg (Armandpour et al. 2023, sec. 5), each switchable per recipe:

* ``view_interpolation``: the embedding moves continuously with the azimuth, linearly from the
  front prompt (0 deg) to the side prompt (90 deg) to the back prompt (180 deg), instead of jumping
  between labels.
* ``perp_neg``: every camera also gets two negative prompts - the views it should *not* look like -
  whose weights grow with the camera's angular distance from them; :meth:`Denoiser.guide
  <threed.guidance.core.Denoiser.guide>` removes only their component perpendicular to the positive
  direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras, ViewLabel
from threed.errors import ThreedError
from threed.guidance.cache import EmbeddingCache
from threed.guidance.conditioning import Conditioning

VIEW_LABELS: tuple[ViewLabel, ...] = ("front", "side", "back", "overhead")

MAX_TEXT_TOKENS = 77
"""Both CLIP (SD) and IF's T5 were trained on 77-token prompts."""


def token_limit(tokenizer: Any, encoder: Any, longest: int = MAX_TEXT_TOKENS) -> int:
    """The prompt length an encoder was trained on: ``longest``, capped by the tokenizer and position table."""
    return int(min(longest, getattr(tokenizer, "model_max_length", longest),
                   getattr(getattr(encoder, "config", None), "max_position_embeddings", longest)))


class TextEncoder:
    """Mixin: the text side of a prior. Subclasses set :attr:`text_cache` and give :attr:`tokenizers` and
    :meth:`_embed`; they read ``name``, ``device`` and ``dtype`` from the prior."""

    text_cache: EmbeddingCache

    @property
    def tokenizers(self) -> list[Any]:
        """Every tokenizer a prompt goes through (each is checked for unknown words)."""
        raise NotImplementedError

    def _embed(self, prompts: list[str]) -> Float[Tensor, "B L D"]:
        """The encoder's embedding of each (checked) prompt, without the cache."""
        raise NotImplementedError

    def preprocess_prompt(self, prompt: str) -> str:
        """The prompt as the model's own pipeline hands it to the tokenizer (unchanged unless a prior says)."""
        return prompt

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` that a tokenizer can only map to its unknown token."""
        words = [(m.start(), m.end()) for m in re.finditer(r"[^\s,.;:!?]+", prompt)]  # "dragon," names "dragon"
        found: list[str] = []
        for tokenizer in self.tokenizers:
            unk = getattr(tokenizer, "unk_token_id", None)
            if unk is None:
                continue
            try:
                enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
                spans = [s for i, s in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
            except NotImplementedError:  # a slow tokenizer: no offsets, test word by word
                spans = [(a, b) for a, b in words if unk in tokenizer(prompt[a:b], add_special_tokens=False)["input_ids"]]
            for start, end in spans:
                word = next((prompt[a:b] for a, b in words if a <= start < b), prompt[start:end])
                if word not in found:
                    found.append(word)
        return found

    def _vocabulary_hint(self) -> str:
        for tokenizer in self.tokenizers:
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is not None and type(backend.model).__name__ == "WordLevel" and len(tokenizer) < 2000:
                special = set(tokenizer.all_special_tokens)
                return f"; it knows: {', '.join(sorted(w for w in tokenizer.get_vocab() if w not in special))}"
        return ""

    def check_prompt(self, prompt: str) -> None:
        """Raise :class:`ThreedError` naming the words this prior's tokenizers do not know."""
        unknown = self.unknown_words(prompt)
        if unknown:
            raise ThreedError(f"the prompt {prompt!r} has word(s) that model {self.name!r} does not know: "
                              f"{', '.join(repr(w) for w in unknown)}{self._vocabulary_hint()}")

    def encode_text(self, prompts: list[str]) -> Float[Tensor, "B L D"]:
        """Text embeddings for each prompt, cached in memory and on disk (model + prompt).

        Every prompt goes through :meth:`preprocess_prompt` (IF: lower-cased) and is checked against the
        vocabulary first. The empty string is allowed: it is the unconditional prompt of classifier-free guidance.
        """
        prompts = [self.preprocess_prompt(p) for p in prompts]
        todo = [p for p in dict.fromkeys(prompts) if self.text_cache.get(p) is None]
        for p in todo:
            self.check_prompt(p)
        if todo:
            with torch.no_grad():
                embs = self._embed(todo).float().cpu()
            for p, e in zip(todo, embs):
                self.text_cache.put(p, e[None].clone())
        return torch.cat([self.text_cache.get(p) for p in prompts]).to(self.device, self.dtype)


@dataclass
class PromptConfig:
    """How the prompt becomes text embeddings for each view."""

    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance ("" = truly unconditional)."""
    view_dependent: bool = True
    """Append a view suffix chosen from each camera's angles (DreamFusion's view-dependent prompting)."""
    front_suffix: str = ", front view"
    """Suffix for cameras within ``front_half_angle`` of azimuth 0."""
    side_suffix: str = ", side view"
    """Suffix for cameras that are neither front, back nor overhead."""
    back_suffix: str = ", back view"
    """Suffix for cameras within ``back_half_angle`` of azimuth 180."""
    overhead_suffix: str = ", overhead view"
    """Suffix for cameras above ``overhead_elevation``."""
    front_half_angle: float = 45.0
    """Half-width in degrees of the azimuth range labelled front."""
    back_half_angle: float = 45.0
    """Half-width in degrees of the azimuth range labelled back."""
    overhead_elevation: float = 60.0
    """Elevation in degrees above which a camera is labelled overhead."""
    view_interpolation: bool = False
    """Interpolate the front/side/back prompt embeddings linearly in azimuth (0/90/180 deg) instead of
    picking the label's; overhead cameras keep the overhead prompt. Needs view_dependent."""
    perp_neg: bool = False
    """Perp-Neg (Armandpour et al. 2023): add the two neighbouring view prompts as negatives, removed
    perpendicular to the positive direction. Needs view_dependent."""
    perp_neg_weight: float = 1.5
    """Peak weight of the Perp-Neg negatives but the back half's side view: on the front half (azimuth 0-90
    deg) the front and side negatives each grow linearly from 0 at their own view to this 90 deg away; on the
    back half the front negative keeps it. (threestudio's tuned curves f_fs, f_sf peak at 1.57 and f_fsb runs
    1.57 to 1.97.)"""
    perp_neg_back_side_weight: float = 0.394
    """Peak weight of the side negative on the back half (azimuth 90-180 deg): 0 at the side view, growing
    linearly to this at the back view. 0.394 is threestudio's tuned f_sb at the back view (a e^(-b r) + c with
    (a, b, c) = (1, 0.5, -0.606), r = 0), a quarter of ``perp_neg_weight``: a back view that looks a little like
    a side view is right, and pushing it away from the side as hard as from the front overshoots."""

    def __post_init__(self):
        if not (0 <= self.front_half_angle and 0 <= self.back_half_angle
                and self.front_half_angle + self.back_half_angle <= 180):
            raise ValueError("need 0 <= front_half_angle, back_half_angle and their sum <= 180")
        if (self.view_interpolation or self.perp_neg) and not self.view_dependent:
            raise ValueError("view_interpolation and perp_neg need view_dependent: true (they combine the "
                             "front/side/back prompts)")
        for key in ("perp_neg_weight", "perp_neg_back_side_weight"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")


class PromptProcessor:
    """Text embeddings per camera: each view label's prompt is encoded once, at construction.

    Encoding eagerly makes a bad prompt (empty, unknown words) fail before any training step.
    """

    def __init__(self, prior: TextEncoder, prompt: str, cfg: PromptConfig | None = None):
        self.cfg = cfg or PromptConfig()
        self.prompt = prompt.strip()
        if not self.prompt:
            raise ThreedError('the prompt is empty: describe the object, e.g. "a red chair"')
        self.prior = prior
        suffixes = {"front": self.cfg.front_suffix, "side": self.cfg.side_suffix,
                    "back": self.cfg.back_suffix, "overhead": self.cfg.overhead_suffix}
        self.prompts: dict[ViewLabel, str] = {
            label: self.prompt + (suffixes[label] if self.cfg.view_dependent else "") for label in VIEW_LABELS}
        texts = list(dict.fromkeys(self.prompts.values()))
        table = prior.encode_text(texts + [self.cfg.negative_prompt])
        rows = {text: table[i] for i, text in enumerate(texts)}
        self._cond: dict[ViewLabel, Float[Tensor, "L D"]] = {label: rows[t] for label, t in self.prompts.items()}
        self._uncond: Float[Tensor, "L D"] = table[-1]

    def with_prompt(self, prompt: str) -> PromptProcessor:
        """The same views and settings for another prompt (SDS-Bridge's source prompt)."""
        return PromptProcessor(self.prior, prompt, self.cfg)

    def labels(self, cameras: Cameras) -> list[ViewLabel]:
        """DreamFusion view label of each camera, with this config's angles."""
        return cameras.view_labels(front_half_angle=self.cfg.front_half_angle,
                                   back_half_angle=self.cfg.back_half_angle,
                                   overhead_elevation=self.cfg.overhead_elevation)

    def embeddings(self, cameras: Cameras) -> tuple[Float[Tensor, "B L D"], Float[Tensor, "B L D"]]:
        """(conditional, unconditional) text embeddings for each camera of the batch."""
        text = self.conditioning(cameras)
        return text.cond, text.uncond

    def conditioning(self, cameras: Cameras) -> Conditioning:
        """Prompt, unconditional and (with perp_neg) negative embeddings for each camera."""
        cfg = self.cfg
        labelled = torch.stack([self._cond[label] for label in self.labels(cameras)])
        if not (cfg.view_interpolation or cfg.perp_neg):
            return Conditioning(cond=labelled, uncond=self._uncond.expand_as(labelled))
        dev = labelled.device
        az = (torch.remainder(cameras.azimuth.detach().float().cpu() + 180.0, 360.0) - 180.0).abs()  # [0, 180]
        overhead = (cameras.elevation.detach().float().cpu() > cfg.overhead_elevation).to(dev)
        front_half = (az <= 90).to(dev)
        u = torch.where(az <= 90, az / 90, (az - 90) / 90).to(dev, labelled.dtype)  # along the segment
        front, side, back = (self._cond[k][None] for k in ("front", "side", "back"))

        def pick(a, b):
            return torch.where(front_half.view(-1, 1, 1), a, b)

        uu = u.view(-1, 1, 1)
        cond = labelled
        if cfg.view_interpolation:
            cond = pick(torch.lerp(front, side, uu), torch.lerp(side, back, uu))
            cond = torch.where(overhead.view(-1, 1, 1), labelled, cond)
        negatives: tuple = ()
        if cfg.perp_neg:
            # Front half (front -> side): negatives front and side, each weighted perp_neg_weight * (angular
            # distance to its view / 90 deg); back half (side -> back): side, growing to perp_neg_back_side_weight
            # at the back, and front at perp_neg_weight.
            shown = (~overhead).to(u.dtype)
            w, w_side = cfg.perp_neg_weight * shown, cfg.perp_neg_back_side_weight * shown
            first = (pick(front, side), torch.where(front_half, w, w_side) * u)
            second = (pick(side, front), w * torch.where(front_half, 1 - u, torch.ones_like(u)))
            negatives = (first, second)
        return Conditioning(cond=cond, uncond=self._uncond.expand_as(cond), negatives=negatives)

    def repeat(self, text: str, batch: int) -> Float[Tensor, "B L D"]:
        """The embedding of a fixed ``text`` (checked against the vocabulary, cached), repeated ``batch`` times.

        ``repeat(self.prompt, b)`` is the view-independent prompt; ``repeat("", b)`` the null prompt.
        """
        return self.prior.encode_text([text]).expand(batch, -1, -1)
