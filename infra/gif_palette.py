"""A 256-colour palette per GIF frame: median cut refined by k-means, with exact nearest colours.

Pillow's median cut over every pixel of a noisy 320x512 frame is slow (its cost grows with the
number of distinct colours), and its own palette lookup is approximate (a coarse colour cache).
:func:`quantize_frame` starts from Pillow's median cut on a regular subsample (or on the whole
frame when it has few distinct colours), refines the palette with a few Lloyd (k-means) steps, and
maps every pixel to its truly nearest palette colour.

Determinism: everything is computed from the frame alone, in integer-valued float32 whose sums and
products stay below 2**24 (so they are exact whatever the summation order or the CPU's vector
width), float64 sums of integers, and first-index ties; the same frame gives the same bytes on
every run, which a resumed video relies on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["quantize_frame"]

COLOURS = 256
# At most this many distinct colours: median cut on the whole frame is cheap, and the refinement
# runs on the exact colour histogram, so the result is never worse than plain median cut.
_FEW_COLOURS = 8192
_INIT_STRIDE = 4  # median cut on every 4th pixel of every 4th row
_SAMPLE_STRIDE = 2  # Lloyd steps on every 2nd pixel of every 2nd row
_STEPS = 3
# Pixels per distance block: (256, 256) float32 stays in cache, and a (256 x 4) @ (4 x 256)
# product is below the size at which OpenBLAS hands it to more threads (which would fight the
# generating thread for cores, and cost far more than they save at this size).
_CHUNK = 256


def _median_cut(pixels: np.ndarray) -> np.ndarray:
    """Pillow's median-cut palette of an ``(h, w, 3)`` uint8 image: ``(k, 3)`` float32, k <= 256,
    the entries it uses."""
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB").quantize(
        colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    palette = np.asarray(image.getpalette() or [], dtype=np.float32).reshape(-1, 3)
    used = np.bincount(np.asarray(image).ravel(), minlength=len(palette)) > 0
    return palette[used[: len(palette)]]


def _with_one(colours: np.ndarray) -> np.ndarray:
    """``(n, 3)`` uint8 or float32 colours as ``(n, 4)`` float32 ``[r, g, b, 1]``."""
    out = np.ones((len(colours), 4), dtype=np.float32)
    out[:, :3] = colours
    return out


def nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry (squared RGB distance, first index on ties).

    Args:
        colours: ``(n, 4)`` float32 ``[r, g, b, 1]`` with integer r, g, b in 0..255.
        palette: ``(k, 3)`` float32 holding integers 0..255.

    Returns:
        ``(n,)`` intp.
    """
    # |x - c|^2 = |x|^2 + (-2 c).x + |c|^2; |x|^2 is the same for every c, the rest is one
    # product with [x, 1]. Every term is an integer below 2**24, so float32 holds it exactly.
    weights = np.empty((4, len(palette)), dtype=np.float32)
    weights[:3] = -2.0 * palette.T
    weights[3] = (palette * palette).sum(axis=1)
    out = np.empty(len(colours), dtype=np.intp)
    block = np.empty((_CHUNK, len(palette)), dtype=np.float32)
    for start in range(0, len(colours), _CHUNK):
        part = colours[start : start + _CHUNK]
        distances = block[: len(part)]
        np.matmul(part, weights, out=distances)
        out[start : start + len(part)] = distances.argmin(axis=1)
    return out


def _squared_error(colours: np.ndarray, weights: np.ndarray, palette: np.ndarray, index: np.ndarray) -> float:
    diff = colours[:, :3] - palette[index]
    return float(((diff * diff).sum(axis=1, dtype=np.float64) * weights).sum())


def _lloyd(colours: np.ndarray, weights: np.ndarray, palette: np.ndarray, steps: int) -> np.ndarray:
    """Move each palette entry to the (rounded) weighted mean of the colours nearest to it; an
    entry nobody uses moves to the worst-served colour. Keeps the palette with the least weighted
    squared error over ``colours``, the starting one included.

    Args:
        colours: ``(n, 4)`` float32 ``[r, g, b, 1]``.
        weights: ``(n,)`` float64 count of each colour.
        palette: ``(k, 3)`` float32 start.
        steps: Lloyd steps.

    Returns:
        ``(k, 3)`` float32 palette of integers.
    """
    rgb = colours[:, :3].astype(np.float64) * weights[:, None]
    index = nearest(colours, palette)
    best, best_error = palette, _squared_error(colours, weights, palette, index)
    for _ in range(steps):
        counts = np.bincount(index, weights=weights, minlength=len(palette))
        sums = np.stack(
            [np.bincount(index, weights=rgb[:, c], minlength=len(palette)) for c in range(3)], axis=1
        )
        moved = palette.copy()
        used = counts > 0
        moved[used] = np.round(sums[used] / counts[used, None])
        unused = np.flatnonzero(~used)
        if len(unused):
            diff = colours[:, :3] - palette[index]
            worst = np.argsort(-(diff * diff).sum(axis=1), kind="stable")[: len(unused)]
            moved[unused[: len(worst)]] = colours[worst, :3]
        palette = moved
        index = nearest(colours, palette)
        error = _squared_error(colours, weights, palette, index)
        if error < best_error:
            best, best_error = palette, error
    return best


def quantize_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An adaptive palette of at most 256 colours for one frame and each pixel's index into it.

    Args:
        frame: ``(h, w, 3)`` uint8 RGB.

    Returns:
        ``(h, w)`` uint8 indices and the ``(k, 3)`` uint8 palette, k <= 256.
    """
    h, w, _ = frame.shape
    histogram = Image.fromarray(np.ascontiguousarray(frame), "RGB").getcolors(_FEW_COLOURS)
    if histogram is not None:
        # Few distinct colours: median cut sees them all, and the refinement works on the exact
        # histogram, so it never ends worse than the median cut's palette.
        palette = _median_cut(frame)
        counts = np.array([count for count, _ in histogram], dtype=np.float64)
        colours = _with_one(np.array([colour for _, colour in histogram], dtype=np.uint8))
    else:
        palette = _median_cut(frame[::_INIT_STRIDE, ::_INIT_STRIDE])
        colours = _with_one(frame[::_SAMPLE_STRIDE, ::_SAMPLE_STRIDE].reshape(-1, 3))
        counts = np.ones(len(colours))
    palette = _lloyd(colours, counts, palette, _STEPS)
    index = nearest(_with_one(frame.reshape(-1, 3)), palette)
    return index.astype(np.uint8).reshape(h, w), palette.astype(np.uint8)
