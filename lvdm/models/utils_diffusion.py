"""The diffusion noise schedule of the training timesteps: the buffers the published models register.

Samplers derive their own sub-schedules from ``alphas_cumprod`` (``fifo.schedule.DDIMSchedule``)."""

from __future__ import annotations

import numpy as np


def linear_betas(timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """The "linear" schedule of latent diffusion: linear in sqrt(beta). Float64, (timesteps,)."""
    return np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2


def schedule_buffers(betas: np.ndarray) -> dict[str, np.ndarray]:
    """All buffers the published model registers from its betas, in float64."""
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def scale_array(timesteps: int, scale_a: float, scale_b: float, fix_scale_bug: bool = False) -> np.ndarray:
    """VideoCrafter's ``use_scale`` latent scale per timestep: a 400-step ramp then flat.

    Published checkpoints were made with the bug left in: the flat part is ``timesteps``
    long (1400 entries in all), which only matters for the buffer's shape.
    """
    flat = timesteps - 400 if fix_scale_bug else timesteps
    return np.concatenate([np.linspace(scale_a, scale_b, 400), np.full(flat, scale_b)])
