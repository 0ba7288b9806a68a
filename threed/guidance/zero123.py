"""View-conditioned priors: Zero-1-to-3 and its family, seen through what score distillation needs.

Zero-1-to-3 (Liu et al. 2023) fine-tunes Stable Diffusion into p(view | reference image, relative
camera): the UNet's input is the noisy latent *concatenated* with the VAE latent of the reference
image (8 channels), and its cross-attention sees one token, ``cc_projection([CLIP image embedding,
pose])`` with a linear 772 -> 768 projection. Score distillation with it (Zero-1-to-3 sec. 3.3,
Magic123 by Qian et al. 2023) is plain SDS whose condition is the reference image plus the pose of
each random view relative to the reference camera; classifier-free guidance drops the image
condition: the unconditional branch gets a zero reference latent and a zero cross-attention token,
as Zero-1-to-3 was trained (it zeroes the projected embedding, and the concatenated latent).

**The relative pose**, for a view at (elevation, azimuth, distance) and the reference camera at
(el_r, az_r, d_r), in threed's convention (:mod:`threed.cameras`, degrees, +Y up, azimuth 0 = front
on +Z, azimuth +90 = camera on +X):

* ``zero123`` (Zero-1-to-3, Zero123-XL): ``[rad(el_r - el), sin(rad(az - az_r)), cos(rad(az - az_r)), d - d_r]``.
  The first entry is the change of *polar* angle (90 - elevation) that Zero-1-to-3 was trained on,
  so looking from higher up makes it negative.
* ``stable-zero123`` (Stability AI's Stable Zero123): the same first three, then ``rad(90 - el_r)``,
  the reference's absolute polar angle, instead of the distance change.

Zero-1-to-3's azimuth turns the same way as threed's (counter-clockwise seen from above, i.e.
right-handed about up; threestudio and DreamGaussian feed ``az - az_r`` from frames with the same
handedness). So a view at Δazimuth = +90 looks at the side of the object that appears on the
*right* of the reference image (the object's own left, when the photo shows its front). The test
``tests/test_zero123.py`` pins both the numbers and that side.

**Layouts** loaded by hub id or folder (each component with its class's ``from_pretrained``):

* diffusers conversions of Zero-1-to-3 (``bennyguo/zero123-xl-diffusers``, ``kxic/zero123-xl``,
  ``ashawkey/zero123-xl-diffusers``, ``ashawkey/stable-zero123-diffusers``): ``unet``, ``vae``,
  ``image_encoder`` (``CLIPVisionModelWithProjection``), ``feature_extractor``
  (``CLIPImageProcessor``), ``scheduler`` and the projection as ``clip_camera_projection`` (bennyguo's and
  ashawkey's conversions) or ``cc_projection`` (diffusers' community Zero1to3 pipeline layout, kxic's).
  The projection is a custom class in those repos' pipeline files, so threed reads its one linear layer
  from the weights itself instead of importing remote code.
* the embedded toy-world view prior (``image_model=toyworld``, :mod:`threed.toyworld.train_views`):
  the same layout in pixel space: ``unet`` with the reference image itself concatenated (6 channels),
  a tiny ``image_encoder`` (``CLIPVisionModelWithProjection``, trained with it) and its
  ``feature_extractor``, ``cc_projection`` of [image embedding, pose], and the pose also fed as the
  UNet's class embedding (diffusers' ``class_embed_type="projection"``), kept in both branches of
  guidance as in its training. It is a v-prediction model; guidance converts to noise predictions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from threed.cameras import Cameras
from threed.errors import ThreedError
from threed.guidance.conditioning import Conditioning
from threed.guidance.core import DiffusionCore
from threed.guidance.images import LatentImages, PixelImages
from threed.guidance.loading import PriorCache, cached, default_device_dtype, freeze, load_components, resolve_model
from threed.reference.image import ReferenceImage, ReferenceViewConfig

PoseConvention = Literal["zero123", "stable-zero123"]

VIEW_PRIOR_ALIASES: dict[str, str] = {"toyworld": "priors/toyworld-zero123"}
"""Short names of view-conditioned priors -> folders relative to the package root."""

PROJECTION_NAMES = ("cc_projection", "clip_camera_projection")
"""Folder names of the camera projection in the diffusers conversions of Zero-1-to-3."""

VIEW_COMPONENTS = ("unet", "scheduler", "vae", "image_encoder", "feature_extractor", *PROJECTION_NAMES)
EXAMPLE_VIEW_MODEL = "bennyguo/zero123-xl-diffusers"


RefValue = Float[Tensor, "B"] | Float[Tensor, ""] | float
"""A reference camera's angle or distance: per view, or one for the whole batch (a 0-d tensor or a number)."""


