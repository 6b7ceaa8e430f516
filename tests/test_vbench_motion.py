"""VBench's motion dimensions (tools/vbench/motion.py, flow.py, amt.py): motion smoothness with AMT-S,
dynamic degree and the static filter with RAFT.

Offline and fast: the score formulas run on hand-made inputs and on stand-in models whose output
is known; the real networks run on random weights at small sizes; the weights loaders are checked
against the key names and shapes of the published checkpoints (tests/fixtures/*_keys.json, read
from VBench's own AMT-S and RAFT modules).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from infra.video_io import write_video
from tests.conftest import load_script
from tools import vbench
from tools.vbench import DYNAMIC, FLICKER, MOTION, FeatureWeightsError, VBenchScorer
from tools.vbench.amt import AMTS
from tools.vbench.flow import (
    FlowScorer,
    build_raft,
    is_dynamic,
    is_static,
    raft_frames,
    raft_things_to_torchvision,
    sample_interval,
    top_magnitude,
)
from tools.vbench.motion import MotionScorer, build_amt, motion_smoothness_score

FIXTURES = Path(__file__).resolve().parent / "fixtures"
pytestmark = pytest.mark.usefixtures("one_thread")


def _pattern(t: int, h: int = 64, w: int = 64, speed: int = 0) -> np.ndarray:
    """``(t, h, w, 3)`` uint8 stripes moving ``speed`` pixels a frame (0: a static video)."""
    cols = np.arange(w)[None, :] + np.zeros((h, 1))
    frames = [128 + 100 * np.sin((cols + speed * k) / 5.0) for k in range(t)]
    rows = np.arange(h)[:, None] * 2 + np.zeros((1, w))
    return np.stack([np.stack([f, rows % 256, 255 - f], -1) for f in frames]).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Motion smoothness


class _CopyFirst(nn.Module):
    """An 'interpolator' that returns its first frame: perfect on a static video."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(img0.shape))
        assert embt.shape == (len(img0), 1, 1, 1) and bool((embt == 0.5).all())
        return img0


def test_motion_smoothness_formula() -> None:
    frames = _pattern(7, 8, 8, speed=3)
    perfect = frames[1::2][:3]  # ceil(7 / 2) - 1 = 3 predictions, for frames 1, 3, 5
    assert motion_smoothness_score(frames, perfect) == 1.0
    off_by_6 = np.clip(perfect.astype(int) + 6, 0, 255).astype(np.uint8)
    expected_error = np.mean([np.abs(off_by_6[k].astype(int) - perfect[k]).mean() for k in range(3)])
    assert motion_smoothness_score(frames, off_by_6) == pytest.approx((255 - expected_error) / 255)
    assert math.isnan(motion_smoothness_score(frames[:2], frames[:0]))


def test_perfect_interpolator_scores_100_and_pads_to_16() -> None:
    # 52x66: padded to 64x80 for the model; the prediction must come back to the frame's pixels.
    model = _CopyFirst()
    scorer = MotionScorer(model, batch_size=2)
    static = np.stack([_pattern(1, 52, 66)[0]] * 9)
    assert scorer.score(static) * 100 == 100.0
    assert model.calls == [(2, 3, 64, 80), (2, 3, 64, 80)]  # 5 even frames -> 4 pairs, 2 a batch
    # Odd frames 1, 3, 5, 7 brighter by 10 than the even frames the stand-in copies: error 10.
    flashing = static.copy()
    flashing[1::2] = np.clip(flashing[1::2].astype(int) + 10, 0, 255)
    expected = (255 - np.abs(flashing[1].astype(int) - static[0]).mean()) / 255
    assert scorer.score(flashing) == pytest.approx(expected)
    assert math.isnan(scorer.score(static[:2]))  # one even frame: nothing to predict


