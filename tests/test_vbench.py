"""VBench's temporal dimensions (tools/vbench/): formulas, preprocessing, models, weights, the CLI.

Offline: the feature models are random-initialised timm/open_clip models of VBench's architectures
(built once per module; a ViT-B forward on a 224px frame takes ~0.5 s on a CPU core).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infra.video_io import write_video
from tests.conftest import load_script
from tools import vbench
from tools.vbench import (
    BACKGROUND,
    FLICKER,
    SUBJECT,
    FeatureWeightsError,
    VBenchScorer,
    build_clip,
    build_dino,
    clip_preprocess,
    consistency_curve,
    dino_position_embedding,
    dino_preprocess,
    temporal_flickering_score,
)

ROOT = Path(__file__).resolve().parents[1]
# The dimensions of this file (the quality ones are in tests/test_vbench_quality.py, the motion ones
# in tests/test_vbench_motion.py).
DIMENSIONS = (SUBJECT, BACKGROUND, FLICKER)


def _blocks(seed: int, size: int = 64) -> np.ndarray:
    """Random-colour 8x8 blocks, ``(size, size, 3)`` uint8: content a model can tell apart."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(size // 8, size // 8, 3)).astype(np.float64)
    return np.kron(coarse, np.ones((8, 8, 1))).astype(np.uint8)


def _static(t: int = 2) -> np.ndarray:
    return np.stack([_blocks(0)] * t)


def _shuffled(t: int = 3) -> np.ndarray:
    return np.stack([_blocks(seed) for seed in range(1, t + 1)])


def _noise(t: int = 2) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(t, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def dino() -> torch.nn.Module:
    return build_dino(random_init=True)


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    return build_clip(random_init=True)


@pytest.fixture(scope="module")
def scores(dino: torch.nn.Module, clip: torch.nn.Module) -> dict[str, vbench.VBenchScores]:
    scorer = VBenchScorer(DIMENSIONS, dino, clip, batch_size=4)
    return {
        name: scorer.score(make())
        for name, make in (("static", _static), ("shuffled", _shuffled), ("noise", _noise))
    }


# --------------------------------------------------------------------------------------------
# Formulas


def test_consistency_formula_on_hand_made_features() -> None:
    # Frame 1 is orthogonal to frame 0; frame 2 opposite to frame 0 (negative cosines count as 0);
    # frame 3 at 45 degrees to frame 0 and 135 to frame 2. Lengths differ: cosines ignore them.
    features = np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [1.0, 1.0]])
    curve = consistency_curve(features)
    half_sqrt2 = math.sqrt(0.5)
    assert curve == pytest.approx([0.0, 0.0, half_sqrt2 / 2], abs=1e-12)
    # Identical directions score 1.
    assert consistency_curve(np.array([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])) == pytest.approx([1.0, 1.0])


def test_consistency_formula_matches_direct_numpy() -> None:
    features = np.random.default_rng(3).normal(size=(9, 16)) + 0.3  # some cosines below 0, most above

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    expected = [
        (max(0.0, cos(features[i - 1], features[i])) + max(0.0, cos(features[0], features[i]))) / 2
        for i in range(1, len(features))
    ]
    assert any(cos(features[0], f) < 0 for f in features[1:])  # the clamp is exercised
    curve = consistency_curve(torch.from_numpy(features).float())
    assert curve.shape == (8,) and curve == pytest.approx(expected, abs=1e-6)


