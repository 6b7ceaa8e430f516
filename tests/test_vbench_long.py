"""VBench-Long's protocol (tools/vbench/long.py, tools/vbench/encode.py): its defaults on a
two-scene video (2-second clips across the cut, H.264 round trip, in-clip consistency, clips
averaged), the optional scene split at threshold 35, the per-clip table and plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from infra.video_io import write_video
from tests.conftest import load_script
from tools.vbench import FLICKER, SUBJECT, VBenchScorer
from tools.vbench.encode import h264_roundtrip
from tools.vbench.long import LongProtocol, clip_ranges, detect_scene_cuts, score_long


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
    assert LongProtocol().clip_rate(8.9) == 8
    with pytest.raises(ValueError, match="frame rate"):
        LongProtocol().clip_frames(0.0)


def test_protocol_defaults_are_vbench_longs() -> None:
    protocol = LongProtocol()
    # eval_long.py: no --use_semantic_splitting; __init__.py: threshold 35; clips re-encoded.
    assert (protocol.scene_split, protocol.scene_threshold, protocol.reencode) == (False, 35.0, True)
    assert (protocol.clip_seconds, protocol.min_scene_frames) == (2, 15)


def test_hard_cut_is_found() -> None:
    assert detect_scene_cuts(_two_scenes()) == [40]
    assert detect_scene_cuts(_scene(1, 40)) == []


def test_scene_threshold_is_35() -> None:
    # Grey frames stepping from 60 to 150: only the HSV value channel moves, by 90, so
    # ContentDetector's score is 90 / 3 = 30: a cut at PySceneDetect's default 27, none at 35.
    step = np.concatenate([np.full((40, 64, 64, 3), 60, np.uint8), np.full((40, 64, 64, 3), 150, np.uint8)])
    assert detect_scene_cuts(step, threshold=27.0) == [40]
    assert detect_scene_cuts(step) == []


def _scenedetect_cuts(path: Path, downscale: bool = True) -> list[int]:
    """Cuts as PySceneDetect finds them reading the file itself (VBench-Long's way: a SceneManager
    over ``open_video``), optionally without its automatic downscaling."""
    from scenedetect import ContentDetector, SceneManager, open_video

    manager = SceneManager()
    manager.auto_downscale = downscale
    manager.add_detector(ContentDetector(threshold=35.0))
    manager.detect_scenes(open_video(str(path)))
    return [int(start.frame_num) for start, _ in manager.get_scene_list()[1:]]


def test_scene_cuts_equal_pyscenedetects_own_pipeline(tmp_path: Path) -> None:
    # A 512-wide grey checkerboard of 1-pixel squares that flips at frame 40: at full size every
    # pixel changes (a cut), but SceneManager shrinks 512-wide frames by 2 before detecting, which
    # averages the checkerboard to flat grey on both sides (no cut). Ours must shrink the same way.
    yy, xx = np.mgrid[0:64, 0:512]
    checker = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    flips = np.concatenate([np.stack([checker] * 40), np.stack([255 - checker] * 40)])
    for name, frames in (("flips", flips), ("two_scenes", _two_scenes())):
        path = tmp_path / f"{name}.gif"  # lossless: both read the same pixels
        write_video(path, frames, fps=8)
        assert detect_scene_cuts(frames) == _scenedetect_cuts(path), name
    assert detect_scene_cuts(flips) == [] and _scenedetect_cuts(tmp_path / "flips.gif", downscale=False) == [
        40
    ]
    assert detect_scene_cuts(_two_scenes()) == [40]


def test_h264_roundtrip_is_lossy_deterministic_and_keeps_the_shape() -> None:
    frames = _noisy(16, seed=4)
    once = h264_roundtrip(frames, 8)
    assert once.shape == frames.shape and once.dtype == np.uint8
    assert np.array_equal(once, h264_roundtrip(frames, 8))
    error = np.abs(once.astype(np.int16) - frames).mean()
    assert 0.5 < error < 20.0  # CRF 23 loses detail, but the picture survives
    odd = h264_roundtrip(frames[:5, :63, :61], 8)  # yuv420p needs even sizes: padded, then cropped
    assert odd.shape == (5, 63, 61, 3)


class _MeanColour(nn.Module):
    """A stand-in feature model: each frame's mean colour per 32x32 quadrant (``(b, 12)``)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 2).flatten(1) + 10.0


