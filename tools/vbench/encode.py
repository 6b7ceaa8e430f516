"""The lossy step of VBench-Long's clip protocol: a clip written as H.264 and read back.

VBench-Long does not score the frames of a long video directly: it writes every scene and every
2-second clip to an ``.mp4`` with torchvision's ``write_video`` (``vbench2_beta_long/utils.py``:
``save_video_by_scene_list`` line 120, ``split_video_into_clips`` lines 157, 173 and 188) and scores
the decoded files. ``write_video`` encodes with libx264 into yuv420p and passes the encoder no
options, so x264's defaults apply: CRF 23, preset ``medium``. That is lossy (the chroma is stored
at half resolution and the pixels are quantised), and it moves the scores: compression smooths
frame-to-frame noise, which raises temporal flickering, for one.

:func:`h264_roundtrip` reproduces that step in memory (no file is written): the frames go through
the ffmpeg that ``imageio-ffmpeg`` bundles, with the same encoder and settings, into a raw H.264
stream, which the same ffmpeg decodes back to RGB. The RGB to yuv420p conversion uses swscale's
bilinear filter, the one PyAV (under ``write_video``) uses by default. Bit-identical frames are not
promised: another x264 build, thread count or decoder colour conversion can change the last bits
of some pixels; the loss itself is the same.
"""

from __future__ import annotations

import subprocess

import numpy as np

# x264's own defaults, which torchvision's write_video leaves in place (it passes no options).
X264_CRF = 23
X264_PRESET = "medium"


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(command: list[str], data: bytes, what: str) -> bytes:
    result = subprocess.run(command, input=data, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed to {what}: {message[-1] if message else result.returncode}")
    return result.stdout


def h264_roundtrip(frames: np.ndarray, fps: int) -> np.ndarray:
    """``frames`` as VBench-Long scores them after writing them to an ``.mp4``.

    Args:
        frames: ``(t, h, w, 3)`` uint8 RGB.
        fps: The frame rate the file is written at (VBench-Long: the video's rate as an ``int``).

    Returns:
        ``(t, h, w, 3)`` uint8 RGB, decoded from the H.264 stream. An odd height or width (which
        yuv420p cannot store, and VBench-Long's writer refuses) is padded by one replicated row or
        column for the encoder and cropped off again.
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (t, h, w, 3) uint8, got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if t == 0:
        return frames
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    ph, pw = padded.shape[1:3]
    ffmpeg = _ffmpeg()
    encode = [
        ffmpeg, "-nostdin", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}", "-r", str(max(1, int(fps))), "-i", "-",
        "-sws_flags", "bilinear", "-pix_fmt", "yuv420p",
        "-c:v", "libx264", "-crf", str(X264_CRF), "-preset", X264_PRESET,
        "-f", "h264", "-",
    ]  # fmt: skip
    stream = _run(encode, padded.tobytes(), "encode a clip")
    decode = [
        ffmpeg, "-nostdin", "-loglevel", "error",
        "-f", "h264", "-i", "-",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    raw = _run(decode, stream, "decode a clip")
    decoded = np.frombuffer(raw, np.uint8)
    if decoded.size != t * ph * pw * 3:
        raise RuntimeError(f"ffmpeg returned {decoded.size // (ph * pw * 3)} frames for a {t}-frame clip")
    return decoded.reshape(t, ph, pw, 3)[:, :h, :w].copy()
