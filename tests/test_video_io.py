"""Video reading/writing: round trips, odd sizes, atomic writes and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infra.video_io import VideoReadError, VideoWriter, find_videos, probe_video, read_video, write_video


def _smooth_video(t: int = 6, h: int = 32, w: int = 48) -> np.ndarray:
    """``(t, h, w, 3)`` uint8 gradients that move a little each frame (compresses well)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [
        np.stack([(x * 4 + 10 * k) % 256, (y * 6 + 5 * k) % 256, np.full_like(x, 40 + 20 * k)], axis=-1)
        for k in range(t)
    ]
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    video = _smooth_video()
    path = write_video(tmp_path / "sub" / f"clip{suffix}", video, fps=8)
    assert path.is_file()
    frames = read_video(path)
    assert frames.shape == video.shape and frames.dtype == np.uint8
    # Lossy formats: only close, not equal.
    assert np.abs(frames.astype(int) - video).mean() < 8
    info = probe_video(path)
    assert (info.height, info.width) == video.shape[1:3]
    assert info.fps == pytest.approx(8, rel=0.05)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_identical_frames_are_kept(tmp_path: Path, suffix: str) -> None:
    # Pillow's own GIF writer merges identical consecutive frames; ours must not.
    frame = _smooth_video(1)[0]
    frames = read_video(write_video(tmp_path / f"static{suffix}", np.stack([frame] * 5), fps=4))
    assert len(frames) == 5


def test_odd_size_mp4_is_padded_to_even(tmp_path: Path) -> None:
    video = _smooth_video(t=3, h=31, w=45)
    frames = read_video(write_video(tmp_path / "odd.mp4", video, fps=8))
    assert frames.shape == (3, 32, 46, 3)
    assert np.abs(frames[:, :31, :45].astype(int) - video).mean() < 8


def test_odd_size_gif_keeps_its_size(tmp_path: Path) -> None:
    video = _smooth_video(t=3, h=31, w=45)
    assert read_video(write_video(tmp_path / "odd.gif", video, fps=8)).shape == video.shape


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_exception_leaves_no_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    video = _smooth_video()
    with pytest.raises(KeyError), VideoWriter(path, fps=8) as writer:
        writer.write(video[0])
        writer.write(video[1])
        # (ffmpeg creates the mp4 temp file asynchronously, so only the count is checked here)
        assert writer.frames_written == 2 and not path.exists()
        raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_previous_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "keep.gif", _smooth_video(t=4), fps=8)
    with pytest.raises(RuntimeError), VideoWriter(path, fps=8) as writer:
        writer.write(_smooth_video(t=1)[0])
        raise RuntimeError("interrupted")
    assert len(read_video(path)) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["keep.gif"]


def test_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "v.gif", fps=8) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((8, 8, 3), dtype=np.float32))
        with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
            writer.write(np.zeros((3, 8, 8), dtype=np.uint8))
        writer.write(np.zeros((8, 8, 3), dtype=np.uint8))
        with pytest.raises(ValueError, match="same size"):
            writer.write(np.zeros((8, 10, 3), dtype=np.uint8))
    assert read_video(tmp_path / "v.gif").shape == (1, 8, 8, 3)


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=".gif or .mp4"):
        VideoWriter(tmp_path / "v.avi", fps=8)
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "v.gif", fps=0)
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty.mp4", fps=8).close()
    assert list(tmp_path.iterdir()) == []


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="not found"):
        read_video(tmp_path / "missing.gif")
    (tmp_path / "empty.gif").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        read_video(tmp_path / "empty.gif")
    for name in ("junk.gif", "junk.mp4"):
        (tmp_path / name).write_bytes(b"this is not a video")
        with pytest.raises(VideoReadError, match="not a readable"):
            read_video(tmp_path / name)


def test_find_videos_skips_origin_and_temp_files(tmp_path: Path) -> None:
    prompt = tmp_path / "a_prompt"
    prompt.mkdir()
    for name in ("t2v.gif", "t2v_TTqcache.mp4", "origin.gif", ".t2v.partial-1234.gif", "notes.txt"):
        (prompt / name).write_bytes(b"x")
    assert [p.name for p in find_videos([tmp_path])] == ["t2v.gif", "t2v_TTqcache.mp4"]
    assert [p.name for p in find_videos([tmp_path], include_origin=True)] == [
        "origin.gif",
        "t2v.gif",
        "t2v_TTqcache.mp4",
    ]
    with pytest.raises(FileNotFoundError):
        find_videos([tmp_path / "nope"])
