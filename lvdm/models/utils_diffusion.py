"""The diffusion noise schedule of the training timesteps: the buffers the published models register.

Samplers derive their own sub-schedules from ``alphas_cumprod`` (``fifo.schedule.DDIMSchedule``)."""

from __future__ import annotations

import numpy as np


def linear_betas(timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """The "linear" schedule of latent diffusion: linear in sqrt(beta). Float64, (timesteps,)."""
    return np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2


def schedule_buffers(betas: np.ndarray, v_prediction: bool = False) -> dict[str, np.ndarray]:
    """All buffers the published model registers from its betas, in float64.

    A v-prediction model registers zeros for the two ε → x₀ coefficients (as published: with
    a zero-terminal-SNR schedule they would be infinite at the last timestep).
    """
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
        "sqrt_recip_alphas_cumprod": np.zeros_like(ac) if v_prediction else np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.zeros_like(ac) if v_prediction else np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose schedule ends at zero signal (ᾱ_T = 0), keeping ᾱ_0 (Lin et al. 2023, Alg. 1).

    sqrt(ᾱ) is shifted so that its last value is 0 and scaled so that its first is unchanged;
    the betas are read back from the new ᾱ. Float64, same shape.
    """
    signal = np.sqrt(np.cumprod(1.0 - betas))
    first, last = signal[0], signal[-1]
    signal = (signal - last) * (first / (first - last))
    alphas_cumprod = signal**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


def scale_array(
    timesteps: int, scale_a: float, scale_b: float, fix_scale_bug: bool = False, turning_step: int = 400
) -> np.ndarray:
    """VideoCrafter's ``use_scale`` latent scale per timestep: a 400-step ramp then flat.

    Published checkpoints were made with the bug left in: the flat part is ``timesteps``
    long (1400 entries in all), which only matters for the buffer's shape.

    DynamiCrafter's ``use_dynamic_rescale`` array is the same shape: a ramp from 1 to
    ``base_scale`` over ``turning_step`` steps, then ``timesteps`` entries of ``base_scale``.
    """
    flat = timesteps - turning_step if fix_scale_bug else timesteps
    return np.concatenate([np.linspace(scale_a, scale_b, turning_step), np.full(flat, scale_b)])
