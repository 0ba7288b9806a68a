"""Multi-view diffusion priors (MVDream, Shi et al. 2023): the V views of one object denoised together.

Two changes turn a text-to-image UNet into a multi-view one, both on a stock diffusers
``UNet2DConditionModel``:

* **Attention across views.** Every self-attention layer (``attn1`` of each transformer block) sees the
  tokens of all V views of an object at once: :class:`MultiViewAttnProcessor` reshapes its input from
  ``(B*V, HW, C)`` to ``(B, V*HW, C)``, attends, and reshapes back. Cross-attention to the text is
  untouched. The weights are the 2D model's, so a V = 1 batch is exactly the 2D model.
* **The camera as a condition.** Each view's camera (its camera-to-world matrix, position scaled to unit
  length, flattened to 16 numbers, :func:`camera_features`) enters through the UNet's class embedding
  (``class_embed_type="projection"``: Linear, SiLU, Linear, added to the timestep embedding), which is
  what MVDream's ``camera_embed`` is.

A multi-view model folder is a text prior's diffusers layout plus ``multiview.json``
(:class:`MultiViewSpec`: the number of views, the world frame its cameras are written in, whether each
view's prompt carries DreamFusion's view suffix). :func:`load_multiview_prior` loads it through the same
loading code as every prior (:mod:`threed.guidance.loading`) and installs the processors; a published
MVDream checkpoint (``MultiViewUNetModel``, the LDM key layout) is converted on load
(:mod:`threed.guidance.mvdream_unet`).

Score distillation with it (:mod:`threed.guidance.rules.mvdream`) renders V views per object at MVDream's
camera layout (:class:`threed.cameras.CameraSamplerConfig` ``views_per_object``: azimuths 360/V apart
from a random start, one elevation, distance and field of view per object), and the batch is a whole
number of objects, views of one object adjacent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.conditioning import Conditioning
from threed.guidance.loading import PriorCache, cached, default_device_dtype, resolve_model
from threed.guidance.prior import OPTIONAL_COMPONENTS, REQUIRED_COMPONENTS, DiffusionPrior, LatentPrior, PixelPrior
from threed.guidance.text import PromptConfig, PromptProcessor

log = logging.getLogger(__name__)

SPEC_FILE = "multiview.json"
"""What makes a diffusers folder a multi-view prior."""

CAMERA_DIM = 16
"""A flattened 4 x 4 camera-to-world matrix."""

CameraFrame = Literal["threed", "mvdream"]

MULTIVIEW_ALIASES: dict[str, str] = {"toyworld-mv": "priors/toyworld-mv"}
"""Short names of the shipped multi-view priors -> folders relative to the package root."""

_TO_MVDREAM = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
"""threed's world (+Y up, front +Z) -> MVDream's (Blender's: +Z up, front -Y). MVDream builds its cameras
in a +Y-up OpenGL world like threed's and applies this matrix (``convert_opengl_to_blender``)."""


@dataclass(frozen=True)
class MultiViewSpec:
    """``multiview.json``: how a multi-view prior was trained."""

    num_views: int = 4
    """Views denoised together (the cross-view attention's group size)."""
    camera_frame: CameraFrame = "mvdream"
    """World frame of the camera matrices: ``mvdream`` (Z up, as MVDream trained) or ``threed`` (Y up)."""
    view_prompts: bool = False
    """Whether each view's prompt carries DreamFusion's view suffix (the toy prior was fine-tuned from a prior
    that knows them); MVDream's own prompts do not."""

    def __post_init__(self):
        if self.num_views < 1:
            raise ThreedError(f"{SPEC_FILE}: num_views must be >= 1, got {self.num_views}")
        if self.camera_frame not in ("threed", "mvdream"):
            raise ThreedError(f"{SPEC_FILE}: camera_frame must be 'threed' or 'mvdream', got {self.camera_frame!r}")

    @classmethod
    def read(cls, folder: str | Path) -> MultiViewSpec:
        path = Path(folder) / SPEC_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in ("num_views", "camera_frame", "view_prompts") if k in data})
        except (OSError, ValueError, TypeError) as exc:
            raise ThreedError(f"{path}: not a readable multi-view spec ({exc})") from exc

    def write(self, folder: str | Path) -> None:
        (Path(folder) / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def camera_features(cameras: Cameras, frame: CameraFrame = "mvdream") -> Float[Tensor, "B 16"]:
    """Each camera's 4 x 4 camera-to-world matrix (OpenGL camera axes) in ``frame``, its position scaled to
    unit length, flattened row by row: MVDream's camera condition (``normalize_camera`` of its cameras)."""
    c2w = cameras.c2w.float()
    if frame == "mvdream":
        c2w = _TO_MVDREAM.to(c2w) @ c2w
    c2w = c2w.clone()
    c2w[:, :3, 3] = torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1, eps=1e-8)
    return c2w.reshape(len(cameras), CAMERA_DIM)


