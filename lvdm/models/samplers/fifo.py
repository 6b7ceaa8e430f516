"""FIFO diagonal denoising: a queue of latents at increasing noise levels.

Geometry (f = video_length, n = num_partitions, steps = f·n):

- With lookahead, the queue has f/2 extra leading slots at noise index 0; slot ``s`` is at
  schedule index ``max(0, s − f/2)``. Windows start every f/2 slots (2n windows) and only
  write back their last f/2 frames. Without lookahead, n disjoint windows of f.
- Each iteration runs one DDIM step on every window, noisiest first. No window reads a slot
  that an earlier window of the same iteration wrote, so all windows can also run as one
  batch (``batched=True``) with the same result.
- Then the ``output_slot`` is clean: it is dequeued, the queue shifts by one, and fresh
  noise enters at the tail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lvdm.models.samplers.ddim import Denoiser, ddim_step, guided_noise
from lvdm.models.utils_diffusion import DDIMSchedule


@dataclass(frozen=True)
class Window:
    """Slots [start, end) are denoised together; [write_start, end) are written back."""

    start: int
    end: int
    write_start: int


@dataclass(frozen=True)
class FifoGeometry:
    """Queue layout for ``video_length`` f, ``num_partitions`` n and lookahead."""

    video_length: int = 16
    num_partitions: int = 4
    lookahead: bool = True

    def __post_init__(self) -> None:
        if self.video_length < 2 or self.video_length % 2:
            raise ValueError(f"video_length must be an even number ≥ 2, got {self.video_length}")
        if self.num_partitions < 1:
            raise ValueError(f"num_partitions must be ≥ 1, got {self.num_partitions}")

    @property
    def steps(self) -> int:
        """DDIM steps of the schedule: f·n."""
        return self.video_length * self.num_partitions

    @property
    def lead(self) -> int:
        """Extra leading slots at noise index 0 (lookahead only)."""
        return self.video_length // 2 if self.lookahead else 0

    @property
    def queue_length(self) -> int:
        return self.lead + self.steps

    @property
    def output_slot(self) -> int:
        """The slot that is clean after an iteration."""
        return self.lead

    def slot_indices(self) -> np.ndarray:
        """Schedule index of each slot, (queue_length,)."""
        return np.concatenate([np.zeros(self.lead, dtype=np.int64), np.arange(self.steps, dtype=np.int64)])

    def base_frame_for_step(self, i: int, unilatent: bool) -> int:
        """Base-clip frame that seeds the slot at schedule index ``i`` of the initial queue."""
        f = self.video_length
        if unilatent:
            return i // (self.steps // f)
        return max(0, i - (self.steps - f))

    def windows(self) -> list[Window]:
        """Windows in processing order, noisiest first."""
        f = self.video_length
        if self.lookahead:
            starts = [r * (f // 2) for r in range(2 * self.num_partitions)]
            return [Window(s, s + f, s + f // 2) for s in reversed(starts)]
        return [Window(r * f, r * f + f, r * f) for r in reversed(range(self.num_partitions))]

    def num_iterations(self, new_video_length: int) -> int:
        """Iterations (dequeued frames) to produce ``new_video_length`` output frames."""
        return new_video_length + self.steps - self.video_length

    def discarded_frames(self) -> int:
        """Dequeued frames that come before the video (the queue's warm-up)."""
        return self.steps - self.video_length


def initial_queue(
    base_latents: Tensor,
    geometry: FifoGeometry,
    schedule: DDIMSchedule,
    unilatent: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise the base clip's frames to each slot's level: (1, c, f, h, w) → (1, c, L, h, w)."""
    alphas = schedule.alphas
    slots = []
    for s in range(geometry.queue_length):
        if s < geometry.lead:
            i, frame = 0, 0
        else:
            i = s - geometry.lead
            frame = geometry.base_frame_for_step(i, unilatent)
        z0 = base_latents[:, :, frame : frame + 1]
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        a = float(alphas[i])
        slots.append(a**0.5 * z0 + (1.0 - a) ** 0.5 * eps)
    return torch.cat(slots, dim=2)


def fifo_step(
    denoise: Denoiser,
    queue: Tensor,
    geometry: FifoGeometry,
    schedule: DDIMSchedule,
    contexts: Tensor,
    uncond: Tensor | None,
    guidance: float,
    noise: Tensor | None = None,
    batched: bool = True,
    window_batch: int | None = None,
) -> Tensor:
    """One FIFO iteration over all windows (before the shift). Returns the new queue.

    Args:
        queue: (1, c, L, h, w).
        contexts: (W, m, d), the condition of each window in ``geometry.windows()`` order.
        uncond: (1, m, d) unconditional context, or None for no guidance.
        noise: (W, c, f, h, w) DDIM noise per window (eta > 0), same order.
        batched: all windows (and both guidance branches) in one U-Net call per chunk of
            ``window_batch`` windows; otherwise one window and one branch per call, as published.
    """
    windows = geometry.windows()
    slot_idx = torch.from_numpy(geometry.slot_indices()).to(queue.device)
    timesteps = schedule.timesteps.to(queue.device)[slot_idx]
    if not batched:
        window_batch = 1
    chunk = len(windows) if window_batch is None else max(1, window_batch)
    # Every window reads the queue as it was at the start of the iteration (see module doc).
    inputs = torch.cat([queue[:, :, w.start : w.end] for w in windows])
    index = torch.stack([slot_idx[w.start : w.end] for w in windows])  # (W, f)
    t = torch.stack([timesteps[w.start : w.end] for w in windows])
    out = queue.clone()
    for lo in range(0, len(windows), chunk):
        sl = slice(lo, lo + chunk)
        n = inputs[sl].shape[0]
        unc = None if uncond is None else uncond.expand(n, -1, -1)
        eps = guided_noise(denoise, inputs[sl], t[sl], contexts[sl], unc, guidance, batched=batched)
        x_prev, _ = ddim_step(inputs[sl], eps, schedule, index[sl], None if noise is None else noise[sl])
        for k, w in enumerate(windows[sl]):
            keep = w.write_start - w.start
            out[:, :, w.write_start : w.end] = x_prev[k : k + 1, :, keep:]
    return out


def shift_queue(queue: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Drop the first slot, append fresh Gaussian noise at the tail."""
    tail = torch.randn(queue[:, :, :1].shape, generator=generator, device=queue.device, dtype=queue.dtype)
    return torch.cat([queue[:, :, 1:], tail], dim=2)


def window_noise(
    geometry: FifoGeometry, queue: Tensor, schedule: DDIMSchedule, generator: torch.Generator | None
) -> Tensor | None:
    """DDIM noise for every window of an iteration, or None when eta is 0."""
    if schedule.eta <= 0:
        return None
    n_windows = len(geometry.windows())
    b, c, _, h, w = queue.shape
    shape = (n_windows * b, c, geometry.video_length, h, w)
    return torch.randn(shape, generator=generator, device=queue.device, dtype=queue.dtype)


ContextFn = Callable[[int, list[Window]], Tensor]
"""(iteration, windows) → (W, m, d) conditions for that iteration."""
