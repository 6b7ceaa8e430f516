"""Side-by-side comparison of videos: a labelled grid video and a PNG contact sheet.

Used by ``scripts/compare.py``. Videos are ``(t, h, w, 3)`` uint8 arrays; they are first brought to
a common length (:func:`align_lengths`: cut to the shortest, or padded with their last frame) and a
common height (:func:`resize_to_height`, aspect ratio kept).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from infra.errors import SettingsError
from infra.video_io import VideoWriter

logger = logging.getLogger(__name__)

__all__ = [
    "GridLayout",
    "align_lengths",
    "default_labels",
    "iter_grid_frames",
    "make_contact_sheet",
    "make_grid",
    "render_label",
    "resize_to_height",
    "save_contact_sheet",
    "write_grid",
]

BACKGROUND = (16, 16, 16)  # gaps between tiles
BAR_COLOUR = (40, 40, 40)
TEXT_COLOUR = (240, 240, 240)
PADDING = 4  # pixels around label text


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled default font scales when FreeType is available; else the fixed bitmap font.
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _text_size(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _keep_end(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str, width: int) -> str:
    """The end of ``text`` behind a leading "..." that fits in ``width`` pixels.

    Experiment names differ at their end (``..._w0.5`` against ``..._w0.9``): that part stays.
    """
    if _text_size(font, text)[0] <= width:
        return text
    while text and _text_size(font, "..." + text)[0] > width:
        text = text[1:]
    return "..." + text if text else ""


def _wrap_text(
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str, width: int, max_lines: int
) -> list[str]:
    """``text`` in at most ``max_lines`` lines of ``width`` pixels, broken after ``_``, spaces,
    ``/`` and ``-`` where possible. What does not fit is cut from the front of the last line, so the
    end of the text always shows."""
    pieces = [p for p in re.split(r"(?<=[_ /-])", text) if p]
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if current and _text_size(font, current + piece)[0] > width:
            lines.append(current)
            current = ""
        current += piece
    if current or not lines:
        lines.append(current)
    if len(lines) > max(1, max_lines):
        keep = max(1, max_lines) - 1
        lines = lines[:keep] + ["".join(lines[keep:])]
    return [_keep_end(font, line, width) for line in lines]


def _font_size_for(width: int) -> int:
    return int(np.clip(width // 22, 11, 22))


def _bar_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    # Height of a line with ascenders and descenders, so every bar is equally tall.
    return _text_size(font, "Ag|")[1] + 2 * PADDING + 2


def render_label(
    text: str, width: int, height: int | None = None, font_size: int | None = None
) -> np.ndarray:
    """A dark bar with ``text`` in light letters, left-aligned and vertically centred.

    Args:
        text: The label; wrapped over as many lines as the bar holds (after ``_``, spaces, ``/``,
            ``-``), and where even that is too little, cut from the front of its last line, so
            that labels which differ only at their end stay apart.
        width: Bar width in pixels.
        height: Bar height; default fits one line of the font.
        font_size: Default scales with ``width``.

    Returns:
        ``(height, width, 3)`` uint8.
    """
    font = _font(font_size or _font_size_for(width))
    line_h = _bar_height(font) - 2 * PADDING
    height = height or _bar_height(font)
    bar = Image.new("RGB", (width, height), BAR_COLOUR)
    draw = ImageDraw.Draw(bar)
    lines = _wrap_text(font, text, width - 2 * PADDING, max(1, (height - 2 * PADDING) // line_h))
    y = (height - line_h * len(lines)) // 2
    for line in lines:
        left, top, _, _ = font.getbbox(line or "A")
        draw.text((PADDING - left, y + 1 - top), line, fill=TEXT_COLOUR, font=font)
        y += line_h
    return np.asarray(bar)


def align_lengths(videos: Sequence[np.ndarray], pad: bool = False) -> list[np.ndarray]:
    """Bring videos to one frame count.

    Args:
        videos: Each ``(t_i, h_i, w_i, 3)``.
        pad: Repeat each shorter video's last frame up to the longest length, instead of cutting
            every video to the shortest one.

    Returns:
        Videos ``(t, h_i, w_i, 3)`` with a common ``t``.
    """
    if not videos:
        raise ValueError("no videos to align")
    lengths = [len(v) for v in videos]
    if min(lengths) == 0:
        raise ValueError("a video has no frames")
    if len(set(lengths)) == 1:
        return list(videos)
    if pad:
        target = max(lengths)
        logger.info(
            "frame counts differ %s: padding to %d frames with each video's last frame", lengths, target
        )
        return [
            np.concatenate([v, np.repeat(v[-1:], target - len(v), axis=0)]) if len(v) < target else v
            for v in videos
        ]
    target = min(lengths)
    logger.info(
        "frame counts differ %s: cutting to the shortest, %d frames (use --pad to keep all)", lengths, target
    )
    return [v[:target] for v in videos]


def _resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def resize_to_height(video: np.ndarray, height: int) -> np.ndarray:
    """``(t, h, w, 3)`` -> ``(t, height, round(w * height / h), 3)``; unchanged when already that tall."""
    t, h, w, _ = video.shape
    if h == height:
        return video
    width = max(1, round(w * height / h))
    return np.stack([_resize_frame(frame, height, width) for frame in video])


def default_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Experiment names (file stems); ``prompt/experiment`` when stems repeat across prompt folders."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{p.stem}" for p in paths]


def _common_height(videos: Sequence[np.ndarray], height: int | None) -> list[np.ndarray]:
    heights = {v.shape[1] for v in videos}
    target = height or max(heights)
    if len(heights) > 1 or height is not None:
        logger.info(
            "resizing tiles to a common height of %d pixels (heights were %s)", target, sorted(heights)
        )
    return [resize_to_height(v, target) for v in videos]


@dataclass
class GridLayout:
    """Where each tile goes on the grid canvas.

    Attributes:
        canvas: ``(H, W, 3)`` background with the label bars already drawn.
        origins: Top-left ``(y, x)`` of each video tile (its label bar sits just above it).
    """

    canvas: np.ndarray
    origins: list[tuple[int, int]]

    @classmethod
    def build(
        cls,
        tile_sizes: Sequence[tuple[int, int]],
        labels: Sequence[str],
        cols: int | None = None,
        gap: int = 4,
    ) -> GridLayout:
        """Lay out tiles of sizes ``(h, w)`` (one common ``h``) in ``cols`` columns, row by row."""
        n = len(tile_sizes)
        cols = min(cols or n, n)
        rows = math.ceil(n / cols)
        tile_h = tile_sizes[0][0]
        col_widths = [max(tile_sizes[i][1] for i in range(c, n, cols)) for c in range(cols)]
        font = _font(_font_size_for(min(col_widths)))
        bar_h = _bar_height(font)
        cell_h = bar_h + tile_h
        width = sum(col_widths) + gap * (cols - 1)
        height = rows * cell_h + gap * (rows - 1)
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND
        origins = []
        for i, ((_, w), label) in enumerate(zip(tile_sizes, labels)):
            row, col = divmod(i, cols)
            y = row * (cell_h + gap)
            x = sum(col_widths[:col]) + gap * col
            canvas[y : y + bar_h, x : x + col_widths[col]] = render_label(
                label, col_widths[col], bar_h, font_size=_font_size_for(min(col_widths))
            )
            # Centre narrower tiles in their column.
            origins.append((y + bar_h, x + (col_widths[col] - w) // 2))
        return cls(canvas, origins)


def iter_grid_frames(
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    cols: int | None = None,
    pad: bool = False,
    tile_height: int | None = None,
    gap: int = 4,
) -> Iterator[np.ndarray]:
    """Yield the grid frames one at a time (``(H, W, 3)`` uint8); see :func:`make_grid`."""
    if len(labels) != len(videos):
        raise SettingsError(f"got {len(labels)} labels for {len(videos)} videos; give one label per video")
    videos = _common_height(align_lengths(videos, pad), tile_height)
    layout = GridLayout.build([v.shape[1:3] for v in videos], labels, cols, gap)
    for k in range(len(videos[0])):
        frame = layout.canvas.copy()
        for video, (y, x) in zip(videos, layout.origins):
            h, w = video.shape[1:3]
            frame[y : y + h, x : x + w] = video[k]
        yield frame


def make_grid(
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    cols: int | None = None,
    pad: bool = False,
    tile_height: int | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Labelled side-by-side grid of videos.

    Args:
        videos: Each ``(t_i, h_i, w_i, 3)`` uint8.
        labels: One per video, drawn in a bar above its tile.
        cols: Tiles per row (default: all in one row).
        pad: Pad shorter videos with their last frame instead of cutting to the shortest.
        tile_height: Resize every tile to this height (default: the tallest video's height).
        gap: Pixels between tiles.

    Returns:
        ``(t, H, W, 3)`` uint8.
    """
    return np.stack(list(iter_grid_frames(videos, labels, cols, pad, tile_height, gap)))


