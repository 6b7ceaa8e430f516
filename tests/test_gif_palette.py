"""The GIF writer's palette (``infra/gif_palette.py``): never a worse PSNR than Pillow's median cut
on the frames it is built for, exact nearest colours, and the same bytes for the same frame
(a resumed video re-encodes frames and must match). Its speed is measured by
``scripts/benchmark.py`` (``tools/bench/gif.py``), not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra import gif_palette
from infra.gif_palette import nearest, quantize_frame
from infra.video_io import read_video, write_video
from tools.bench.gif import constructed_frame, median_cut, psnr


def _distinct_colours(frame: np.ndarray) -> int:
    return len(np.unique(frame.reshape(-1, 3), axis=0))


def _few_colour_frame(seed: int) -> np.ndarray:
    # Gradients and objects without noise, on a coarse grid of levels: a few thousand colours.
    return (constructed_frame(seed, 160, 256, noise=0.0) // 12 * 12).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_frames_get_a_better_psnr_than_median_cut(seed: int) -> None:
    frame = constructed_frame(seed, 160, 256)
    assert _distinct_colours(frame) > gif_palette._FEW_COLOURS  # the subsampled median cut's path
    index, palette = quantize_frame(frame)
    assert psnr(frame, palette[index]) >= psnr(frame, median_cut(frame))


def test_a_frame_with_few_colours_is_never_worse_than_median_cut() -> None:
    frame = _few_colour_frame(3)
    assert 256 < _distinct_colours(frame) <= gif_palette._FEW_COLOURS  # the exact histogram's path
    index, palette = quantize_frame(frame)
    assert psnr(frame, palette[index]) >= psnr(frame, median_cut(frame))


def test_at_most_256_colours_are_kept_exactly() -> None:
    rng = np.random.default_rng(4)
    colours = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    frame = colours[rng.integers(0, len(colours), (48, 80))]
    index, palette = quantize_frame(frame)
    assert np.array_equal(palette[index], frame)


def test_nearest_is_exact_and_takes_the_first_of_equals() -> None:
    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (64, 3)).astype(np.float32)
    palette[10] = palette[3]  # a duplicate: index 3 must win
    colours = np.concatenate([rng.integers(0, 256, (2000, 3)), palette[:16], [[0, 0, 0], [255, 255, 255]]])
    with_one = np.concatenate([colours, np.ones((len(colours), 1))], axis=1).astype(np.float32)
    got = nearest(with_one, palette)
    d = ((colours[:, None, :].astype(np.int64) - palette[None].astype(np.int64)) ** 2).sum(axis=2)
    assert np.array_equal(got, d.argmin(axis=1))  # numpy's argmin: the first of equal minima
    assert got[2000 + 3] == 3 and got[2000 + 10] == 3


def test_quantizing_is_deterministic(tmp_path: Path) -> None:
    frames = [constructed_frame(6, 64, 96), _few_colour_frame(7)[:64, :96]]
    for frame in frames:
        first = quantize_frame(frame)
        # The same pixels in another memory layout give the same palette and indices.
        again = quantize_frame(np.asfortranarray(frame.copy()))
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # ... and the same GIF bytes, frame for frame, as a resumed run re-encodes them.
    a = write_video(tmp_path / "a.gif", frames, fps=8)
    b = write_video(tmp_path / "b.gif", np.stack(frames), fps=8)
    assert a.read_bytes() == b.read_bytes()


def test_the_gif_holds_the_palette_colours_of_every_pixel(tmp_path: Path) -> None:
    frames = [constructed_frame(8, 40, 56), constructed_frame(9, 40, 56)]
    path = write_video(tmp_path / "v.gif", frames, fps=8)
    for frame, back in zip(frames, read_video(path), strict=True):
        index, palette = quantize_frame(frame)
        assert np.array_equal(back, palette[index])
    with Image.open(path) as image:
        assert image.n_frames == 2
