"""Where output frames go: consumers around the FIFO loop.

A sink takes each output frame as it comes out, ``(H, W, 3)`` uint8 with its index in the
video, and is closed when the run ends: committed on success, discarded (where that means
anything) when the run raised.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
from PIL import Image

from infra.video_io import VideoWriter


class FrameSink(Protocol):
    """A consumer of output frames (a context manager)."""

    def write(self, index: int, frame: np.ndarray) -> None: ...

    def __enter__(self) -> FrameSink: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class VideoSink:
    """The video file (.gif or .mp4), streamed; it appears only when the run completes."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self._writer = VideoWriter(path, fps=fps)

    def write(self, index: int, frame: np.ndarray) -> None:
        self._writer.write(frame)

    def finish_as(self, path: Path) -> Path | None:
        """Finish the video so far as ``path`` (a playable partial video); None without frames."""
        if self._writer.frames_written == 0:
            self._writer.abort()
            return None
        return self._writer.close(path)

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.__exit__(exc_type, exc, tb)


class PngSink:
    """Every output frame as ``<folder>/<index:04d>.png`` (``--save_frames``).

    Frames of an earlier run in the folder (the run was allowed to overwrite it) are removed
    first, so the folder never mixes two runs.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, index: int, frame: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(self.folder / f"{index:04d}.png")

    def __enter__(self) -> PngSink:
        if self.folder.is_dir():
            for stale in self.folder.glob("[0-9][0-9][0-9][0-9].png"):
                stale.unlink()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
