"""Conditioning encoders (OpenCLIP text / image, Resampler) against the reference fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lvdm.modules.encoders.condition import (
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPImageEmbedderV2,
    antialias_params,
    gaussian_blur2d,
    resize_antialias,
)
from lvdm.modules.encoders.resampler import Resampler
from tests.conftest import tiny_t2v_weights
from tools.reference.fixture_weights import module_fixture_weights

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"
TINY = REFERENCE / "tiny_t2v"
TOL = 1e-4


@pytest.fixture(scope="module")
def reference() -> Path:
    if not TINY.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}: the checkout is incomplete")
    return TINY


@pytest.fixture(scope="module")
def meta(reference: Path) -> dict:
    return json.loads((reference / "meta.json").read_text())


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def image_case(reference: Path) -> tuple[FrozenOpenCLIPImageEmbedderV2, dict[str, torch.Tensor]]:
    data = load_file(reference / "image_embed.safetensors")
    embedder = FrozenOpenCLIPImageEmbedderV2(arch="fifo-tiny-clip")
    prefix = json.loads((reference / "meta.json").read_text())["image_embed"]["weights_prefix"]
    embedder.load_state_dict(module_fixture_weights(embedder, prefix), strict=True)
    return embedder, data


def test_text_embedder_matches_reference(reference: Path, meta: dict) -> None:
    encoder = FrozenOpenCLIPEmbedder(arch="fifo-tiny-clip", layer="penultimate")
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    encoder.load_state_dict(_strip(tiny_t2v_weights(), "cond_stage_model."), strict=True)
    with torch.no_grad():
        emb = encoder(meta["prompts"])
    assert _max_err(emb, load_file(reference / "text.safetensors")["text_emb"]) < TOL


def test_sequence_first_blocks_give_the_same_output(reference: Path, meta: dict) -> None:
    """open_clip < 3 ran its blocks sequence-first: the encoders must follow the installed layout."""
    encoder = FrozenOpenCLIPEmbedder(arch="fifo-tiny-clip", layer="last")
    encoder.load_state_dict(_strip(tiny_t2v_weights(), "cond_stage_model."))
    with torch.no_grad():
        batch_first = encoder(meta["prompts"])
        encoder.model.transformer.batch_first = False
        for block in encoder.model.transformer.resblocks:
            block.attn.batch_first = False
        assert _max_err(encoder(meta["prompts"]), batch_first) < 1e-5


def test_image_embedder_matches_reference(image_case) -> None:
    """Preprocessing, embeddings, weights and blocks reproduce the fixture's per-image tokens."""
    embedder, data = image_case
    with torch.no_grad():
        tokens = embedder(data["image"])
    assert tokens.shape == data["tokens"].shape == (2, 50, 64)
    assert _max_err(tokens, data["tokens"]) < TOL


def test_image_embedder_attends_within_each_image(image_case) -> None:
    """Our tokens are those of open_clip's own visual forward, independent of the rest of the batch."""
    embedder, data = image_case
    image = data["image"]
    with torch.no_grad():
        tokens = embedder(image)
        out = embedder.model.visual.forward_intermediates(
            embedder.preprocess(image), indices=1, output_fmt="NLC", output_extra_tokens=True
        )
        expected = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)
        assert _max_err(tokens, expected) < TOL
        clip_embedding = embedder.model.encode_image(embedder.preprocess(image))
        assert _max_err(embedder.pooled(tokens), clip_embedding) < TOL
        # Each image alone gives its own rows of the batch (the fixture states this of tokens[0]).
        assert _max_err(embedder(image[:1]), data["tokens"][:1]) < TOL
        assert _max_err(embedder(image[1:]), tokens[1:]) < TOL
        # Attention across the images of the batch (the layout defect of the published code
        # under open_clip >= 3) would differ from the fixture by far more than rounding.
        transformer = embedder.model.visual.transformer
        mixed = transformer(embedder.embed_tokens(image).permute(1, 0, 2)).permute(1, 0, 2)
    assert _max_err(mixed, data["tokens"]) > 1e-1


def test_resize_and_antialias() -> None:
    image = torch.rand(1, 3, 224, 224) * 2 - 1
    assert torch.equal(resize_antialias(image, (224, 224)), image)

    big = torch.rand(2, 3, 320, 512) * 2 - 1
    assert resize_antialias(big, (224, 224)).shape == (2, 3, 224, 224)
    sigmas, sizes = antialias_params((320, 512), (224, 224))
    assert sigmas == pytest.approx((0.2142857, 0.6428571), abs=1e-6)
    assert sizes == (3, 3)
    assert antialias_params((224, 224), (224, 448)) is None  # upscaling: no blur

    # The separable blur equals one 2D convolution with the outer-product kernel.
    def taps(k: int, s: float) -> torch.Tensor:
        g = torch.exp(-((torch.arange(k) - k // 2) ** 2) / (2 * s**2))
        return g / g.sum()

    kernel = torch.outer(taps(sizes[0], sigmas[0]), taps(sizes[1], sigmas[1]))
    padded = torch.nn.functional.pad(big, (1, 1, 1, 1), mode="reflect")
    direct = torch.nn.functional.conv2d(padded, kernel.expand(3, 1, 3, 3), groups=3)
    assert _max_err(gaussian_blur2d(big, sizes, sigmas), direct) < 1e-6


def test_resampler_matches_reference(reference: Path, meta: dict) -> None:
    data = load_file(reference / "resampler.safetensors")
    resampler = Resampler(**meta["resampler_kwargs"])
    resampler.load_state_dict(
        module_fixture_weights(resampler, meta["resampler_weights_prefix"]), strict=True
    )
    with torch.no_grad():
        out = resampler(data["input"])
    assert _max_err(out, data["output"]) < TOL


def _manifest_group(manifest: dict, model: str, prefix: str) -> dict[str, list[int]]:
    return {k[len(prefix) :]: shape for k, (shape, _dtype) in manifest[model].items() if k.startswith(prefix)}


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_real_sizes_match_checkpoint_manifest(reference: Path) -> None:
    manifest = json.loads((REFERENCE / "checkpoint_manifest.json").read_text())
    with torch.device("meta"):
        text = FrozenOpenCLIPEmbedder(arch="ViT-H-14", version="laion2b_s32b_b79k", layer="penultimate")
        image = FrozenOpenCLIPImageEmbedderV2(arch="ViT-H-14", version="laion2b_s32b_b79k")
        resampler = Resampler(
            dim=1024,
            depth=4,
            dim_head=64,
            heads=12,
            num_queries=16,
            embedding_dim=1280,
            output_dim=1024,
            ff_mult=4,
        )
    assert text.model.positional_embedding.is_meta and image.model.visual.conv1.weight.is_meta
    assert _shapes(text) == _manifest_group(manifest, "videocrafter2_t2v_512", "cond_stage_model.")
    assert _shapes(image) == _manifest_group(manifest, "videocrafter1_i2v_512", "embedder.")
    assert _shapes(resampler) == _manifest_group(manifest, "videocrafter1_i2v_512", "image_proj_model.")


@pytest.mark.parametrize("cls", [FrozenOpenCLIPEmbedder, FrozenOpenCLIPImageEmbedderV2])
def test_unknown_arch_is_a_clear_error(cls: type) -> None:
    with pytest.raises(ValueError, match="no-such-clip") as info:
        cls(arch="no-such-clip")
    assert "configs/openclip" in str(info.value)
