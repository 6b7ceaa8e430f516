"""Where output frames go: consumers around the FIFO loop.

A sink takes each output frame as it comes out, ``(H, W, 3)`` uint8 with its index in the
video, and is closed when the run ends: committed on success, discarded (where that means
anything) when the run raised.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
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


FrameConsumer = Callable[[int, np.ndarray], None]


class FrameWriter:
    """Output frames written off the thread that drives the model: a bounded queue to one
    writer thread that hands each frame, in order, to every consumer (the sinks, the saved
    state's frames).

    GIF quantisation and PNG compression take a CPU a large part of a second per frame, as long
    as a fast GPU takes to make the next frame: here they overlap with it. At most ``depth``
    frames wait (bounded memory); a full queue makes the generating thread wait.

    A consumer's error (disk full) stops the run: the next :meth:`write`, :meth:`drain` or the
    end of the block raises it on the generating thread, and frames after it are dropped.

    Args:
        consumers: called as ``consumer(index, frame)`` with each frame ``(H, W, 3)`` uint8.
        depth: frames that may wait in the queue.
    """

    _END = object()

    def __init__(self, consumers: Sequence[FrameConsumer], depth: int = 4) -> None:
        self.consumers = list(consumers)
        self.frames = 0
        self.seconds = 0.0  # time the writer thread spent in the consumers
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="frame-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._END:
                    return
                if self._error is None:
                    start = time.perf_counter()
                    for consumer in self.consumers:
                        consumer(*item)
                    self.seconds += time.perf_counter() - start
                    self.frames += 1
            except BaseException as err:  # handed to the generating thread, which raises it
                self._error = err
            finally:
                self._queue.task_done()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, index: int, frame: np.ndarray) -> None:
        """Queue frame ``index`` (waits while ``depth`` frames wait already)."""
        self._raise_if_failed()
        if not self._thread.is_alive():
            raise RuntimeError("the frame writer has stopped")
        self._queue.put((index, frame))

    def drain(self) -> None:
        """Wait until every queued frame is written (before a state is saved, a video finished)."""
        self._queue.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Write what is queued, stop the thread; raise a consumer's error."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # The run raised already: write what is queued (a stopped run's partial video keeps its
        # frames), and let the run's own error through.
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
