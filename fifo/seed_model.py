"""The seed model: the text-to-video model that samples the base clips of the seeded modes
(``t2v_seed`` / ``t2v_seed_ar``) on a family that conditions every frame on an image
(DynamiCrafter), as plain data.

Which model it is (:class:`SeedModelSpec`), the mode it runs in (:data:`SEED_MODE`) and its
settings for a run's settings (:func:`seed_settings`). Sampling with it is
:class:`fifo.seed_clips.SeedClips`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from torch import Tensor

from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, MainMode, ModeOptions
from fifo.prompts import PromptJob

# The seed model by default: VideoCrafter2 text-to-video, the size and length of DynamiCrafter 512.
DEFAULT_SEED_CONFIG = "configs/inference_t2v_512_v2.0.yaml"
DEFAULT_SEED_CKPT = "videocrafter_models/base_512_v2/model.ckpt"


@dataclass(frozen=True)
class SeedModelSpec:
    """Which text-to-video model samples the base clips (its config and checkpoint)."""

    config: str
    ckpt_path: str | None


def seed_settings(settings: GenerationSettings) -> GenerationSettings:
    """The text model's settings for a run's settings: the same size, length, steps, guidance, seed
    and dtype; its own frame-rate conditioning, no guidance rescale (a DynamiCrafter setting), and
    one window per call (it samples base clips only, never FIFO windows)."""
    return replace(settings, frame_stride=None, guidance_rescale=0.0, window_batch=1)


SEED_MODE = ModeOptions(main=MainMode.T2V)
"""The text model's mode: plain text-to-video (no image, no tricks)."""


class BaseClipSource(Protocol):
    """Where a run's base clips come from when another model samples them
    (:class:`fifo.seed_clips.SeedClips`)."""

    @property
    def model_id(self) -> str: ...

    def video(self, job: PromptJob, cache_dir: Path, noise: NoiseSource) -> tuple[Tensor, bool]:
        """The job's base clip, decoded: (1, 3, f, H, W) in ~[-1, 1], and whether it was cached."""
        ...

    def close(self) -> None: ...
