"""The diffusion math, once: noising, model outputs as noise predictions, classifier-free guidance, w(t), DDIM.

Every prior is a :class:`Denoiser`: a frozen network with its noise schedule, seen through what
score distillation needs. Two schedules share that interface:

* :class:`DiffusionCore`, variance-preserving diffusion (Ho et al. 2020):
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. The UNet predicts the noise eps or the velocity
  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022), which becomes a noise prediction
  through eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t. Stable Diffusion 1.x/2.x, DeepFloyd IF, the
  toy-world priors, Zero123. Deterministic DDIM steps (Song et al. 2021) run both ways.
* :class:`FlowCore`, rectified flow (Liu et al. 2023), as Stable Diffusion 3 trains it (Esser et al.
  2024): x_t = (1 - sigma_t) x0 + sigma_t eps, the network predicts the velocity v = eps - x0, so
  eps = x_t + (1 - sigma_t) v. Timestep t in 0..T-1 has the scheduler's own training sigma (SD3's
  shifted schedule), and the network sees sigma_t * T, as the SD3 pipeline feeds it.

What differs between priors beyond the schedule is how images map to ``x0`` (the mixins of
:mod:`threed.guidance.images`), what conditions the network (:mod:`threed.guidance.conditioning`)
and how the network is called (:meth:`Denoiser._network`). Score rules
(:mod:`threed.guidance.rules`) only form residuals from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from threed.errors import ThreedError
from threed.guidance.loading import freeze

Weighting = Literal["sds", "uniform", "fantasia", "ism"]


class Denoiser:
    """A frozen denoising network and its schedule: the plumbing every prior shares, whatever conditions it.

    ``channels`` are the diffusion variable's own channels and ``concat_channels`` the width of a
    condition concatenated to the network input (Zero123's reference latent). Subclasses give the
    schedule (:meth:`add_noise`, :meth:`noise_predictions`, :meth:`training_target`, :meth:`weighting`),
    the network call (:meth:`_network`) and the image map (:meth:`encode_images`, :meth:`decode`,
    :attr:`resolution`).
    """

    latent: bool = False
    prediction_type: str = "epsilon"
    """What the network outputs: ``epsilon``, ``v_prediction`` or ``flow`` (the velocity eps - x0)."""
    weightings: ClassVar[tuple[str, ...]] = ()
    """The w(t) kinds :meth:`weighting` knows for this schedule."""

    def __init__(self, name: str, device: torch.device | str, dtype: torch.dtype, num_train_timesteps: int,
                 channels: int, sample_size: int, concat_channels: int = 0):
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_train_timesteps = num_train_timesteps
        self.channels = channels
        self.sample_size = sample_size
        self.concat_channels = concat_channels

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, resolution={self.resolution}, "
                f"prediction={self.prediction_type}, device={self.device}, dtype={self.dtype})")

    # ----------------------------------------------------------------- images <-> x0

    @property
    def resolution(self) -> int:
        """Square pixel size renders are resized to before encoding."""
        raise NotImplementedError

    def encode_images(self, rgb: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B C h w"]:
        """Differentiable map from renders in [0, 1] to the diffusion variable ``x0`` (float32)."""
        raise NotImplementedError

    def decode(self, x0: Float[Tensor, "B C h w"]) -> Float[Tensor, "B H W 3"]:
        """``x0`` back to images in [0, 1], for logs (no gradient)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the network

    def _network(self, model_in: Tensor, t: Int[Tensor, "N"], emb: Tensor, unet: torch.nn.Module | None,
                 class_labels: Tensor | None) -> Tensor:
        """One call of the frozen network on a batch already stacked by :meth:`model_outputs`."""
        raise NotImplementedError

    def model_outputs(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"],
                      embeddings: Sequence[Float[Tensor, "B L D"]], unet: torch.nn.Module | None = None,
                      class_labels: Tensor | None = None, concat: Sequence[Float[Tensor, "B K h w"]] | None = None
                      ) -> list[Float[Tensor, "B C h w"]]:
        """The model's own predictions (epsilon, v or flow velocity), one per conditioning, from one batched call.

        ``unet`` replaces the prior's network (VSD's LoRA copy, which also takes ``class_labels``, one row
        per view). ``concat`` (one tensor per conditioning, :attr:`concat_channels` wide) is concatenated
        to x_t along channels, as Zero123 conditions on its reference latent. A learned-variance output
        keeps its first half. Returns float32; gradients flow if the caller enables them.
        """
        k = len(embeddings)
        if (concat is None) != (self.concat_channels == 0) or (concat is not None and len(concat) != k):
            raise ValueError(f"{self.name}: the network takes {self.concat_channels} concatenated condition channels; "
                             f"give one concat tensor per conditioning ({k}), or none for an unconcatenated network")
        model_in = torch.cat([x_t] * k)
        if concat is not None:
            model_in = torch.cat([model_in, torch.cat(list(concat)).to(model_in)], dim=1)
        model_in = model_in.to(self.dtype)
        emb = torch.cat(list(embeddings)).to(self.device, self.dtype)
        if class_labels is not None:
            if class_labels.is_floating_point():
                class_labels = class_labels.to(self.device, self.dtype)
            class_labels = torch.cat([class_labels] * k)
        out = self._network(model_in, torch.cat([t] * k).to(self.device), emb, unet, class_labels)
        return list(out[:, : self.channels].float().chunk(k))

    @staticmethod
    def guide(eps_c: Float[Tensor, "B C h w"], eps_u: Float[Tensor, "B C h w"], guidance_scale: float,
              negatives: Sequence[tuple[Float[Tensor, "B C h w"], Float[Tensor, "B"]]] = ()
              ) -> Float[Tensor, "B C h w"]:
        """Classifier-free guidance (Ho & Salimans 2022), in diffusers' convention, the one place it is formed:

            eps_hat = eps_u + s [ (eps_c - eps_u) - sum_i w_i perp(eps_i - eps_u, eps_c - eps_u) ]

        ``negatives`` are Perp-Neg's (Armandpour et al. 2023) negative-prompt predictions eps_i with
        per-view weights w_i >= 0; only the part of each negative direction perpendicular to the
        positive direction is removed, so a negative that overlaps the prompt cannot cancel it.
        Without negatives this is eps_u + s (eps_c - eps_u). The formula is linear in its inputs, so it
        holds for noise, v or flow-velocity predictions alike.
        """
        positive = eps_c - eps_u
        delta = positive
        if negatives:
            norm2 = positive.flatten(1).square().sum(1).clamp_min(1e-20)
            for eps_n, weight in negatives:
                neg = eps_n - eps_u
                along = (neg * positive).flatten(1).sum(1) / norm2
                perp = neg - along.view(-1, 1, 1, 1) * positive
                delta = delta - weight.to(delta).view(-1, 1, 1, 1) * perp
        return eps_u + guidance_scale * delta

    # ----------------------------------------------------------------- the schedule

    def add_noise(self, x0: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"],
                  t: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """The forward process: x_t from the clean x0, the noise and the timestep."""
        raise NotImplementedError

    def noise_predictions(self, x_t: Float[Tensor, "B C h w"], t: Int[Tensor, "B"],
                          embeddings: Sequence[Float[Tensor, "B L D"]], unet: torch.nn.Module | None = None,
                          class_labels: Tensor | None = None, concat: Sequence[Float[Tensor, "B K h w"]] | None = None
                          ) -> list[Float[Tensor, "B C h w"]]:
        """Noise predictions eps(x_t; y, t), one per conditioning, from one batched network call (arguments as
        :meth:`model_outputs`). Returns float32; gradients flow if the caller enables them."""
        raise NotImplementedError

    def training_target(self, x0: Float[Tensor, "B C h w"], noise: Float[Tensor, "B C h w"],
                        t: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """What the model is trained to predict for x_t = add_noise(x0, noise, t) (its own parameterisation)."""
        raise NotImplementedError

    def weighting(self, t: Int[Tensor, "B"], kind: Weighting) -> Float[Tensor, "B"]:
        """w(t) multiplying the score residual; :attr:`weightings` lists the kinds of this schedule."""
        raise NotImplementedError

    def check_weighting(self, kind: str) -> None:
        """A :class:`ThreedError` when this schedule has no weighting ``kind``."""
        if kind not in self.weightings:
            raise ThreedError(f"{self.name}: weighting {kind!r} is not defined for a {type(self).__name__}; "
                              f"choose {' or '.join(self.weightings)}")


class DiffusionCore(Denoiser):
    """A frozen diffusion UNet and its variance-preserving noise schedule (DDPM/DDIM/PNDM-style schedulers).

    Text-to-image priors (:class:`threed.guidance.prior.DiffusionPrior`) add a text encoder; view-conditioned
    priors (:mod:`threed.guidance.zero123`) add an image condition.
    """

    weightings = ("sds", "uniform", "fantasia", "ism")

    def __init__(self, name: str, unet: torch.nn.Module, scheduler: Any, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, concat_channels: int = 0):
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ThreedError(f"{name}: scheduler {type(scheduler).__name__} has no alphas_cumprod; "
                              "use a DDPM/DDIM/PNDM-style scheduler config")
        channels = int(unet.config.in_channels) - concat_channels
        super().__init__(name, device, dtype, int(scheduler.config.num_train_timesteps), channels,
                         int(unet.config.sample_size), concat_channels)
        self.unet = freeze(unet, self.device, dtype)
        self.scheduler = scheduler
        self.alphas_cumprod: Float[Tensor, "T"] = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ThreedError(f"{name}: prediction_type {self.prediction_type!r} is not supported "
                              "(epsilon or v_prediction)")
        out_channels = int(unet.config.out_channels)
        if self.channels < 1 or out_channels not in (self.channels, 2 * self.channels):
            raise ThreedError(f"{name}: UNet has {unet.config.in_channels} input channels ({concat_channels} of "
                              f"them a concatenated condition) but {out_channels} output channels")
        self.learned_variance = out_channels == 2 * self.channels

    def _network(self, model_in, t, emb, unet, class_labels):
        kwargs = {} if class_labels is None else {"class_labels": class_labels}
        return (unet or self.unet)(model_in, t, encoder_hidden_states=emb, **kwargs).sample

    def alpha_bar(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B 1 1 1"]:
        """Cumulative signal fraction abar_t of the forward process, shaped to broadcast over images."""
        return self.alphas_cumprod[t.to(self.device)].view(-1, 1, 1, 1)

    def add_noise(self, x0, noise, t):
        """Forward process q(x_t | x0): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020)."""
        a = self.alpha_bar(t)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def noise_predictions(self, x_t, t, embeddings, unet=None, class_labels=None, concat=None):
        """Noise predictions eps(x_t; y, t), one per conditioning, from one batched UNet call.

        v-predictions become noise predictions via eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
        (Salimans & Ho 2022). Arguments as :meth:`model_outputs`. Returns float32; gradients flow if
        the caller enables them (the guidance core runs this under ``no_grad``).
        """
        outs = self.model_outputs(x_t, t, embeddings, unet, class_labels, concat)
        if self.prediction_type == "v_prediction":
            a = self.alpha_bar(t)
            outs = [a.sqrt() * v + (1 - a).sqrt() * x_t.float() for v in outs]
        return outs

    def training_target(self, x0, noise, t):
        """The noise, or the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 for a v-prediction model."""
        if self.prediction_type == "v_prediction":
            a = self.alpha_bar(t)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return noise

    def weighting(self, t, kind):
        """w(t) multiplying the score residual.

        * ``sds``: 1 - abar_t, DreamFusion's sigma_t^2 (Poole et al. 2022, eq. 3).
        * ``uniform``: 1.
        * ``fantasia``: sqrt(abar_t) (1 - abar_t), Fantasia3D (Chen et al. 2023), as in threestudio.
        * ``ism``: sqrt((1 - abar_t) / abar_t), LucidDreamer's interval score matching (Liang et al. 2023);
          also SDI's, whose x0-space loss has this weight on the noise residual (Lukoianov et al. 2024).
        """
        a = self.alpha_bar(t).view(-1)
        if kind == "sds":
            return 1 - a
        if kind == "uniform":
            return torch.ones_like(a)
        if kind == "fantasia":
            return a.sqrt() * (1 - a)
        if kind == "ism":
            return ((1 - a) / a).sqrt()
        raise ValueError(f"unknown weighting {kind!r}; choose sds, uniform, fantasia or ism")

    def posterior(self, x_t: Float[Tensor, "B C h w"], x0: Float[Tensor, "B C h w"], t: Int[Tensor, "B"],
                  t_prev: Int[Tensor, "B"]) -> tuple[Float[Tensor, "B C h w"], Float[Tensor, "B 1 1 1"]]:
        """Mean and standard deviation of the forward process's posterior q(x_prev | x_t, x0) (Ho et al. 2020,
        eq. 7), for t_prev < t: with alpha = abar_t / abar_prev and beta = 1 - alpha,

            mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t,
            std^2 = (1 - abar_prev) / (1 - abar_t) beta.

        With ``x0`` the prediction (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) this is DDPM's reverse step;
        PDS (Koo et al. 2024) matches the noise of such steps."""
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        alpha = a_t / a_prev
        beta = 1 - alpha
        mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + alpha.sqrt() * (1 - a_prev) / (1 - a_t) * x_t
        return mean, ((1 - a_prev) / (1 - a_t) * beta).sqrt()

    def predicted_x0(self, x_t: Float[Tensor, "B C h w"], eps: Float[Tensor, "B C h w"],
                     t: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """Tweedie's estimate of the clean x0 from x_t and a noise prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        a = self.alpha_bar(t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    # ----------------------------------------------------------------- DDIM

    @staticmethod
    def _ddim_move(x: Tensor, eps: Tensor, a_from: Tensor, a_to: Tensor) -> Tensor:
        x0_hat = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps

    def ddim_step(self, x: Float[Tensor, "B C h w"], eps: Float[Tensor, "B C h w"], t_from: Int[Tensor, "B"],
                  t_to: Int[Tensor, "B"]) -> Float[Tensor, "B C h w"]:
        """Deterministic DDIM move (Song et al. 2021, eta = 0) of x from timestep t_from to t_to with the
        noise prediction ``eps`` made at (x, t_from): x_to = sqrt(abar_to) x0_hat + sqrt(1 - abar_to) eps.

        Works both ways: t_to < t_from denoises, t_to > t_from is one step of DDIM inversion.
        """
        return self._ddim_move(x, eps, self.alpha_bar(t_from), self.alpha_bar(t_to))

    def ddim_invert(self, x: Float[Tensor, "B C h w"], t_from: Int[Tensor, "B"], t_to: Int[Tensor, "B"], steps: int,
                    eps: Callable[[Tensor, Tensor], Tensor], clean: bool = False, eta: float = 0.0,
                    randn: Callable[[Tensor], Tensor] | None = None) -> Float[Tensor, "B C h w"]:
        """DDIM inversion of x from t_from up to t_to in ``steps`` equal steps per view, each predicting the
        noise with ``eps(x, t)`` (LucidDreamer, Liang et al. 2023, use the unconditional prediction; SDI,
        Lukoianov et al. 2024, the guided one).

        ``clean``: x is the clean x0 itself (abar = 1 at the start; the first prediction is made at t_from).
        ``eta`` > 0 adds ``eta`` sigma z after each step, sigma^2 = (1 - abar_a) / (1 - abar_b) (1 - abar_b /
        abar_a) being DDIM's variance of the reverse step b -> a (Song et al. 2021, eq. 16), z = ``randn(x)``.
        """
        t_from, t_to = t_from.to(self.device), t_to.to(self.device)
        grid = [t_from + torch.div((t_to - t_from) * k, steps, rounding_mode="floor") for k in range(steps)] + [t_to]
        for i, (a, b) in enumerate(zip(grid[:-1], grid[1:])):
            a_from = torch.ones_like(self.alpha_bar(a)) if clean and i == 0 else self.alpha_bar(a)
            a_to = self.alpha_bar(b)
            x = self._ddim_move(x, eps(x, a), a_from, a_to)
            if eta > 0 and randn is not None:
                variance = (1 - a_from) / (1 - a_to) * (1 - a_to / a_from)
                x = x + eta * variance.clamp_min(0).sqrt() * randn(x)
        return x

    @torch.no_grad()
    def ddim_sample(self, n: int, eps: Callable[[Tensor, Tensor], Tensor], steps: int = 50,
                    generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
        """``n`` images by DDIM (Song et al. 2021), in [0, 1], with ``eps(x_t, t)`` the (guided) noise prediction.

        For looking at a prior and testing it; score distillation itself never samples. The noise is
        drawn on the CPU from ``generator`` so a seed gives the same images on every device.
        """
        from diffusers import DDIMScheduler

        # eps returns epsilon, whatever the model predicts (noise_predictions converts).
        ddim = DDIMScheduler.from_config(self.scheduler.config, prediction_type="epsilon")
        ddim.set_timesteps(steps)
        x = torch.randn(n, self.channels, self.sample_size, self.sample_size, generator=generator).to(self.device)
        for t in ddim.timesteps:
            x = ddim.step(eps(x, t.expand(n).to(self.device)).float(), t, x).prev_sample
        return self.decode(x)


class FlowCore(Denoiser):
    """A frozen flow-matching network and its rectified-flow schedule (``FlowMatchEulerDiscreteScheduler``).

    Subclasses give the network call (:class:`threed.guidance.flow.SD3Prior`: a transformer with a pooled
    text projection) and the image map; a pixel-space flow model is a subclass with the pixel mixin.
    """

    prediction_type = "flow"
    weightings = ("uniform",)

    def __init__(self, name: str, scheduler: Any, device: torch.device | str, dtype: torch.dtype, channels: int,
                 sample_size: int):
        sigmas = getattr(scheduler, "sigmas", None)
        steps = int(scheduler.config.get("num_train_timesteps", 0))
        if sigmas is None or scheduler.config.get("use_dynamic_shifting", False) or len(sigmas) != steps:
            raise ThreedError(f"{name}: scheduler {type(scheduler).__name__} gives no fixed training sigmas; a flow "
                              "prior needs a FlowMatchEulerDiscreteScheduler without dynamic shifting (SD3, SD3.5)")
        super().__init__(name, device, dtype, steps, channels, sample_size)
        self.scheduler = scheduler
        self.sigmas: Float[Tensor, "T"] = sigmas.flip(0).to(self.device, torch.float32)
        """sigma of timestep t = 0..T-1, increasing: the scheduler's training sigmas (SD3's shifted schedule)."""

    def sigma(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B 1 1 1"]:
        """Noise level sigma_t of timestep t, shaped to broadcast over images."""
        return self.sigmas[t.to(self.device)].view(-1, 1, 1, 1)

    def network_time(self, t: Int[Tensor, "B"]) -> Float[Tensor, "B"]:
        """What the network is given as its timestep: sigma_t * T, as the SD3 pipeline and its training feed it."""
        return self.sigmas[t.to(self.device)] * self.num_train_timesteps

    def add_noise(self, x0, noise, t):
        """Rectified flow's straight path: x_t = (1 - sigma_t) x0 + sigma_t eps (Liu et al. 2023)."""
        s = self.sigma(t)
        return (1 - s) * x0 + s * noise

    def noise_predictions(self, x_t, t, embeddings, unet=None, class_labels=None, concat=None):
        """Velocities v become noise predictions via eps = x_t + (1 - sigma_t) v (x0 = eps - v on the path)."""
        s = self.sigma(t)
        return [x_t.float() + (1 - s) * v for v in self.model_outputs(x_t, t, embeddings, unet, class_labels, concat)]

    def training_target(self, x0, noise, t):
        """The flow-matching target, the velocity v = eps - x0 of the straight path."""
        return noise - x0

    def weighting(self, t, kind):
        """``uniform``, w = 1 (the RFDS reference code multiplies by sigmoid(u), u ~ N(0, 1), a random weight of
        mean 1/2: a constant weight is its deterministic counterpart, up to the learning rate)."""
        if kind != "uniform":
            raise ValueError(f"a flow prior weights uniformly; got weighting {kind!r}")
        return torch.ones(t.shape[0], device=self.device)