def write_grid(
    path: str | os.PathLike,
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    fps: float,
    cols: int | None = None,
    pad: bool = False,
    tile_height: int | None = None,
    gap: int = 4,
) -> Path:
    """Stream the grid of :func:`make_grid` into a ``.gif``/``.mp4`` (atomic write)."""
    with VideoWriter(path, fps) as writer:
        writer.write_many(iter_grid_frames(videos, labels, cols, pad, tile_height, gap))
    logger.info("grid: %s (%d frames at %.3g fps)", path, writer.frames_written, fps)
    return Path(path)


def _frame_number(thumb: np.ndarray, index: int) -> np.ndarray:
    """Write the frame index in the top-left corner of a thumbnail."""
    image = Image.fromarray(thumb)
    font = _font(max(9, min(14, thumb.shape[0] // 8)))
    text = str(index)
    w, h = _text_size(font, text)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, w + 2 * 2, h + 2 * 2 + 1), fill=(0, 0, 0))
    left, top, _, _ = font.getbbox(text)
    draw.text((2 - left, 2 - top), text, fill=TEXT_COLOUR, font=font)
    return np.asarray(image)


def make_contact_sheet(
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    every: int | None = None,
    thumb_height: int | None = 128,
    label_position: str = "left",
    pad: bool = False,
    gap: int = 2,
    max_columns: int = 12,
) -> np.ndarray:
    """A still overview: one row per video, every ``every``-th frame (0, K, 2K, ...) left to right.

    Args:
        videos: Each ``(t_i, h_i, w_i, 3)`` uint8; aligned like :func:`make_grid`.
        labels: One per video, in a column on the left (``label_position="left"``) or a bar above
            each row (``"top"``).
        every: Frame step; default picks one that gives at most ``max_columns`` columns.
        thumb_height: Thumbnail height (``None``: the tallest video's height).
        pad: Pad shorter videos with their last frame instead of cutting to the shortest.
        gap: Pixels between thumbnails and rows.
        max_columns: Used only to choose the default ``every``.

    Returns:
        ``(H, W, 3)`` uint8. Each thumbnail shows its frame index in the corner.
    """
    if len(labels) != len(videos):
        raise SettingsError(f"got {len(labels)} labels for {len(videos)} videos; give one label per video")
    if label_position not in ("left", "top"):
        raise ValueError(f"label_position must be 'left' or 'top', got {label_position!r}")
    videos = align_lengths(videos, pad)
    t = len(videos[0])
    if every is None:
        every = max(1, math.ceil(t / max_columns))
        logger.info("contact sheet: one frame in %d (of %d frames)", every, t)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    indices = list(range(0, t, every))
    # Only the sampled frames are resized.
    sampled = _common_height([v[indices] for v in videos], thumb_height)
    thumb_h = sampled[0].shape[1]
    # Thumbnails of one video share a width; the widest video sets the row width.
    row_w = max(v.shape[2] for v in sampled) * len(indices) + gap * (len(indices) - 1)
    font_size = max(11, min(20, thumb_h // 6))
    font = _font(font_size)
    if label_position == "left":
        label_w = min(max(_text_size(font, label)[0] for label in labels) + 2 * PADDING + 2, 320)
        bar_h = 0
    else:
        label_w = 0
        bar_h = _bar_height(font)
    row_h = bar_h + thumb_h
    height = len(sampled) * row_h + gap * (len(sampled) - 1)
    width = label_w + (gap if label_w else 0) + row_w
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = BACKGROUND
    for r, (video, label) in enumerate(zip(sampled, labels)):
        y = r * (row_h + gap)
        if label_position == "left":
            bar = render_label(label, label_w, thumb_h, font_size=font_size)
            sheet[y : y + thumb_h, :label_w] = bar
        else:
            sheet[y : y + bar_h, :] = render_label(label, width, bar_h, font_size=font_size)
        x = label_w + (gap if label_w else 0)
        y += bar_h
        for index, thumb in zip(indices, video):
            w = thumb.shape[1]
            sheet[y : y + thumb_h, x : x + w] = _frame_number(thumb, index)
            x += w + gap
    return sheet


def save_contact_sheet(path: str | os.PathLike, sheet: np.ndarray) -> Path:
    """Save a contact sheet ``(H, W, 3)`` uint8 as PNG (parent folders created, atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        Image.fromarray(sheet).save(temp)  # format from the suffix
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("contact sheet: %s (%dx%d)", path, sheet.shape[1], sheet.shape[0])
    return path
