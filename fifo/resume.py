"""Runs that survive interruption: the FIFO state saved as it goes, restored by ``--resume``.

Next to a video being generated, ``<video>.state/`` holds what a resumed run needs to write the
identical file:

- ``state.pt``: the :class:`~fifo.state.FifoState` at an iteration boundary (queue, noise stream,
  iteration, image tokens, frames emitted, the tricks' state) and a fingerprint of everything that
  must match to resume (the base clip's cache key, the full mode, the queue layout, the length,
  the output format, the random scheme). Written atomically (temporary file, then rename).
- ``frames/0000.png``, ...: every output frame so far, lossless, so that the video file can be
  rebuilt frame for frame (a GIF or MP4 cannot be appended to, nor decoded back exactly).

The fingerprint is :func:`resume_fingerprint`: the base clip's cache key (:func:`base_clip_key`,
which also names the cached base clips) and what else shapes the video.

The folder is removed when the video is complete. A state is saved every ``save_every_frames``
output frames, or, by default, when ``save_every_seconds`` have passed since the last one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, ModeOptions
from fifo.prompts import PromptJob
from fifo.state import FifoState
from infra.atomic import atomic_path
from infra.errors import UserError

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# A state at most this often by default: a save is a few MB (the queue) plus nothing else, so
# this costs far below 1% of a run whose iterations take seconds, and a kill loses at most
# this much work.
DEFAULT_SAVE_SECONDS = 60.0


def base_clip_key(
    job: PromptJob, mode: ModeOptions, settings: GenerationSettings, model_id: str, device: str | torch.device
) -> dict:
    """Everything that changes a base clip's noise and latent (plain values, for the cache key)."""
    s = settings
    image_digest = hashlib.sha256(job.image.read_bytes()).hexdigest() if job.image else None
    return {
        "model": model_id,
        "prompt": job.prompt,
        "image": image_digest,
        "seed": s.seed,
        "size": [s.height, s.width],
        "video_length": s.video_length,
        "steps": s.geometry.steps,
        "eta": s.eta,
        "guidance": s.guidance,
        "fps": s.fps,
        **({} if s.frame_stride is None else {"frame_stride": s.frame_stride}),
        **({} if s.guidance_rescale == 0.0 else {"guidance_rescale": s.guidance_rescale}),
        "dtype": s.dtype.value,
        "mode_main": mode.main.value,
        # CPU and CUDA generators draw different numbers from the same seed.
        "device": torch.device(device).type,
    }


def resume_fingerprint(
    job: PromptJob,
    mode: ModeOptions,
    settings: GenerationSettings,
    model_id: str,
    device: str | torch.device,
    video_path: Path,
) -> dict:
    """What a saved state must match to be resumed for ``job`` (plain values)."""
    s = settings
    return base_clip_key(job, mode, s, model_id, device) | {
        "mode": mode.name,
        "qcache_weight": None if mode.qcache is None else mode.qcache.weight,
        "tricks": mode.trick_parameters(),
        "lookahead": s.lookahead,
        "num_partitions": s.num_partitions,
        "length": job.story_length if job.is_story else s.new_video_length,
        "scenes": [[sc.frames, sc.prompt] for sc in job.scenes],
        "video": video_path.name,
        "output_fps": s.output_fps,
        "rng": s.rng.value,
        "path": "batched" if s.batched else "sequential",
    }


class StateError(UserError, RuntimeError):
    """A saved state that cannot be used (damaged, or of another format)."""


def state_folder(video_path: Path) -> Path:
    """Where the state of the video at ``video_path`` is kept: ``<video>.state/``."""
    return video_path.with_name(video_path.name + ".state")


def partial_video_path(video_path: Path) -> Path:
    """The playable video of an interrupted run: ``<experiment>.partial.gif`` (or .mp4)."""
    return video_path.with_name(f"{video_path.stem}.partial{video_path.suffix}")


