"""Flow matching: the schedule a flow model is sampled along, its Euler step, the base-clip loop.

Beside the DDIM schedule (:mod:`fifo.schedule`): a flow model (Wan2.1) sees latents
``x_σ = (1 − σ)·x₀ + σ·ε`` and predicts the velocity ``v = ε − x₀``; one Euler step goes from σ
to the next lower level σ' as ``x + (σ' − σ)·v``. The levels are those of diffusers'
``FlowMatchEulerDiscreteScheduler`` with Wan's shift (``σ ↦ s·σ / (1 + (s − 1)·σ)``), so that
the base clip is WanPipeline's with that scheduler. Both schedules offer what the FIFO core
asks of a schedule: ``step`` (one step per frame), ``noised`` (a clean latent brought to a
slot's level), ``timesteps`` and ``eta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from fifo.guidance import GuidedDenoiser
from infra.progress import progress as progress_bar

TRAIN_TIMESTEPS = 1000


def shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Wan's shift of the noise levels: more of the steps at high noise for shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = TRAIN_TIMESTEPS) -> np.ndarray:
    """The ``num_steps`` noise levels, decreasing from 1, float32, as FlowMatchEulerDiscreteScheduler
    (``shift``, no dynamic shifting) sets them: the training grid's shifted lowest level in
    float32, an even spread between it and 1, shifted."""
    grid = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
    train = grid / np.float32(num_train_timesteps)
    train = np.float32(shift) * train / (1 + np.float32(shift - 1) * train)  # the scheduler's float32 table
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    spread = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    return shifted(spread / num_train_timesteps, shift).astype(np.float32)


@dataclass(frozen=True)
class FlowSchedule:
    """The flow's levels, indexed by step index (0 = least noisy), as the DDIM schedule is.

    Attributes:
        sigmas: (steps,) float32, the level of step index i (the queue slot at index i).
        sigmas_prev: (steps,) float32, the level step i goes to (0 after index 0).
        timesteps: (steps,) float32, σ·1000: what the transformer is fed.
        sigma_values, timestep_values: the same on the host, for what the sampler decides in Python.
        shift: the schedule's shift.
    """

    sigmas: Tensor
    sigmas_prev: Tensor
    timesteps: Tensor
    sigma_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    timestep_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    shift: float = 1.0
    eta: float = 0.0  # the Euler step draws no noise

    @property
    def num_steps(self) -> int:
        return len(self.sigma_values)

    @classmethod
    def create(cls, num_steps: int, shift: float) -> FlowSchedule:
        """The schedule of ``num_steps`` Euler steps with ``shift``."""
        if num_steps < 1:
            raise ValueError(f"flow steps must be ≥ 1, got {num_steps}")
        # All on the host in numpy (float32 as the scheduler), so that it also builds inside a
        # fake-tensor mode (a planned run).
        down = flow_sigmas(num_steps, shift)  # noisiest first
        sigmas = np.ascontiguousarray(down[::-1])
        prev = np.concatenate([np.zeros(1, dtype=np.float32), sigmas[:-1]])
        t = (sigmas * np.float32(TRAIN_TIMESTEPS)).astype(np.float32)  # σ·1000 in float32, as the scheduler
        return cls(
            torch.from_numpy(sigmas.copy()),
            torch.from_numpy(prev),
            torch.from_numpy(t.copy()),
            sigmas,
            t,
            float(shift),
            0.0,
        )

    def to(self, device: torch.device | str) -> FlowSchedule:
        """The same schedule with its tensors on ``device``."""

        def move(value: object) -> object:
            return value.to(device) if isinstance(value, Tensor) else value

        return FlowSchedule(*(move(getattr(self, f.name)) for f in fields(self)))

    def step(
        self, x: Tensor, output: Tensor, index: int | Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One Euler step of latents ``x`` (b, c, t, h, w) with velocity ``output`` from step index
        ``index`` (a scalar, (t,) or (b, t): per frame) to the level below → (x_prev, pred_x0)."""
        sigma = _gather(self.sigmas, index, x)
        dt = _gather(self.sigmas_prev, index, x) - sigma
        return x.float() + dt * output, x.float() - sigma * output

    def noised(self, z0: Tensor, eps: Tensor, index: int) -> Tensor:
        """A clean latent brought to step index ``index``'s level: σ·ε + (1 − σ)·x₀."""
        sigma = float(self.sigma_values[index])
        return sigma * eps + (1.0 - sigma) * z0


def _gather(values: Tensor, index: int | Tensor, like: Tensor) -> Tensor:
    """values[index] shaped to broadcast over ``like`` (b, c, t, h, w), in float32."""
    if isinstance(index, int):
        return values[index].to(like.device).reshape(1, 1, 1, 1, 1)
    out = values.to(like.device)[index.to(like.device)]
    if out.dim() == 0:
        return out.reshape(1, 1, 1, 1, 1)
    if out.dim() == 1:
        return out.reshape(1, 1, -1, 1, 1)
    return out.reshape(out.shape[0], 1, out.shape[1], 1, 1)


def sample_flow(
    denoise: GuidedDenoiser,
    x_T: Tensor,
    schedule: FlowSchedule,
    cond: Tensor,
    uncond: Tensor | None,
    progress: bool = True,
    max_steps: int | None = None,
) -> Tensor:
    """A clip from pure noise x_T (b, c, t, h, w) along every level of the schedule → clean
    latents, float32: one guided velocity and one Euler step per level, all frames at the same
    level (WanPipeline's loop). ``max_steps`` stops early (for planning a run)."""
    x = x_T.float()
    timesteps = schedule.timesteps.to(x.device)
    indices = list(range(schedule.num_steps - 1, -1, -1))[:max_steps]
    for index in progress_bar(indices, desc="base clip (flow)", disable=not progress):
        t = timesteps[index].expand(x.shape[0])
        velocity = denoise(x, t, cond, uncond)
        x, _ = schedule.step(x, velocity, index)
    return x
