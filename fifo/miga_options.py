"""The options of MIGA's mechanisms (``zigzag``, ``anchors``, ``reflect`` in ``--mode``).

MIGA is "Enhancing Train-Free Infinite-Frame Generation for Consistent Long Videos" (Feng et
al., ICML 2026); ``docs/miga.md`` describes each mechanism, the paper's equations and every
choice made where the paper leaves one open. The values are checked here; :mod:`fifo.options`
gathers them into :class:`~fifo.options.ModeOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fifo.geometry import FifoGeometry
from fifo.option_errors import ModeError, check_option
from fifo.zigzag import DEFAULT_ZIGZAG_LENGTH, ZigzagGeometry


@dataclass(frozen=True)
class ZigzagOptions:
    """The two-stage training-inference alignment (``zigzag``, :mod:`fifo.zigzag`).

    Attributes:
        length: L_zig, the latents that share a noise level in stage 1 (``--zigzag_length``).
    """

    length: int = DEFAULT_ZIGZAG_LENGTH

    def __post_init__(self) -> None:
        check_option(
            isinstance(self.length, int) and self.length >= 1,
            f"`zigzag_length` must be ≥ 1, got {self.length}",
            "zigzag_length",
        )

    def geometry(self, base: FifoGeometry) -> ZigzagGeometry:
        """The zigzag queue over ``base``'s f, n and lookahead.

        Raises:
            SettingsError: L_zig does not divide the frames a window writes back, or -n 1.
        """
        return ZigzagGeometry(base.video_length, base.num_partitions, base.lookahead, self.length)


@dataclass(frozen=True)
class AnchorOptions:
    """Long-range frame guidance (``anchors``, :mod:`fifo.tricks.anchors`).

    Attributes:
        frames: m_guid, the clean anchor frames put in front of every window (``--anchor_frames``);
            None: a quarter of the window (at least one), see :meth:`count`.
    """

    frames: int | None = None

    def __post_init__(self) -> None:
        check_option(
            self.frames is None or (isinstance(self.frames, int) and self.frames >= 1),
            f"`anchor_frames` must be ≥ 1, got {self.frames}",
            "anchor_frames",
        )

    def count(self, geometry: FifoGeometry) -> int:
        """m_guid for ``geometry``.

        The anchors take the place of the first frames a window reads but does not write back
        (its first f/2 with lookahead), so that the window keeps the model's f frames and every
        slot of the queue is still denoised once per iteration.

        Raises:
            ModeError: no lookahead (every frame of a window is written back), or more anchors
                than the f/2 frames a window only reads.
        """
        room = geometry.video_length - geometry.frames_written
        if room == 0:
            raise ModeError(
                "anchors take the place of the frames a window reads but does not write back, and "
                "without lookahead denoising a window writes back all of its frames: keep lookahead denoising "
                "on to use anchors"
            )
        if self.frames is None:
            return max(1, geometry.video_length // 4)
        if self.frames > room:
            raise ModeError(
                f"`anchor_frames` ({self.frames}) exceeds the {room} frames of a window that are "
                f"read but not written back (half of `video_length` {geometry.video_length}): "
                f"give `anchor_frames` ≤ {room}",
                options=("anchor_frames", "video_length"),
            )
        return self.frames


@dataclass(frozen=True)
class ReflectOptions:
    """Self-reflection (``reflect``, :mod:`fifo.tricks.reflect`).

    Attributes:
        threshold: the drop of the consistency score (mean cosine similarity, in [-1, 1]) below
            the recent scores' mean that makes a frame be re-drawn (``--reflect_threshold``).
        candidates: n_samp, the Gaussian candidates denoised when it fires (``--reflect_candidates``).
    """

    threshold: float = 0.05
    candidates: int = 4

    def __post_init__(self) -> None:
        check_option(
            math.isfinite(self.threshold) and 0.0 <= self.threshold <= 2.0,
            f"`reflect_threshold` must lie in [0, 2] (a drop of a cosine similarity), got {self.threshold}",
            "reflect_threshold",
        )
        check_option(
            isinstance(self.candidates, int) and self.candidates >= 1,
            f"`reflect_candidates` must be ≥ 1, got {self.candidates}",
            "reflect_candidates",
        )

    def check(self, geometry: FifoGeometry) -> None:
        """Refuse a queue too short for the evaluated frame's window (f frames ending max(1, f/8)
        slots before the tail, fifo.tricks.reflect).

        Raises:
            ModeError: the queue has fewer than f + max(1, f/8) slots (no lookahead and one partition).
        """
        depth = max(1, geometry.video_length // 8)
        if geometry.queue_length < geometry.video_length + depth:
            raise ModeError(
                f"reflect evaluates a frame {depth} slot(s) from the queue's tail in a window of the "
                f"{geometry.video_length} frames before it, but this queue has {geometry.queue_length} "
                "slots: keep lookahead denoising on or set `num_partitions` to 2 or more"
            )
