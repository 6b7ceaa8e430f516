"""Consistency metrics: pixel flicker/drift, CLIP similarity with the tiny CLIP, output files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from infra.video_io import write_video
from lvdm.checkpoint import CheckpointError
from tests.conftest import load_script
from tools.evaluation import (
    VideoMetrics,
    load_clip_embedder,
    pixel_metrics,
    run_evaluation,
    summarize,
    video_key,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
TINY_CLIP = "fifo-tiny-clip"


def _frame(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth random-colour content (blurred noise), ``(h, w, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(h // 8, w // 8, 3)).astype(np.float64)
    return np.kron(coarse, np.ones((8, 8, 1))).astype(np.uint8)


def _static(t: int = 6) -> np.ndarray:
    return np.stack([_frame(0)] * t)


def _shuffled(t: int = 6) -> np.ndarray:
    frames = np.stack([_frame(seed) for seed in range(1, t + 1)])
    return frames[np.random.default_rng(0).permutation(t)]


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (REFERENCE / "tiny_t2v" / "image_embed.safetensors").is_file():
        pytest.fail(f"reference data not found at {REFERENCE}: the checkout is incomplete")
    return REFERENCE / "tiny_t2v"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """``results/<prompt>/<experiment>.gif`` for two prompts and two experiments, plus an origin.gif."""
    root = tmp_path / "results"
    for prompt in ("a_cat", "a_dog"):
        write_video(root / prompt / "steady.gif", _static(), fps=8)
        write_video(root / prompt / "shuffled.gif", _shuffled(), fps=8)
        write_video(root / prompt / "origin.gif", _static(4), fps=8)
    return root


def tower_weights() -> dict[str, torch.Tensor]:
    """The tiny CLIP tower's weights of the reference fixture (keys without a prefix)."""
    from lvdm.modules.encoders.condition import FrozenOpenCLIPImageEmbedderV2
    from tools.reference.fixture_weights import module_fixture_weights

    return module_fixture_weights(FrozenOpenCLIPImageEmbedderV2(arch=TINY_CLIP), "embedder.")


@pytest.fixture
def param_ckpt(tmp_path: Path, reference: Path) -> Path:
    """A file with the tower under ``param.`` beside two other tensors: not a checkpoint layout."""
    data = load_file(reference / "image_embed.safetensors")
    state = {"param." + k: v for k, v in tower_weights().items()}
    state.update(image=data["image"], tokens=data["tokens"])
    path = tmp_path / "param_tower.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture
def clip_ckpt(tmp_path: Path, reference: Path) -> Path:
    """The tiny CLIP tower stored under ``embedder.`` like in the image-to-video checkpoint."""
    state = {"embedder." + k: v for k, v in tower_weights().items()}
    state["model.diffusion_model.dummy.weight"] = torch.zeros(2)  # other parts of a real checkpoint
    path = tmp_path / "i2v_like.safetensors"
    save_file(state, str(path))
    return path


def test_video_key() -> None:
    assert video_key("results/x/random_noise/a_cat/t2v_TTqcache_attn1_w0.9.gif") == (
        "a_cat",
        "t2v_TTqcache_attn1_w0.9",
    )


def test_pixel_metrics_static_and_shuffled() -> None:
    flicker, drift = pixel_metrics(_static())
    assert flicker == 0.0 and np.all(drift == 0.0)
    flicker, drift = pixel_metrics(_shuffled())
    assert flicker > 0.05 and drift[0] == 0.0 and np.all(drift[1:] > 0.05)
    # Scale: a black-to-white jump is 1.0.
    jump = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)])
    flicker, drift = pixel_metrics(jump)
    assert flicker == pytest.approx(1.0) and drift.tolist() == pytest.approx([0.0, 1.0])


def test_clip_embedder_loads_from_prefixed_checkpoint(clip_ckpt: Path) -> None:
    embedder = load_clip_embedder(clip_ckpt, TINY_CLIP)
    loaded = embedder.state_dict()
    expected = tower_weights()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert not embedder.training


