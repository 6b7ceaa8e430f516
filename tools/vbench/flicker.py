"""VBench's temporal flickering: the mean absolute change between consecutive uint8 frames."""

from __future__ import annotations

import math

import numpy as np


def temporal_flickering_score(frames: np.ndarray) -> float:
    """VBench's temporal flickering of one video, as a fraction (1.0: no change between frames).

    Args:
        frames: ``(t, h, w, c)`` uint8.

    Returns:
        ``(255 - mean_i MAE(frame_i, frame_{i+1})) / 255``, the mean over the ``t - 1`` pairs of the
        per-pair mean absolute difference; NaN for a single frame.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (t, h, w, c), got shape {frames.shape}")
    if len(frames) < 2:
        return math.nan
    # Pair by pair, so that a long video never needs a float copy of all its frames.
    pair_errors = [
        float(np.abs(frames[i + 1].astype(np.float32) - frames[i].astype(np.float32)).mean())
        for i in range(len(frames) - 1)
    ]
    return (255.0 - float(np.mean(pair_errors))) / 255.0