def relative_pose(elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"], distance: Float[Tensor, "B"],
                  ref_elevation: RefValue, ref_azimuth: RefValue, ref_distance: RefValue,
                  convention: PoseConvention) -> Float[Tensor, "B 4"]:
    """The 4-vector a Zero123-family model is conditioned on (see the module docstring); angles in degrees."""
    el, az, d = (torch.as_tensor(v, dtype=torch.float32) for v in (elevation, azimuth, distance))
    el_r, az_r, d_r = (torch.as_tensor(v, dtype=torch.float32, device=el.device).expand_as(el)
                       for v in (ref_elevation, ref_azimuth, ref_distance))
    d_polar = torch.deg2rad(el_r - el)
    d_az = torch.deg2rad(az - az_r)
    last = d - d_r if convention == "zero123" else torch.deg2rad(90.0 - el_r)
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


def auto_convention(model: str) -> PoseConvention:
    """The pose convention ``convention: auto`` picks for ``model``: ``stable-zero123`` when the repository or
    folder name itself (the last part of the hub id or path, not the folders above it) names Stable Zero123
    (``stable-zero123``, ``stable_zero123``, ``stablezero123``), else ``zero123``. So
    ``ashawkey/stable-zero123-diffusers`` is Stable Zero123 and ``/data/stable-runs/zero123-xl`` is not."""
    name = Path(model.rstrip("/\\")).name.lower()
    return "stable-zero123" if re.search(r"stable[-_ ]?zero[-_ ]?123", name) else "zero123"


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocessing(feature_extractor: Any) -> tuple[int, list[float], list[float]]:
    """(square size, mean, std) of a ``CLIPImageProcessor`` (OpenAI CLIP's 224 and statistics without one)."""
    fe = feature_extractor
    size = int((getattr(fe, "crop_size", None) or {"height": 224}).get("height", 224)) if fe else 224
    return size, list(getattr(fe, "image_mean", None) or CLIP_MEAN), list(getattr(fe, "image_std", None) or CLIP_STD)


