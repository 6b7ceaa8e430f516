"""Temporal-consistency metrics for generated videos (used by ``scripts/evaluate.py``).

VBench's temporal dimensions (``subject_consistency``, ``background_consistency``,
``temporal_flickering``, in percent, higher is better) come from :mod:`tools.vbench`; this module
reads the videos, adds our own metrics as extra columns, and writes the tables and the plot.

Our own metrics, per video (frames ``(t, h, w, 3)`` uint8, pixel values scaled to ``[0, 1]``):

- ``flicker``: mean absolute difference of consecutive frames, averaged over the ``t - 1`` pairs.
- ``drift``: per-frame mean absolute difference to the first frame (a curve of ``t`` values,
  ``drift[0] == 0``); reported as ``drift_mean`` (mean over frames ``1..t-1``) and ``drift_final``.
- With a CLIP image tower: cosine similarity of the standard CLIP image embeddings of consecutive
  frames (``clip_consecutive``, mean over the ``t - 1`` pairs) and of each frame to the first one
  (``clip_to_first``, mean over frames ``1..t-1``; the curve starts at 1.0 for frame 0).

Lower flicker/drift and higher CLIP similarity mean a more consistent video. A video is named by
the generator's layout ``.../<prompt_folder>/<experiment>.gif``: prompt = parent folder name,
experiment = file stem.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from infra.csv_table import write_csv_table
from infra.errors import MissingInputError, SettingsError
from infra.progress import progress as progress_bar
from infra.video_io import VIDEO_SUFFIXES, find_videos, probe_video, read_video
from tools.clip_scorer import ClipScorer, load_clip_embedder
from tools.consistency_plot import plot_consistency
from tools.vbench import BACKGROUND, DIMENSIONS, DYNAMIC, FLICKER, SUBJECT, VBenchScorer
from tools.vbench.common import DimensionScores
from tools.vbench.long import ClipRow, LongProtocol, plot_clip_scores, score_long, write_clip_csv

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_FIELDS",
    "ClipScorer",
    "VideoMetrics",
    "evaluate_video",
    "evaluate_videos",
    "format_summary",
    "format_table",
    "load_clip_embedder",
    "pixel_metrics",
    "plot_consistency",
    "run_evaluation",
    "summarize",
    "video_key",
    "write_csv",
    "write_json",
    "write_summary_csv",
]

# Our own metrics, kept as extra columns after VBench's dimensions.
OWN_METRIC_FIELDS = ("flicker", "drift_mean", "drift_final", "clip_consecutive", "clip_to_first")
# The numeric columns that get averaged per experiment: VBench's first, by its names.
METRIC_FIELDS = (*DIMENSIONS, *OWN_METRIC_FIELDS)
CSV_FIELDS = ("prompt", "experiment", "path", "frames", *METRIC_FIELDS)
SUMMARY_FIELDS = ("experiment", "videos", "frames", *METRIC_FIELDS)


@dataclass(kw_only=True)
class VideoMetrics(DimensionScores):
    """Scores of one video; a metric is ``None`` when it was not computed.

    VBench's dimensions (:class:`~tools.vbench.common.DimensionScores`) are in percent; ``clip_*``
    need a CLIP checkpoint. Curves have one value per frame (``(t,)``), except
    ``clip_consecutive_curve`` and the VBench consistency curves (``(t - 1,)``: frames
    ``1 .. t - 1``, in percent).
    """

    prompt: str
    experiment: str
    path: str
    frames: int
    flicker: float
    drift_mean: float
    drift_final: float
    static_video: bool | None = None  # the static filter's verdict (metrics.json only)
    clip_consecutive: float | None = None
    clip_to_first: float | None = None
    drift_curve: list[float] = field(default_factory=list)
    subject_consistency_curve: list[float] | None = None
    background_consistency_curve: list[float] | None = None
    clip_consecutive_curve: list[float] | None = None
    clip_to_first_curve: list[float] | None = None
    # --long (VBench-Long): scenes, in-clip / clip-to-clip parts, and one dict per clip.
    long_protocol: dict[str, object] | None = None
    clips: list[dict[str, object]] | None = None

    def row(self) -> dict[str, object]:
        """The CSV/table columns (:data:`CSV_FIELDS`)."""
        return {name: getattr(self, name) for name in CSV_FIELDS}


def video_key(path: str | os.PathLike) -> tuple[str, str]:
    """``(prompt, experiment)`` of ``.../<prompt_folder>/<experiment>.gif``."""
    path = Path(path)
    return path.parent.name, path.stem


# --------------------------------------------------------------------------------------------
# Pixel metrics


def pixel_metrics(frames: np.ndarray) -> tuple[float, np.ndarray]:
    """Flicker and the drift curve of one video.

    Args:
        frames: ``(t, h, w, 3)`` uint8 (or any numeric array in ``[0, 255]``).

    Returns:
        ``(flicker, drift_curve)``: flicker is a float (NaN for a single frame); ``drift_curve`` is
        ``(t,)`` float64 with ``drift_curve[0] == 0``. Both on the ``[0, 1]`` pixel scale.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (t, h, w, c), got shape {frames.shape}")
    t = frames.shape[0]
    # Frame by frame in float32, so a long video never needs a float copy of the whole array.
    first = frames[0].astype(np.float32)
    previous = first
    drift = np.zeros(t, dtype=np.float64)
    flicker_sum = 0.0
    for i in range(1, t):
        current = frames[i].astype(np.float32)
        flicker_sum += float(np.abs(current - previous).mean())
        drift[i] = float(np.abs(current - first).mean())
        previous = current
    flicker = flicker_sum / (t - 1) / 255.0 if t > 1 else math.nan
    return flicker, drift / 255.0


