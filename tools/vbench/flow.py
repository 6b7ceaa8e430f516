"""RAFT optical flow for VBench's ``dynamic_degree`` and its static-video filter.

VBench runs the original RAFT (``raft-things.pth``, 20 refinement iterations) on pairs of frames
padded to multiples of 8, and reduces each flow field ``(2, h, w)`` to the mean magnitude of its
largest few percent of pixels. Read from ``vbench/dynamic_degree.py`` and ``vbench/cli/static_filter.py``:

- ``dynamic_degree``: frames sampled every ``max(1, round(fps / 8))`` frames; consecutive sampled
  pairs; top 5 % of the padded frame's pixels; threshold ``6 * short_side / 256``; the video moves
  when at least ``round(4 * n / 16)`` pairs pass it (``n`` sampled frames). VBench's score is the
  share of moving videos; per video it is 1 (moving) or 0.
- the static filter (VBench keeps only static videos for ``temporal_flickering``): every frame;
  consecutive pairs plus (first, last) and (last, first); top 2 %; threshold ``3 * short_side / 256``;
  with ``c = round(2 * t / 16)``, static unless more than ``c`` consecutive pairs pass the threshold
  or one of the two first/last pairs passes ``2 c`` times it.

The network is torchvision's ``raft_large``, the same architecture as the original RAFT: the
original checkpoint loads through :func:`raft_things_to_torchvision` (a renaming; two of its
entries are the same batch norm saved twice). torchvision's ``Raft_Large_Weights.C_T_V1`` are the
original Chairs+Things weights ported by torchvision, i.e. ``raft-things.pth``.

Frames under 128 pixels on a side are enlarged (bilinear) to 128 before RAFT: below that the
correlation pyramid has a level of size 1, where the original RAFT divides by zero (NaN flow, so
VBench calls such a video static and not dynamic) and torchvision refuses the input. The thresholds
then use the enlarged side, so that they scale with the flow.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tools.vbench.common import (
    DYNAMIC,
    RANDOM_INIT_SEED,
    BatchedScorer,
    FeatureWeightsError,
    _first_line,
    _seeded,
)
from tools.vbench.strict import load_strict, read_weights
from tools.vbench.weights import _offline

logger = logging.getLogger(__name__)

RAFT_ITERATIONS = 20  # VBench: iters=20
# The reduced random network of --random_feature_models (tests only) refines twice: on a busy
# CPU each of RAFT's many small operations costs a thread synchronisation.
REDUCED_ITERATIONS = 2
MIN_RAFT_SIDE = 128
TORCHVISION_RAFT_URL = "https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth"
RAFT_THINGS_URL = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
RAFT_LABEL = "RAFT (raft_large)"

# VBench's constants (dynamic_degree.py and cli/static_filter.py).
DYNAMIC_TOP_SHARE = 0.05
DYNAMIC_THRESHOLD_PER_256 = 6.0
DYNAMIC_PAIRS_PER_16 = 4.0
STATIC_TOP_SHARE = 0.02
STATIC_THRESHOLD_PER_256 = 3.0
STATIC_PAIRS_PER_16 = 2.0

# Original RAFT name -> torchvision name, applied in order to each key (after "module." is dropped).
_RAFT_RENAMES = (
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"^(\w+_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(\w+_encoder)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(\w+_encoder)\.conv2\.", r"\1.conv."),
    (r"(layer\d\.\d)\.conv1\.", r"\1.convnormrelu1.0."),
    (r"(layer\d\.\d)\.norm1\.", r"\1.convnormrelu1.1."),
    (r"(layer\d\.\d)\.conv2\.", r"\1.convnormrelu2.0."),
    (r"(layer\d\.\d)\.norm2\.", r"\1.convnormrelu2.1."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convc2\.", "update_block.motion_encoder.convcorr2.0."),
    (r"^update_block\.encoder\.convf1\.", "update_block.motion_encoder.convflow1.0."),
    (r"^update_block\.encoder\.convf2\.", "update_block.motion_encoder.convflow2.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])1\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"^update_block\.gru\.conv([zrq])2\.", r"update_block.recurrent_block.convgru2.conv\1."),
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
)
# In the original residual blocks, norm3 is the batch norm of the strided shortcut, which the
# state dict also holds as downsample.1: one copy is enough.
_RAFT_DUPLICATE = re.compile(r"(layer\d\.\d)\.norm3\.")


def raft_things_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original RAFT's state dict (``raft-things.pth``, ``module.`` prefix or not) renamed for
    torchvision's ``raft_large``; a torchvision state dict comes back unchanged.

    Raises:
        ValueError: a ``norm3`` entry that differs from the ``downsample.1`` it duplicates.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _RAFT_DUPLICATE.search(key):
            twin = "module." + _RAFT_DUPLICATE.sub(r"\1.downsample.1.", key)
            twin_value = state.get(twin, state.get(twin.removeprefix("module.")))
            if twin_value is not None and not torch.equal(twin_value, value):
                raise ValueError(f"{key} differs from the shortcut norm it should duplicate")
            if twin_value is not None:
                continue
        for pattern, replacement in _RAFT_RENAMES:
            key = re.sub(pattern, replacement, key)
        mapped[key] = value
    return mapped


def _raft_network(reduced: bool = False) -> nn.Module:
    """torchvision's ``raft_large``; ``reduced``: the same design, narrower and without the convex
    upsampling mask (for tests: RAFT-large costs seconds a frame pair on a CPU)."""
    from torchvision.models.optical_flow import raft_large

    if not reduced:
        return raft_large(weights=None, progress=False)
    from torchvision.models.optical_flow.raft import BottleneckBlock, _raft

    return _raft(
        feature_encoder_layers=(8, 8, 16, 16, 32),
        feature_encoder_block=BottleneckBlock,
        feature_encoder_norm_layer=nn.InstanceNorm2d,
        context_encoder_layers=(8, 8, 16, 16, 32),
        context_encoder_block=BottleneckBlock,
        context_encoder_norm_layer=None,
        corr_block_num_levels=4,
        corr_block_radius=3,
        motion_encoder_corr_layers=(32,),
        motion_encoder_flow_layers=(16, 8),
        motion_encoder_out_channels=30,
        recurrent_block_hidden_state_size=24,
        recurrent_block_kernel_size=(3,),
        recurrent_block_padding=(1,),
        flow_head_hidden_size=32,
        use_mask_predictor=False,
    )


def _torchvision_raft_file() -> Path:
    """torchvision's ported ``raft-things`` weights from the torch hub cache, downloaded there once.

    Raises:
        FeatureWeightsError: not cached, and offline (``HF_HUB_OFFLINE``) or the download failed.
    """
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / TORCHVISION_RAFT_URL.rsplit("/", 1)[1]
    if path.is_file():
        return path

    def missing(reason: str) -> FeatureWeightsError:
        return FeatureWeightsError(
            f"{DYNAMIC} and the static filter need the {RAFT_LABEL} weights: {reason}. Either download {TORCHVISION_RAFT_URL} "
            f"into {cache}/ on a machine with network, or pass --raft_weights PATH with that file or "
            f"the original raft-things.pth (in RAFT's {RAFT_THINGS_URL}; VBench keeps it in "
            "~/.cache/vbench/raft_model/models/). (--random_feature_models runs without weights, for "
            "tests only: its scores mean nothing.)"
        )

    if _offline():
        raise missing("not in the torch hub cache and HF_HUB_OFFLINE is set")
    logger.info("downloading %s into %s", TORCHVISION_RAFT_URL, cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(TORCHVISION_RAFT_URL, str(path), progress=False)
    except Exception as err:  # no network, proxy, disk full: one message that says what to do
        raise missing(f"not cached and the download failed ({_first_line(err)})") from err
    return path


class RaftFlow(nn.Module):
    """A RAFT network with its number of refinements: ``(b, 3, h, w)`` pairs in ``[-1, 1]`` -> the
    final ``(b, 2, h, w)`` flow from the first image to the second."""

    def __init__(self, raft: nn.Module, iterations: int = RAFT_ITERATIONS) -> None:
        super().__init__()
        self.raft = raft
        self.iterations = iterations

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        return self.raft(image1, image2, num_flow_updates=self.iterations)[-1]


def build_raft(
    weights: str | os.PathLike | None = None, random_init: bool = False, device: str | torch.device = "cpu"
) -> RaftFlow:
    """torchvision's ``raft_large`` with RAFT's Chairs+Things weights, in eval mode on ``device``.

    Args:
        weights: The original ``raft-things.pth`` or a torchvision ``raft_large`` state dict
            (``raft_large_C_T_V1-22a6c225.pth``); ``None`` takes the latter from the torch hub cache,
            downloading it there on first use.
        random_init: Seeded random weights, no file, no network (tests only); the network is then a
            narrower RAFT (:func:`_raft_network`) refining :data:`REDUCED_ITERATIONS` times, so that
            tests run in seconds.
        device: Where the model runs.

    Raises:
        FeatureWeightsError: weights missing, unreadable, or not RAFT-large weights (file named).
    """
    with _seeded(RANDOM_INIT_SEED):
        model = _raft_network(reduced=random_init)
    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        source = "random-init, reduced width"
    else:
        if weights is not None and not Path(weights).expanduser().is_file():
            raise FeatureWeightsError(
                f"--raft_weights {weights}: no such file. Give raft-things.pth (RAFT's {RAFT_THINGS_URL}) "
                f"or torchvision's {TORCHVISION_RAFT_URL}."
            )
        path = Path(weights).expanduser() if weights is not None else _torchvision_raft_file()
        try:
            state = raft_things_to_torchvision(read_weights(path, RAFT_LABEL))
        except ValueError as err:
            raise FeatureWeightsError(f"{path} does not hold {RAFT_LABEL} weights ({err})") from err
        load_strict(model, state, str(path), RAFT_LABEL)
        source = str(path)
    logger.info("%s (%s) on %s", RAFT_LABEL, source, device)
    flow = RaftFlow(model, REDUCED_ITERATIONS if random_init else RAFT_ITERATIONS).to(device).eval()
    flow.requires_grad_(False)
    return flow


# --------------------------------------------------------------------------------------------
# Frames and flow statistics


def raft_frames(frames: np.ndarray, device: str | torch.device = "cpu") -> tuple[torch.Tensor, int]:
    """RAFT's input: ``(t, h, w, 3)`` uint8 -> ``((t, 3, H, W)`` float32 in ``[-1, 1]``, short side).

    ``H``, ``W`` are ``h``, ``w`` (enlarged to :data:`MIN_RAFT_SIDE` when smaller) padded with
    replicated edges to multiples of 8, split evenly on both sides as VBench's ``InputPadder``
    ("sintel" mode); the short side is the unpadded one, which VBench's thresholds use.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    h, w = pixels.shape[-2:]
    if min(h, w) < MIN_RAFT_SIDE:
        scale = MIN_RAFT_SIDE / min(h, w)
        size = (max(MIN_RAFT_SIDE, round(h * scale)), max(MIN_RAFT_SIDE, round(w * scale)))
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        h, w = size
    pad_h, pad_w = (-h) % 8, (-w) % 8
    pixels = F.pad(pixels, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="replicate")
    return 2 * (pixels / 255.0) - 1.0, min(h, w)


