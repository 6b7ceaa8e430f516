"""MIGA's two-stage training-inference alignment as a queue layout (``zigzag`` in ``--mode``).

Plain FIFO (:class:`~fifo.geometry.FifoGeometry`) gives every latent of the queue its own noise
level, so a window of f frames spans f levels. The zigzag layout groups the latents (docs/miga.md):

- **Stage 1** (zigzag): from pure noise down to the unified level u, latents step in groups of
  L = ``zigzag_length`` consecutive latents that share one level; neighbouring groups are L levels
  apart, so a window of f frames spans f/L levels.
- **Stage 2** (unified level): a latent that reaches u waits there until the whole write block of
  a window (``frames_written`` latents, the group that one window writes back) has arrived; the
  block then goes from u to clean at one level, in one window, as the model was trained.

Every latent still takes the schedule's f·n steps (S), one per iteration at most; one latent
leaves and one pure-noise latent enters per iteration, as in FIFO. Waiting costs slots, not steps:
the queue holds 2·g − 1 latents more than FIFO's (g = ``frames_written``), a constant, and one
window more per iteration covers them.

The layout is periodic: iteration D only matters through its phase D mod g, which
:meth:`ZigzagGeometry.at` fixes. The FIFO loop asks its geometry for the layout of each iteration
(``geometry.at(iteration)``); for plain FIFO that is the geometry itself.

Notation: latent k is the k-th to enter the queue (the base clip's latents included, k < 0 for the
clean history the lookahead reads); at iteration D it sits in slot ``k − D + g − 1 + lead`` and is
dequeued (clean) at iteration D = k + g − 1. Its level is the schedule index it will be stepped
from (−1: clean).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fifo.geometry import FifoGeometry, Window
from infra.errors import SettingsError

DEFAULT_ZIGZAG_LENGTH = 4
"""L_zig: MIGA's best zigzag length (the paper's ablation over L_zig)."""


@dataclass(frozen=True)
class ZigzagGeometry(FifoGeometry):
    """The zigzag queue for ``video_length`` f, ``num_partitions`` n, lookahead, and L = ``zigzag_length``.

    ``phase`` (0 ≤ phase < g) is the iteration modulo g; :meth:`at` gives an iteration's layout.
    """

    zigzag_length: int = DEFAULT_ZIGZAG_LENGTH
    phase: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        g, zl = self.group, self.zigzag_length
        if zl < 1 or g % zl:
            raise SettingsError(
                f"`zigzag_length` must divide the {g} frames a window writes back "
                f"({'half of ' if self.lookahead else ''}`video_length` {self.video_length}), got {zl}",
                options=("zigzag_length", "video_length"),
            )
        if self.num_partitions < 2:
            raise SettingsError(
                "the zigzag queue's unified stage takes the last `video_length` steps, and stage 1 "
                "needs steps before them: use `num_partitions` 2 or more with zigzag",
                options=("video_length", "num_partitions"),
            )

    # ------------------------------------------------------------------ constants of the layout
    @property
    def group(self) -> int:
        """g: the latents one window writes back, denoised together in stage 2."""
        return self.frames_written

    @property
    def unified_level(self) -> int:
        """u: the level at which stage 2 starts; stage 2 takes the last f steps (u = f − 1)."""
        return self.video_length - 1

    @property
    def queue_length(self) -> int:
        return self.lead + self.steps + 2 * self.group - 1

    def discarded_frames(self) -> int:
        """The warm-up: FIFO's, plus the g − 1 clean latents that come before the base clip's."""
        return self.steps - self.video_length + self.group - 1

    def num_iterations(self, new_video_length: int) -> int:
        return new_video_length + self.discarded_frames()

    # ------------------------------------------------------------------ one iteration's layout
    def at(self, iteration: int) -> ZigzagGeometry:
        """The layout of iteration ``iteration``."""
        return replace(self, phase=iteration % self.group)

    def latents(self) -> np.ndarray:
        """k of each slot, relative to the phase's iteration: (queue_length,)."""
        return np.arange(self.queue_length, dtype=np.int64) + self.phase - self.group + 1 - self.lead

    def _levels_at(self, offset: int) -> np.ndarray:
        """Level of each slot's latent ``offset`` iterations after this phase's."""
        k, d = self.latents(), self.phase + offset
        zl, g, s, u = self.zigzag_length, self.group, self.steps, self.unified_level
        stage1 = (k // zl) * zl + zl - 1 - d  # the last of its L-group entered d iterations ago
        stage2 = (k // g) * g + g - 1 - d  # same for its write block
        return np.where(stage1 >= u, np.minimum(stage1, s - 1), np.maximum(-1, np.minimum(u, stage2)))

    def levels(self) -> np.ndarray:
        """Level of each slot at the start of the iteration, (queue_length,): −1 clean, S − 1 for
        pure noise (also while it waits for its group)."""
        return self._levels_at(0)

    def stepping(self) -> np.ndarray:
        """Which slots take a step this iteration, (queue_length,) bool: the others wait."""
        now, then = self._levels_at(0), self._levels_at(1)
        return (now >= 0) & (then == now - 1)

    def slot_indices(self) -> np.ndarray:
        """The schedule index each slot is denoised at, (queue_length,): its level, clean as 0
        (as FIFO's lookahead slots)."""
        return np.maximum(self.levels(), 0)

    def initial_slot(self, slot: int, unilatent: bool) -> tuple[int, int]:
        """(schedule index, base-clip frame) of ``slot`` in the initial queue (phase 0)."""
        k = int(self.latents()[slot])
        return int(self.slot_indices()[slot]), self.base_frame_for_step(
            min(max(k, 0), self.steps - 1), unilatent
        )

    def windows(self) -> list[Window]:
        """S/g + 1 windows, noisiest first; their write blocks are the phase's groups of g latents."""
        g, f = self.group, self.video_length
        first = self.lead + (g - 1 - self.phase) % g
        starts = [first + j * g for j in range(self.steps // g + 1)]
        return [Window(s - (f - g), s + g, s) for s in reversed(starts)]