# --------------------------------------------------------------------------------------------
# Evaluation


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def evaluate_video(
    path: str | os.PathLike,
    clip: ClipScorer | None = None,
    vbench: VBenchScorer | None = None,
    long_protocol: LongProtocol | None = None,
) -> VideoMetrics:
    """Read one video and compute its metrics (CLIP ones only with ``clip``, VBench's with ``vbench``,
    under VBench-Long's clip protocol with ``long_protocol``)."""
    frames = read_video(path)
    if len(frames) < 2:
        logger.warning(
            "%s has a single frame: flicker, drift and VBench's dimensions are undefined (NaN)", path
        )
    prompt, experiment = video_key(path)
    flicker, drift = pixel_metrics(frames)
    metrics = VideoMetrics(
        prompt=prompt,
        experiment=experiment,
        path=str(path),
        frames=len(frames),
        flicker=flicker,
        drift_mean=_mean(drift[1:]),
        drift_final=float(drift[-1]) if len(frames) > 1 else math.nan,
        drift_curve=drift.tolist(),
    )
    if clip is not None:
        consecutive, to_first = clip.similarities(frames)
        metrics.clip_consecutive = _mean(consecutive)
        metrics.clip_to_first = _mean(to_first[1:])
        metrics.clip_consecutive_curve = consecutive.tolist()
        metrics.clip_to_first_curve = to_first.tolist()
    if vbench is not None and long_protocol is not None:
        result = score_long(vbench, frames, probe_video(path).fps, str(path), long_protocol)
        scores = result.scores
        metrics.clips = [asdict(row) for row in result.clips]
        metrics.long_protocol = {
            "scenes": result.scenes,
            # Subject/background consistency: the score is the in-clip part (VBench-Long's default);
            # the clip-to-clip part is information only.
            "in_clip": result.in_clip,
            "clip_to_clip": result.clip_to_clip,
        }
    elif vbench is not None:
        # The frame rate sets dynamic_degree's frame sampling.
        scores = vbench.score(frames, probe_video(path).fps if DYNAMIC in vbench.dimensions else 0.0)
    if vbench is not None:
        metrics.set_dimensions(scores)
        for name in ("static_video", "subject_consistency_curve", "background_consistency_curve"):
            setattr(metrics, name, getattr(scores, name))
    return metrics


