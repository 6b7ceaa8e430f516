"""VBench-Long's protocol for long videos (``--long``): 2-second clips, each scored as VBench scores
a video, clips averaged per video; optionally a scene split first.

Every choice follows VBench-Long's code when ``eval_long.py`` runs on one's own videos
(``--mode long_custom_input``) without optional flags; file and line are those of
``vbench2_beta_long/`` at the VBench commit ``45e79ec`` (2026-03-23):

1. Scene split only when asked for (``--long_scene_split``; VBench-Long's
   ``--use_semantic_splitting``, ``__init__.py`` line 36), with PySceneDetect's ``ContentDetector`` at
   threshold 35 (``__init__.py`` line 18, passed on at line 46 to ``split_video_into_scenes``,
   ``utils.py`` line 83, which leaves the minimum scene length at the detector's default, 15
   frames). PySceneDetect's ``SceneManager`` shrinks frames wider than 256 pixels before detecting
   (by ``width / 256``, linear interpolation); :func:`detect_scene_cuts` does the same. A split
   video's scenes are written to files and each scene is clipped and scored as its own video
   (``__init__.py`` lines 68-73; ``utils.py`` line 201 groups clips by their file name, which
   carries the scene): here a split video's value is the mean over its scenes of each scene's
   clip mean (for one video, VBench-Long's number; over several, VBench-Long averages all scenes
   of all videos alike, recomputable from ``clip_scores.csv``).
2. Clips of ``int(fps) * 2`` frames (``utils.py`` lines 142, 146 and 302; 2 s for these dimensions:
   ``__init__.py`` line 66, ``configs/clip_length_mix.yaml``); a remainder becomes a last
   full-length clip that borrows frames from the clip before it (lines 178-188); a video shorter
   than one clip is one clip (lines 153-159). Each clip is scored at the rate it is written at,
   ``int(fps)`` (dynamic degree's frame sampling reads it).
3. Each clip is written as H.264 and read back before it is scored (``utils.py`` lines 157, 173,
   188; a split scene also at line 120): :func:`tools.vbench.encode.h264_roundtrip`. Off with
   ``--long_decoded_clips`` (``LongProtocol(reencode=False)``), which scores the decoded frames
   directly, as this tool did before.
4. A video's value of a dimension is the mean over its clips, and the experiment's the mean over
   videos (``reorganize_clips_results``, ``utils.py`` lines 209 and 218; for the consistency
   dimensions the fused per-video scores, averaged over videos at line 416).
5. Subject and background consistency report the in-clip score alone: without ``--dev_flag``
   VBench-Long sets the in-clip weight to 1 and the clip-to-clip weight to 0 (``eval_long.py``
   lines 249-253), and its fusion then returns the in-clip score (``utils.py`` line 405). The
   clip-to-clip score (VBench's consistency formula on the first frames of a video's clips, per
   scene, with the same DINO / CLIP models: ``eval_long.py`` lines 250-251) is still computed and
   written to ``metrics.json`` beside the in-clip score, as information; it does not enter the
   score.

``docs/evaluation.md`` lists every difference from VBench-Long and what was done about each.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.csv_table import write_csv_table
from infra.video_io import VideoReadError
from tools.vbench.common import BACKGROUND, DIMENSIONS, SUBJECT, DimensionScores
from tools.vbench.consistency import consistency_curve
from tools.vbench.encode import h264_roundtrip
from tools.vbench.scorer import VBenchScorer, VBenchScores
from tools.vbench.video import clip_preprocess, dino_preprocess

logger = logging.getLogger(__name__)

CLIP_SECONDS = 2
SCENE_THRESHOLD = 35.0
MIN_SCENE_FRAMES = 15
# PySceneDetect's SceneManager detects on frames shrunk to about this width (auto_downscale).
SCENE_DETECT_WIDTH = 256


@dataclass(frozen=True)
class LongProtocol:
    """The settings of VBench-Long's protocol (defaults: VBench-Long's own, see the module docstring).

    Attributes:
        clip_seconds: Clip length in seconds (clips are ``int(fps) * clip_seconds`` frames).
        scene_split: Split at scene cuts first (VBench-Long's ``--use_semantic_splitting``).
        scene_threshold: ``ContentDetector``'s threshold for the split.
        min_scene_frames: ``ContentDetector``'s minimum scene length, in frames.
        reencode: Score each clip after an H.264 round trip, as VBench-Long scores the files it
            writes; ``False`` scores the decoded frames directly.
    """

    clip_seconds: int = CLIP_SECONDS
    scene_split: bool = False
    scene_threshold: float = SCENE_THRESHOLD
    min_scene_frames: int = MIN_SCENE_FRAMES
    reencode: bool = True

    def clip_rate(self, fps: float) -> int:
        """The rate VBench-Long writes clips at: ``int(fps)`` (``utils.py`` line 302)."""
        if fps <= 0:
            raise ValueError(
                f"--long needs the video's frame rate to cut 2-second clips; the file gives {fps}"
            )
        return max(1, int(fps))

    def clip_frames(self, fps: float) -> int:
        """Frames per clip: ``int(fps) * clip_seconds``."""
        return self.clip_rate(fps) * self.clip_seconds


@dataclass(kw_only=True)
class ClipRow(DimensionScores):
    """One clip's scores (percent, as the per-video columns), for the per-clip table."""

    video: str
    clip: int
    scene: int
    start_frame: int
    end_frame: (
        int  # exclusive; dynamic_degree is 1 or 0 per clip, the video's value the share of moving clips
    )


CLIP_FIELDS = ("video", "clip", "scene", "start_frame", "end_frame", *DIMENSIONS)


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

    The frames are shrunk as PySceneDetect's ``SceneManager`` shrinks a video it reads (its
    ``compute_downscale_factor`` of the larger side over 256 pixels, each side divided by it and
    rounded, OpenCV's linear interpolation), and given to the detector in OpenCV's BGR order.

    Args:
        frames: ``(t, h, w, 3)`` uint8 RGB.
        threshold: The detector's threshold on its HSV frame-difference score (VBench-Long: 35).
        min_scene_frames: Shortest scene, in frames.

    Returns:
        Sorted cut indices in ``(0, t)``; ``[]`` for a single scene.
    """
    import cv2
    from scenedetect import ContentDetector, FrameTimecode
    from scenedetect.scene_manager import compute_downscale_factor

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames)
    h, w = frames.shape[1:3] if len(frames) else (0, 0)
    factor = compute_downscale_factor(max(h, w), SCENE_DETECT_WIDTH) if len(frames) else 1
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    # The timecodes only order the frames.
    rate = 1.0
    cuts = []
    for index, frame in enumerate(frames):
        bgr = np.ascontiguousarray(frame[..., ::-1])
        if factor > 1.0:
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        cuts += detector.process_frame(FrameTimecode(index, fps=rate), bgr)
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
        The per-video scores in percent, the per-clip rows, the scenes, and the in-clip /
        clip-to-clip parts of the consistency dimensions (the score is the in-clip part).
    """
    protocol = protocol or LongProtocol()
    try:
        rate = protocol.clip_rate(fps)
    except ValueError as err:
        raise VideoReadError(f"{name or 'video'}: {err}") from None  # the file's fault: exit 2
    clip_frames = protocol.clip_frames(fps)
    cuts = (
        detect_scene_cuts(frames, protocol.scene_threshold, protocol.min_scene_frames)
        if protocol.scene_split
        else []
    )
    scenes = scene_ranges(len(frames), cuts)
    clips: list[ClipRow] = []
    firsts: dict[int, list[np.ndarray]] = {}  # per scene: the first frame of each clip, as scored
    for scene_index, (start, end) in enumerate(scenes):
        scene = frames[start:end]
        if protocol.reencode and cuts:
            scene = h264_roundtrip(scene, rate)  # a split scene is written to a file of its own first
        for clip_start, clip_end in clip_ranges(start, end, clip_frames):
            clip = scene[clip_start - start : clip_end - start]
            if protocol.reencode:
                clip = h264_roundtrip(clip, rate)
            row = ClipRow(
                video=name, clip=len(clips), scene=scene_index, start_frame=clip_start, end_frame=clip_end
            )
            row.set_dimensions(scorer.score(clip, rate), scorer.dimensions)
            clips.append(row)
            firsts.setdefault(scene_index, []).append(clip[0])

    scores = VBenchScores()
    for dimension in scorer.dimensions:
        # The mean over each scene's clips, then over the scenes (one scene without a split).
        per_scene = [
            _mean([getattr(row, dimension) for row in clips if row.scene == scene_index])
            for scene_index in range(len(scenes))
        ]
        setattr(scores, dimension, _mean(per_scene))

    in_clip: dict[str, float] = {}
    clip_to_clip: dict[str, float] = {}
    consistency = ((SUBJECT, scorer.dino, dino_preprocess), (BACKGROUND, scorer.clip, clip_preprocess))
    for dimension, model, preprocess in consistency:
        if dimension not in scorer.dimensions:
            continue
        curves = [
            consistency_curve(scorer.features(model, preprocess, np.stack(scene_firsts)))
            for scene_firsts in firsts.values()
            if len(scene_firsts) >= 2
        ]
        in_clip[dimension] = getattr(scores, dimension)
        clip_to_clip[dimension] = float(np.concatenate(curves).mean()) * 100.0 if curves else math.nan
    return LongScores(scores, clips, scenes, in_clip, clip_to_clip)


def write_clip_csv(rows: list[ClipRow], path: str | os.PathLike) -> Path:
    """The per-clip table: one row per clip of every video, VBench's dimensions in percent."""
    return write_csv_table(
        path,
        CLIP_FIELDS,
        ({k: ("" if getattr(row, k) is None else getattr(row, k)) for k in CLIP_FIELDS} for row in rows),
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