def test_temporal_flickering_formula() -> None:
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert temporal_flickering_score(np.concatenate([black, white])) == 0.0
    assert temporal_flickering_score(np.concatenate([white, white, white])) == 1.0
    # Pairs differing by 10 and by 30 everywhere: mean pair error 20.
    levels = np.array([100, 110, 80], np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    assert temporal_flickering_score(levels) == pytest.approx((255 - 20) / 255)
    # Per-pair mean, then mean over pairs (not one pooled mean): here the same, by equal pair sizes.
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    direct = np.mean([np.abs(frames[i + 1].astype(float) - frames[i]).mean() for i in range(4)])
    assert temporal_flickering_score(frames) == pytest.approx((255 - direct) / 255)
    assert math.isnan(temporal_flickering_score(frames[:1]))


# --------------------------------------------------------------------------------------------
# Preprocessing


def _vbench_reference(frames: np.ndarray, kind: str) -> torch.Tensor:
    """VBench's transform chain, spelled out with torchvision's transforms (vbench/utils.py):
    frames as a float tensor (t, c, h, w) in [0, 255], Resize(224, antialias=False) (+ CenterCrop for
    CLIP), /255, Normalize. tests/test_vbench_preprocessing.py compares more frames."""
    from torchvision import transforms as T

    pixels = torch.tensor(frames, dtype=torch.float32).permute(0, 3, 1, 2)
    if kind == "dino":
        chain = [
            T.Resize(224, antialias=False),
            T.Lambda(lambda x: x / 255.0),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    else:
        chain = [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
            T.CenterCrop(224),
            T.Lambda(lambda x: x / 255.0),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    return T.Compose(chain)(pixels)


def test_preprocessing_sizes_and_constants_on_a_uniform_image() -> None:
    colour = np.array([255, 0, 128], np.uint8)
    frames = torch.from_numpy(np.broadcast_to(colour, (2, 320, 512, 3)).copy())  # VideoCrafter's 320x512
    dino_in, clip_in = dino_preprocess(frames), clip_preprocess(frames)
    # DINO: short side to 224, aspect kept (int(224 * 512 / 320) = 358), no crop. CLIP: 224 crop.
    assert dino_in.shape == (2, 3, 224, 358) and dino_in.dtype == torch.float32
    assert clip_in.shape == (2, 3, 224, 224) and clip_in.dtype == torch.float32
    imagenet = [(c / 255 - m) / s for c, m, s in zip(colour, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    openai = [
        (c / 255 - m) / s
        for c, m, s in zip(colour, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    ]
    for channel in range(3):
        assert torch.allclose(
            dino_in[:, channel], torch.tensor(imagenet[channel], dtype=torch.float32), atol=1e-5
        )
        assert torch.allclose(
            clip_in[:, channel], torch.tensor(openai[channel], dtype=torch.float32), atol=1e-5
        )


def test_preprocessing_matches_vbench_on_a_known_image() -> None:
    # Left half black, right half a horizontal colour ramp, plus stripes: resize and crop both show.
    h, w = 240, 480
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :, 0] = np.linspace(0, 255, w // 2).astype(np.uint8)
    image[:, w // 2 :, 1] = 200
    image[::6, :, 2] = 255
    frames = image[None]
    ours_dino, ours_clip = (
        dino_preprocess(torch.from_numpy(frames)),
        clip_preprocess(torch.from_numpy(frames)),
    )
    assert ours_dino.shape == (1, 3, 224, 448) and ours_clip.shape == (1, 3, 224, 224)
    assert torch.allclose(ours_dino, _vbench_reference(frames, "dino"), atol=1e-5)
    assert torch.allclose(ours_clip, _vbench_reference(frames, "clip"), atol=1e-5)
    # The centre crop keeps columns 112..335 of the 448 resized ones: the black/ramp edge is in the middle.
    green = ours_clip[0, 1]
    black_green = (0 - 0.4578275) / 0.26130258
    assert torch.allclose(green[:, :100], torch.tensor(black_green), atol=1e-4)
    assert green[:, 124:].mean() > 1.0
    # VBench resizes float pixels: resizing the uint8 frames would round, and differ.
    from torchvision.transforms import functional as TF

    rounded = TF.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [224]).float() / 255.0
    rounded = TF.normalize(rounded, vbench.IMAGENET_MEAN, vbench.IMAGENET_STD)
    assert not torch.allclose(rounded, ours_dino, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Models


def test_dino_features_equal_timm_on_square_input_and_interpolate_like_dino(dino: torch.nn.Module) -> None:
    image = dino_preprocess(torch.from_numpy(_blocks(5, size=224)[None]))
    with torch.inference_mode():
        assert torch.allclose(dino(image), dino.vit(image), atol=1e-5)  # timm's forward: the same ViT
    pos = dino.vit.pos_embed.detach()
    assert dino_position_embedding(pos, (14, 14), square_input=True) is pos
    # A 320x512 frame becomes 224x358: 14x22 patches. DINO's interpolation: bicubic with the scale
    # factors (rows + 0.1) / 14 and (cols + 0.1) / 14.
    resized = dino_position_embedding(pos, (14, 22), square_input=False)
    grid = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(14.1 / 14, 22.1 / 14), mode="bicubic")
    assert resized.shape == (1, 1 + 14 * 22, 768)
    assert torch.equal(resized[:, :1], pos[:, :1])
    assert torch.allclose(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 768))
    # The sizes-only resampling (no 0.1) gives other values: the detail matters.
    by_size = F.interpolate(grid, size=(14, 22), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 768)
    assert not torch.allclose(resized[:, 1:], by_size, atol=1e-6)


def test_clip_is_openai_vit_b32(clip: torch.nn.Module) -> None:
    visual = clip.visual
    assert visual.conv1.kernel_size == (32, 32) and visual.proj.shape == (768, 512)
    assert type(visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # as OpenAI's CLIP
    assert clip.dtype == torch.float32  # float16 only on CUDA


def test_clip_in_float16_as_on_cuda(clip: torch.nn.Module) -> None:
    # VBench's CLIP runs in float16 on CUDA: the same seeded weights, rounded, on float32 input.
    half = build_clip(random_init=True, precision="fp16")
    assert half.dtype == torch.float16
    images = clip_preprocess(torch.from_numpy(_shuffled(2)))
    with torch.inference_mode():
        features_half, features_full = half(images).double(), clip(images).double()
    assert F.cosine_similarity(features_half, features_full).min() > 0.99


def test_static_video_scores_100(scores: dict[str, vbench.VBenchScores]) -> None:
    static = scores["static"]
    assert static.subject_consistency == pytest.approx(100.0, abs=1e-6)
    assert static.background_consistency == pytest.approx(100.0, abs=1e-6)
    assert static.temporal_flickering == 100.0
    assert len(static.subject_consistency_curve) == 1 and len(static.background_consistency_curve) == 1


@pytest.mark.parametrize("name", ["shuffled", "noise"])
def test_changing_frames_score_lower(scores: dict[str, vbench.VBenchScores], name: str) -> None:
    video = scores[name]
    assert video.subject_consistency < 99.0
    assert video.background_consistency < 99.0
    assert video.temporal_flickering < 90.0
    # The video's score is the mean of its per-frame curve (both in percent).
    assert video.subject_consistency == pytest.approx(np.mean(video.subject_consistency_curve))
    assert video.background_consistency == pytest.approx(np.mean(video.background_consistency_curve))


def test_batch_size_does_not_change_scores(clip: torch.nn.Module) -> None:
    frames = _shuffled()
    one = VBenchScorer([BACKGROUND], clip=clip, batch_size=1).score(frames)
    all_at_once = VBenchScorer([BACKGROUND], clip=clip, batch_size=8).score(frames)
    assert one.background_consistency == pytest.approx(all_at_once.background_consistency, abs=1e-4)
    assert one.subject_consistency is None and one.temporal_flickering is None


# --------------------------------------------------------------------------------------------
# Weights


@pytest.fixture
def empty_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and no network allowed."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_missing_weights_offline_is_a_clear_error(empty_offline_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(FeatureWeightsError) as err:
        build_dino()
    message = str(err.value)
    for part in ("DINO ViT-B/16", "model.safetensors", "timm/vit_base_patch16_224.dino", "--dino_weights"):
        assert part in message
    assert str(empty_offline_cache) in message and "dino_vitbase16_pretrain.pth" in message
    with pytest.raises(FeatureWeightsError) as err:
        build_clip()
    message = str(err.value)
    for part in ("CLIP ViT-B/32", "open_clip_model.safetensors", "--clip_weights", "ViT-B-32.pt"):
        assert part in message
    with pytest.raises(FeatureWeightsError, match=r"--dino_weights .*nowhere\.pth: no such file"):
        build_dino(tmp_path / "nowhere.pth")


def test_unreachable_hub_is_a_clear_error_after_one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def no_hub(repo_id: str, filename: str, local_files_only: bool = False, **_: object) -> str:
        calls.append((filename, local_files_only))
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(
        FeatureWeightsError, match=r"download failed \(model\.safetensors: cannot reach the Hub\)"
    ):
        build_dino()
    # Both names looked up in the cache, then one download: the second would wait just as long.
    assert calls == [("model.safetensors", True), ("pytorch_model.bin", True), ("model.safetensors", False)]


def test_local_dino_weights_load_strictly(dino: torch.nn.Module, tmp_path: Path) -> None:
    # DINO's own release is a plain state dict with timm's key names: save ours that way.
    state = {k: v.clone() for k, v in dino.vit.state_dict().items()}
    original = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.save(state, original)
    loaded = build_dino(original)
    assert all(torch.equal(v, state[k]) for k, v in loaded.vit.state_dict().items())
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(FeatureWeightsError, match=r"notes\.pth does not hold DINO ViT-B/16 weights"):
        build_dino(not_weights)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # OpenAI's file is TorchScript, so we make one
def test_openai_torchscript_file_is_recognised(tmp_path: Path) -> None:
    scripted = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    plain = tmp_path / "state.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)
    assert vbench._is_torchscript_archive(scripted) and not vbench._is_torchscript_archive(plain)


# --------------------------------------------------------------------------------------------
# The CLI


def _script():
    return load_script("scripts/evaluate.py")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write_video(root / "a_cat" / "steady.gif", _static(), fps=8)
    write_video(root / "a_cat" / "shuffled.gif", _shuffled(2), fps=8)
    return root


def test_cli_writes_vbench_columns(
    results: Path,
    tmp_path: Path,
    dino: torch.nn.Module,
    clip: torch.nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    built = []

    def reuse(model: torch.nn.Module, label: str):
        # The module's random models stand in for a second build of the same (seeded) models.
        def build(weights: object, random_init: bool, device: object, small: bool = False) -> torch.nn.Module:
            assert weights is None and random_init, "--random_feature_models must reach the builder"
            assert small, "the CLI's random models are the small towers"
            built.append(label)
            return model

        return build

    monkeypatch.setattr(vbench.scorer, "build_dino", reuse(dino, "dino"))
    monkeypatch.setattr(vbench.scorer, "build_clip", reuse(clip, "clip"))
    out = tmp_path / "report"
    argv = [str(results), "--out", str(out), "--random_feature_models", "--quiet", "--batch_size", "4"]
    argv += ["--dimensions", *DIMENSIONS]
    assert _script().main(argv) == 0
    assert sorted(built) == ["clip", "dino"]
    printed = capsys.readouterr().out
    assert all(name in printed for name in DIMENSIONS) and "mean per experiment" in printed

    with open(out / "metrics.csv") as fp:
        table = {row["experiment"]: row for row in csv.DictReader(fp)}
    assert set(table) == {"steady", "shuffled"}
    header = list(table["steady"])
    assert header[4:7] == [SUBJECT, BACKGROUND, FLICKER] and "flicker" in header and "drift_mean" in header
    for name in DIMENSIONS:
        assert float(table["steady"][name]) == pytest.approx(100.0, abs=1e-4)  # percent
        assert float(table["shuffled"][name]) < 99.0
    with open(out / "summary.csv") as fp:
        summary = {row["experiment"]: row for row in csv.DictReader(fp)}
    assert summary["shuffled"]["videos"] == "1"
    assert float(summary["shuffled"][SUBJECT]) == pytest.approx(float(table["shuffled"][SUBJECT]), rel=1e-5)
    document = json.loads((out / "metrics.json").read_text())
    assert document["settings"]["vbench"]["models"] == {
        SUBJECT: "random-init, small (tests only)",
        BACKGROUND: "random-init, small (tests only)",
    }
    assert len(document["videos"][0]["subject_consistency_curve"]) == 1
    assert (out / "consistency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_weights_offline_exits_2(
    results: Path, empty_offline_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _script().main([str(results), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: subject_consistency needs the DINO ViT-B/16 weights")
    assert "--dino_weights" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_cli_rejects_weights_with_random_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(["x", "--random_feature_models", "--dino_weights", "w.pth"])
    assert exit_info.value.code == 2 and "--random_feature_models" in capsys.readouterr().err


def test_help_states_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _script().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap the lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 16)" in text and "(default: all)" in text
    # The bug this guards against: a help text saying its default, then the formatter's again.
    assert not re.search(r"\(default:[^)]*\)\s*\(default:", text), text