def clip_pixels(x: Float[Tensor, "B 3 H W"], size: int, mean: Tensor, std: Tensor) -> Float[Tensor, "B 3 S S"]:
    """Square images in [0, 1] -> a CLIP image encoder's input (bicubic resize to ``size``, normalised); the toy
    view prior's trainer calls this too, so training and guidance see the same pixels."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (x - mean.to(x)) / std.to(x)


class ViewConditionedPrior(DiffusionCore):
    """A frozen Zero123-family model: the UNet sees [x_t, reference] and one token from ``projection``.

    Subclasses say how images map to ``x0`` (latent or pixel) and to the reference condition.
    """

    def __init__(self, name: str, unet: torch.nn.Module, scheduler: Any, projection: torch.nn.Linear,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 convention: PoseConvention = "zero123", image_encoder: torch.nn.Module | None = None,
                 feature_extractor: Any = None):
        in_ch = int(unet.config.in_channels)
        if in_ch % 2:
            raise ThreedError(f"{name}: a Zero123-family UNet takes the noisy image and the reference concatenated "
                              f"(an even channel count), but this one takes {in_ch}")
        super().__init__(name, unet, scheduler, device, dtype, concat_channels=in_ch // 2)
        self.projection = freeze(projection, self.device, dtype)
        self.convention = convention
        self.pose_as_class = getattr(unet.config, "class_embed_type", None) == "projection"
        self.image_dim = projection.in_features - 4
        self.image_encoder = None if image_encoder is None else freeze(image_encoder, self.device, dtype)
        self.clip_size, mean, std = clip_preprocessing(feature_extractor)
        self.clip_mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        encoder_dim = 0 if image_encoder is None else int(image_encoder.config.projection_dim)
        if self.image_dim != encoder_dim:
            raise ThreedError(f"{name}: the camera projection takes {projection.in_features} inputs, which is not "
                              f"the image embedding width ({encoder_dim}) plus the 4 pose numbers")

    @torch.no_grad()
    def image_embedding(self, rgb: Float[Tensor, "1 H W 3"]) -> Float[Tensor, "1 E"]:
        """CLIP ``image_embeds`` of the (square, framed) reference, preprocessed as CLIPImageProcessor does
        (width 0 when the model has no image encoder)."""
        if self.image_encoder is None:
            return torch.zeros(rgb.shape[0], 0, device=self.device)
        x = clip_pixels(rgb.permute(0, 3, 1, 2).to(self.device).float(), self.clip_size, self.clip_mean, self.clip_std)
        return self.image_encoder(x.to(self.dtype)).image_embeds.float()

    def reference_concat(self, rgb: Float[Tensor, "1 H W 3"]) -> Float[Tensor, "1 K h w"]:
        """The channels concatenated to the UNet input for a reference image in [0, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def tokens(self, image_emb: Float[Tensor, "1 E"], pose: Float[Tensor, "B 4"]) -> Float[Tensor, "B 1 D"]:
        """The cross-attention token of each view: projection([image embedding, pose])."""
        x = torch.cat([image_emb.to(self.device).expand(pose.shape[0], -1), pose.to(self.device)], dim=-1)
        return self.projection(x.to(self.dtype))[:, None, :]

    @torch.no_grad()
    def sample_views(self, reference: Float[Tensor, "1 H W 3"], pose: Float[Tensor, "B 4"],
                     guidance_scale: float = 3.0, steps: int = 50,
                     generator: torch.Generator | None = None) -> Float[Tensor, "B R R 3"]:
        """Novel views of ``reference`` at the relative poses ``pose`` by DDIM with CFG on the image, in [0, 1]."""
        b = pose.shape[0]
        cond = view_conditioning(self, reference, pose)

        def eps(x: Tensor, t: Tensor) -> Tensor:
            c, u = self.noise_predictions(x, t, [cond.cond, cond.uncond], class_labels=cond.class_labels,
                                          concat=list(cond.concat))
            return self.guide(c, u, guidance_scale)

        return self.ddim_sample(b, eps, steps, generator)


class LatentViewPrior(LatentImages, ViewConditionedPrior):
    """Zero-1-to-3 / Zero123-XL / Stable Zero123: latent space, CLIP image embedding + VAE reference latent."""

    def __init__(self, name: str, unet, scheduler, projection, vae, image_encoder, feature_extractor=None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 convention: PoseConvention = "zero123"):
        super().__init__(name, unet, scheduler, projection, device, dtype, convention, image_encoder,
                         feature_extractor)
        self._set_vae(vae)

    @torch.no_grad()
    def reference_concat(self, rgb: Float[Tensor, "1 H W 3"]) -> Float[Tensor, "1 4 h w"]:
        """The unscaled VAE latent of the reference (Zero-1-to-3's ``c_concat``)."""
        return self.vae_mean(rgb.to(self.device))


class PixelViewPrior(PixelImages, ViewConditionedPrior):
    """The toy-world view prior: pixel space, the reference image itself concatenated, in [-1, 1]."""

    @torch.no_grad()
    def reference_concat(self, rgb: Float[Tensor, "1 H W 3"]) -> Float[Tensor, "1 3 R R"]:
        return self.encode_images(rgb.to(self.device))


def view_conditioning(prior: ViewConditionedPrior, reference: Float[Tensor, "1 H W 3"], pose: Float[Tensor, "B 4"],
                      image_emb: Tensor | None = None, concat: Tensor | None = None) -> Conditioning:
    """The guidance condition of views at relative poses ``pose``: conditional = the reference's token and
    channels, unconditional = zeros of both (the pose's class embedding, if the UNet has one, stays in both)."""
    b = pose.shape[0]
    emb = prior.image_embedding(reference) if image_emb is None else image_emb
    ref = (prior.reference_concat(reference) if concat is None else concat).expand(b, -1, -1, -1)
    tokens = prior.tokens(emb, pose)
    return Conditioning(cond=tokens, uncond=torch.zeros_like(tokens), concat=(ref, torch.zeros_like(ref)),
                        class_labels=pose.to(prior.device) if prior.pose_as_class else None)


class ImageConditioning:
    """The image :class:`~threed.guidance.conditioning.Conditioner`: per camera, the Zero123 condition of a
    reference image at the camera's pose relative to the reference camera.

    The image embedding and reference latent are computed once, at construction.
    """

    def __init__(self, prior: ViewConditionedPrior, reference: ReferenceImage, view: ReferenceViewConfig,
                 convention: PoseConvention | None = None):
        self.prior = prior
        self.view = view
        self.convention = convention or prior.convention
        rgb = reference.rgb.to(prior.device)
        self._emb = prior.image_embedding(rgb)
        self._concat = prior.reference_concat(rgb)
        self._rgb = rgb

    def pose(self, cameras: Cameras) -> Float[Tensor, "B 4"]:
        v = self.view
        return relative_pose(cameras.elevation.cpu(), cameras.azimuth.cpu(), cameras.distance.cpu(), v.elevation,
                             v.azimuth, v.distance, self.convention)

    def conditioning(self, cameras: Cameras) -> Conditioning:
        return view_conditioning(self.prior, self._rgb, self.pose(cameras), self._emb, self._concat)


# --------------------------------------------------------------------------- loading


def _load_projection(folder: Path) -> torch.nn.Linear:
    """The camera projection's one linear layer, read from its weights (safetensors or .bin)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ThreedError(f"{folder} holds no weights (*.safetensors or *.bin); download the model again")
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(files[0])
    else:
        state = torch.load(files[0], map_location="cpu", weights_only=True)
    weights = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if len(weights) != 1:
        raise ThreedError(f"{files[0]}: expected one linear layer in the camera projection, found weights {weights}")
    w = state[weights[0]]
    bias = state.get(weights[0][: -len("weight")] + "bias")
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def save_projection(layer: torch.nn.Linear, folder: Path) -> None:
    """Write a camera projection as the diffusers conversions do: ``config.json`` (in/out widths) and
    ``diffusion_pytorch_model.safetensors`` with ``projection.weight`` / ``projection.bias``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "CCProjection", "in_channel": layer.in_features,
                                                    "out_channel": layer.out_features}, indent=2) + "\n")
    state = {"projection.weight": layer.weight.detach().contiguous().cpu()}
    if layer.bias is not None:
        state["projection.bias"] = layer.bias.detach().contiguous().cpu()
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


