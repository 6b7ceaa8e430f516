"""DDIM with classifier-free guidance: one step, and the loop for a fixed-length clip.

The step takes one schedule index per clip, per frame ``(t,)``, or per sample and frame
``(b, t)``, which is all FIFO needs on top of the base sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lvdm.models.utils_diffusion import DDIMSchedule

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(x, timesteps, context) → eps. x (b, …) and timesteps (b,) or (b, t); context (k·b, m, d),
k contexts per sample, branch-major; eps (k·b, …): each sample under each of its contexts."""


def _gather(values: Tensor, index: int | Tensor, like: Tensor) -> Tensor:
    """values[index] shaped to broadcast over ``like`` (b, c, t, h, w)."""
    idx = torch.as_tensor(index).to(values.device)
    out = values[idx].to(device=like.device, dtype=like.dtype)
    if idx.dim() == 0:
        return out.reshape(1, 1, 1, 1, 1)
    if idx.dim() == 1:  # one index per frame
        return out.reshape(1, 1, -1, 1, 1)
    return out.reshape(out.shape[0], 1, out.shape[1], 1, 1)  # (b, t)


def guided_noise(
    denoise: Denoiser,
    x: Tensor,
    t: Tensor,
    cond: Tensor,
    uncond: Tensor | None,
    scale: float,
    batched: bool = True,
) -> Tensor:
    """Classifier-free guidance: eps_u + scale·(eps_c − eps_u).

    ``batched`` evaluates both branches in one call, x once with two contexts per sample (same
    result; the U-Net runs its context-free layers once for both); otherwise, or when the two
    contexts differ in length (text-only base clip of the image model against text +
    zero-image unconditional tokens), two calls as published.
    """
    if uncond is None or scale == 1.0:
        return denoise(x, t, cond)
    if batched and cond.shape[1:] == uncond.shape[1:]:
        eps_c, eps_u = denoise(x, t, torch.cat([cond, uncond])).chunk(2)
    else:
        eps_c, eps_u = denoise(x, t, cond), denoise(x, t, uncond)
    return eps_u + scale * (eps_c - eps_u)


def ddim_step(
    x: Tensor,
    eps: Tensor,
    schedule: DDIMSchedule,
    index: int | Tensor,
    noise: Tensor | None = None,
    use_scale: bool = False,
) -> tuple[Tensor, Tensor]:
    """One DDIM update from schedule step ``index`` to the one before it.

    Args:
        x, eps: (b, c, t, h, w) latents and predicted noise.
        index: schedule index, a scalar, (t,) or (b, t).
        noise: standard normal noise like ``x`` (needed when the schedule's eta > 0).
        use_scale: VideoCrafter's latent rescaling (the base sampler of ``use_scale`` models;
            the published FIFO step leaves it out).
    Returns:
        (x_prev, pred_x0)
    """
    a_t = _gather(schedule.alphas, index, x)
    a_prev = _gather(schedule.alphas_prev, index, x)
    sigma = _gather(schedule.sigmas, index, x)
    pred_x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma**2).sqrt() * eps
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
    denoise: Denoiser,
    x_T: Tensor,
    schedule: DDIMSchedule,
    cond: Tensor,
    uncond: Tensor | None,
    guidance: float,
    use_scale: bool,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """Denoise a clip from x_T (b, c, t, h, w) through every schedule step → clean latents."""
    x = x_T
    timesteps = schedule.timesteps.tolist()  # one host transfer, not one per step
    for index in tqdm(range(schedule.num_steps - 1, -1, -1), desc="base clip (DDIM)", disable=not progress):
        t = torch.full((x.shape[0],), timesteps[index], device=x.device, dtype=torch.long)
        eps = guided_noise(denoise, x, t, cond, uncond, guidance)
        noise = None
        if schedule.eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x, _ = ddim_step(x, eps, schedule, index, noise, use_scale)
    return x
