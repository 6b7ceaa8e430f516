"""Reading and writing videos (.gif, .mp4) as uint8 RGB frames, with atomic writes.

Frames are numpy arrays ``(h, w, 3)`` uint8; a video is ``(t, h, w, 3)`` uint8.

Writing goes to a hidden temporary file next to the destination that is renamed into place
(``os.replace``) only when the writer is closed without an exception, so an interrupted run never
leaves a truncated video behind (and never clobbers a good one from an earlier run):

    with VideoWriter("results/x/t2v.mp4", fps=8) as writer:
        for frame in frames:  # each (h, w, 3) uint8
            writer.write(frame)

- ``.mp4``: H.264 (libx264, yuv420p, CRF 18) streamed through the ffmpeg bundled with imageio-ffmpeg.
  yuv420p needs even sizes: an odd width/height is padded by one replicated pixel column/row.
- ``.gif``: streamed frame by frame with Pillow (adaptive 256-colour palette per frame from
  :mod:`infra.gif_palette`, no dithering so that static content stays static, loops forever). Identical consecutive frames are
  kept as separate frames (Pillow's own ``save_all`` merges them, which would change frame counts).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
from PIL import GifImagePlugin, Image, ImageSequence, UnidentifiedImageError

from infra.errors import MissingInputError, SettingsError, UserError
from infra.gif_palette import quantize_frame

logger = logging.getLogger(__name__)

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoInfo",
    "VideoReadError",
    "VideoWriter",
    "find_videos",
    "iter_video",
    "probe_video",
    "read_video",
    "stale_temporary_files",
    "write_video",
]

VIDEO_SUFFIXES = (".gif", ".mp4")
# Marker in temporary file names; files containing it are never reported by find_videos.
_PARTIAL_MARK = ".partial-"


class VideoReadError(UserError, RuntimeError):
    """A video that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video file without decoding all of it.

    Attributes:
        path: The file.
        fps: Frames per second (0.0 when the file does not say).
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    path: Path
    fps: float
    width: int
    height: int


# --------------------------------------------------------------------------------------------
# Reading


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"video not found: {path}")
    if path.is_dir():
        raise VideoReadError(f"{path} is a folder, not a video file")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoReadError(
            f"{path}: unsupported video type {path.suffix!r}; expected one of {VIDEO_SUFFIXES}"
        )
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes); delete it and generate it again")


def _iter_gif(path: Path) -> Iterator[np.ndarray]:
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise VideoReadError(f"{path} is not a readable GIF ({err})") from err
    with image:
        try:
            # Pillow composes each GIF frame onto the canvas, so convert("RGB") is the full frame.
            for frame in ImageSequence.Iterator(image):
                yield np.asarray(frame.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, ValueError, SyntaxError) as err:
            raise VideoReadError(f"{path}: GIF data is corrupt or truncated ({err})") from err


def _ffmpeg_reader(path: Path) -> tuple[dict, Iterator[bytes]]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        reader.close()
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VideoReadError(f"{path} is not a readable video ({first_line})") from err
    return meta, reader


def _iter_mp4(path: Path) -> Iterator[np.ndarray]:
    meta, reader = _ffmpeg_reader(path)
    width, height = meta["size"]
    try:
        for data in reader:
            yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    except (OSError, RuntimeError) as err:
        raise VideoReadError(f"{path}: video data is corrupt or truncated ({err})") from err
    finally:
        reader.close()