def load_view_prior(model: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    convention: Literal["auto", "zero123", "stable-zero123"] = "auto",
                    cache: PriorCache | None = None) -> ViewConditionedPrior:
    """A frozen Zero123-family prior from a hub id, folder or ``toyworld``; once per ``cache`` (else a fresh load).

    ``dtype`` defaults to float16 on CUDA and float32 elsewhere. A ``vae`` makes it a
    :class:`LatentViewPrior` (which then needs the CLIP ``image_encoder``), otherwise a
    :class:`PixelViewPrior`.
    """
    device, dtype = default_device_dtype(device, dtype)
    folder = resolve_model(model, VIEW_PRIOR_ALIASES, VIEW_COMPONENTS, key="image_model",
                           example=EXAMPLE_VIEW_MODEL, allow_bin=True, fp16=dtype == torch.float16)
    conv: PoseConvention = auto_convention(model) if convention == "auto" else convention

    def load() -> ViewConditionedPrior:
        index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
        proj_name = next((n for n in PROJECTION_NAMES if n in index or (folder / n).is_dir()), None)
        if proj_name is None or not (folder / proj_name).is_dir():
            raise ThreedError(f"{folder} is not a Zero123-family model: it has no camera projection folder "
                              f"({' or '.join(PROJECTION_NAMES)}); get one with `hf download {EXAMPLE_VIEW_MODEL} "
                              f"--local-dir DIR` and pass image_model=DIR, or use image_model=toyworld")
        parts = load_components(folder, ("unet", "scheduler"), ("vae", "image_encoder", "feature_extractor"), dtype,
                                "a Zero123-family prior")
        projection = _load_projection(folder / proj_name)
        common = dict(name=model, unet=parts["unet"], scheduler=parts["scheduler"], projection=projection,
                      device=device, dtype=dtype, convention=conv)
        encoder = dict(image_encoder=parts.get("image_encoder"), feature_extractor=parts.get("feature_extractor"))
        if "vae" in parts:
            if "image_encoder" not in parts:
                raise ThreedError(f"{folder} has a vae but no image_encoder: a latent Zero123 model needs its CLIP "
                                  "image encoder; download the model again")
            return LatentViewPrior(vae=parts["vae"], **encoder, **common)
        return PixelViewPrior(**common, **encoder)

    return cached(cache, ("view", str(folder.resolve()), str(device), dtype, conv), load)