def sort_metrics(rows: Iterable[VideoMetrics]) -> list[VideoMetrics]:
    """Group by experiment, then by prompt."""
    return sorted(rows, key=lambda m: (m.experiment, m.prompt, m.path))


def evaluate_videos(
    videos: Sequence[str | os.PathLike],
    clip: ClipScorer | None = None,
    progress: bool = True,
    vbench: VBenchScorer | None = None,
    long_protocol: LongProtocol | None = None,
) -> list[VideoMetrics]:
    """Metrics of several videos (a progress bar over them), sorted by experiment then prompt."""
    rows = [
        evaluate_video(path, clip, vbench, long_protocol)
        for path in progress_bar(videos, desc="evaluating", unit="video", disable=not progress)
    ]
    return sort_metrics(rows)


# VBench's subject and background consistency of a set of videos pool their frame pairs
# (vbench/subject_consistency.py and background_consistency.py: the sum over every pair of every
# video over the number of pairs); its other dimensions are the plain mean over videos.
POOLED_DIMENSIONS = (SUBJECT, BACKGROUND)


def _experiment_value(members: Sequence[VideoMetrics], name: str) -> float | None:
    """The experiment's value of one metric: VBench's pooled frame pairs for :data:`POOLED_DIMENSIONS`
    of whole videos, else the mean over the videos (NaN ignored); ``None`` when none has it."""
    present = [m for m in members if getattr(m, name) is not None and not math.isnan(getattr(m, name))]
    if not present:
        return None
    values = np.array([getattr(m, name) for m in present], dtype=np.float64)
    if name in POOLED_DIMENSIONS and all(m.clips is None for m in present):
        # Under --long, VBench-Long averages videos instead (each a mean over its clips).
        pairs = np.array([m.frames - 1 for m in present], dtype=np.float64)
        return float((values * pairs).sum() / pairs.sum())
    return float(values.mean())


def summarize(rows: Sequence[VideoMetrics]) -> dict[str, dict[str, float | int | None]]:
    """Per experiment: ``videos``, the mean ``frames`` and each of :data:`METRIC_FIELDS` over its
    videos as VBench aggregates it (:func:`_experiment_value`: the mean over videos, NaN ignored;
    subject and background consistency of whole videos pooled over frame pairs, as VBench does,
    which equals the mean when the videos have equal lengths)."""
    groups: dict[str, list[VideoMetrics]] = defaultdict(list)
    for row in rows:
        groups[row.experiment].append(row)
    summary: dict[str, dict[str, float | int | None]] = {}
    for experiment in sorted(groups):
        members = groups[experiment]
        entry: dict[str, float | int | None] = {
            "videos": len(members),
            "frames": float(np.mean([m.frames for m in members])),
        }
        for name in METRIC_FIELDS:
            entry[name] = _experiment_value(members, name)
        summary[experiment] = entry
    return summary


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def write_csv(rows: Sequence[VideoMetrics], path: str | os.PathLike) -> Path:
    """One line per video with the columns of :data:`CSV_FIELDS` (empty CLIP cells when not computed)."""
    return write_csv_table(
        path, CSV_FIELDS, ({k: _csv_value(v) for k, v in row.row().items()} for row in rows)
    )