def iter_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a ``.gif`` or ``.mp4`` one at a time, each ``(h, w, 3)`` uint8.

    Raises:
        VideoReadError: missing, empty, unsupported or unreadable file.
    """
    path = Path(path)
    _check_readable(path)
    if path.suffix.lower() == ".gif":
        yield from _iter_gif(path)
    else:
        yield from _iter_mp4(path)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read a whole ``.gif`` or ``.mp4`` into memory.

    Returns:
        ``(t, h, w, 3)`` uint8 RGB frames.

    Raises:
        VideoReadError: missing, empty, unsupported or unreadable file, or a file without frames.
    """
    frames = list(iter_video(path))
    if not frames:
        raise VideoReadError(f"{path} holds no frames; delete it and generate it again")
    return np.stack(frames)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame rate and size of a video, reading only its header / first frame.

    Raises:
        VideoReadError: missing, empty, unsupported or unreadable file.
    """
    path = Path(path)
    _check_readable(path)
    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as image:
                duration_ms = float(image.info.get("duration") or 0.0)
                width, height = image.size
        except (UnidentifiedImageError, OSError) as err:
            raise VideoReadError(f"{path} is not a readable GIF ({err})") from err
        fps = 1000.0 / duration_ms if duration_ms > 0 else 0.0
        return VideoInfo(path, fps, width, height)
    meta, reader = _ffmpeg_reader(path)
    reader.close()
    width, height = meta["size"]
    return VideoInfo(path, float(meta.get("fps") or 0.0), int(width), int(height))


def stale_temporary_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files a :class:`VideoWriter` for ``path`` left behind (its process was killed)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.stem)}{_PARTIAL_MARK}*{path.suffix}"))


def find_videos(
    paths: Iterable[str | os.PathLike], include_origin: bool = False, recursive: bool = True
) -> list[Path]:
    """Expand files and folders into a sorted list of video files.

    Folders are searched (recursively by default) for ``.gif``/``.mp4``; hidden files and
    temporary files of an unfinished :class:`VideoWriter` are skipped, and so is ``origin.*`` (the
    short base clip the generator saves) unless ``include_origin``. Files named explicitly are
    always kept.

    Raises:
        MissingInputError: a path that does not exist.
    """
    found: list[Path] = []
    for entry in paths:
        entry = Path(entry)
        if entry.is_file():
            found.append(entry)
            continue
        if not entry.is_dir():
            raise MissingInputError(f"no such file or folder: {entry}")
        candidates = entry.rglob("*") if recursive else entry.glob("*")
        for path in candidates:
            if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            if path.name.startswith(".") or _PARTIAL_MARK in path.name or path.stem.endswith(".partial"):
                continue  # unfinished, or the partial video of an interrupted run
            if path.stem == "origin" and not include_origin:
                continue
            found.append(path)
    # Keep the order stable and drop duplicates (a file given both directly and via its folder).
    unique = {p.resolve(): p for p in found}
    return sorted(unique.values(), key=lambda p: (str(p.parent), p.name))


# --------------------------------------------------------------------------------------------
# Writing


def _gif_frame_ms(fps: float) -> int:
    # GIF delays are whole centiseconds: round to the nearest (Pillow would truncate).
    centiseconds = max(1, round(100.0 / fps))
    if 100.0 / fps < 2:
        logger.warning(
            "GIF at %.1f fps: many viewers slow frames shorter than 20 ms down to 100 ms; use .mp4 for >50 fps",
            fps,
        )
    return centiseconds * 10


class _GifStream:
    """Minimal streaming GIF89a encoder on top of Pillow's public GIF helpers."""

    def __init__(self, fp: BinaryIO, frame_ms: int, loop: int) -> None:
        self.fp = fp
        self.frame_ms = frame_ms
        self.loop = loop
        self.started = False

    def add(self, frame: np.ndarray) -> None:
        # No dithering: dither noise changes from frame to frame and would show up as flicker.
        index, palette = quantize_frame(frame)
        image = Image.fromarray(index, "P")
        image.putpalette(palette.tobytes())
        if not self.started:
            header, _ = GifImagePlugin.getheader(image, info={"loop": self.loop, "duration": self.frame_ms})
            self.fp.write(b"".join(header))
            self.started = True
        # Every frame carries its own palette (local colour table) and replaces the previous one.
        for chunk in GifImagePlugin.getdata(
            image, duration=self.frame_ms, include_color_table=True, disposal=1
        ):
            self.fp.write(chunk)

    def finish(self) -> None:
        self.fp.write(b";")  # GIF trailer


