"""FIFO diagonal denoising on the queue: build it, run one iteration over its windows, shift it.

The queue is a tensor (1, c, L, h, w) of latents at increasing noise levels (see
:mod:`fifo.geometry`). Within one iteration no window reads a slot that an earlier window of
the same iteration wrote, so the windows can run one by one (as published) or batched, with
the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.noise import NoiseSource
from fifo.schedule import DDIMSchedule

if TYPE_CHECKING:
    from fifo.flow import FlowSchedule

Schedule = Union[DDIMSchedule, "FlowSchedule"]
"""What the FIFO core asks of a schedule: ``step(x, output, index, noise)`` per frame,
``noised(z0, eps, index)``, ``timesteps`` (steps,), ``eta``: DDIM or the flow's Euler steps."""


def initial_queue(
    base_latents: Tensor,
    geometry: FifoGeometry,
    schedule: Schedule,
    unilatent: bool,
    noise: NoiseSource,
) -> Tensor:
    """Noise the base clip's frames to each slot's level: (1, c, f, h, w) → (1, c, L, h, w).

    One draw per slot, in slot order.
    """
    slots = []
    for s in range(geometry.queue_length):
        i, frame = geometry.initial_slot(s, unilatent)
        z0 = base_latents[:, :, frame : frame + 1]
        slots.append(schedule.noised(z0, noise.queue_slot(z0), i))
    return torch.cat(slots, dim=2)


def iteration_noise(
    noise: NoiseSource, geometry: FifoGeometry, queue: Tensor, schedule: Schedule
) -> Tensor | None:
    """The DDIM noise of one iteration's windows, (W, c, f, h, w), or None when eta is 0."""
    b, c, _, h, w = queue.shape
    return noise.window_noise(
        len(geometry.windows()) * b, (c, geometry.video_length, h, w), queue.dtype, needed=schedule.eta > 0
    )


def denoise_windows(
    denoise: GuidedDenoiser,
    queue: Tensor,
    geometry: FifoGeometry,
    schedule: Schedule,
    contexts: Tensor,
    uncond: Tensor | None,
    noise: Tensor | None = None,
    window_batch: int | None = None,
    indices: Sequence[int] | None = None,
) -> Tensor:
    """One step (DDIM or the flow's) of the windows ``indices`` of an iteration: the frames they write back.

    Args:
        denoise: the guided denoiser (one window per row).
        queue: (1, c, L, h, w), as it was at the start of the iteration.
        contexts: (W, m, d), the condition of each window in ``geometry.windows()`` order.
        uncond: (1, m, d) unconditional context, or None for no guidance.
        noise: (W, c, f, h, w) DDIM noise per window (eta > 0), same order.
        window_batch: windows per denoiser call (None: all at once; 1: one by one, as published).
        indices: which windows (positions in ``geometry.windows()``), in order; None: all.
    Returns:
        (k, c, f_w, h, w): for each of the k windows, the f_w frames it writes back (its last f/2
        with lookahead, all f without).
    """
    windows = geometry.windows()
    indices = list(range(len(windows))) if indices is None else list(indices)
    b, c, _, h, w_ = queue.shape
    if not indices:
        return queue.new_empty((0, c, geometry.frames_written, h, w_))
    selected = [windows[i] for i in indices]
    slot_idx = torch.from_numpy(geometry.slot_indices()).to(queue.device)
    timesteps = schedule.timesteps.to(queue.device)[slot_idx]
    chunk = len(selected) if window_batch is None else max(1, window_batch)
    # Every window reads the queue as it was at the start of the iteration (see module doc).
    inputs = torch.cat([queue[:, :, w.start : w.end] for w in selected])
    index = torch.stack([slot_idx[w.start : w.end] for w in selected])  # (k, f)
    t = torch.stack([timesteps[w.start : w.end] for w in selected])
    if len(indices) < len(windows):  # a share of the windows (several ranks)
        rows = torch.tensor(indices, device=queue.device)
        contexts = contexts[rows.to(contexts.device)]
        noise = None if noise is None else noise[rows.to(noise.device)]
    keep = geometry.video_length - geometry.frames_written
    stepping = geometry.stepping()
    if stepping is not None:  # slots that wait this iteration keep their latent (a zigzag queue)
        mask = torch.from_numpy(stepping).to(queue.device)
        steps = torch.stack([mask[w.write_start : w.end] for w in selected])[:, None, :, None, None]
    written = []
    for lo in range(0, len(selected), chunk):
        sl = slice(lo, lo + chunk)
        n = inputs[sl].shape[0]
        unc = None if uncond is None else uncond.expand(n, -1, -1)
        eps = denoise(inputs[sl], t[sl], contexts[sl], unc)
        x_prev, _ = schedule.step(inputs[sl], eps, index[sl], None if noise is None else noise[sl])
        if stepping is not None:
            x_prev[:, :, keep:] = torch.where(steps[sl], x_prev[:, :, keep:], inputs[sl][:, :, keep:])
        written.append(x_prev[:, :, keep:])
    return torch.cat(written)


def write_back(
    queue: Tensor, geometry: FifoGeometry, written: Tensor, indices: Sequence[int] | None = None
) -> Tensor:
    """The queue with the frames ``written`` (k, c, f_w, h, w) of windows ``indices`` (default all)
    put in their slots. No two windows of an iteration write the same slot."""
    windows = geometry.windows()
    indices = range(len(windows)) if indices is None else indices
    out = queue.clone()
    for k, i in enumerate(indices):
        w = windows[i]
        out[:, :, w.write_start : w.end] = written[k : k + 1]
    return out


def fifo_step(
    denoise: GuidedDenoiser,
    queue: Tensor,
    geometry: FifoGeometry,
    schedule: Schedule,
    contexts: Tensor,
    uncond: Tensor | None,
    noise: Tensor | None = None,
    window_batch: int | None = None,
) -> Tensor:
    """One FIFO iteration over all windows (before the shift). Returns the new queue.

    See :func:`denoise_windows` for the arguments.
    """
    written = denoise_windows(denoise, queue, geometry, schedule, contexts, uncond, noise, window_batch)
    return write_back(queue, geometry, written)


def shift_queue(queue: Tensor, tail: NoiseSource | Tensor) -> Tensor:
    """Drop the first slot and append ``tail`` (1, c, 1, h, w), or fresh Gaussian noise from a source."""
    if isinstance(tail, NoiseSource):
        tail = tail.tail(queue[:, :, :1])
    return torch.cat([queue[:, :, 1:], tail], dim=2)
