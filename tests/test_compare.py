"""Comparison grid and contact sheet: sizes, frame counts, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.video_io import read_video, write_video
from tests.conftest import load_script
from tools.comparison import (
    align_lengths,
    default_labels,
    make_contact_sheet,
    make_grid,
    render_label,
    resize_to_height,
)

ROOT = Path(__file__).resolve().parents[1]
GAP = 4


def _video(t: int, h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    video = np.empty((t, h, w, 3), dtype=np.uint8)
    video[:] = colour
    video[:, :, :, 0] = np.arange(t, dtype=np.uint8)[:, None, None] * 10  # frames differ
    return video


def _bar_height(grid: np.ndarray, tile_h: int, rows: int = 1) -> int:
    return (grid.shape[1] - GAP * (rows - 1)) // rows - tile_h


def test_render_label_draws_text() -> None:
    bar = render_label("t2v_TTqcache_attn1_w0.9", width=200)
    assert bar.shape[1] == 200 and bar.dtype == np.uint8
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 2  # background + anti-aliased text
    empty = render_label("", width=200)
    assert len(np.unique(empty.reshape(-1, 3), axis=0)) == 1


def test_grid_size_frames_and_labels() -> None:
    videos = [
        _video(10, 40, 60, (0, 200, 0)),
        _video(7, 40, 60, (0, 0, 200)),
        _video(9, 40, 60, (0, 100, 100)),
    ]
    grid = make_grid(videos, ["t2v", "t2v_TTqcache", "origin"], gap=GAP)
    assert grid.shape[0] == 7  # cut to the shortest
    assert grid.shape[2] == 3 * 60 + 2 * GAP
    bar_h = _bar_height(grid, 40)
    assert 8 < bar_h < 40
    for i in range(3):
        x = i * (60 + GAP)
        bar = grid[0, :bar_h, x : x + 60]
        assert bar.std() > 5, "label bar should contain text"
        tile = grid[3, bar_h:, x : x + 60]
        np.testing.assert_array_equal(tile, videos[i][3])
    # Padding keeps the longest length and repeats the last frame.
    padded = make_grid(videos, ["a", "b", "c"], pad=True, gap=GAP)
    assert padded.shape[0] == 10
    np.testing.assert_array_equal(padded[9, bar_h:, 60 + GAP : 120 + GAP], videos[1][-1])


def test_grid_wraps_rows_and_resizes_to_common_height() -> None:
    videos = [_video(5, 40, 60, (0, 200, 0)), _video(5, 20, 30, (0, 0, 200)), _video(5, 40, 40, (9, 9, 9))]
    grid = make_grid(videos, ["a", "b", "c"], cols=2, gap=GAP)
    # Tiles all 40 tall: (40x60, 40x60 after resize, 40x40); columns 60 and 60 wide.
    assert grid.shape[2] == 60 + GAP + 60
    bar_h = _bar_height(grid, 40, rows=2)
    assert grid.shape[1] == 2 * (bar_h + 40) + GAP
    assert grid.shape[0] == 5


def test_contact_sheet_size() -> None:
    videos = [_video(12, 40, 60, (0, 200, 0)), _video(12, 40, 60, (0, 0, 200))]
    sheet = make_contact_sheet(videos, ["one", "two"], every=4, thumb_height=20, label_position="top", gap=2)
    thumbs = 3  # frames 0, 4, 8
    assert sheet.shape[1] == thumbs * 30 + 2 * (thumbs - 1)
    row_h = (sheet.shape[0] - 2) // 2
    assert row_h > 20 and sheet.shape[0] == 2 * row_h + 2
    assert sheet[: row_h - 20].std() > 5  # label bar with text
    left = make_contact_sheet(videos, ["one", "two"], every=4, thumb_height=20, label_position="left", gap=2)
    assert left.shape[0] == 2 * 20 + 2 and left.shape[1] > thumbs * 30 + 2 * (thumbs - 1)


def test_helpers() -> None:
    a, b = _video(3, 10, 10, (1, 2, 3)), _video(5, 10, 10, (1, 2, 3))
    assert [len(v) for v in align_lengths([a, b])] == [3, 3]
    assert [len(v) for v in align_lengths([a, b], pad=True)] == [5, 5]
    assert resize_to_height(_video(2, 20, 30, (0, 0, 0)), 10).shape == (2, 10, 15, 3)
    assert default_labels(["r/p1/t2v.gif", "r/p1/qcache.gif"]) == ["t2v", "qcache"]
    assert default_labels(["r/p1/t2v.gif", "r/p2/t2v.gif"]) == ["p1/t2v", "p2/t2v"]
    with pytest.raises(ValueError, match="labels"):
        make_grid([a, b], ["only one"])


def test_script_prompt_dir(tmp_path: Path) -> None:
    prompt = tmp_path / "results" / "a_cat"
    write_video(prompt / "t2v.gif", _video(6, 32, 48, (0, 200, 0)), fps=8)
    write_video(prompt / "t2v_TTqcache.gif", _video(8, 32, 48, (0, 0, 200)), fps=8)
    write_video(prompt / "origin.gif", _video(4, 32, 48, (200, 0, 0)), fps=8)
    script = load_script("scripts/compare.py")
    out, sheet = tmp_path / "grid.mp4", tmp_path / "sheet.png"
    argv = ["--prompt_dir", str(prompt), "--out", str(out), "--sheet", str(sheet), "--every", "2", "--quiet"]
    assert script.main(argv) == 0
    grid = read_video(out)
    assert grid.shape[0] == 6 and grid.shape[2] == 2 * 48 + GAP
    assert Image.open(sheet).size[1] == 2 * 128 + 2  # two rows of 128-pixel thumbnails
    assert script.main(["--prompt_dir", str(prompt), "--include_origin", "--out", str(out), "--quiet"]) == 0
    assert read_video(out).shape[0] == 4  # origin is the shortest
    assert script.main(["--prompt_dir", str(prompt), "--labels", "x", "--out", str(out), "--quiet"]) == 2
