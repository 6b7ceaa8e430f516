"""The interfaces through which the tricks and the rank group plug into the FIFO loop.

:class:`FifoSampler <fifo.sampler.FifoSampler>` takes a :class:`TailSampler` (what enters the
queue's tail), :class:`StepHook` s (a trick's part of every step), a :data:`WindowsStep` (how one
iteration's windows are computed: :func:`fifo.step.fifo_step` in this process, or split over
processes) and, optionally, a :class:`FrameShare` (the processes that share one video). They are
declared here, below the loop, so that the tricks and the composition implement them without
importing the loop, and the loop knows none of them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from fifo.noise import NoiseSource

if TYPE_CHECKING:
    from fifo.geometry import FifoGeometry
    from fifo.schedule import DDIMSchedule
    from fifo.state import FifoState


class TailSampler(Protocol):
    """What enters the queue at the tail after the shift: (1, c, 1, h, w).

    ``queue`` is the queue before the shift (its last slot is the previous tail).
    """

    def __call__(self, queue: Tensor, noise: NoiseSource) -> Tensor: ...


def gaussian_tail(queue: Tensor, noise: NoiseSource) -> Tensor:
    """Fresh Gaussian noise, as published."""
    return noise.tail(queue[:, :, :1])


WindowsStep = Callable[..., Tensor]
"""(denoise, queue, geometry, schedule, contexts, uncond, noise, window_batch) → the queue after
one DDIM step of every window (:func:`fifo.step.fifo_step`, the default)."""


class FrameShare(Protocol):
    """The processes that compute one video together, as the loop sees them: one of them (the
    writer) decodes frames and computes image tokens, and hands them to the others."""

    @property
    def is_writer(self) -> bool: ...

    def broadcast(
        self, tensor: Tensor | None, like: tuple[tuple[int, ...], torch.dtype] | None = None
    ) -> Tensor:
        """The writer's ``tensor`` in every process; the others pass ``like`` = (shape, dtype)."""
        ...


class LoopView(Protocol):
    """What a hook may read of the loop that calls it."""

    geometry: FifoGeometry
    schedule: DDIMSchedule

    @property
    def is_writer(self) -> bool: ...


class StepHook:
    """A trick's part of every step. Override what the trick needs; the defaults do nothing.

    Hooks run in the order they are given to the sampler. A hook keeps whatever must survive
    from one iteration to the next in ``state.hook_state[self.name]`` (tensors and plain values,
    so that it is saved, restored and shared with the rest of the state).
    """

    name = "hook"

    def after_windows(self, loop: LoopView, state: FifoState, queue: Tensor, contexts: Tensor) -> Tensor:
        """The queue after every window's DDIM step, before the dequeue: return it (changed or not).

        ``state.queue`` is still the queue before the step; ``contexts`` (W, m, d) is what each
        window of the iteration was conditioned on, in ``geometry.windows()`` order.
        """
        return queue

    def after_dequeue(self, loop: LoopView, state: FifoState, latent: Tensor) -> None:
        """Called with each iteration's dequeued latent (1, c, 1, h, w), before the shift."""