def top_magnitude(flow: torch.Tensor, share: float) -> torch.Tensor:
    """Mean length of the largest ``int(h * w * share)`` flow vectors: ``(b, 2, h, w)`` -> ``(b,)`` float64."""
    lengths = flow.double().pow(2).sum(1).sqrt().flatten(1)
    count = int(lengths.shape[1] * share)
    if count == 0:
        return torch.full((len(lengths),), math.nan, dtype=torch.float64)
    return lengths.topk(count, dim=1).values.mean(1).cpu()


def sample_interval(fps: float) -> int:
    """VBench's frame step for dynamic degree: ``max(1, round(fps / 8))`` (unknown fps 0: every frame)."""
    return max(1, round(fps / 8)) if fps and fps > 0 else 1


def is_dynamic(magnitudes: Sequence[float], short_side: int, frames: int) -> bool:
    """VBench's decision from the top-5 % magnitudes of the sampled pairs (``frames`` sampled)."""
    threshold = DYNAMIC_THRESHOLD_PER_256 * short_side / 256.0
    needed = round(DYNAMIC_PAIRS_PER_16 * frames / 16.0)
    passed = 0
    for value in magnitudes:
        passed += value > threshold
        if passed >= needed:
            return True
    return False


def is_static(consecutive: Sequence[float], ends: Sequence[float], short_side: int, frames: int) -> bool:
    """VBench's static filter from the top-2 % magnitudes of the consecutive pairs and of the
    (first, last) and (last, first) pairs."""
    threshold = STATIC_THRESHOLD_PER_256 * short_side / 256.0
    allowed = round(STATIC_PAIRS_PER_16 * frames / 16.0)
    if sum(value > threshold for value in consecutive) > allowed:
        return False
    return not any(value > threshold * allowed * 2 for value in ends)


