"""U-Net behaviour beyond the reference fixture: attention backends, Q-cache switching, batching."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fifo.options import QCacheOptions, parse_mode
from fifo.perf import TemporalConvAs2d, UNetExecution, apply_execution, rows_per_chunk
from fifo.tricks.qcache import QCacheBlendProcessor, QCacheRecordProcessor, set_qcache
from lvdm.modules.attention import AttnProcessor
from lvdm.modules.networks.openaimodel3d import TemporalConv, UNetModel
from tests.conftest import REPO


@pytest.fixture(scope="module")
def unet() -> UNetModel:
    cfg = OmegaConf.load(REPO / "configs" / "tiny_t2v.yaml")
    torch.manual_seed(0)
    model = UNetModel(**OmegaConf.to_container(cfg.model.params.unet_config.params)).eval()
    # zero_module leaves output convs at zero; perturb so every layer matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 8, generator=g)
    t = torch.randint(0, 1000, (2, 8), generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    return x, t, context


@torch.no_grad()
def test_sdpa_matches_math_attention(unet, inputs) -> None:
    unet.set_attn_processor("math")
    reference = unet(*inputs, fps=8)
    unet.set_attn_processor("sdpa")
    assert (unet(*inputs, fps=8) - reference).abs().max() < 1e-5


def test_unknown_backend_is_an_error(unet) -> None:
    with pytest.raises(ValueError, match="sdpa, xformers, math"):
        unet.set_attn_processor("flash3")


@torch.no_grad()
def test_qcache_off_is_the_plain_model_bit_for_bit(unet, inputs) -> None:
    plain = unet(*inputs, fps=8)
    set_qcache(unet, parse_mode("t2v_TTqcache_STqcache_attn1_attn2").qcache)
    assert not torch.equal(unet(*inputs, fps=8), plain)
    set_qcache(unet, None)
    assert torch.equal(unet(*inputs, fps=8), plain)
    assert all(type(a.processor) is AttnProcessor for a in unet.attention_layers().values())


@torch.no_grad()
def test_qcache_weight_zero_equals_no_qcache(unet, inputs) -> None:
    plain = unet(*inputs, fps=8)
    set_qcache(unet, QCacheOptions(temporal=True, spatial=True, attn1=True, attn2=True, weight=0.0))
    try:
        assert torch.allclose(unet(*inputs, fps=8), plain, atol=1e-6)
    finally:
        set_qcache(unet, None)


def test_qcache_wiring_follows_the_published_block_map(unet) -> None:
    """Decoder block j of a level reads encoder block max(0, num_res_blocks - 1 - j); temporal attn1 only."""
    set_qcache(unet, QCacheOptions(temporal=True, attn1=True, weight=0.9))
    try:
        recorders = {}
        for index, block in enumerate(unet.input_blocks):
            for attn_name, attn in [(n, m) for n, m in block.named_modules() if hasattr(m, "processor")]:
                if isinstance(attn.processor, QCacheRecordProcessor):
                    recorders[attn.processor.slot] = (index, attn_name)
        blenders = []
        for index, block in enumerate(unet.output_blocks):
            for attn_name, attn in [(n, m) for n, m in block.named_modules() if hasattr(m, "processor")]:
                if isinstance(attn.processor, QCacheBlendProcessor):
                    blenders.append((index, attn_name, attn.processor.slot, attn.processor.weight))
        # tiny config: attention on 3 levels × 3 decoder blocks, temporal attn1 only.
        assert len(blenders) == 9
        assert all(
            name.endswith("transformer_blocks.0.attn1") and ".2." in f".{name}" for _, name, _, _ in blenders
        )
        assert all(w == 0.9 for *_, w in blenders)
        # Output blocks 0-2 are the deepest level without attention in the tiny config (ds 8).
        enc_of_dec = {dec: recorders[slot][0] for dec, _, slot, _ in blenders}
        # level 2: encoder blocks 7, 8; decoder 3, 4, 5 → 8, 7, 7
        assert [enc_of_dec[i] for i in (3, 4, 5)] == [8, 7, 7]
        assert [enc_of_dec[i] for i in (6, 7, 8)] == [5, 4, 4]
        assert [enc_of_dec[i] for i in (9, 10, 11)] == [2, 1, 1]
        # init_attn and the middle block take no part.
        assert all(
            type(a.processor) is AttnProcessor for a in unet.init_attn.modules() if hasattr(a, "processor")
        )
        assert all(
            type(a.processor) is AttnProcessor for a in unet.middle_block.modules() if hasattr(a, "processor")
        )
    finally:
        set_qcache(unet, None)


@torch.no_grad()
def test_batched_samples_equal_single_samples(unet, inputs) -> None:
    """Per-sample, per-frame timesteps and contexts: a batch equals its samples run alone."""
    x, t, context = inputs
    set_qcache(unet, parse_mode("t2v_TTqcache_attn1").qcache)
    try:
        batch = unet(x, t, context, fps=8)
        for i in range(2):
            alone = unet(x[i : i + 1], t[i : i + 1], context[i : i + 1], fps=8)
            assert (batch[i : i + 1] - alone).abs().max() < 1e-4
    finally:
        set_qcache(unet, None)


def test_bad_timestep_shape_is_an_error(unet, inputs) -> None:
    x, _, context = inputs
    with pytest.raises(ValueError, match="per-frame timesteps"):
        unet(x, torch.zeros(2, 5, dtype=torch.long), context)


def test_unsupported_published_options_are_named() -> None:
    cfg = OmegaConf.to_container(
        OmegaConf.load(REPO / "configs" / "tiny_t2v.yaml").model.params.unet_config.params
    )
    # (use_relative_position is supported since VideoCrafter1 t2v; causal attention is not.)
    cfg["use_causal_attention"] = True
    with pytest.raises(ValueError, match="use_causal_attention"):
        UNetModel(**cfg)
    cfg["use_causal_attention"] = False
    cfg["not_a_parameter"] = 1
    with pytest.raises(TypeError, match="not_a_parameter"):
        UNetModel(**cfg)


# ------------------------------------------------------------------ execution settings
@pytest.mark.parametrize(
    ("rows", "tokens", "groups", "max_tokens"),
    [(64, 64, 8, 4096), (64, 64, 8, 100), (64, 64, 8, 10), (12, 16, 4, 40), (7, 16, 1, 50), (5, 10, 5, None)],
)
def test_rows_per_chunk_respects_budget_and_groups(rows, tokens, groups, max_tokens) -> None:
    per = rows_per_chunk(rows, tokens, groups, max_tokens)
    assert 1 <= per <= rows
    if max_tokens is None:
        assert per == rows
        return
    assert per * tokens <= max_tokens or per == 1
    # Never splits the frames that share a context row unevenly.
    assert per % groups == 0 or groups % per == 0


@torch.no_grad()
@pytest.mark.parametrize("mode", ["t2v", "t2v_TTqcache_STqcache_attn1_attn2"])
def test_execution_settings_give_the_same_noise(unet, inputs, mode) -> None:
    """Transformer chunks of whole clips, of single frames and of part of a clip's frames, and
    2D temporal convolutions: same result, with and without Q-caches (which record and blend
    once per chunk)."""
    set_qcache(unet, parse_mode(mode).qcache)
    try:
        whole = unet(*inputs, fps=8)
        # 8x8 latent, 8 frames: 64 tokens per frame at the top level (spatial), 8 per
        # position (temporal). 100 tokens: 1 frame or 12 positions per chunk.
        for chunk in (100, 300, 1, None):
            apply_execution(unet, UNetExecution(transformer_chunk=chunk, temporal_conv_2d=chunk != 1))
            assert (unet(*inputs, fps=8) - whole).abs().max() < 1e-5
    finally:
        apply_execution(unet, UNetExecution())
        set_qcache(unet, None)
    assert all(type(m) is TemporalConv for m in unet.modules() if isinstance(m, TemporalConv))
    with pytest.raises(ValueError, match="transformer_chunk"):
        UNetExecution(transformer_chunk=0)


def test_temporal_conv_in_2d_equals_the_published_3d() -> None:
    conv = TemporalConv(8)
    assert conv.weight.shape == (8, 8, 3, 1, 1)  # the checkpoint's shape
    x = torch.randn(3, 8, 5, 4, 6)
    reference = conv(x)
    conv.__class__ = TemporalConvAs2d  # what apply_execution does
    torch.testing.assert_close(conv(x), reference, rtol=1e-5, atol=1e-6)
    # Time is padded with zeros and never mixes with space.
    x[:, :, 0] += 100.0
    changed = (conv(x) - reference).abs().amax(dim=(0, 1, 3, 4)) > 1e-3
    assert changed.tolist() == [True, True, False, False, False]


@torch.no_grad()
def test_several_contexts_per_clip_equal_separate_calls(unet, inputs) -> None:
    """k contexts per clip (branch-major): the clips run once through the context-free head,
    and every (branch, clip) pair gets what a call with that context alone gives."""
    x, t, cond = inputs
    uncond = torch.randn(cond.shape, generator=torch.Generator().manual_seed(1))
    set_qcache(unet, parse_mode("t2v_TTqcache_attn1").qcache)
    try:
        both = unet(x, t, torch.cat([cond, uncond]), fps=8, context_branches=2)
        assert both.shape == (4, *x.shape[1:])
        assert (both[:2] - unet(x, t, cond, fps=8)).abs().max() < 1e-5
        assert (both[2:] - unet(x, t, uncond, fps=8)).abs().max() < 1e-5
    finally:
        set_qcache(unet, None)
    with pytest.raises(ValueError, match="context_branches"):
        unet(x, t, cond[:1].expand(3, -1, -1))
    with pytest.raises(ValueError, match="context_branches"):
        unet(x, t, torch.cat([cond, uncond]), fps=8)  # two contexts per clip, not said
