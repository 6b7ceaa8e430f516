"""The diffusion noise schedule (training timesteps) and the DDIM sub-schedule derived from it."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


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


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Evenly spread DDIM timesteps from 0 to T-1 inclusive (the FIFO fork's discretisation)."""
    return np.round(np.linspace(0, num_train_timesteps - 1, num_steps)).astype(np.int64)


@dataclass(frozen=True)
class DDIMSchedule:
    """The DDIM sub-schedule, indexed by step index (0 = least noisy). All arrays (steps,)."""

    timesteps: Tensor  # int64
    alphas: Tensor  # float64: ᾱ at each DDIM timestep
    alphas_prev: Tensor  # float64: ᾱ of the previous (less noisy) DDIM timestep
    sigmas: Tensor  # float64: DDIM noise scale for eta
    scale_arr: Tensor | None  # float64 latent scale (use_scale models), else None
    scale_arr_prev: Tensor | None
    eta: float = 0.0  # kept so samplers know whether to draw noise without reading a device tensor

    def to(self, device: torch.device | str) -> DDIMSchedule:
        """The same schedule on ``device`` (the sampler then never syncs with the host)."""

        def move(value: object) -> object:
            return value.to(device) if isinstance(value, Tensor) else value

        return DDIMSchedule(*(move(getattr(self, f.name)) for f in fields(self)))

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    @classmethod
    def create(
        cls,
        alphas_cumprod: Tensor,
        num_steps: int,
        eta: float,
        scale_arr: Tensor | None = None,
    ) -> DDIMSchedule:
        """Build from the model's ``alphas_cumprod`` (and ``scale_arr`` if it uses one)."""
        if num_steps < 1 or num_steps > alphas_cumprod.numel():
            raise ValueError(f"DDIM steps must be in 1..{alphas_cumprod.numel()}, got {num_steps}")
        ts = torch.from_numpy(ddim_timesteps(num_steps, alphas_cumprod.numel()))
        ac = alphas_cumprod.detach().cpu().double()
        alphas = ac[ts]
        alphas_prev = torch.cat([ac[:1], ac[ts[:-1]]])
        sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        scale, scale_prev = None, None
        if scale_arr is not None:
            scale = scale_arr.detach().cpu().double()[ts]
            scale_prev = torch.cat([scale[:1], scale[:-1]])
        return cls(ts, alphas, alphas_prev, sigmas, scale, scale_prev, float(eta))