class MultiViewAttnProcessor:
    """Self-attention over the tokens of all views of an object: ``(B*V, N, C)`` is attended as ``(B, V*N, C)``.

    Everything else is diffusers' ``AttnProcessor2_0`` (scaled dot-product attention), so with V = 1 it
    is exactly the stock processor. A batch must hold whole objects, their V views adjacent.
    """

    def __init__(self, num_views: int):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.num_views = num_views
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        v = self.num_views
        if encoder_hidden_states is not None or v == 1 or hidden_states.ndim != 3:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        bv, n, c = hidden_states.shape
        if bv % v:
            raise ThreedError(f"a multi-view prior denoises {v} views of an object together, but got a batch of "
                              f"{bv} views; sample cameras with views_per_object={v}")
        joint = hidden_states.reshape(bv // v, v * n, c)
        out = self.inner(attn, joint, None, attention_mask, temb)
        return out.reshape(bv, n, c)


def make_multiview(unet: torch.nn.Module, num_views: int) -> torch.nn.Module:
    """Install :class:`MultiViewAttnProcessor` on every self-attention (``attn1``) of ``unet``; returns it."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = {name: (MultiViewAttnProcessor(num_views) if name.endswith("attn1.processor") else AttnProcessor2_0())
                  for name in unet.attn_processors}  # pyright: ignore[reportAttributeAccessIssue]
    if not any(name.endswith("attn1.processor") for name in processors):
        raise ThreedError("this UNet has no transformer self-attention (attn1) to run across views")
    unet.set_attn_processor(processors)  # pyright: ignore[reportCallIssue]
    return unet


class MultiViewMixin:
    """What a multi-view prior adds to a text prior: its spec and the camera features of a batch."""

    spec: MultiViewSpec

    @property
    def num_views(self) -> int:
        return self.spec.num_views

    def cameras_condition(self, cameras: Cameras) -> Float[Tensor, "B 16"]:
        """The network's camera condition of each view (its class-embedding input)."""
        return camera_features(cameras, self.spec.camera_frame)

    @torch.no_grad()
    def sample_views(self, prompt: str, cameras: Cameras, steps: int = 30, guidance_scale: float = 5.0,
                     generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
        """Images of ``prompt`` seen by ``cameras`` (whole objects, V views each) by DDIM with CFG, in [0, 1]."""
        prior: Any = self
        proc = MultiViewConditioner(prior, prompt)
        cond = proc.conditioning(cameras)
        return prior.ddim_sample(len(cameras), lambda x, t: prior.guide(
            *prior.noise_predictions(x, t, [cond.cond, cond.uncond], class_labels=cond.class_labels),
            guidance_scale), steps, generator)


class MultiViewPixelPrior(MultiViewMixin, PixelPrior):
    """A pixel-space multi-view prior (the toy world's)."""


class MultiViewLatentPrior(MultiViewMixin, LatentPrior):
    """A latent multi-view prior (MVDream on Stable Diffusion 2.1)."""


MultiViewPrior = MultiViewPixelPrior | MultiViewLatentPrior


def load_multiview_prior(model: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                         cache: PriorCache | None = None) -> DiffusionPrior:
    """A frozen multi-view prior from a hub id, folder or short name (``toyworld-mv``); once per ``cache``.

    The folder is a text prior's layout plus ``multiview.json``; a UNet saved as MVDream's own
    ``MultiViewUNetModel`` (its published diffusers-format conversion) is mapped onto diffusers'
    ``UNet2DConditionModel`` on load (:mod:`threed.guidance.mvdream_unet`), and needs no ``multiview.json``.
    """
    from threed.guidance.loading import fingerprint, load_components, read_index

    device, dtype = default_device_dtype(device, dtype)
    folder = resolve_model(model, MULTIVIEW_ALIASES, REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS,
                           fp16=dtype == torch.float16)

    def load() -> DiffusionPrior:
        index = read_index(folder)
        mvdream = index.get("unet", ("", ""))[1] == "MultiViewUNetModel"
        if mvdream:
            from threed.guidance.mvdream_unet import load_mvdream_unet

            unet = load_mvdream_unet(folder / "unet", dtype)
            spec = MultiViewSpec.read(folder) if (folder / SPEC_FILE).is_file() else MultiViewSpec(num_views=4)
            parts = load_components(folder, tuple(c for c in REQUIRED_COMPONENTS if c != "unet"),
                                    OPTIONAL_COMPONENTS, dtype, "a multi-view prior")
            parts["unet"] = unet
        else:
            if not (folder / SPEC_FILE).is_file():
                raise ThreedError(f"{folder} is not a multi-view prior: it has no {SPEC_FILE} (a text-to-image "
                                  "prior is used with guidance kind sds and friends)")
            spec = MultiViewSpec.read(folder)
            parts = load_components(folder, REQUIRED_COMPONENTS, OPTIONAL_COMPONENTS, dtype, "a multi-view prior")
        unet = parts["unet"]
        if getattr(unet.config, "class_embed_type", None) != "projection" or \
                unet.config.projection_class_embeddings_input_dim != CAMERA_DIM:
            raise ThreedError(f"{folder}: a multi-view UNet takes the camera ({CAMERA_DIM} numbers) through a "
                              "projection class embedding; this UNet has none")
        make_multiview(unet, spec.num_views)
        cls = MultiViewLatentPrior if "vae" in parts else MultiViewPixelPrior
        key = fingerprint(model, folder, ("text_encoder", "tokenizer"))
        prior = cls(name=model, device=device, dtype=dtype, cache_key=key, **parts)
        prior.spec = spec
        return prior

    return cached(cache, ("multiview", str(folder.resolve()), str(device), dtype), load)


class MultiViewConditioner:
    """The prompt and each view's camera: the condition of a multi-view prior.

    Each view gets the prompt (with its view suffix when the prior was trained with them, as the toy prior
    was) and its camera features as ``class_labels`` in both branches of classifier-free guidance.
    Perp-Neg does not apply: the views are denoised together, and a multi-view prior places the front
    from the cameras.
    """

    def __init__(self, prior: Any, prompt: str, cfg: PromptConfig | None = None):
        cfg = cfg or PromptConfig()
        if cfg.perp_neg:
            raise ThreedError("perp_neg is for single-view priors: a multi-view prior sees the cameras and denoises "
                              "the views together; set prompt.perp_neg=false")
        if not prior.spec.view_prompts:
            cfg = PromptConfig(**{**asdict(cfg), "view_dependent": False, "view_interpolation": False})
        self.prior = prior
        self.prompts = PromptProcessor(prior, prompt, cfg)

    def conditioning(self, cameras: Cameras) -> Conditioning:
        v = self.prior.num_views
        if len(cameras) % v:
            raise ThreedError(f"{self.prior.name} denoises {v} views of an object together, but the batch has "
                              f"{len(cameras)} cameras; sample cameras with views_per_object={v} and a batch_size "
                              f"that is a multiple of {v}")
        el = cameras.elevation.reshape(-1, v)
        if (el - el[:, :1]).abs().max() > 1e-3:
            raise ThreedError("the views of one object must share an elevation (MVDream's camera layout); sample "
                              f"cameras with views_per_object={v}")
        base = self.prompts.conditioning(cameras)
        base.class_labels = self.prior.cameras_condition(cameras).to(self.prior.device)
        return base