def test_amt_on_random_weights_is_finite_and_batch_independent() -> None:
    amt = build_amt(random_init=True)
    frames = _pattern(5, 64, 72, speed=2)  # padded to 64x80; correlation levels 8x10 .. 1x1
    one = MotionScorer(amt, batch_size=1).predict_odd(frames)
    two = MotionScorer(amt, batch_size=2).predict_odd(frames)
    assert one.shape == (2, 64, 72, 3) and one.dtype == np.uint8
    assert np.abs(one.astype(int) - two).max() <= 1  # float summation order only
    score = MotionScorer(amt).score(frames)
    assert math.isfinite(score) and 0.0 < score <= 1.0
    assert math.isnan(MotionScorer(amt).score(frames[:, :40]))  # 40 -> 48 rows: too small for AMT-S


def _published_amt_state() -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "amt_s_keys.json").read_text())
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def test_amt_has_the_published_keys_and_loads_amt_s_pth(tmp_path: Path) -> None:
    published = _published_amt_state()
    ours = {key: tuple(value.shape) for key, value in AMTS().state_dict().items()}
    assert ours == {key: tuple(value.shape) for key, value in published.items()}
    path = tmp_path / "amt-s.pth"
    torch.save({"state_dict": published, "epoch": 300}, path)  # the published file's layout
    model = build_amt(path)
    assert torch.equal(
        model.state_dict()["update2.flow_head.2.weight"], published["update2.flow_head.2.weight"]
    )


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_amt_refuses_wrong_keys_naming_the_file(tmp_path: Path, damage: str) -> None:
    state = _published_amt_state()
    if damage == "missing":
        del state["comb_block.1.weight"]
    else:
        state["decoder1.convblock.2.bias"] = torch.zeros(25)
    path = tmp_path / "not-amt.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(FeatureWeightsError) as err:
        build_amt(path)
    message = str(err.value)
    assert str(path) in message and "AMT-S" in message
    assert ("1 missing" in message) if damage == "missing" else ("wrong shape" in message)


def test_amt_weights_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeatureWeightsError) as err:
        build_amt()
    for part in ("motion_smoothness", "amt-s.pth", "lalala125/AMT", "--amt_weights"):
        assert part in str(err.value)
    with pytest.raises(FeatureWeightsError, match="no such file"):
        build_amt(tmp_path / "absent.pth")


# --------------------------------------------------------------------------------------------
# Dynamic degree and the static filter