def _json_safe(value: object) -> object:
    # JSON has no NaN: write null instead of the non-standard NaN token.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_json(
    rows: Sequence[VideoMetrics], path: str | os.PathLike, settings: dict[str, object] | None = None
) -> Path:
    """``{"settings", "summary": {experiment: means}, "videos": [row + per-frame curves]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": settings or {},
        "summary": summarize(rows),
        "videos": [asdict(row) for row in rows],
    }
    path.write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    return path


def write_summary_csv(rows: Sequence[VideoMetrics], path: str | os.PathLike) -> Path:
    """One line per experiment: video count, mean frame count and the mean of every metric
    (:data:`SUMMARY_FIELDS`; empty cells for metrics not computed)."""
    lines = (
        {"experiment": experiment, **{k: _csv_value(v) for k, v in entry.items()}}
        for experiment, entry in summarize(rows).items()
    )
    return write_csv_table(path, SUMMARY_FIELDS, lines)


def _fmt(value: object, decimals: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{decimals}f}"
    return str(value)


def _metric_columns(rows: Sequence[VideoMetrics]) -> list[str]:
    """The metrics worth a column: VBench's dimensions and the CLIP ones only when computed."""
    always = ("flicker", "drift_mean", "drift_final")
    return [
        name for name in METRIC_FIELDS if name in always or any(getattr(r, name) is not None for r in rows)
    ]


def _decimals(column: str) -> int:
    # VBench's dimensions are percentages; papers print two decimals.
    return 2 if column in DIMENSIONS else 4