def test_clip_missing_prefix_is_a_clear_error(tmp_path: Path, param_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'embedder\.'.*param\."):
        load_clip_embedder(param_ckpt, TINY_CLIP)
    with pytest.raises(CheckpointError, match="not found"):
        load_clip_embedder(tmp_path / "missing.ckpt", TINY_CLIP)
    # The tower under "param." but read with the wrong prefix: keys do not fit, a short summary says so.
    with pytest.raises(CheckpointError, match=r"(?s)do not fit.*38 missing.*40 unexpected.*--clip_arch"):
        load_clip_embedder(param_ckpt, TINY_CLIP, prefix="")


def test_evaluation_with_clip(results: Path, clip_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    rows, outputs = run_evaluation(
        [results],
        out_dir=out,
        clip_ckpt=clip_ckpt,
        clip_arch=TINY_CLIP,
        batch_size=4,
        device="cpu",
        progress=False,
    )
    assert [(r.experiment, r.prompt) for r in rows] == [
        ("shuffled", "a_cat"),
        ("shuffled", "a_dog"),
        ("steady", "a_cat"),
        ("steady", "a_dog"),
    ]
    by_name = {(r.experiment, r.prompt): r for r in rows}
    steady, shuffled = by_name["steady", "a_cat"], by_name["shuffled", "a_cat"]
    assert steady.frames == 6
    assert steady.flicker == 0.0 and steady.drift_mean == 0.0 and steady.drift_final == 0.0
    assert steady.clip_consecutive == pytest.approx(1.0, abs=1e-5)
    assert steady.clip_to_first == pytest.approx(1.0, abs=1e-5)
    assert len(steady.clip_to_first_curve) == 6 and len(steady.clip_consecutive_curve) == 5
    assert shuffled.flicker > steady.flicker + 0.05
    assert shuffled.drift_mean > steady.drift_mean + 0.05 and shuffled.drift_final > 0.05
    assert shuffled.clip_consecutive < steady.clip_consecutive - 1e-4
    assert shuffled.clip_to_first < steady.clip_to_first - 1e-4

    assert set(outputs) == {"csv", "json", "summary", "png"} and all(p.is_file() for p in outputs.values())
    with open(outputs["csv"]) as fp:
        table = list(csv.DictReader(fp))
    assert len(table) == 4 and float(table[-1]["clip_to_first"]) == pytest.approx(1.0, abs=1e-5)
    document = json.loads(outputs["json"].read_text())
    assert len(document["videos"]) == 4
    assert set(document["summary"]) == {"shuffled", "steady"}
    assert document["summary"]["steady"]["videos"] == 2
    assert document["summary"]["steady"]["clip_to_first"] == pytest.approx(1.0, abs=1e-5)
    assert outputs["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_without_clip_and_origin(results: Path) -> None:
    rows, outputs = run_evaluation([results], progress=False)
    assert len(rows) == 4 and all(r.clip_to_first is None for r in rows)
    assert outputs["csv"].parent == results  # default output folder: the first result folder
    with open(outputs["csv"]) as fp:
        assert [row["clip_consecutive"] for row in csv.DictReader(fp)] == [""] * 4
    rows, _ = run_evaluation([results], include_origin=True, progress=False)
    assert sorted({r.experiment for r in rows}) == ["origin", "shuffled", "steady"]


def test_no_videos_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no .gif or .mp4"):
        run_evaluation([tmp_path], progress=False)


def test_script_prints_table(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("scripts/evaluate.py")
    # temporal_flickering alone: no feature model to build (tests/test_vbench.py runs the others).
    argv = [
        str(results / "a_cat"),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--dimensions",
        "temporal_flickering",
    ]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "steady" in printed and "shuffled" in printed and "metrics.csv" in printed
    assert "temporal_flickering" in printed and "mean per experiment" in printed
    assert script.main([str(tmp_path / "nothing_here"), "--quiet"]) == 2


def _row(frames: int, value: float, clips: list[dict[str, object]] | None = None) -> VideoMetrics:
    return VideoMetrics(
        prompt="p",
        experiment="e",
        path=f"{frames}.mp4",
        frames=frames,
        flicker=0.0,
        drift_mean=0.0,
        drift_final=0.0,
        subject_consistency=value,
        background_consistency=value,
        temporal_flickering=value,
        clips=clips,
    )


def test_experiment_values_aggregate_as_vbench_does() -> None:
    # A 3-frame video at 90 (2 pairs) and an 11-frame one at 60 (10 pairs). VBench pools the frame
    # pairs of subject and background consistency: (2 * 90 + 10 * 60) / 12 = 65; temporal flickering
    # is the plain mean over videos, 75.
    (entry,) = summarize([_row(3, 90.0), _row(11, 60.0)]).values()
    assert entry["subject_consistency"] == pytest.approx(65.0)
    assert entry["background_consistency"] == pytest.approx(65.0)
    assert entry["temporal_flickering"] == pytest.approx(75.0)
    # Under --long every video is a mean over its clips, and VBench-Long averages the videos.
    (entry,) = summarize([_row(3, 90.0, clips=[]), _row(11, 60.0, clips=[])]).values()
    assert entry["subject_consistency"] == pytest.approx(75.0)
    # A single-frame video (NaN) has no pair and does not count.
    (entry,) = summarize([_row(1, float("nan")), _row(11, 60.0)]).values()
    assert entry["subject_consistency"] == pytest.approx(60.0)
