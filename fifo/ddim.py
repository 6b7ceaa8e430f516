"""DDIM: one step, and the loop that samples a fixed-length clip (the base clip).

The step takes one schedule index per clip, per frame ``(t,)``, or per sample and frame
``(b, t)``, which is all FIFO needs on top of the base sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fifo.guidance import GuidedDenoiser
from fifo.noise import NoiseSource
from fifo.schedule import DDIMSchedule
from infra.progress import progress as progress_bar
from lvdm.family import Prediction


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


def sample_ddim(
    denoise: GuidedDenoiser,
    x_T: Tensor,
    schedule: DDIMSchedule,
    cond: Tensor,
    uncond: Tensor | None,
    use_scale: bool,
    noise: NoiseSource | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> Tensor:
    """Denoise a clip from x_T (b, c, t, h, w) through every schedule step → clean latents.

    ``noise`` gives each step's DDIM noise (needed when the schedule's eta > 0). ``max_steps``
    stops early (the latents are then not clean: for planning a run).
    """
    x = x_T
    timesteps = schedule.timestep_values.tolist()  # host values: the device is never waited for
    indices = list(range(schedule.num_steps - 1, -1, -1))[:max_steps]
    for index in progress_bar(indices, desc="base clip (DDIM)", disable=not progress):
        t = torch.full((x.shape[0],), timesteps[index], device=x.device, dtype=torch.long)
        eps = denoise(x, t, cond, uncond)
        if noise is None and schedule.eta > 0:
            raise ValueError("eta > 0: sample_ddim needs a noise source")
        step_noise = None if noise is None else noise.step_noise(tuple(x.shape), x.dtype, schedule.eta > 0)
        x, _ = ddim_step(x, eps, schedule, index, step_noise, use_scale)
    return x
