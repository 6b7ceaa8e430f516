"""Names, constants and small helpers that every VBench dimension module shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch

SUBJECT = "subject_consistency"
BACKGROUND = "background_consistency"
FLICKER = "temporal_flickering"
AESTHETIC = "aesthetic_quality"
IMAGING = "imaging_quality"
MOTION = "motion_smoothness"
DYNAMIC = "dynamic_degree"
DIMENSIONS = (SUBJECT, BACKGROUND, FLICKER, AESTHETIC, IMAGING, MOTION, DYNAMIC)

INPUT_SIZE = 224
# VBench's normalisation constants (vbench/utils.py: dino_transform and clip_transform).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Random-initialised models are seeded, so that two test runs see the same (meaningless) scores.
RANDOM_INIT_SEED = 0


@dataclass(kw_only=True)
class DimensionScores:
    """VBench's seven dimensions of one video (or one clip), the one place they are declared.

    Each is in percent (VBench's score x 100, as the papers print it), ``None`` when not computed
    and NaN where VBench's formula is undefined (a single frame). ``dynamic_degree`` is VBench's
    per-video verdict, 1.0 (moving) or 0.0, not a percentage. The per-video scores
    (:class:`tools.vbench.scorer.VBenchScores`), the per-clip rows of ``--long``
    (:class:`tools.vbench.long.ClipRow`) and the evaluation's rows
    (:class:`tools.evaluation.VideoMetrics`) extend it. Field order is :data:`DIMENSIONS`.
    """

    subject_consistency: float | None = None
    background_consistency: float | None = None
    temporal_flickering: float | None = None
    aesthetic_quality: float | None = None
    imaging_quality: float | None = None
    motion_smoothness: float | None = None
    dynamic_degree: float | None = None

    def dimension_values(self) -> dict[str, float | None]:
        """``{dimension: value}`` in :data:`DIMENSIONS` order."""
        return {name: getattr(self, name) for name in DIMENSIONS}

    def set_dimensions(self, source: DimensionScores, names: tuple[str, ...] = DIMENSIONS) -> None:
        """Copy the dimensions ``names`` of ``source`` into this object."""
        for name in names:
            setattr(self, name, getattr(source, name))


if tuple(f.name for f in fields(DimensionScores)) != DIMENSIONS:  # pragma: no cover - a typo guard
    raise ImportError("DimensionScores must declare exactly DIMENSIONS, in that order")


class FeatureWeightsError(RuntimeError):
    """A feature model's weights are missing (no network, not cached) or do not fit the model."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_weights_file(path: Path) -> object:
    """A small feature model's weights file as stored: ``.safetensors``, or a torch file read
    weights-only (no pickled code runs). Raises what the reader raises; callers name the model."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Random initialisation from ``seed`` without touching the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class BatchedScorer:
    """What the scorers that run a network over a video's frame pairs share: the network, how many
    pairs go through it at once, where it lives and whether a progress bar is shown.

    Args:
        model: The network.
        batch_size: Frame pairs per forward pass.
        device: Where the model lives.
        progress: A progress bar over the pairs of each video.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
