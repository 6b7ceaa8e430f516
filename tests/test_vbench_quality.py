"""VBench's aesthetic_quality (LAION head on CLIP ViT-L/14) and imaging_quality (pyiqa's MUSIQ):
score formulas, preprocessing, weights files, the small random models, the CLI columns.

Offline: random weights only; the published weights are never needed.
"""

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
from tools.vbench import (
    AESTHETIC,
    IMAGING,
    AestheticPredictor,
    FeatureWeightsError,
    VBenchScorer,
    aesthetic_quality_score,
    build_aesthetic,
    build_musiq,
    imaging_preprocess,
    imaging_quality_score,
)
from tools.vbench.aesthetic import EMBED_DIM, load_aesthetic_head
from tools.vbench.imaging import SMALL_RANDOM_CONFIG, _musiq_class, load_musiq_state


def _frames(t: int = 3, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Score formulas


def test_score_formulas_on_known_inputs() -> None:
    # VBench: mean of the per-frame LAION scores / 10; mean of the per-frame MUSIQ scores / 100.
    assert aesthetic_quality_score(torch.tensor([5.0, 7.0])) == pytest.approx(0.6)
    assert imaging_quality_score(np.array([50.0, 70.0, 90.0])) == pytest.approx(0.7)
    assert math.isnan(aesthetic_quality_score(torch.zeros(0)))
    with pytest.raises(ValueError, match=r"\(t,\)"):
        imaging_quality_score(torch.zeros(2, 2))


class _FixedTower(nn.Module):
    """Every frame embeds to ``(3, 4, 0, ...)`` (norm 5), in float16 as CLIP on CUDA gives it."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = torch.zeros(len(images), EMBED_DIM, dtype=torch.float16)
        embedding[:, 0], embedding[:, 1] = 3.0, 4.0
        return embedding


def test_aesthetic_predictor_normalises_then_applies_the_head() -> None:
    head = nn.Linear(EMBED_DIM, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, :2] = torch.tensor([1.0, 2.0])
        head.bias.fill_(0.5)
    scores = AestheticPredictor(_FixedTower(), head)(torch.zeros(2, 3, 224, 224))
    # unit embedding (0.6, 0.8): 0.6 * 1 + 0.8 * 2 + 0.5
    assert scores.dtype == torch.float32 and torch.allclose(scores, torch.tensor([2.7, 2.7]))


# --------------------------------------------------------------------------------------------
# Preprocessing


def test_imaging_preprocess_matches_vbench_longer_mode() -> None:
    from torchvision import transforms

    small = _frames(2, 64, 96)
    out = imaging_preprocess(torch.from_numpy(small))
    # longer side <= 512: VBench only divides by 255
    assert out.shape == (2, 3, 64, 96)
    assert torch.equal(out, torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255.0)

    large = _frames(1, 600, 800, seed=1)
    out = imaging_preprocess(torch.from_numpy(large))
    # VBench's chain (vbench/imaging_quality.py, 'longer'): float pixels (load_video's torch.Tensor),
    # Resize((int(scale * h), int(scale * w)), antialias=False) with scale = 512 / longer side, then /255.
    pixels = torch.Tensor(large).permute(0, 3, 1, 2)
    reference = transforms.Resize(size=(int(512 / 800 * 600), int(512 / 800 * 800)), antialias=False)(pixels)
    assert out.shape == (1, 3, 384, 512)
    assert torch.allclose(out, reference / 255.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Weights files


def test_laion_head_file_loads_and_wrong_files_are_refused(tmp_path: Path) -> None:
    head = nn.Linear(EMBED_DIM, 1)
    good = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(head.state_dict(), good)
    loaded = load_aesthetic_head(good)
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)

    wrong_shape = tmp_path / "sa_0_4_vit_b_16_linear.pth"  # LAION's ViT-B/16 head: 512 inputs
    torch.save(nn.Linear(512, 1).state_dict(), wrong_shape)
    with pytest.raises(FeatureWeightsError, match=r"sa_0_4_vit_b_16_linear\.pth does not hold the LAION"):
        load_aesthetic_head(wrong_shape)
    extra_key = tmp_path / "extra.pth"
    torch.save({**head.state_dict(), "scale": torch.ones(1)}, extra_key)
    with pytest.raises(FeatureWeightsError, match=r"extra\.pth .*'scale'"):
        load_aesthetic_head(extra_key)


def test_missing_aesthetic_weights_offline_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    with pytest.raises(FeatureWeightsError) as err:
        build_aesthetic()
    message = str(err.value)
    for part in ("aesthetic_quality", "sa_0_4_vit_l_14_linear.pth", "--aesthetic_weights", "HF_HUB_OFFLINE"):
        assert part in message
    with pytest.raises(FeatureWeightsError, match="--musiq_weights"):
        build_musiq(tmp_path / "absent.pth")


def test_clip_l14_weights_with_wrong_keys_are_refused(tmp_path: Path) -> None:
    head = tmp_path / "head.pth"
    torch.save(nn.Linear(EMBED_DIM, 1).state_dict(), head)
    not_clip = tmp_path / "not_clip.pth"
    torch.save(nn.Linear(2, 2).state_dict(), not_clip)
    with pytest.raises(FeatureWeightsError, match=r"not_clip\.pth does not hold CLIP ViT-L/14"):
        build_aesthetic(head, not_clip)


def test_musiq_state_loads_strictly(tmp_path: Path) -> None:
    musiq_class = _musiq_class()
    model = musiq_class(num_class=1, pretrained=False, **SMALL_RANDOM_CONFIG)
    state = model.state_dict()
    # Saved from a DataParallel: the "module." prefix is dropped, as pyiqa does.
    prefixed = tmp_path / "musiq_dp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    fresh = musiq_class(num_class=1, pretrained=False, **SMALL_RANDOM_CONFIG)
    load_musiq_state(fresh, prefixed)
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())

    missing = tmp_path / "missing_head.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("head")}, missing)
    with pytest.raises(FeatureWeightsError, match=r"missing_head\.pth does not hold MUSIQ \(SPAQ\) weights"):
        load_musiq_state(fresh, missing)
    # The full (VBench) configuration refuses the small model's weights: shapes differ.
    full = musiq_class(num_class=1, pretrained=False)
    with pytest.raises(FeatureWeightsError, match=r"musiq_dp\.pth .*size mismatch"):
        load_musiq_state(full, prefixed)


def test_full_architectures_have_the_published_shapes() -> None:
    import open_clip

    # ViT-L/14: 224 input, patch 14, 768-d embedding, the LAION head's input; the small random tower
    # keeps exactly these, so the same preprocessing and head apply.
    config = open_clip.get_model_config("ViT-L-14")
    assert config["embed_dim"] == EMBED_DIM
    assert (config["vision_cfg"]["image_size"], config["vision_cfg"]["patch_size"]) == (224, 14)
    small = build_aesthetic(random_init=True).tower.visual
    assert small.conv1.kernel_size == (14, 14) and small.proj.shape[1] == EMBED_DIM
    # MUSIQ (SPAQ): 14 layers of 384, one score.
    full = _musiq_class()(num_class=1, pretrained=False)
    blocks = list(full.transformer_encoder.transformer.children())
    assert len(blocks) == 14 and full.head.weight.shape == (1, 384)


# --------------------------------------------------------------------------------------------
# Scores on random models


@pytest.fixture(scope="module")
def quality_scorer() -> VBenchScorer:
    return VBenchScorer.create((AESTHETIC, IMAGING), random_init=True, batch_size=4, device="cpu")


def test_random_models_give_finite_scores_on_vbench_scale(quality_scorer: VBenchScorer) -> None:
    scores = quality_scorer.score(_frames(5))
    assert math.isfinite(scores.aesthetic_quality) and math.isfinite(scores.imaging_quality)
    # Frames are scored one by one: the batch size and the frame order do not matter.
    shuffled = quality_scorer.score(_frames(5)[::-1].copy())
    assert shuffled.aesthetic_quality == pytest.approx(scores.aesthetic_quality, rel=1e-4, abs=1e-4)
    assert shuffled.imaging_quality == pytest.approx(scores.imaging_quality, rel=1e-4, abs=1e-4)
    assert set(quality_scorer.settings()["models"]) == {AESTHETIC, IMAGING}


def test_cli_writes_quality_columns(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "a_cat" / "run.gif", _frames(4), fps=8)
    out = tmp_path / "report"
    argv = [str(tmp_path / "videos"), "--out", str(out), "--random_feature_models", "--quiet"]
    argv += ["--dimensions", AESTHETIC, IMAGING]
    assert load_script("scripts/evaluate.py").main(argv) == 0
    with open(out / "metrics.csv") as fp:
        (row,) = list(csv.DictReader(fp))
    for name in (AESTHETIC, IMAGING):
        value = float(row[name])
        # percent, as the other columns: 100 * VBench's fraction; random weights give any finite value
        assert math.isfinite(value)


def test_small_random_towers_keep_inputs_and_outputs_and_static_scores_100() -> None:
    from tools.vbench import BACKGROUND, SUBJECT, build_clip, build_dino, clip_preprocess, dino_preprocess

    frames = torch.from_numpy(_frames(2, 64, 96))
    dino = build_dino(random_init=True, small=True)
    clip = build_clip(random_init=True, small=True)
    assert dino.vit.patch_embed.proj.kernel_size == (16, 16) and len(dino.vit.blocks) == 2
    assert clip(clip_preprocess(frames)).shape == (2, 512)  # ViT-B/32's embedding size
    assert dino(dino_preprocess(frames)).shape == (2, 64)  # non-square input, as DINO handles it
    scorer = VBenchScorer((SUBJECT, BACKGROUND), dino, clip, batch_size=2)
    static = scorer.score(np.stack([_frames(1)[0]] * 3))
    assert static.subject_consistency == pytest.approx(
        100.0
    ) and static.background_consistency == pytest.approx(100.0)
