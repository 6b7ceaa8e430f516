"""VBench's ``motion_smoothness``: how well AMT-S predicts the odd frames from the even ones.

Read from ``vbench/motion_smoothness.py`` (and its ``third_party/amt/utils``):

- the even frames ``0, 2, 4, ...`` of the video, as float ``[0, 1]``, padded with replicated edges
  to multiples of 16 (split evenly on both sides);
- AMT-S predicts the middle frame (``t = 0.5``) of each consecutive pair of them; the prediction is
  unpadded and turned back into uint8 as ``(x * 255).clip(0, 255)``, truncated (not rounded);
- prediction ``k`` is compared with the real frame ``2 k + 1``: the mean absolute uint8 difference
  over pixels and channels, averaged over the predictions;
- the score is ``(255 - that mean) / 255`` (1.0: a perfect interpolator), printed in percent.

VBench shrinks the frames before AMT-S only when its GPU-memory estimate says they do not fit
(never for 512x320 frames on a GPU with more than ~2.6 GB, and never on the CPU); this module always
runs at full size. A video needs at least 3 frames (2 even ones) and frames of at least 64 pixels
on a side once padded (AMT-S's correlation pyramid); others score NaN, with a warning for the size.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tools.vbench.amt import AMTS
from tools.vbench.common import MOTION, RANDOM_INIT_SEED, BatchedScorer, _seeded
from tools.vbench.strict import load_strict, read_weights
from tools.vbench.weights import _hub_file, _HubWeights, _local_file

logger = logging.getLogger(__name__)

AMT_HUB_REPO = "lalala125/AMT"  # where VBench downloads amt-s.pth from (vbench/utils.py)
AMT_HUB_FILES = ("amt-s.pth",)
AMT_URL = "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"
AMT_LABEL = "AMT-S"
AMT_PAD = 16  # VBench's InputPadder divisor for AMT
# AMT-S pools its 1/8-resolution correlation volume 3 times: padded sides under 64 pixels leave a
# level of size 0 (VBench's code fails there).
AMT_MIN_SIDE = 64

_AMT_WEIGHTS = _HubWeights(AMT_LABEL, MOTION, AMT_HUB_REPO, AMT_HUB_FILES, "--amt_weights", AMT_URL)


def build_amt(
    weights: str | os.PathLike | None = None, random_init: bool = False, device: str | torch.device = "cpu"
) -> AMTS:
    """AMT-S with the published ``amt-s.pth`` weights, in eval mode on ``device`` (float32).

    Args:
        weights: ``amt-s.pth`` (a dict with ``state_dict``, as published) or a bare state dict /
            ``.safetensors`` with the same keys; ``None`` takes ``amt-s.pth`` from the Hugging Face
            cache (``lalala125/AMT``), downloading it there on first use.
        random_init: Seeded random weights, no file, no network (tests only).
        device: Where the model runs.

    Raises:
        FeatureWeightsError: weights missing, unreadable, or not AMT-S's keys and shapes (file named).
    """
    with _seeded(RANDOM_INIT_SEED):
        model = AMTS()
    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        source = "random-init"
    else:
        path = _local_file(weights, _AMT_WEIGHTS) if weights is not None else _hub_file(_AMT_WEIGHTS)
        load_strict(model, read_weights(path, AMT_LABEL), str(path), AMT_LABEL)
        source = str(path)
    logger.info("%s (%s) on %s", AMT_LABEL, source, device)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def motion_smoothness_score(frames: np.ndarray, predicted: np.ndarray) -> float:
    """VBench's score from the real frames and the predicted odd ones, as a fraction.

    Args:
        frames: ``(t, h, w, 3)`` uint8, the whole video.
        predicted: ``(n, h, w, 3)`` uint8, prediction ``k`` standing for frame ``2 k + 1``
            (``n = ceil(t / 2) - 1``).

    Returns:
        ``(255 - mean_k mean |frames[2 k + 1] - predicted[k]|) / 255``; NaN when ``n == 0``.
    """
    frames, predicted = np.asarray(frames), np.asarray(predicted)
    if len(predicted) == 0:
        return math.nan
    odd = frames[1::2]
    if len(odd) < len(predicted) or odd.shape[1:] != predicted.shape[1:]:
        raise ValueError(f"{len(predicted)} predictions {predicted.shape[1:]} for frames {frames.shape}")
    # Pair by pair in int16: the absolute uint8 difference, as cv2.absdiff gives it.
    errors = [
        float(np.abs(odd[k].astype(np.int16) - predicted[k].astype(np.int16)).mean())
        for k in range(len(predicted))
    ]
    return (255.0 - float(np.mean(errors))) / 255.0


def _pad_amount(size: int) -> tuple[int, int]:
    total = (-size) % AMT_PAD
    return total // 2, total - total // 2


class MotionScorer(BatchedScorer):
    """AMT-S on a video's even-frame pairs, in batches; :meth:`score` gives VBench's motion smoothness.

    Args:
        model: :func:`build_amt`'s network (or any module with its call signature).
        batch_size: Frame pairs per forward pass.
        device: Where the model lives.
        progress: A progress bar over the pairs of each video.
    """

    @torch.inference_mode()
    def predict_odd(self, frames: np.ndarray) -> np.ndarray:
        """``(t, h, w, 3)`` uint8 -> ``(ceil(t / 2) - 1, h, w, 3)`` uint8: AMT-S's frame ``2 k + 1``."""
        even = frames[0::2]
        if len(even) < 2:
            return np.zeros((0, *frames.shape[1:]), dtype=np.uint8)
        h, w = frames.shape[1:3]
        top, bottom = _pad_amount(h)
        left, right = _pad_amount(w)
        outputs = []
        starts = range(0, len(even) - 1, self.batch_size)
        for start in tqdm(starts, desc="AMT-S", unit="batch", leave=False, disable=not self.progress):
            stop = min(start + self.batch_size, len(even) - 1)
            # (stop - start + 1) even frames give the pairs start..stop-1; each frame goes over once.
            block = torch.from_numpy(np.ascontiguousarray(even[start : stop + 1])).to(self.device)
            images = block.permute(0, 3, 1, 2).float() / 255.0
            images = F.pad(images, [left, right, top, bottom], mode="replicate")
            embt = torch.full((len(images) - 1, 1, 1, 1), 0.5, device=self.device)
            middle = self.model(images[:-1], images[1:], embt)[..., top : top + h, left : left + w]
            # VBench's tensor2img: scale, clip, and truncate to uint8.
            outputs.append((middle * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(outputs)

    def score(self, frames: np.ndarray) -> float:
        """VBench's motion smoothness of ``frames`` ``(t, h, w, 3)`` uint8, as a fraction (NaN under
        3 frames or :data:`AMT_MIN_SIDE` pixels)."""
        frames = np.asarray(frames)
        padded = [size + sum(_pad_amount(size)) for size in frames.shape[1:3]]
        if min(padded) < AMT_MIN_SIDE:
            logger.warning(
                "%s: frames of %dx%d are too small for AMT-S (at least %d pixels a side): NaN",
                MOTION,
                *frames.shape[1:3],
                AMT_MIN_SIDE,
            )
            return math.nan
        return motion_smoothness_score(frames, self.predict_odd(frames))
