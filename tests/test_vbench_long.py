"""VBench-Long's protocol (tools/vbench/long.py): scene split, 2-second clips, slow-fast
consistency, the per-clip table and plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from infra.video_io import write_video
from tests.conftest import load_script
from tools.vbench import FLICKER, SUBJECT, VBenchScorer
from tools.vbench.long import LongProtocol, clip_ranges, detect_scene_cuts, score_long, slow_fast


def _scene(seed: int, t: int, size: int = 64) -> np.ndarray:
    """A scene: random 8x8-block colours, drifting by one grey level a frame (no cut inside)."""
    coarse = np.random.default_rng(seed).integers(20, 200, size=(size // 8, size // 8, 3)).astype(np.float64)
    image = np.kron(coarse, np.ones((8, 8, 1)))
    return np.stack([np.clip(image + i, 0, 255) for i in range(t)]).astype(np.uint8)


def _two_scenes() -> np.ndarray:
    return np.concatenate([_scene(1, 40), _scene(2, 40)])  # a hard cut at frame 40


def test_clip_ranges_follow_vbench_long() -> None:
    # 2 s at 8 fps = 16 frames; a remainder becomes a full clip ending at the scene's end.
    assert clip_ranges(0, 40, 16) == [(0, 16), (16, 32), (24, 40)]
    assert clip_ranges(40, 72, 16) == [(40, 56), (56, 72)]
    assert clip_ranges(0, 10, 16) == [(0, 10)]  # a scene shorter than a clip is one clip
    assert LongProtocol().clip_frames(8.33) == 16  # VBench reads the rate as int(fps)
    with pytest.raises(ValueError, match="frame rate"):
        LongProtocol().clip_frames(0.0)


def test_slow_fast_weights() -> None:
    assert slow_fast(90.0, 80.0, (0.7, 0.3)) == pytest.approx(87.0)
    assert slow_fast(90.0, 80.0, (0.8, 0.2)) == pytest.approx(88.0)
    assert slow_fast(90.0, math.nan, (0.7, 0.3)) == 90.0  # one clip: in-clip alone


def test_hard_cut_is_found() -> None:
    assert detect_scene_cuts(_two_scenes()) == [40]
    assert detect_scene_cuts(_scene(1, 40)) == []


class _MeanColour(nn.Module):
    """A stand-in feature model: each frame's mean colour per 32x32 quadrant (``(b, 12)``)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 2).flatten(1) + 10.0


def test_score_long_splits_scores_and_combines() -> None:
    frames = _two_scenes()
    scorer = VBenchScorer((SUBJECT, FLICKER), dino=_MeanColour(), batch_size=8)
    result = score_long(scorer, frames, fps=8.0, name="v")
    assert result.scenes == [(0, 40), (40, 80)]
    assert [(c.scene, c.start_frame, c.end_frame) for c in result.clips] == [
        (0, 0, 16),
        (0, 16, 32),
        (0, 24, 40),
        (1, 40, 56),
        (1, 56, 72),
        (1, 64, 80),
    ]
    assert [c.clip for c in result.clips] == list(range(6))
    # Per-video value = mean over clips (flicker) or the slow-fast combination (subject).
    flicker = np.mean([c.temporal_flickering for c in result.clips])
    assert result.scores.temporal_flickering == pytest.approx(flicker)
    in_clip = np.mean([c.subject_consistency for c in result.clips])
    assert result.in_clip[SUBJECT] == pytest.approx(in_clip)
    fast = result.clip_to_clip[SUBJECT]
    assert 0.0 < fast <= 100.0
    assert result.scores.subject_consistency == pytest.approx(0.7 * in_clip + 0.3 * fast)
    # A cut is not an inconsistency: the clip-to-clip score stays within a scene. A static video
    # scores 100 everywhere.
    static = np.stack([_scene(3, 1)[0]] * 48)
    result = score_long(scorer, static, fps=8.0)
    assert result.scores.subject_consistency == pytest.approx(100.0)
    assert result.scores.temporal_flickering == pytest.approx(100.0)


def test_cli_long_writes_a_row_per_clip(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "a_cat" / "long.gif", _two_scenes(), fps=8)
    out = tmp_path / "report"
    argv = [str(tmp_path / "videos"), "--out", str(out), "--quiet", "--long", "--dimensions", FLICKER]
    assert load_script("scripts/evaluate.py").main(argv) == 0
    with open(out / "clip_scores.csv") as fp:
        rows = list(csv.DictReader(fp))
    assert len(rows) == 6 and [r["clip"] for r in rows] == [str(i) for i in range(6)]
    assert [int(r["end_frame"]) - int(r["start_frame"]) for r in rows] == [16] * 6  # 2 s at 8 fps
    assert all(float(r[FLICKER]) > 90.0 for r in rows)
    assert (out / "clip_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "metrics.csv") as fp:
        (video,) = list(csv.DictReader(fp))
    assert float(video[FLICKER]) == pytest.approx(np.mean([float(r[FLICKER]) for r in rows]), rel=1e-6)
