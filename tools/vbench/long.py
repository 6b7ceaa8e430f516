"""VBench-Long's protocol for long videos: scene split, fixed 2-second clips, per-clip VBench scores,
and the slow-fast combination of subject/background consistency.

What VBench-Long does (``vbench2_beta_long/`` of the VBench repository) and what this module does:

1. Scene split: PySceneDetect's ``ContentDetector`` (threshold 27, its default minimum scene length
   of 15 frames), as VBench-Long's ``split_video_into_scenes``; here fed the decoded frames
   directly (:func:`detect_scene_cuts`) instead of re-opening the file.
2. Clips: every scene is cut into clips of ``int(fps) * 2`` frames (VBench's
   ``split_video_into_clips``, ``duration=2`` for these dimensions in ``clip_length_mix.yaml``); a
   shorter remainder becomes a full-length last clip that borrows frames from the clip before it; a
   scene shorter than one clip is one clip (:func:`clip_ranges`).
3. Every clip is scored as VBench scores a video; a video's score of a dimension is the mean over
   its clips (VBench-Long's ``reorganize_clips_results``).
4. Slow-fast, for subject and background consistency: the "fast" clip-to-clip score is VBench's
   consistency formula on the sequence of the clips' first frames (per scene: a cut is no
   inconsistency), and the video's score is ``w_in * in-clip + w_c2c * clip-to-clip``, with the
   weights 0.7/0.3 (subject) and 0.8/0.2 (background) of VBench-Long's first
   ``slow_fast_params.yaml``. When no scene has two clips the in-clip score stands alone, as in
   VBench-Long.

Differences, also in the README: VBench-Long's current release (its ``--dev_flag`` path) weighs
0.5/0.5, extracts the clip-to-clip features with DINOv2 (subject) or DreamSim (background), and maps
the clip-to-clip score through a quantile table fitted to its own data; without ``--dev_flag`` it
reports the in-clip score alone (weights 1/0). Here the clip-to-clip features come from the same
DINO/CLIP models as the in-clip ones and are not remapped; the in-clip and clip-to-clip scores are
written separately, so any other weighting can be recomputed from the outputs.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from infra.csv_table import write_csv_table
from tools.vbench.common import BACKGROUND, DIMENSIONS, SUBJECT
from tools.vbench.consistency import consistency_curve
from tools.vbench.scorer import VBenchScorer, VBenchScores
from tools.vbench.video import clip_preprocess, dino_preprocess

logger = logging.getLogger(__name__)

CLIP_SECONDS = 2
SCENE_THRESHOLD = 27.0
MIN_SCENE_FRAMES = 15
# (in-clip, clip-to-clip) weights: VBench-Long's slow_fast_params.yaml (first release).
SUBJECT_WEIGHTS = (0.7, 0.3)
BACKGROUND_WEIGHTS = (0.8, 0.2)


@dataclass(frozen=True)
class LongProtocol:
    """The settings of VBench-Long's protocol (defaults: VBench-Long's)."""

    clip_seconds: int = CLIP_SECONDS
    scene_threshold: float = SCENE_THRESHOLD
    min_scene_frames: int = MIN_SCENE_FRAMES
    subject_weights: tuple[float, float] = SUBJECT_WEIGHTS
    background_weights: tuple[float, float] = BACKGROUND_WEIGHTS

    def clip_frames(self, fps: float) -> int:
        """Frames per clip: ``int(fps) * clip_seconds`` (VBench reads the frame rate as an int)."""
        if fps <= 0:
            raise ValueError(
                f"--long needs the video's frame rate to cut 2-second clips; the file gives {fps}"
            )
        return max(1, int(fps)) * self.clip_seconds


@dataclass
class ClipRow:
    """One clip's scores (percent, as the per-video columns), for the per-clip table."""

    video: str
    clip: int
    scene: int
    start_frame: int
    end_frame: int  # exclusive
    subject_consistency: float | None = None
    background_consistency: float | None = None
    temporal_flickering: float | None = None
    aesthetic_quality: float | None = None
    imaging_quality: float | None = None
    motion_smoothness: float | None = None
    dynamic_degree: float | None = None  # 1 or 0 per clip; the video's value is the share of moving clips


CLIP_FIELDS = tuple(f.name for f in fields(ClipRow))


@dataclass
class LongScores:
    """A video's VBench-Long scores: the per-video values (``scores``), their parts, and the clips."""

    scores: VBenchScores
    clips: list[ClipRow]
    scenes: list[tuple[int, int]]
    in_clip: dict[str, float]
    clip_to_clip: dict[str, float]


def detect_scene_cuts(
    frames: np.ndarray, threshold: float = SCENE_THRESHOLD, min_scene_frames: int = MIN_SCENE_FRAMES
) -> list[int]:
    """Frame indices where a new scene starts, by PySceneDetect's ``ContentDetector``.

    Args:
        frames: ``(t, h, w, 3)`` uint8 RGB.
        threshold: The detector's threshold on its HSV frame-difference score (VBench-Long: 27).
        min_scene_frames: Shortest scene, in frames.

    Returns:
        Sorted cut indices in ``(0, t)``; ``[]`` for a single scene.
    """
    from scenedetect import ContentDetector, FrameTimecode

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames)
    # The timecodes only order the frames; the detector reads frames as OpenCV gives them (BGR).
    rate = 1.0
    cuts = []
    for index, frame in enumerate(frames):
        cuts += detector.process_frame(FrameTimecode(index, fps=rate), np.ascontiguousarray(frame[..., ::-1]))
    if len(frames):
        cuts += detector.post_process(FrameTimecode(len(frames) - 1, fps=rate))
    return sorted({int(cut.frame_num) for cut in cuts if 0 < int(cut.frame_num) < len(frames)})


