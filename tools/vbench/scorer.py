"""Scores videos on the chosen VBench dimensions, frames in batches on one device."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tools.vbench.aesthetic import CLIP_L14_HUB_REPO, LAION_HEAD_URL, aesthetic_quality_score, build_aesthetic
from tools.vbench.common import (
    AESTHETIC,
    BACKGROUND,
    DIMENSIONS,
    DYNAMIC,
    FLICKER,
    IMAGING,
    MOTION,
    SUBJECT,
    DimensionScores,
)
from tools.vbench.consistency import build_clip, build_dino, consistency_curve
from tools.vbench.flicker import temporal_flickering_score
from tools.vbench.flow import TORCHVISION_RAFT_URL, FlowScorer, build_raft
from tools.vbench.imaging import (
    MUSIQ_HUB_REPO,
    MUSIQ_SPAQ_FILE,
    build_musiq,
    imaging_preprocess,
    imaging_quality_score,
)
from tools.vbench.motion import AMT_HUB_REPO, MotionScorer, build_amt
from tools.vbench.video import clip_preprocess, dino_preprocess
from tools.vbench.weights import CLIP_HUB_REPO, DINO_HUB_REPO


@dataclass(kw_only=True)
class VBenchScores(DimensionScores):
    """One video's VBench dimensions (:class:`~tools.vbench.common.DimensionScores`) and what comes
    with them.

    ``static_video`` is the static filter's verdict (``None`` when the filter is off); a video it
    finds moving has ``temporal_flickering`` ``None``. Curves hold frame ``i``'s consistency for
    ``i = 1 .. t - 1`` (``(t - 1,)``), in percent.
    """

    static_video: bool | None = None
    subject_consistency_curve: list[float] | None = None
    background_consistency_curve: list[float] | None = None


def _percent_mean(curve: np.ndarray) -> float:
    return float(curve.mean()) * 100.0 if len(curve) else math.nan


class VBenchScorer:
    """Scores videos on the chosen VBench dimensions, frames in batches on one device.

    Args:
        dimensions: Names from :data:`DIMENSIONS`.
        dino: The model for ``subject_consistency`` (needed when it is chosen).
        clip: The model for ``background_consistency`` (needed when it is chosen).
        batch_size: Frames per forward pass.
        device: Where the models live; frames are preprocessed there too.
        aesthetic: The model for ``aesthetic_quality`` (:func:`tools.vbench.aesthetic.build_aesthetic`).
        musiq: The model for ``imaging_quality`` (:func:`tools.vbench.imaging.build_musiq`).
        amt: The model for ``motion_smoothness`` (:func:`tools.vbench.motion.build_amt`).
        raft: The model for ``dynamic_degree`` and the static filter (:func:`tools.vbench.flow.build_raft`).
        static_filter: Score ``temporal_flickering`` only for videos VBench's RAFT filter finds static.
        progress: Progress bars over the frame pairs of each video (AMT-S, RAFT).
    """

    def __init__(
        self,
        dimensions: Sequence[str] = DIMENSIONS,
        dino: nn.Module | None = None,
        clip: nn.Module | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        *,
        aesthetic: nn.Module | None = None,
        musiq: nn.Module | None = None,
        amt: nn.Module | None = None,
        raft: nn.Module | None = None,
        static_filter: bool = False,
        progress: bool = False,
    ) -> None:
        unknown = [d for d in dimensions if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown VBench dimension(s) {unknown}; choose from {list(DIMENSIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if SUBJECT in dimensions and dino is None:
            raise ValueError(f"{SUBJECT} needs the DINO model")
        if BACKGROUND in dimensions and clip is None:
            raise ValueError(f"{BACKGROUND} needs the CLIP model")
        if AESTHETIC in dimensions and aesthetic is None:
            raise ValueError(f"{AESTHETIC} needs the aesthetic model")
        if IMAGING in dimensions and musiq is None:
            raise ValueError(f"{IMAGING} needs the MUSIQ model")
        if MOTION in dimensions and amt is None:
            raise ValueError(f"{MOTION} needs the AMT-S model")
        if (DYNAMIC in dimensions or (static_filter and FLICKER in dimensions)) and raft is None:
            raise ValueError(f"{DYNAMIC} and the static filter need the RAFT model")
        self.dimensions = tuple(d for d in DIMENSIONS if d in dimensions)  # VBench's order
        self.dino = dino
        self.clip = clip
        self.aesthetic = aesthetic
        self.musiq = musiq
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.static_filter = static_filter and FLICKER in self.dimensions
        self.motion = None if amt is None else MotionScorer(amt, batch_size, device, progress)
        self.flow = None if raft is None else FlowScorer(raft, batch_size, device, progress)
        self.sources: dict[str, str] = {}

    @classmethod
    def create(
        cls,
        dimensions: Sequence[str] = DIMENSIONS,
        dino_weights: str | os.PathLike | None = None,
        clip_weights: str | os.PathLike | None = None,
        random_init: bool = False,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        *,
        aesthetic_weights: str | os.PathLike | None = None,
        clip_l14_weights: str | os.PathLike | None = None,
        musiq_weights: str | os.PathLike | None = None,
        amt_weights: str | os.PathLike | None = None,
        raft_weights: str | os.PathLike | None = None,
        static_filter: bool = False,
        progress: bool = False,
    ) -> VBenchScorer:
        """Build the models the dimensions need (see :func:`build_dino`, :func:`build_clip`,
        :func:`~tools.vbench.aesthetic.build_aesthetic`, :func:`~tools.vbench.imaging.build_musiq`,
        :func:`~tools.vbench.motion.build_amt`, :func:`~tools.vbench.flow.build_raft`).

        ``device`` defaults to CUDA when available.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Random models (tests only) are small towers: see tools.vbench.consistency.SMALL_TOWER.
        small = {"small": True} if random_init else {}
        dino = build_dino(dino_weights, random_init, device, **small) if SUBJECT in dimensions else None
        clip = build_clip(clip_weights, random_init, device, **small) if BACKGROUND in dimensions else None
        aesthetic = None
        if AESTHETIC in dimensions:
            aesthetic = build_aesthetic(aesthetic_weights, clip_l14_weights, random_init, device)
        musiq = build_musiq(musiq_weights, random_init, device) if IMAGING in dimensions else None
        amt = build_amt(amt_weights, random_init, device) if MOTION in dimensions else None
        needs_raft = DYNAMIC in dimensions or (static_filter and FLICKER in dimensions)
        raft = build_raft(raft_weights, random_init, device) if needs_raft else None
        scorer = cls(
            dimensions,
            dino,
            clip,
            batch_size,
            device,
            aesthetic=aesthetic,
            musiq=musiq,
            amt=amt,
            raft=raft,
            static_filter=static_filter,
            progress=progress,
        )

        def source(weights: str | os.PathLike | None, repo: str) -> str:
            if random_init:
                return "random-init, small (tests only)"
            return str(weights) if weights is not None else f"hf:{repo}"

        if dino is not None:
            scorer.sources[SUBJECT] = source(dino_weights, DINO_HUB_REPO)
        if clip is not None:
            scorer.sources[BACKGROUND] = source(clip_weights, CLIP_HUB_REPO)
        if aesthetic is not None:
            scorer.sources[AESTHETIC] = (
                "random-init, small tower (tests only)"
                if random_init
                else f"{aesthetic_weights or LAION_HEAD_URL} + {source(clip_l14_weights, CLIP_L14_HUB_REPO)}"
            )
        if musiq is not None:
            scorer.sources[IMAGING] = source(musiq_weights, f"{MUSIQ_HUB_REPO}/{MUSIQ_SPAQ_FILE}")
        if amt is not None:
            scorer.sources[MOTION] = source(amt_weights, AMT_HUB_REPO)
        if raft is not None:
            scorer.sources[DYNAMIC] = source(raft_weights, TORCHVISION_RAFT_URL)
        return scorer

    @torch.inference_mode()
    def features(
        self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], frames: np.ndarray
    ) -> torch.Tensor:
        """``(t, h, w, 3)`` uint8 -> ``(t, d)`` (or ``(t,)`` for a scorer) float64 outputs on the CPU,
        ``batch_size`` frames a pass."""
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            chunks.append(model(preprocess(batch.to(self.device))).double().cpu())
        return torch.cat(chunks)

    def score(self, frames: np.ndarray, fps: float = 0.0) -> VBenchScores:
        """The chosen dimensions of one video, ``frames`` ``(t, h, w, 3)`` uint8 at ``fps`` frames a
        second (dynamic degree samples frames by it; 0: unknown, every frame)."""
        scores = VBenchScores()
        if SUBJECT in self.dimensions:
            curve = consistency_curve(self.features(self.dino, dino_preprocess, frames))
            scores.subject_consistency = _percent_mean(curve)
            scores.subject_consistency_curve = (curve * 100.0).tolist()
        if BACKGROUND in self.dimensions:
            curve = consistency_curve(self.features(self.clip, clip_preprocess, frames))
            scores.background_consistency = _percent_mean(curve)
            scores.background_consistency_curve = (curve * 100.0).tolist()
        if self.flow is not None:
            flow = self.flow.score(frames, fps, dynamic=DYNAMIC in self.dimensions, static=self.static_filter)
            if flow.dynamic is not None:
                scores.dynamic_degree = float(flow.dynamic)
            elif DYNAMIC in self.dimensions:
                scores.dynamic_degree = math.nan  # a single frame
            scores.static_video = flow.static
        if FLICKER in self.dimensions and scores.static_video is not False:
            scores.temporal_flickering = temporal_flickering_score(frames) * 100.0
        if AESTHETIC in self.dimensions:
            laion = self.features(self.aesthetic, clip_preprocess, frames)
            scores.aesthetic_quality = aesthetic_quality_score(laion) * 100.0
        if IMAGING in self.dimensions:
            mos = self.features(self.musiq, imaging_preprocess, frames)
            scores.imaging_quality = imaging_quality_score(mos) * 100.0
        if MOTION in self.dimensions:
            scores.motion_smoothness = self.motion.score(frames) * 100.0
        return scores

    def settings(self) -> dict[str, object]:
        """What produced the scores, for the JSON report."""
        return {
            "dimensions": list(self.dimensions),
            "scale": "percent",
            "models": dict(self.sources),
            "static_filter": self.static_filter,
            "dynamic_degree_scale": "per video 1 (moving) or 0; the mean over videos is VBench's score",
            "batch_size": self.batch_size,
            "device": str(self.device),
        }
