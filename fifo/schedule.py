"""The DDIM sub-schedule a sampler walks, derived from a model's training noise schedule, and
its step (:func:`ddim_step`: one schedule index per clip, per frame ``(t,)``, or per sample and
frame ``(b, t)``, which is all FIFO needs on top of the base sampler).

Kept apart from the model (as diffusers keeps its schedulers): the model registers
``alphas_cumprod`` (and ``scale_arr`` for ``use_scale`` models); a sampler builds the
sub-schedule it needs with :meth:`DDIMSchedule.from_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import maybe_get_fake_mode

from infra.errors import SettingsError
from lvdm.family import Prediction, TimestepSpacing


def ddim_timesteps(
    num_steps: int, num_train_timesteps: int = 1000, spacing: TimestepSpacing = TimestepSpacing.LINSPACE
) -> np.ndarray:
    """The DDIM timesteps, increasing: evenly spread from 0 to T-1 inclusive (``LINSPACE``, the
    FIFO fork's discretisation), or T/n apart ending at T-1 (``TRAILING``: round(T - k·T/n) - 1)."""
    if TimestepSpacing(spacing) is TimestepSpacing.TRAILING:
        stride = num_train_timesteps / num_steps
        return np.round(np.arange(num_train_timesteps, 0, -stride))[::-1].astype(np.int64) - 1
    return np.round(np.linspace(0, num_train_timesteps - 1, num_steps)).astype(np.int64)


@dataclass(frozen=True)
class DDIMSchedule:
    """The DDIM sub-schedule, indexed by step index (0 = least noisy). All arrays (steps,).

    The tensors live where the sampler computes (:meth:`to`); the same values stay on the host
    as numpy arrays (``timestep_values``, ``alpha_values``) for what the sampler decides in Python
    (which timestep comes next, a slot's noise level), so that it never waits for the device and
    also runs on fake tensors, which carry no values.
    """

    timesteps: Tensor  # int64
    alphas: Tensor  # float64: ᾱ at each DDIM timestep
    alphas_prev: Tensor  # float64: ᾱ of the previous (less noisy) DDIM timestep
    sigmas: Tensor  # float64: DDIM noise scale for eta
    scale_arr: Tensor | None  # float64 latent scale (use_scale models), else None
    scale_arr_prev: Tensor | None
    eta: float = 0.0  # kept so samplers know whether to draw noise without reading a device tensor
    timestep_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    alpha_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # The model family's part of the step (lvdm.family.ModelFamily): what the U-Net predicts,
    # and DynamiCrafter's rescale of x̂₀ by scale_arr_prev / scale_arr at every step.
    prediction: Prediction = Prediction.EPS
    dynamic_rescale: bool = False

    def to(self, device: torch.device | str) -> DDIMSchedule:
        """The same schedule with its tensors on ``device`` (the host values stay)."""

        def move(value: object) -> object:
            return value.to(device) if isinstance(value, Tensor) else value

        return DDIMSchedule(*(move(getattr(self, f.name)) for f in fields(self)))

    @property
    def num_steps(self) -> int:
        return len(self.timestep_values)

    def step(
        self, x: Tensor, output: Tensor, index: int | Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One DDIM step per frame (:func:`ddim_step`) → (x_prev, pred_x0); the FIFO core
        calls every schedule this way (:class:`fifo.flow.FlowSchedule` is the flow's)."""
        return ddim_step(x, output, self, index, noise)

    def noised(self, z0: Tensor, eps: Tensor, index: int) -> Tensor:
        """A clean latent brought to step index ``index``'s level: sqrt(ᾱ)·x₀ + sqrt(1 − ᾱ)·ε."""
        a = float(self.alpha_values[index])
        return a**0.5 * z0 + (1.0 - a) ** 0.5 * eps

    @classmethod
    def create(
        cls,
        alphas_cumprod: Tensor | np.ndarray,
        num_steps: int,
        eta: float,
        scale_arr: Tensor | np.ndarray | None = None,
        prediction: Prediction = Prediction.EPS,
        dynamic_rescale: bool = False,
        spacing: TimestepSpacing = TimestepSpacing.LINSPACE,
    ) -> DDIMSchedule:
        """Build from the model's ``alphas_cumprod`` (and ``scale_arr`` if it uses one), in float64 on the host.

        A zero-terminal-SNR schedule has ᾱ = 0 at its last step: the sigmas stay finite there
        (1 − ᾱ = 1), and only a v-prediction step may be taken from it (:func:`ddim_step`).
        """
        ac = _host_float64(alphas_cumprod)
        if num_steps < 1 or num_steps > ac.size:
            raise SettingsError(f"DDIM steps must be in 1..{ac.size}, got {num_steps}")
        ts = ddim_timesteps(num_steps, ac.size, spacing)
        alphas = ac[ts]
        alphas_prev = np.concatenate([ac[:1], ac[ts[:-1]]])
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        scale, scale_prev = None, None
        if dynamic_rescale and scale_arr is None:
            raise ValueError("dynamic_rescale needs the model's scale_arr")
        if scale_arr is not None:
            scale = _host_float64(scale_arr)[ts]
            scale_prev = np.concatenate([scale[:1], scale[:-1]])

        def tensor(values: np.ndarray | None) -> Tensor | None:
            return None if values is None else torch.from_numpy(np.ascontiguousarray(values))

        return cls(
            tensor(ts),
            tensor(alphas),
            tensor(alphas_prev),
            tensor(sigmas),
            tensor(scale),
            tensor(scale_prev),
            float(eta),
            timestep_values=ts,
            alpha_values=alphas,
            prediction=Prediction(prediction),
            dynamic_rescale=dynamic_rescale,
        )

    @classmethod
    def from_model(cls, model: nn.Module, num_steps: int, eta: float) -> DDIMSchedule:
        """The schedule of a LatentDiffusion (its ``alphas_cumprod`` and ``scale_arr``, and its
        family's prediction and dynamic rescale), on its device.

        A model on fake tensors (a planned run) has no values in its buffers: its schedule is
        computed from its config (``LatentDiffusion.schedule_arrays``), as the buffers were.
        """
        if maybe_get_fake_mode(model.alphas_cumprod) is not None:
            alphas_cumprod, scale_arr = model.schedule_arrays()
        else:
            alphas_cumprod, scale_arr = model.alphas_cumprod, getattr(model, "scale_arr", None)
        family = model.family
        schedule = cls.create(
            alphas_cumprod,
            num_steps,
            eta,
            scale_arr,
            family.prediction,
            family.dynamic_rescale,
            family.timestep_spacing,
        )
        return schedule.to(model.alphas_cumprod.device)


def _host_float64(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _gather(values: Tensor, index: int | Tensor, like: Tensor) -> Tensor:
    """values[index] shaped to broadcast over ``like`` (b, c, t, h, w)."""
    if isinstance(index, int):  # a Python index: no tensor whose value would have to be read
        return values[index].to(device=like.device, dtype=like.dtype).reshape(1, 1, 1, 1, 1)
    idx = index.to(values.device)
    out = values[idx].to(device=like.device, dtype=like.dtype)
    if idx.dim() == 0:
        return out.reshape(1, 1, 1, 1, 1)
    if idx.dim() == 1:  # one index per frame
        return out.reshape(1, 1, -1, 1, 1)
    return out.reshape(out.shape[0], 1, out.shape[1], 1, 1)  # (b, t)


def ddim_step(
    x: Tensor,
    output: Tensor,
    schedule: DDIMSchedule,
    index: int | Tensor,
    noise: Tensor | None = None,
    use_scale: bool = False,
) -> tuple[Tensor, Tensor]:
    """One DDIM update from schedule step ``index`` to the one before it.

    Args:
        x: (b, c, t, h, w) latents.
        output: what the (guided) U-Net predicted, like ``x``: ε, or v for a v-prediction
            schedule (``schedule.prediction``). v is turned into ε and x̂₀ at each frame's own
            ᾱ without dividing by it: the frames at ᾱ = 0 (the noisiest of a zero-terminal-SNR
            queue) get x̂₀ = −v and ε = x.
        index: schedule index, a scalar, (t,) or (b, t).
        noise: standard normal noise like ``x`` (needed when the schedule's eta > 0).
        use_scale: VideoCrafter's latent rescaling (the base sampler of ``use_scale`` models;
            the published FIFO step leaves it out). DynamiCrafter's dynamic rescale is the
            schedule's (``schedule.dynamic_rescale``) and applies at every step, per frame.
    Returns:
        (x_prev, pred_x0)
    """
    a_t = _gather(schedule.alphas, index, x)
    a_prev = _gather(schedule.alphas_prev, index, x)
    sigma = _gather(schedule.sigmas, index, x)
    if schedule.prediction is Prediction.V:
        signal, noise_level = a_t.sqrt(), (1.0 - a_t).sqrt()
        eps = signal * output + noise_level * x
        pred_x0 = signal * x - noise_level * output
    else:
        eps = output
        pred_x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
    if schedule.dynamic_rescale:
        if schedule.scale_arr is None or schedule.scale_arr_prev is None:
            raise ValueError("dynamic rescale needs a schedule built with the model's scale_arr")
        pred_x0 = pred_x0 * (
            _gather(schedule.scale_arr_prev, index, x) / _gather(schedule.scale_arr, index, x)
        )
    # clamp: with eta = 1 the two terms cancel, and rounding must not make the root NaN
    dir_xt = (1.0 - a_prev - sigma**2).clamp_min(0.0).sqrt() * eps
    if use_scale:
        if schedule.scale_arr is None:
            raise ValueError("use_scale needs a schedule built with the model's scale_arr")
        pred_x0 = pred_x0 / _gather(schedule.scale_arr, index, x)
        x_prev = a_prev.sqrt() * _gather(schedule.scale_arr_prev, index, x) * pred_x0 + dir_xt
    else:
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, pred_x0
