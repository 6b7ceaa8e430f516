"""The GIF writer's palette step timed side by side with Pillow's median cut, in one run
(``scripts/benchmark.py`` prints it; ``python -m tools.bench.gif`` runs it alone).

Both quantize the same constructed 320x512 frames (smooth gradients, shaded discs, flat boxes and
sensor-like Gaussian noise, so that nearly every pixel is a distinct colour, as in a decoded
video frame), one after the other per frame, with no dithering. Times are CPU seconds of the
calling thread (one core), so other work on the host does not count; PSNR is against the RGB
frame.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from PIL import Image

from infra.gif_palette import quantize_frame

FRAMES = 8
HEIGHT, WIDTH = 320, 512


def constructed_frame(seed: int, height: int = HEIGHT, width: int = WIDTH, noise: float = 4.0) -> np.ndarray:
    """A deterministic test frame ``(height, width, 3)`` uint8: gradients, objects and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
        image[..., c] = 128 + 100 * np.sin(np.pi * fx * x / width + phase) * np.cos(np.pi * fy * y / height)
    for _ in range(8):  # shaded discs
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.25) * height
        d2 = ((y - cy) ** 2 + (x - cx) ** 2) / (r * r)
        inside = d2 < 1
        image[inside] = rng.uniform(0, 255, 3) * (1 - 0.4 * d2[inside, None])
    for _ in range(4):  # flat boxes
        y0, x0 = rng.integers(0, height * 7 // 8), rng.integers(0, width * 7 // 8)
        image[y0 : y0 + height // rng.integers(3, 16), x0 : x0 + width // rng.integers(3, 16)] = rng.uniform(
            0, 255, 3
        )
    image += rng.normal(0.0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def psnr(frame: np.ndarray, approximation: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of an ``(h, w, 3)`` uint8 approximation of ``frame``."""
    mse = np.mean((frame.astype(np.float64) - approximation.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def median_cut(frame: np.ndarray) -> np.ndarray:
    """Pillow's median cut over every pixel, no dithering, back as ``(h, w, 3)`` uint8 RGB."""
    image = Image.fromarray(frame, "RGB").quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    return np.asarray(image.convert("RGB"))


def palette_comparison(frames: int | None = None) -> dict[str, Any]:
    """Time and PSNR of the GIF writer's palette step against Pillow's median cut.

    Returns:
        ``frames``, ``size`` (h, w), the mean CPU seconds per frame of each (``seconds``,
        ``median_cut_seconds``), their ``ratio`` (median cut / this), the mean PSNR of each and
        the smallest per-frame PSNR gain over median cut (``min_psnr_gain_db``; negative: worse).
    """
    count = FRAMES if frames is None else frames
    ours: list[float] = []
    theirs: list[float] = []
    gains: list[float] = []
    psnrs: list[tuple[float, float]] = []
    for seed in range(count):
        frame = constructed_frame(seed)
        start = time.thread_time()
        rgb = median_cut(frame)
        theirs.append(time.thread_time() - start)
        start = time.thread_time()
        index, palette = quantize_frame(frame)
        ours.append(time.thread_time() - start)
        pair = (psnr(frame, palette[index]), psnr(frame, rgb))
        psnrs.append(pair)
        gains.append(pair[0] - pair[1])
    seconds, median_cut_seconds = statistics.fmean(ours), statistics.fmean(theirs)
    return {
        "frames": count,
        "size": [HEIGHT, WIDTH],
        "seconds": seconds,
        "median_cut_seconds": median_cut_seconds,
        "ratio": median_cut_seconds / seconds if seconds > 0 else float("inf"),
        "psnr_db": statistics.fmean(p for p, _ in psnrs),
        "median_cut_psnr_db": statistics.fmean(m for _, m in psnrs),
        "min_psnr_gain_db": min(gains),
    }


def gif_palette_line(g: dict[str, Any]) -> str:
    """A :func:`palette_comparison` result for people, one line."""
    h, w = g["size"]
    return (
        f"GIF palette of a {h}x{w} frame (mean of {g['frames']} constructed noisy frames, CPU time of one "
        f"thread): {g['seconds']:.3f} s against Pillow's median cut {g['median_cut_seconds']:.3f} s "
        f"({g['ratio']:.1f}x faster), PSNR {g['psnr_db']:.2f} dB against {g['median_cut_psnr_db']:.2f} "
        f"({g['min_psnr_gain_db']:+.2f} dB at the least-gaining frame)"
    )


if __name__ == "__main__":  # python -m tools.bench.gif: this comparison alone
    print(gif_palette_line(palette_comparison()))