class _DifferenceFlow(nn.Module):
    """A stand-in for RAFT: a uniform horizontal flow of 100x the pair's mean absolute difference
    (zero for identical frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs = 0

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        assert image1.shape[-1] % 8 == 0 and image1.shape[-2] % 8 == 0
        self.pairs += len(image1)
        size = (image1 - image2).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1) * 100
        flow = torch.zeros(len(image1), 2, *image1.shape[-2:])
        flow[:, :1] = size
        return flow


def test_threshold_rules_on_hand_made_magnitudes() -> None:
    # 16 frames at 256 px: dynamic threshold 6, 4 pairs needed; static threshold 3, 2 pairs allowed.
    assert not is_dynamic([0.0] * 15, 256, 16)
    assert not is_dynamic([6.0] * 15, 256, 16)  # must exceed the threshold
    assert not is_dynamic([7.0] * 3 + [0.0] * 12, 256, 16)
    assert is_dynamic([7.0] * 4 + [0.0] * 11, 256, 16)
    assert is_dynamic([3.5] * 15, 128, 16)  # the threshold scales with the short side
    assert is_static([3.1, 3.1] + [0.0] * 13, [11.9, 0.0], 256, 16)
    assert not is_static([3.1] * 3 + [0.0] * 12, [0.0, 0.0], 256, 16)
    assert not is_static([0.0] * 15, [12.1, 0.0], 256, 16)  # first <-> last beyond 2 * 2 * 3
    flow = torch.zeros(1, 2, 10, 10)
    flow[0, 0, :5, :1] = 3.0
    flow[0, 1, :5, :1] = 4.0  # 5 vectors of length 5 = the top 5 %
    assert top_magnitude(flow, 0.05).item() == pytest.approx(5.0)


def test_raft_input_padding_and_enlargement() -> None:
    images, short = raft_frames(_pattern(2, 136, 150))
    assert images.shape == (2, 3, 136, 152) and short == 136
    assert images.min() >= -1 and images.max() <= 1
    # replicated edges, one column on each side
    assert torch.equal(images[..., 0], images[..., 1]) and torch.equal(images[..., -1], images[..., -2])
    images, short = raft_frames(_pattern(2, 64, 100))  # under 128: enlarged to a 128 short side
    assert images.shape == (2, 3, 128, 200) and short == 128
    assert [sample_interval(fps) for fps in (0.0, 8.0, 10.0, 24.0, 30.0)] == [1, 1, 1, 3, 4]


def test_zero_flow_is_not_dynamic_and_a_moving_pattern_is() -> None:
    model = _DifferenceFlow()
    scorer = FlowScorer(model, batch_size=4)
    still = scorer.score(_pattern(16), fps=8.0, static=True)
    assert still.dynamic is False and still.static is True
    assert still.dynamic_magnitudes == [0.0] * 15
    moving = scorer.score(_pattern(16, speed=3), fps=8.0, static=True)
    assert moving.dynamic is True and moving.static is False
    # Static filter pairs = 15 consecutive + 2 first/last; the dynamic pairs are shared with them.
    model.pairs = 0
    scorer.score(_pattern(16, speed=3), fps=8.0, static=True)
    assert model.pairs == 17
    model.pairs = 0
    at_24 = scorer.score(_pattern(16, speed=3), fps=24.0)  # every 3rd frame: 0, 3, ..., 15
    assert model.pairs == 5 and len(at_24.dynamic_magnitudes) == 5


def test_raft_on_random_weights_is_finite() -> None:
    result = FlowScorer(build_raft(random_init=True)).score(_pattern(3, speed=2), fps=8.0, static=True)
    assert all(math.isfinite(m) for m in result.dynamic_magnitudes)
    assert isinstance(result.dynamic, bool) and isinstance(result.static, bool)


def _raft_things_state() -> dict[str, torch.Tensor]:
    """A state dict with raft-things.pth's keys and shapes ("module." prefix, norm3 = downsample.1)."""
    shapes = json.loads((FIXTURES / "raft_things_keys.json").read_text())
    generator = torch.Generator().manual_seed(0)
    state = {
        key: torch.randn(shape, generator=generator) if shape else torch.tensor(7)
        for key, shape in shapes.items()
    }
    for key in shapes:
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5  # a variance; the forward below takes its root
    for key in shapes:
        if ".norm3." in key:
            state[key] = state[key.replace(".norm3.", ".downsample.1.")]
    return state


def test_raft_things_maps_onto_torchvision_raft_large(tmp_path: Path) -> None:
    state = _raft_things_state()
    path = tmp_path / "raft-things.pth"
    torch.save(state, path)
    model = build_raft(path)
    assert model.iterations == 20  # VBench's
    loaded = model.raft.state_dict()
    pairs = {
        "module.fnet.layer2.0.conv1.weight": "feature_encoder.layer2.0.convnormrelu1.0.weight",
        "module.cnet.norm1.running_var": "context_encoder.convnormrelu.1.running_var",
        "module.cnet.layer3.0.norm3.bias": "context_encoder.layer3.0.downsample.1.bias",
        "module.update_block.encoder.convc2.weight": "update_block.motion_encoder.convcorr2.0.weight",
        "module.update_block.gru.convq2.bias": "update_block.recurrent_block.convgru2.convq.bias",
        "module.update_block.mask.2.weight": "mask_predictor.conv.weight",
    }
    for original, renamed in pairs.items():
        assert torch.equal(loaded[renamed], state[original]), original
    # RAFT-large itself runs (the smallest input it takes, one pair; ~1 s on a CPU core).
    images, _ = raft_frames(_pattern(2, 128, 128, speed=2))
    with torch.inference_mode():
        flow = model.raft(images[:1], images[1:], num_flow_updates=2)[-1]
    assert flow.shape == (1, 2, 128, 128) and bool(torch.isfinite(flow).all())
    # torchvision's own layout loads as it is.
    torchvision_path = tmp_path / "raft_large_C_T_V1.pth"
    torch.save(raft_things_to_torchvision(state), torchvision_path)
    assert torch.equal(
        build_raft(torchvision_path).raft.state_dict()["mask_predictor.conv.bias"],
        loaded["mask_predictor.conv.bias"],
    )


