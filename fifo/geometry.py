"""The FIFO queue's layout: slots, their noise levels, the windows of an iteration.

f = video_length, n = num_partitions, steps = f·n:

- With lookahead, the queue has f/2 extra leading slots at noise index 0; slot ``s`` is at
  schedule index ``max(0, s − f/2)``. Windows start every f/2 slots (2n windows) and only
  write back their last f/2 frames. Without lookahead, n disjoint windows of f.
- Each iteration runs one DDIM step on every window, noisiest first. Then the
  ``output_slot`` is clean: it is dequeued, the queue shifts by one, and fresh noise enters
  at the tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infra.errors import SettingsError


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
            raise SettingsError(
                f"`video_length` must be an even number ≥ 2, got {self.video_length}",
                options=("video_length",),
            )
        if self.num_partitions < 1:
            raise SettingsError(
                f"`num_partitions` must be ≥ 1, got {self.num_partitions}", options=("num_partitions",)
            )

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

    def at(self, iteration: int) -> FifoGeometry:
        """The layout of iteration ``iteration``: FIFO's is the same every iteration (a zigzag
        queue's is not, :class:`fifo.zigzag.ZigzagGeometry`)."""
        return self

    def stepping(self) -> np.ndarray | None:
        """Which slots a window's step writes, (queue_length,) bool; None: every written slot."""
        return None

    def initial_slot(self, slot: int, unilatent: bool) -> tuple[int, int]:
        """(schedule index, base-clip frame) of ``slot`` in the initial queue."""
        if slot < self.lead:
            return 0, 0
        i = slot - self.lead
        return i, self.base_frame_for_step(i, unilatent)

    def base_frame_for_step(self, i: int, unilatent: bool) -> int:
        """Base-clip frame that seeds the slot at schedule index ``i`` of the initial queue."""
        f = self.video_length
        if unilatent:
            return i // (self.steps // f)
        return max(0, i - (self.steps - f))

    @property
    def frames_written(self) -> int:
        """Frames each window writes back: its last f/2 with lookahead, all f without."""
        return self.video_length // 2 if self.lookahead else self.video_length

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