@dataclass
class FlowResult:
    """One video's RAFT statistics (``None``: not computed)."""

    dynamic: bool | None = None
    static: bool | None = None
    dynamic_magnitudes: list[float] | None = None  # top-5 % magnitude of each sampled pair


class FlowScorer(BatchedScorer):
    """RAFT on a video's frame pairs in batches; dynamic degree and the static filter from one pass.

    Args:
        model: :func:`build_raft`'s network (pairs of images -> final flow).
        batch_size: Frame pairs per forward pass.
        device: Where the model lives.
        progress: A progress bar over the pairs of each video.
    """

    @torch.inference_mode()
    def top_magnitudes(
        self, images: torch.Tensor, pairs: Sequence[tuple[int, int]], shares: Iterable[float]
    ) -> dict[float, list[float]]:
        """``{share: [top magnitude of pair k]}`` for the flows from ``images[i]`` to ``images[j]``."""
        shares = tuple(shares)
        result: dict[float, list[float]] = {share: [] for share in shares}
        starts = range(0, len(pairs), self.batch_size)
        for start in tqdm(starts, desc="RAFT", unit="batch", leave=False, disable=not self.progress):
            chunk = pairs[start : start + self.batch_size]
            first = images[[i for i, _ in chunk]]
            second = images[[j for _, j in chunk]]
            flow = self.model(first, second)
            for share in shares:
                result[share].extend(top_magnitude(flow, share).tolist())
        return result

    def score(self, frames: np.ndarray, fps: float, dynamic: bool = True, static: bool = False) -> FlowResult:
        """Dynamic degree and/or the static filter of one video, ``frames`` ``(t, h, w, 3)`` uint8."""
        result = FlowResult()
        if len(frames) < 2 or not (dynamic or static):
            return result
        images, short_side = raft_frames(frames, self.device)
        t = len(frames)
        consecutive = [(i, i + 1) for i in range(t - 1)]
        step = sample_interval(fps)
        sampled = list(range(0, t, step))
        dynamic_pairs = list(zip(sampled[:-1], sampled[1:]))
        # Each pair's flow is computed once: with a step of 1 the dynamic pairs are the static
        # filter's consecutive pairs.
        needed = (dynamic_pairs if dynamic else []) + (
            [*consecutive, (0, t - 1), (t - 1, 0)] if static else []
        )
        pairs = list(dict.fromkeys(needed))
        tops = self.top_magnitudes(images, pairs, (DYNAMIC_TOP_SHARE, STATIC_TOP_SHARE))
        top = {share: dict(zip(pairs, values)) for share, values in tops.items()}
        if dynamic:
            magnitudes = [top[DYNAMIC_TOP_SHARE][pair] for pair in dynamic_pairs]
            result.dynamic_magnitudes = magnitudes
            result.dynamic = is_dynamic(magnitudes, short_side, len(sampled))
        if static:
            static_top = top[STATIC_TOP_SHARE]
            ends = [static_top[(0, t - 1)], static_top[(t - 1, 0)]]
            result.static = is_static([static_top[p] for p in consecutive], ends, short_side, t)
        return result