def _align(table: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def format_summary(rows: Sequence[VideoMetrics]) -> str:
    """The per-experiment means (the rows of ``summary.csv``) as a plain-text table."""
    metrics = _metric_columns(rows)
    table = [["experiment", "videos", "frames", *metrics]]
    for experiment, entry in summarize(rows).items():
        line = [experiment, str(entry["videos"]), f"{entry['frames']:.0f}"]
        table.append(line + [_fmt(entry[c], _decimals(c)) for c in metrics])
    return _align(table)


def format_table(rows: Sequence[VideoMetrics], summary: bool = True) -> str:
    """A plain-text table of the videos and, with ``summary``, the per-experiment means below it."""
    metrics = _metric_columns(rows)
    table = [["experiment", "prompt", "frames", *metrics]]
    table += [
        [r.experiment, r.prompt, str(r.frames), *(_fmt(getattr(r, c), _decimals(c)) for c in metrics)]
        for r in rows
    ]
    text = _align(table)
    if summary and rows:
        text += "\n\nmean per experiment:\n" + format_summary(rows)
    return text


def run_evaluation(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    clip_ckpt: str | os.PathLike | None = None,
    clip_arch: str = "ViT-H-14",
    clip_prefix: str = "embedder.",
    batch_size: int = 16,
    include_origin: bool = False,
    device: str | None = None,
    progress: bool = True,
    dimensions: Sequence[str] = (),
    dino_weights: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    random_feature_models: bool = False,
    aesthetic_weights: str | os.PathLike | None = None,
    clip_l14_weights: str | os.PathLike | None = None,
    musiq_weights: str | os.PathLike | None = None,
    long_protocol: LongProtocol | None = None,
    amt_weights: str | os.PathLike | None = None,
    raft_weights: str | os.PathLike | None = None,
    static_filter: bool = False,
) -> tuple[list[VideoMetrics], dict[str, Path]]:
    """Find the videos, score them, write ``metrics.csv``, ``metrics.json``, ``summary.csv``, ``consistency.png``.

    Args:
        inputs: Result folders (searched recursively) and/or video files.
        out_dir: Output folder; default the first input if it is a folder, else the current folder.
        clip_ckpt: Checkpoint with the (VideoCrafter) CLIP image tower; ``None`` skips ``clip_*``.
        clip_arch: OpenCLIP architecture of that tower.
        clip_prefix: Key prefix of the tower in the checkpoint.
        batch_size: Frames per forward pass of every model.
        include_origin: Also score ``origin.*`` (the short base clip).
        device: Torch device for the models; default CUDA when available.
        progress: Show a progress bar.
        dimensions: VBench dimensions to compute (:data:`tools.vbench.DIMENSIONS`); ``()`` for none.
        dino_weights: Local DINO ViT-B/16 weights; default the Hugging Face cache (downloaded once).
        clip_weights: Local CLIP ViT-B/32 weights; default the Hugging Face cache (downloaded once).
        random_feature_models: Random-initialised models, no weights needed: for tests only.
        aesthetic_weights, clip_l14_weights, musiq_weights: Local weights of the aesthetic_quality
            (LAION head, CLIP ViT-L/14) and imaging_quality (MUSIQ SPAQ) models; default the caches.
        long_protocol: Score under VBench-Long's protocol and also write ``clip_scores.csv`` and
            ``clip_scores.png`` (one row / point per 2-second clip).
        amt_weights: Local AMT-S weights (``amt-s.pth``); default the Hugging Face cache.
        raft_weights: Local RAFT weights (``raft-things.pth`` or torchvision's); default the torch hub cache.
        static_filter: Score ``temporal_flickering`` only for the videos VBench's RAFT filter finds static.

    Returns:
        ``(rows, {"csv": ..., "json": ..., "summary": ..., "png": ...})``.

    Raises:
        MissingInputError: an input that does not exist, or no video found.
        tools.vbench.FeatureWeightsError: a DINO/CLIP weights file missing or unfit.
    """
    if not inputs:
        raise MissingInputError("give at least one result folder or video file")
    for entry in map(Path, inputs):
        if entry.is_file() and entry.suffix.lower() not in VIDEO_SUFFIXES:
            raise SettingsError(f"{entry}: unsupported video type {entry.suffix!r}; give .gif or .mp4 files")
    videos = find_videos(inputs, include_origin=include_origin)
    if not videos:
        hint = "" if include_origin else " (origin.* files are skipped unless --include_origin)"
        raise MissingInputError(f"no .gif or .mp4 videos found under {', '.join(map(str, inputs))}{hint}")
    if out_dir is None:
        out_dir = inputs[0] if Path(inputs[0]).is_dir() else Path("results") / "evaluation"
    out_dir = Path(out_dir)
    logger.info("scoring %d video(s); outputs go to %s", len(videos), out_dir)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = None
    if clip_ckpt is not None:
        clip = ClipScorer(load_clip_embedder(clip_ckpt, clip_arch, clip_prefix, device), batch_size, device)
    vbench = None
    if dimensions:
        if random_feature_models and (set(dimensions) - {FLICKER} or static_filter):
            logger.warning(
                "random-initialised feature models (--random_feature_models): for tests only, the scores "
                "mean nothing"
            )
        vbench = VBenchScorer.create(
            dimensions,
            dino_weights,
            clip_weights,
            random_feature_models,
            batch_size,
            device,
            aesthetic_weights=aesthetic_weights,
            clip_l14_weights=clip_l14_weights,
            musiq_weights=musiq_weights,
            amt_weights=amt_weights,
            raft_weights=raft_weights,
            static_filter=static_filter,
            progress=progress,
        )
    rows = evaluate_videos(videos, clip, progress=progress, vbench=vbench, long_protocol=long_protocol)
    settings = {
        "inputs": [str(p) for p in inputs],
        "vbench": vbench.settings() if vbench is not None else None,
        "long_protocol": asdict(long_protocol) if long_protocol is not None else None,
        "clip_ckpt": None if clip_ckpt is None else str(clip_ckpt),
        "clip_arch": clip_arch if clip_ckpt is not None else None,
        "clip_prefix": clip_prefix if clip_ckpt is not None else None,
        "include_origin": include_origin,
        "pixel_scale": "[0, 1]",
    }
    outputs = {
        "csv": write_csv(rows, out_dir / "metrics.csv"),
        "json": write_json(rows, out_dir / "metrics.json", settings),
        "summary": write_summary_csv(rows, out_dir / "summary.csv"),
        "png": plot_consistency(rows, out_dir / "consistency.png"),
    }
    if long_protocol is not None and vbench is not None:
        clip_rows = [ClipRow(**clip) for row in rows for clip in row.clips or []]
        outputs["clips_csv"] = write_clip_csv(clip_rows, out_dir / "clip_scores.csv")
        outputs["clips_png"] = plot_clip_scores(clip_rows, out_dir / "clip_scores.png")
    return rows, outputs
