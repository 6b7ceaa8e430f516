"""Names, constants and small helpers that every VBench dimension module shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