def scene_ranges(length: int, cuts: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each scene of a ``length``-frame video cut at ``cuts``."""
    bounds = [0, *cuts, length]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def clip_ranges(start: int, end: int, clip_frames: int) -> list[tuple[int, int]]:
    """VBench-Long's clips of the scene ``[start, end)``: full clips of ``clip_frames`` frames; a
    remainder becomes a last full-length clip ending at ``end`` (borrowing earlier frames); a scene
    shorter than one clip is a single clip."""
    length = end - start
    if length <= clip_frames:
        return [(start, end)]
    full = length // clip_frames
    ranges = [(start + i * clip_frames, start + (i + 1) * clip_frames) for i in range(full)]
    if length % clip_frames:
        ranges.append((end - clip_frames, end))
    return ranges


def slow_fast(in_clip: float, clip_to_clip: float, weights: tuple[float, float]) -> float:
    """``w_in * in_clip + w_c2c * clip_to_clip``; ``in_clip`` alone when ``clip_to_clip`` is NaN."""
    if math.isnan(clip_to_clip):
        return in_clip
    return weights[0] * in_clip + weights[1] * clip_to_clip


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(present)) if present else (None if all(v is None for v in values) else math.nan)


def score_long(
    scorer: VBenchScorer, frames: np.ndarray, fps: float, name: str = "", protocol: LongProtocol | None = None
) -> LongScores:
    """One video under VBench-Long's protocol.

    Args:
        scorer: Scores a clip (every chosen dimension) and gives the consistency features.
        frames: ``(t, h, w, 3)`` uint8.
        fps: The video's frame rate (clips are ``int(fps) * 2`` frames).
        name: The video's name in the per-clip rows.
        protocol: Settings; VBench-Long's by default.

    Returns:
        The per-video scores in percent (consistency ones slow-fast combined), the per-clip rows,
        the scenes, and the in-clip / clip-to-clip parts of the consistency dimensions.
    """
    protocol = protocol or LongProtocol()
    try:
        clip_frames = protocol.clip_frames(fps)
    except ValueError as err:
        raise ValueError(f"{name or 'video'}: {err}") from None
    scenes = scene_ranges(
        len(frames), detect_scene_cuts(frames, protocol.scene_threshold, protocol.min_scene_frames)
    )
    clips: list[ClipRow] = []
    for scene_index, (start, end) in enumerate(scenes):
        for clip_start, clip_end in clip_ranges(start, end, clip_frames):
            clip_scores = scorer.score(frames[clip_start:clip_end], fps)
            row = ClipRow(name, len(clips), scene_index, clip_start, clip_end)
            for dimension in scorer.dimensions:
                setattr(row, dimension, getattr(clip_scores, dimension))
            clips.append(row)
    scores = VBenchScores()
    for dimension in scorer.dimensions:
        setattr(scores, dimension, _mean([getattr(row, dimension) for row in clips]))

    in_clip: dict[str, float] = {}
    clip_to_clip: dict[str, float] = {}
    consistency = (
        (SUBJECT, scorer.dino, dino_preprocess, protocol.subject_weights),
        (BACKGROUND, scorer.clip, clip_preprocess, protocol.background_weights),
    )
    for dimension, model, preprocess, weights in consistency:
        if dimension not in scorer.dimensions:
            continue
        curves = []
        for scene_index in range(len(scenes)):
            firsts = [row.start_frame for row in clips if row.scene == scene_index]
            if len(firsts) >= 2:
                curves.append(consistency_curve(scorer.features(model, preprocess, frames[firsts])))
        fast = float(np.concatenate(curves).mean()) * 100.0 if curves else math.nan
        slow = getattr(scores, dimension)
        in_clip[dimension] = slow
        clip_to_clip[dimension] = fast
        setattr(scores, dimension, slow_fast(slow, fast, weights))
    return LongScores(scores, clips, scenes, in_clip, clip_to_clip)


def write_clip_csv(rows: list[ClipRow], path: str | os.PathLike) -> Path:
    """The per-clip table: one row per clip of every video, VBench's dimensions in percent."""
    return write_csv_table(
        path, CLIP_FIELDS, ({k: ("" if v is None else v) for k, v in vars(row).items()} for row in rows)
    )


def plot_clip_scores(rows: list[ClipRow], path: str | os.PathLike) -> Path:
    """Score over clip index, one panel per dimension, one line per video: where a video drops."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    present = [d for d in DIMENSIONS if any(getattr(r, d) is not None for r in rows)]
    panels = max(1, len(present))
    figure, axes = plt.subplots(panels, 1, figsize=(8, 2.4 * panels), squeeze=False)
    videos = sorted({r.video for r in rows})
    for axis, dimension in zip(axes[:, 0], present):
        for video in videos:
            mine = [r for r in rows if r.video == video]
            axis.plot([r.clip for r in mine], [getattr(r, dimension) for r in mine], marker="o", label=video)
        axis.set_ylabel(f"{dimension}\n(%)", fontsize=8)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # clips are whole numbers
    axes[-1, 0].set_xlabel("clip index (2 s clips)")
    if len(videos) <= 10:
        axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
