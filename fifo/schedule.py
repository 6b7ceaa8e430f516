"""The DDIM sub-schedule a sampler walks, derived from a model's training noise schedule.

Kept apart from the model (as diffusers keeps its schedulers): the model registers
``alphas_cumprod`` (and ``scale_arr`` for ``use_scale`` models); a sampler builds the
sub-schedule it needs with :meth:`DDIMSchedule.from_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn


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

    @classmethod
    def from_model(cls, model: nn.Module, num_steps: int, eta: float) -> DDIMSchedule:
        """The schedule of a LatentDiffusion (its ``alphas_cumprod`` and ``scale_arr``), on its device."""
        schedule = cls.create(model.alphas_cumprod, num_steps, eta, getattr(model, "scale_arr", None))
        return schedule.to(model.alphas_cumprod.device)