def test_raft_refuses_wrong_keys_naming_the_file(tmp_path: Path) -> None:
    state = _raft_things_state()
    state["module.update_block.flow_head.conv2.weight"] = torch.zeros(2, 128, 3, 3)
    del state["module.fnet.conv2.bias"]
    path = tmp_path / "not-raft.pth"
    torch.save(state, path)
    with pytest.raises(FeatureWeightsError) as err:
        build_raft(path)
    message = str(err.value)
    assert str(path) in message and "1 missing" in message and "wrong shape" in message
    state = _raft_things_state()
    state["module.cnet.layer2.0.norm3.weight"] = state["module.cnet.layer2.0.norm3.weight"] + 1
    torch.save(state, path)
    with pytest.raises(FeatureWeightsError, match="norm3"):
        build_raft(path)


def test_raft_weights_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeatureWeightsError) as err:
        build_raft()
    for part in ("dynamic_degree", "raft_large_C_T_V1", "raft-things.pth", "--raft_weights"):
        assert part in str(err.value)


# --------------------------------------------------------------------------------------------
# The scorer and the CLI


def test_scorer_static_filter_keeps_flickering_for_static_videos_only() -> None:
    scorer = VBenchScorer(
        (FLICKER, DYNAMIC, MOTION), amt=_CopyFirst(), raft=_DifferenceFlow(), static_filter=True
    )
    still = scorer.score(_pattern(9), fps=8.0)
    assert still.static_video is True and still.temporal_flickering == 100.0
    assert still.dynamic_degree == 0.0 and still.motion_smoothness == 100.0
    moving = scorer.score(_pattern(9, speed=4), fps=8.0)
    assert (
        moving.static_video is False and moving.temporal_flickering is None and moving.dynamic_degree == 1.0
    )
    unfiltered = VBenchScorer((FLICKER,), raft=None).score(_pattern(9, speed=4))
    assert unfiltered.static_video is None and unfiltered.temporal_flickering < 100.0
    with pytest.raises(ValueError, match="RAFT"):
        VBenchScorer((FLICKER,), static_filter=True)


def test_cli_writes_motion_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    write_video(results / "a_cat" / "steady.gif", _pattern(9), fps=8)
    write_video(results / "a_cat" / "moving.gif", _pattern(9, speed=3), fps=8)
    out = tmp_path / "report"
    argv = [str(results), "--out", str(out), "--random_feature_models", "--quiet", "--static_filter"]
    argv += ["--dimensions", FLICKER, MOTION, DYNAMIC]
    assert load_script("scripts/evaluate.py").main(argv) == 0
    assert MOTION in capsys.readouterr().out
    with open(out / "metrics.csv") as fp:
        table = {row["experiment"]: row for row in csv.DictReader(fp)}
    for row in table.values():
        assert 0.0 < float(row[MOTION]) <= 100.0  # percent
        assert row[DYNAMIC] in {"0", "1"}  # VBench's per-video verdict
    document = json.loads((out / "metrics.json").read_text())
    assert document["settings"]["vbench"]["static_filter"] is True
    assert document["settings"]["vbench"]["models"][MOTION].startswith("random-init")
    steady = next(v for v in document["videos"] if v["experiment"] == "steady")
    assert isinstance(steady["static_video"], bool)
    assert (table["steady"][FLICKER] == "") == (steady["static_video"] is False)


def test_cli_rejects_motion_weights_with_random_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script("scripts/evaluate.py").parse_args(
            ["x", "--random_feature_models", "--raft_weights", "r.pth"]
        )
    assert exit_info.value.code == 2 and "--raft_weights" in capsys.readouterr().err


def test_builders_are_looked_up_where_the_scorer_imports_them(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr(vbench.scorer, "build_amt", lambda *args: built.append("amt") or _CopyFirst())
    monkeypatch.setattr(vbench.scorer, "build_raft", lambda *args: built.append("raft") or _DifferenceFlow())
    scorer = VBenchScorer.create((MOTION, DYNAMIC), random_init=True, device="cpu")
    assert built == ["amt", "raft"] and scorer.score(_pattern(5)).dynamic_degree == 0.0