class VideoWriter:
    """Write a ``.gif`` or ``.mp4`` frame by frame; the file appears only when complete.

    Use as a context manager (or call :meth:`close` / :meth:`abort` yourself). Frames go to a
    hidden temporary file in the destination folder (``.<name>.partial-<random><suffix>``);
    :meth:`close` finishes it and renames it over ``path`` with ``os.replace``. If the ``with``
    block raises, or :meth:`abort` is called, the temporary file is deleted and ``path`` is left
    untouched. Parent folders are created.

    Args:
        path: Destination, ``.gif`` or ``.mp4``.
        fps: Frames per second (> 0).
        crf: mp4 only: x264 constant rate factor (0 = lossless, 18 = visually lossless, 51 = worst).
        codec: mp4 only: ffmpeg video encoder.
        pix_fmt: mp4 only: stored pixel format; yuv420p plays everywhere.
        preset: mp4 only: x264 speed/size trade-off.
        loop: gif only: number of loops, 0 = forever.

    Frames: ``(h, w, 3)`` uint8 RGB, all the same size as the first one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float = 8.0,
        *,
        crf: int = 18,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        preset: str = "medium",
        loop: int = 0,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise SettingsError(
                f"cannot write {self.path}: unsupported video type {self.path.suffix!r}; use .gif or .mp4"
            )
        if not fps or fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.fps = float(fps)
        self.crf = int(crf)
        self.codec = codec
        self.pix_fmt = pix_fmt
        self.preset = preset
        self.loop = int(loop)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (h, w) of the first frame
        self._kind = suffix[1:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder as the destination: os.replace is atomic only within one filesystem.
        self.temp_path = self.path.with_name(
            f".{self.path.stem}{_PARTIAL_MARK}{secrets.token_hex(4)}{suffix}"
        )
        self._closed = False
        self._gif_file: BinaryIO | None = None
        self._gif: _GifStream | None = None
        self._ffmpeg = None  # imageio_ffmpeg.write_frames generator
        self._pad = (0, 0)  # rows, columns added for yuv420p
        if self._kind == "gif":
            self._gif_file = open(self.temp_path, "wb")  # noqa: SIM115 - closed in close()/abort()
            self._gif = _GifStream(self._gif_file, _gif_frame_ms(self.fps), self.loop)

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() is an unfinished video: never leave its temp file.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # best effort during garbage collection
                self.abort()

    # -- writing --------------------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"{self.path}: a frame must be (h, w, 3) RGB, got shape {tuple(frame.shape)}; "
                "convert (3, h, w) tensors with .permute(1, 2, 0)"
            )
        if frame.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be uint8, got {frame.dtype}; "
                "scale to [0, 255] and convert (e.g. ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8))"
            )
        h, w = frame.shape[:2]
        if self.size is None:
            if h == 0 or w == 0:
                raise ValueError(f"{self.path}: empty frame of size {h}x{w}")
            self.size = (h, w)
        elif (h, w) != self.size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {h}x{w} (h x w) but the video is "
                f"{self.size[0]}x{self.size[1]}; all frames must have the same size"
            )
        return np.ascontiguousarray(frame)

    def _open_ffmpeg(self, h: int, w: int) -> None:
        import imageio_ffmpeg

        # yuv420p stores colour at half resolution: libx264 rejects odd sizes, so pad by edge pixels.
        self._pad = (h % 2, w % 2)
        if any(self._pad):
            logger.warning(
                "%s: size %dx%d (h x w) is odd; padding to %dx%d for %s",
                self.path,
                h,
                w,
                h + self._pad[0],
                w + self._pad[1],
                self.pix_fmt,
            )
        out_h, out_w = h + self._pad[0], w + self._pad[1]
        self._ffmpeg = imageio_ffmpeg.write_frames(
            str(self.temp_path),
            (out_w, out_h),
            pix_fmt_in="rgb24",
            pix_fmt_out=self.pix_fmt,
            fps=self.fps,
            codec=self.codec,
            quality=None,
            macro_block_size=1,  # we padded ourselves; 16 would make ffmpeg rescale the frames
            ffmpeg_log_level="error",
            output_params=["-crf", str(self.crf), "-preset", self.preset, "-movflags", "+faststart"],
        )
        self._ffmpeg.send(None)  # start ffmpeg

    def write(self, frame: np.ndarray) -> None:
        """Append one frame ``(h, w, 3)`` uint8."""
        if self._closed:
            raise RuntimeError(f"{self.path}: write() after the writer was closed")
        frame = self._check_frame(frame)
        if self._kind == "gif":
            assert self._gif is not None
            self._gif.add(frame)
        else:
            if self._ffmpeg is None:
                self._open_ffmpeg(*frame.shape[:2])
            if any(self._pad):
                frame = np.pad(frame, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
            self._ffmpeg.send(frame)
        self.frames_written += 1

    def write_many(self, frames: Iterable[np.ndarray]) -> None:
        """Append several frames: ``(t, h, w, 3)`` uint8 or an iterable of ``(h, w, 3)``."""
        for frame in frames:
            self.write(frame)

    # -- finishing ------------------------------------------------------------------------
    def close(self, destination: str | os.PathLike | None = None) -> Path:
        """Finish the file and move it to :attr:`path` (or ``destination``). Returns where it went.

        Raises:
            ValueError: no frame was written (nothing is created).
            RuntimeError: the encoder produced no output.
        """
        if self._closed:
            return self.path
        target = self.path if destination is None else Path(destination)
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written; nothing saved")
        try:
            if self._kind == "gif":
                assert self._gif is not None and self._gif_file is not None
                self._gif.finish()
                self._gif_file.close()
            else:
                self._ffmpeg.close()  # ffmpeg flushes and exits
                self._ffmpeg = None
            if not self.temp_path.is_file() or self.temp_path.stat().st_size == 0:
                raise RuntimeError(
                    f"{self.path}: the encoder wrote nothing (ffmpeg failed; see its messages above)"
                )
            os.replace(self.temp_path, target)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        logger.debug("wrote %s (%d frames, %.3g fps)", target, self.frames_written, self.fps)
        return target

    def abort(self) -> None:
        """Stop writing and delete the temporary file; :attr:`path` is not touched."""
        self._closed = True
        try:
            if self._gif_file is not None and not self._gif_file.closed:
                self._gif_file.close()
            if self._ffmpeg is not None:
                self._ffmpeg.close()
                self._ffmpeg = None
        finally:
            self.temp_path.unlink(missing_ok=True)


def write_video(
    path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray], fps: float = 8.0, **kwargs
) -> Path:
    """Write a whole video at once (atomically, see :class:`VideoWriter`).

    Args:
        path: Destination ``.gif`` or ``.mp4``.
        frames: ``(t, h, w, 3)`` uint8, or a sequence of ``(h, w, 3)`` uint8 frames.
        fps: Frames per second.
        **kwargs: Passed to :class:`VideoWriter` (``crf``, ``loop``, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    with VideoWriter(path, fps, **kwargs) as writer:
        writer.write_many(frames)
    return writer.path