@dataclass
class ResumeOptions:
    """How a run saves its state and resumes from it (what the CLI asks of :meth:`FifoGenerator.run`).

    Attributes:
        resume: continue from a saved state when there is one that matches.
        save_every_frames: save the state every this many output frames (None: by time).
        save_every_seconds: without ``save_every_frames``, save when this much time has passed.
        stop_requested: asked after every iteration; True stops the run cleanly (state saved,
            partial video written, :class:`RunInterrupted` raised).
    """

    resume: bool = False
    save_every_frames: int | None = None
    save_every_seconds: float = DEFAULT_SAVE_SECONDS
    stop_requested: Callable[[], bool] = field(default=lambda: False)


class RunInterrupted(Exception):
    """A run stopped on request after saving its state.

    Attributes:
        frames: output frames written so far; partial_video: the playable partial video (or None).
    """

    def __init__(self, frames: int, partial_video: Path | None) -> None:
        super().__init__(f"stopped after {frames} frame(s)")
        self.frames, self.partial_video = frames, partial_video


def _unreadable(path: Path, err: Exception) -> str:
    """Why a state file cannot be read, in words (a truncated file makes torch report an OSError
    or a zip error that names no file)."""
    if isinstance(err, FileNotFoundError):
        return f"a file of the state is missing: {err.filename or err}"
    size = path.stat().st_size if path.is_file() else 0
    return f"state.pt is truncated or corrupt ({size} bytes; {type(err).__name__}: {err})"


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a saved state's fingerprint and this run's, one line per key."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            lines.append(f"{key}: the saved state has {saved.get(key)!r}, this run {current.get(key)!r}")
    return lines