def _noisy(t: int, seed: int = 0) -> np.ndarray:
    """Block colours plus per-frame pixel noise: content that H.264 at CRF 23 visibly changes."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(40, 200, size=(8, 8, 3)).astype(np.float64), np.ones((8, 8, 1)))
    return np.stack([np.clip(base + rng.normal(0, 6, base.shape), 0, 255) for _ in range(t)]).astype(np.uint8)


def test_two_scene_video_follows_vbench_long_defaults() -> None:
    frames = _two_scenes()
    scorer = VBenchScorer((SUBJECT, FLICKER), dino=_MeanColour(), batch_size=8)
    result = score_long(scorer, frames, fps=8.9, name="v")
    # No scene split by default: one scene, 16-frame clips (int(8.9) * 2) running across the cut.
    assert result.scenes == [(0, 80)]
    assert [(c.scene, c.start_frame, c.end_frame) for c in result.clips] == [
        (0, 0, 16),
        (0, 16, 32),
        (0, 32, 48),
        (0, 48, 64),
        (0, 64, 80),
    ]
    # Each clip is scored after the H.264 round trip, at the rate it is written at (int(fps)).
    for clip in (result.clips[0], result.clips[2]):
        expected = scorer.score(h264_roundtrip(frames[clip.start_frame : clip.end_frame], 8), 8)
        assert clip.temporal_flickering == pytest.approx(expected.temporal_flickering, abs=1e-9)
        assert clip.subject_consistency == pytest.approx(expected.subject_consistency, abs=1e-9)
    # The video's value is the mean over its clips; subject consistency is the in-clip score alone,
    # the clip-to-clip score is reported beside it.
    for dimension in (SUBJECT, FLICKER):
        mean = np.mean([getattr(c, dimension) for c in result.clips])
        assert getattr(result.scores, dimension) == pytest.approx(mean)
    assert result.in_clip[SUBJECT] == result.scores.subject_consistency
    assert 0.0 < result.clip_to_clip[SUBJECT] < result.scores.subject_consistency  # the cut shows here
    # The clip straddling the cut scores lowest.
    assert min(result.clips, key=lambda c: c.subject_consistency).start_frame == 32


def test_scene_split_scores_each_scene_as_a_video() -> None:
    frames = _two_scenes()
    scorer = VBenchScorer((SUBJECT, FLICKER), dino=_MeanColour(), batch_size=8)
    result = score_long(
        scorer, frames, fps=8.0, name="v", protocol=LongProtocol(scene_split=True, reencode=False)
    )
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
    # Decoded frames, no round trip: a clip scores as the frames themselves.
    first = scorer.score(frames[0:16], 8)
    assert result.clips[0].temporal_flickering == pytest.approx(first.temporal_flickering, abs=1e-12)
    # The mean over each scene's clips, then over the scenes.
    for dimension in (SUBJECT, FLICKER):
        per_scene = [np.mean([getattr(c, dimension) for c in result.clips if c.scene == s]) for s in (0, 1)]
        assert getattr(result.scores, dimension) == pytest.approx(np.mean(per_scene))
    # Clip-to-clip stays within a scene: a cut is no inconsistency there.
    assert result.clip_to_clip[SUBJECT] > 99.0
    # A static video scores 100 everywhere.
    static = np.stack([_scene(3, 1)[0]] * 48)
    result = score_long(scorer, static, fps=8.0, protocol=LongProtocol(reencode=False))
    assert result.scores.subject_consistency == pytest.approx(100.0)
    assert result.scores.temporal_flickering == pytest.approx(100.0)


def test_reencoding_moves_the_scores() -> None:
    # Why the round trip is the default: H.264 smooths frame-to-frame noise, which raises flicker.
    frames = _noisy(32, seed=1)
    scorer = VBenchScorer((FLICKER,), batch_size=8)
    encoded = score_long(scorer, frames, fps=8.0).scores.temporal_flickering
    decoded = score_long(
        scorer, frames, fps=8.0, protocol=LongProtocol(reencode=False)
    ).scores.temporal_flickering
    assert encoded > decoded + 0.5


def test_cli_long_writes_a_row_per_clip(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "a_cat" / "long.gif", _two_scenes(), fps=8)
    out = tmp_path / "report"
    argv = [str(tmp_path / "videos"), "--out", str(out), "--quiet", "--long", "--dimensions", FLICKER]
    assert load_script("scripts/evaluate.py").main(argv) == 0
    with open(out / "clip_scores.csv") as fp:
        rows = list(csv.DictReader(fp))
    assert list(rows[0])[:5] == ["video", "clip", "scene", "start_frame", "end_frame"]
    assert len(rows) == 5 and [r["clip"] for r in rows] == [str(i) for i in range(5)]
    assert [int(r["end_frame"]) - int(r["start_frame"]) for r in rows] == [16] * 5  # 2 s at 8 fps
    assert all(float(r[FLICKER]) > 90.0 for r in rows)
    assert (out / "clip_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "metrics.csv") as fp:
        (video,) = list(csv.DictReader(fp))
    assert float(video[FLICKER]) == pytest.approx(np.mean([float(r[FLICKER]) for r in rows]), rel=1e-6)
    settings = json.loads((out / "metrics.json").read_text())["settings"]["long_protocol"]
    assert settings == {
        "clip_seconds": 2,
        "scene_split": False,
        "scene_threshold": 35.0,
        "min_scene_frames": 15,
        "reencode": True,
    }


def test_cli_long_scene_split_and_decoded_clips(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "a_cat" / "long.gif", _two_scenes(), fps=8)
    out = tmp_path / "report"
    argv = [str(tmp_path / "videos"), "--out", str(out), "--quiet", "--long", "--dimensions", FLICKER]
    script = load_script("scripts/evaluate.py")
    assert script.main([*argv, "--long_scene_split", "--long_decoded_clips"]) == 0
    with open(out / "clip_scores.csv") as fp:
        rows = list(csv.DictReader(fp))
    assert [(r["scene"], r["start_frame"]) for r in rows] == [
        ("0", "0"), ("0", "16"), ("0", "24"), ("1", "40"), ("1", "56"), ("1", "64")
    ]  # fmt: skip


def test_cli_long_options_need_long(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script("scripts/evaluate.py").parse_args(["videos", "--long_scene_split"])
    assert exit_info.value.code == 2
    assert "--long_scene_split is an option of --long" in capsys.readouterr().err
