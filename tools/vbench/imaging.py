"""VBench's imaging quality: MUSIQ (trained on SPAQ) on every frame, through pyiqa.

VBench (``vbench/imaging_quality.py``) builds ``pyiqa.archs.musiq_arch.MUSIQ`` with the SPAQ
checkpoint, feeds it every frame as float pixels ``/255`` (by default resized only when the longer
side is over 512: the longer side becomes 512, bilinear without antialiasing: its ``'longer'``
mode, :func:`imaging_preprocess`), and reports the mean over the frames of MUSIQ's score (0..100)
divided by 100 (:func:`imaging_quality_score`). MUSIQ itself does its multi-scale patching inside
its forward pass. pyiqa installs beside the project's pins (docs/evaluate.md), so the network is
pyiqa's own code, as in VBench; only the weights loading is ours (weights-only, strict keys).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tools.vbench.common import (
    IMAGING,
    RANDOM_INIT_SEED,
    FeatureWeightsError,
    _first_line,
    _seeded,
    read_weights_file,
)
from tools.vbench.video import _float_pixels
from tools.vbench.weights import _hub_file, _HubWeights, _local_file

logger = logging.getLogger(__name__)

MUSIQ_HUB_REPO = "chaofengc/IQA-PyTorch-Weights"
MUSIQ_SPAQ_FILE = "musiq_spaq_ckpt-358bb6af.pth"
MUSIQ_ORIGINAL_URL = (
    f"https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/{MUSIQ_SPAQ_FILE}"
)
# VBench's 'longer' preprocessing: frames whose longer side exceeds this are shrunk to it.
MAX_LONGER_SIDE = 512
# MUSIQ scores SPAQ's 0..100 mean opinion score; VBench divides by 100.
MOS_SCALE = 100.0
# --random_feature_models: pyiqa's MUSIQ with a 1-layer, 32-wide transformer (the full one has 14
# layers of 384) and one resized scale (224) beside the native one (the full: 224 and 384). The
# same preprocessing, multi-scale patching code and ResNet stem, at a cost a CPU test can pay: on a
# 64x64 video the stem runs on ~200 patches a frame at the full scales, ~50 at these (CPU times in
# docs/performance.md). The full configuration is what weights files are checked against.
SMALL_RANDOM_CONFIG = {
    "hidden_size": 32,
    "mlp_dim": 64,
    "num_heads": 2,
    "num_layers": 1,
    "longer_side_lengths": [224],
}

_MUSIQ_WEIGHTS = _HubWeights(
    "MUSIQ (SPAQ)", IMAGING, MUSIQ_HUB_REPO, (MUSIQ_SPAQ_FILE,), "--musiq_weights", MUSIQ_ORIGINAL_URL
)


def imaging_preprocess(frames: torch.Tensor) -> torch.Tensor:
    """VBench's MUSIQ input: ``(t, h, w, 3)`` uint8 -> ``(t, 3, h', w')`` float32 in ``[0, 1]``.

    When ``max(h, w) > 512`` both sides are scaled by ``512 / max(h, w)`` (``int`` of each, bilinear,
    no antialiasing, on float pixels as VBench's ``load_video`` gives them); otherwise unchanged.
    """
    from torchvision.transforms import functional as TF

    pixels = _float_pixels(frames)
    h, w = pixels.shape[-2:]
    if max(h, w) > MAX_LONGER_SIDE:
        scale = MAX_LONGER_SIDE / max(h, w)
        pixels = TF.resize(pixels, [int(scale * h), int(scale * w)], antialias=False)
    return pixels / 255.0


def imaging_quality_score(frame_scores: torch.Tensor | np.ndarray) -> float:
    """VBench's imaging quality of one video from its frames' MUSIQ scores (0..100): ``mean / 100``.

    Args:
        frame_scores: ``(t,)`` MUSIQ scores.

    Returns:
        A fraction (VBench's scale); NaN for no frames.
    """
    scores = torch.as_tensor(frame_scores, dtype=torch.float64)
    if scores.ndim != 1:
        raise ValueError(f"frame_scores must be (t,), got shape {tuple(scores.shape)}")
    return float(scores.mean()) / MOS_SCALE if len(scores) else float("nan")


class MusiqScores(nn.Module):
    """pyiqa's MUSIQ as a per-frame scorer: ``(b, 3, h, w)`` in ``[0, 1]`` -> ``(b,)`` scores."""

    def __init__(self, musiq: nn.Module) -> None:
        super().__init__()
        self.musiq = musiq

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.musiq(frames).reshape(len(frames))


def _musiq_class() -> type[nn.Module]:
    """pyiqa's MUSIQ, imported on first use: importing pyiqa takes seconds (it registers every
    metric it has), which runs that skip imaging_quality should not pay."""
    from pyiqa.archs.musiq_arch import MUSIQ

    return MUSIQ


def load_musiq_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a MUSIQ checkpoint into ``model`` strictly (weights-only; a ``module.`` prefix dropped).

    Raises:
        FeatureWeightsError: unreadable, or keys/shapes that are not MUSIQ's.
    """
    path = Path(path)
    try:
        state = read_weights_file(path)
        if not isinstance(state, dict):
            raise TypeError(f"a {type(state).__name__}, not a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    except Exception as err:  # unreadable file: one clear message
        raise FeatureWeightsError(f"{path} does not hold MUSIQ (SPAQ) weights ({_first_line(err)})") from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    problems = [
        f"size mismatch {k}: {found[k]}, expected {v}" for k, v in expected.items() if found.get(k, v) != v
    ]
    problems += [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
        raise FeatureWeightsError(f"{path} does not hold MUSIQ (SPAQ) weights ({shown})")
    model.load_state_dict(state, strict=True)


def build_musiq(
    weights: str | os.PathLike | None = None, random_init: bool = False, device: str | torch.device = "cpu"
) -> MusiqScores:
    """VBench's MUSIQ (SPAQ) in eval mode on ``device`` (float32, as VBench runs it).

    Args:
        weights: A local ``musiq_spaq_ckpt-358bb6af.pth`` (or a ``.safetensors`` of the same keys);
            ``None`` takes it from the Hugging Face cache (``chaofengc/IQA-PyTorch-Weights``, pyiqa's
            own store), downloading it there on first use.
        random_init: Seeded random weights of a small MUSIQ (:data:`SMALL_RANDOM_CONFIG`), no file, no
            network (tests only).
        device: Where the model runs.

    Raises:
        FeatureWeightsError: weights missing or not MUSIQ (SPAQ) weights.
    """
    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        path = None
    else:
        path = _local_file(weights, _MUSIQ_WEIGHTS) if weights is not None else _hub_file(_MUSIQ_WEIGHTS)
    musiq_class = _musiq_class()
    config = SMALL_RANDOM_CONFIG if random_init else {}
    with _seeded(RANDOM_INIT_SEED):
        # num_class=1: SPAQ's single-score head (VBench: MUSIQ(pretrained_model_path=...), whose
        # default num_class is 1); pretrained=False: no download inside pyiqa, we load the file.
        musiq = musiq_class(num_class=1, pretrained=False, **config)
    if path is not None:
        load_musiq_state(musiq, path)
    logger.info("MUSIQ (%s) on %s", path or "random-init, small transformer", device)
    model = MusiqScores(musiq).to(device).eval()
    model.requires_grad_(False)
    return model