class StateStore:
    """The state folder of one video: saves, loads and removes it.

    Args:
        folder: ``<video>.state``.
        fingerprint: what must match to resume (plain values, JSON-like).
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder, self.fingerprint = folder, fingerprint

    @property
    def state_file(self) -> Path:
        return self.folder / "state.pt"

    def frame_path(self, index: int) -> Path:
        return self.folder / "frames" / f"{index:04d}.png"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def write_frame(self, index: int, frame: np.ndarray) -> None:
        """Keep output frame ``index`` (H, W, 3) uint8, losslessly."""
        with atomic_path(self.frame_path(index)) as tmp:
            # Fast compression: kept only until the video is complete, on the writer thread of a
            # run whose GPU makes a frame in a fraction of a second (lossless all the same).
            Image.fromarray(frame).save(tmp, format="PNG", compress_level=1)

    def save(self, state: FifoState) -> None:
        """Save ``state`` (at an iteration boundary) atomically."""
        payload = {"version": STATE_VERSION, "fingerprint": self.fingerprint, **state.to_payload()}
        with atomic_path(self.state_file) as tmp:
            torch.save(payload, tmp)

    def load(
        self, noise: NoiseSource, device: torch.device
    ) -> tuple[dict[str, Any], FifoState, list[np.ndarray]]:
        """The saved fingerprint, the state (on ``device``, drawing from ``noise`` restored to the
        saved point) and the output frames so far.

        Raises:
            StateError: a damaged or unreadable state, or frames missing.
        """
        try:
            payload = torch.load(self.state_file, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("version") != STATE_VERSION:
                raise StateError(f"{self.state_file} is not a state of this version")
            state = FifoState.from_payload(payload, noise, device)
            frames = []
            for index in range(state.frames_emitted):
                with Image.open(self.frame_path(index)) as image:
                    frames.append(np.asarray(image.convert("RGB")).copy())
        except StateError:
            raise
        except Exception as err:  # a damaged state is reported (see damaged()), never a traceback
            raise StateError(_unreadable(self.state_file, err)) from err
        return payload["fingerprint"], state, frames

    def read_fingerprint(self) -> dict[str, Any]:
        """The saved fingerprint alone (for checking a resume before any model is loaded)."""
        try:
            payload = torch.load(self.state_file, map_location="cpu", weights_only=True)
            return dict(payload["fingerprint"])
        except Exception as err:
            raise StateError(_unreadable(self.state_file, err)) from err

    def check_fingerprint(self, saved: dict[str, Any]) -> None:
        """Refuse a saved state made with other settings than this run's (the one comparison of a
        saved fingerprint, before a model is loaded and again when the state is loaded).

        Raises:
            StateError: naming every setting that differs, and the two ways on.
        """
        differences = fingerprint_differences(saved, self.fingerprint)
        if differences:
            raise StateError(
                f"`resume`: the state saved in {self.folder} was made with other arguments:\n  "
                + "\n  ".join(differences)
                + "\nRun the interrupted command again with `resume`, or drop `resume` (and pass "
                "`overwrite`) to start afresh."
            )

    def resume(
        self, noise: NoiseSource, device: torch.device, base_clip: Path, video_path: Path
    ) -> tuple[FifoState, list[np.ndarray]] | None:
        """The saved state (on ``device``, drawing from ``noise``) and the frames written before it,
        or None when there is no saved state.

        Raises:
            StateError: the state, its frames or the run's ``base_clip`` file (``origin.gif``) are
                damaged or missing (nothing is deleted, :meth:`damaged`), or the state was made
                with other settings (:meth:`check_fingerprint`).
        """
        if not self.exists():
            logger.info("resuming: no saved state in %s, starting from the beginning", self.folder)
            return None
        try:
            if not base_clip.is_file():  # the base clip written with the state
                raise StateError(f"{base_clip}, the base clip of the saved run, is missing")
            fingerprint, state, frames = self.load(noise, device)
        except StateError as err:  # never started over silently: the saved frames would be lost
            raise self.damaged(err, video_path) from None
        self.check_fingerprint(fingerprint)
        logger.info("resuming %s from iteration %d (%d frames)", self.folder, state.iteration, len(frames))
        return state, frames

    def damaged(self, reason: StateError, video_path: Path) -> StateError:
        """The error for a state that cannot be resumed (``reason``): what is damaged, what is kept,
        and the user's two ways on. Nothing is deleted."""
        frames = sorted((self.folder / "frames").glob("*.png"))
        kept = f"its {len(frames)} saved frame(s) are PNG files in {self.folder / 'frames'}"
        partial = partial_video_path(video_path)
        if partial.is_file():
            kept += f", and {partial} plays the frames up to the last stop"
        return StateError(
            f"`resume`: the saved state {self.state_file} cannot be resumed ({reason}), so the run cannot "
            f"continue from it. Nothing was deleted: {kept}. To start afresh, run the command with "
            "`overwrite` instead of `resume` (this deletes them); to keep them, copy them elsewhere first "
            "or use `experiment` NAME for the new run."
        )

    def remove(self) -> None:
        """Delete the folder (the video is complete)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        self.folder.rmdir()


class StateSaver:
    """Around the FIFO loop: keeps every output frame and saves the state now and then.

    Args:
        store: the video's state folder.
        every_frames: save every this many output frames (None: by time).
        every_seconds: without ``every_frames``, save when this much time has passed.
    """

    def __init__(self, store: StateStore, every_frames: int | None, every_seconds: float) -> None:
        self.store, self.every_frames, self.every_seconds = store, every_frames, every_seconds
        # Called before each save: the frames are written on another thread (fifo.sinks.FrameWriter)
        # and a saved state must never count a frame that is not on disk yet.
        self.before_save: Callable[[], None] | None = None
        self._last_time = time.monotonic()
        self._last_frames = -1
        self._step_frames: int | None = None  # frames at the last after_step

    def write_frame(self, index: int, frame: np.ndarray) -> None:
        self.store.write_frame(index, frame)

    def after_step(self, state: FifoState) -> None:
        """Save if the rule says so (called at each iteration boundary)."""
        if self.every_frames is not None:
            # Due when the frames crossed a multiple of every_frames since the last call (an
            # iteration gives several frames on Wan2.1), one frame at a time before the first.
            frames, every = state.frames_emitted, self.every_frames
            before = frames - 1 if self._step_frames is None else self._step_frames
            self._step_frames = frames
            due = frames > 0 and frames // every > before // every and frames != self._last_frames
        else:
            due = time.monotonic() - self._last_time >= self.every_seconds
        if due:
            self.save(state)

    def save(self, state: FifoState) -> None:
        if self.before_save is not None:
            self.before_save()
        started = time.monotonic()
        self.store.save(state)
        self._last_time, self._last_frames = time.monotonic(), state.frames_emitted
        logger.debug(
            "state saved at iteration %d (%d frames) in %.3fs", state.iteration, state.frames_emitted,
            time.monotonic() - started,
        )  # fmt: skip
