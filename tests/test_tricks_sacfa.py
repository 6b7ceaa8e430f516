"""fifo/tricks/sacfa.py and fifo/tricks/subject.py: subject-aware cross-frame attention on the tiny U-Net."""

from __future__ import annotations

import pytest
import torch

from fifo.options import QCacheOptions, SubjectOptions
from fifo.prompts import PromptJob
from fifo.tricks.qcache import QCacheBlendProcessor, QCacheStore, set_qcache
from fifo.tricks.sacfa import SacfaProcessor, cross_frame_attention, dense_cross_frame_attention, set_sacfa
from fifo.tricks.subject import (
    SubjectMapProcessor,
    SubjectStore,
    check_subject_in_prompts,
    mentions,
    set_subject_tracking,
    spatial_attention,
    subject_scenes,
    subject_token_positions,
)
from lvdm.build import load_model
from lvdm.modules.attention import AttnProcessor, ComposedProcessor, processor_parts
from lvdm.modules.layer_names import AttentionSite, UNetSide
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, TOKENS = 3, 16  # level 1 of the tiny U-Net at 64x64: 4x4 positions


@pytest.fixture(scope="module")
def model():
    return load_model(REPO / "configs" / "tiny_t2v.yaml", None, random_init=True, device="cpu", seed=3)


@pytest.fixture
def unet(model):
    unet = model.unet
    unet.set_attn_processor("sdpa")
    yield unet
    unet.set_attn_processor("sdpa")
    for hook in list(unet._forward_pre_hooks), list(unet._forward_hooks):
        assert not hook, "a test left U-Net hooks behind"


class FixedMasks:
    """A stand-in for the subject store: the same masks (clips, t, n) in every call."""

    def __init__(self, masks: torch.Tensor | None) -> None:
        self.masks = masks

    def pass_masks(self, level: int, rows: int, frames: int) -> torch.Tensor | None:
        assert self.masks is None or self.masks.shape[:2] == (rows, frames)
        return self.masks


def decoder_self_attention(unet, level: int = 1):
    return next(iter(spatial_attention(unet, UNetSide.DECODER, level, AttentionSite.SELF).values()))


def frames_input(seed: int = 0) -> torch.Tensor:
    layer_width = 64  # level 1 of the tiny U-Net
    return torch.randn(FRAMES, TOKENS, layer_width, generator=torch.Generator().manual_seed(seed))


def subject_mask() -> torch.Tensor:
    mask = torch.zeros(1, FRAMES, TOKENS, dtype=torch.bool)
    mask[0, 1, 0:4] = True  # frame 1's subject: its first four positions
    mask[0, 2, 8:10] = True
    return mask


@torch.no_grad()
def test_a_frame_sees_the_other_frames_subject_and_nothing_else_of_them(unet) -> None:
    layer = decoder_self_attention(unet)
    layer.processor = SacfaProcessor(FixedMasks(subject_mask()), level=1)
    x = frames_input()
    out = layer(x, None, FRAMES)
    inside, outside = x.clone(), x.clone()
    inside[1, 2] += 1.0  # frame 1, inside its subject
    outside[1, 10] += 1.0  # frame 1, outside its subject
    out_inside, out_outside = layer(inside, None, FRAMES), layer(outside, None, FRAMES)
    assert not torch.allclose(out_inside[0], out[0], atol=1e-4)  # frame 0 sees frame 1's subject
    assert torch.equal(out_outside[0], out[0])  # ... and nothing else of frame 1
    assert not torch.equal(out_outside[1], out[1])  # frame 1 itself still attends to all its tokens
    # Without SACFA, frames are independent in spatial attention.
    layer.processor = AttnProcessor()
    assert torch.equal(layer(inside, None, FRAMES)[0], layer(x, None, FRAMES)[0])


@torch.no_grad()
@pytest.mark.parametrize("masks", [None, torch.zeros(1, FRAMES, TOKENS, dtype=torch.bool)])
def test_an_empty_subject_mask_is_plain_attention(unet, masks) -> None:
    layer = decoder_self_attention(unet)
    x = frames_input(1)
    plain = layer(x, None, FRAMES)
    layer.processor = SacfaProcessor(FixedMasks(masks), level=1)
    assert torch.equal(layer(x, None, FRAMES), plain)


@torch.no_grad()
def test_clips_without_a_subject_attend_plainly_next_to_clips_with_one(unet) -> None:
    layer = decoder_self_attention(unet)
    x = torch.cat([frames_input(2), frames_input(3)])  # two clips of FRAMES frames
    plain = layer(x, None, FRAMES)
    masks = torch.cat([subject_mask(), torch.zeros(1, FRAMES, TOKENS, dtype=torch.bool)])
    layer.processor = SacfaProcessor(FixedMasks(masks), level=1)
    out = layer(x, None, FRAMES)
    assert torch.equal(out[FRAMES:], plain[FRAMES:])
    assert not torch.allclose(out[:FRAMES], plain[:FRAMES], atol=1e-4)


def test_cross_frame_attention_is_the_masked_concatenation() -> None:
    """Reference: each frame's softmax over its own keys and the other frames' subject keys."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(FRAMES, 2, TOKENS, 8, generator=g) for _ in range(3))
    mask = subject_mask()[0]
    out = cross_frame_attention(q, k, v, mask)
    for f in range(FRAMES):
        others = [(g_, n) for g_ in range(FRAMES) for n in range(TOKENS) if g_ != f and mask[g_, n]]
        keys = torch.cat([k[f], torch.stack([k[g_, :, n] for g_, n in others], dim=1)], dim=1)
        values = torch.cat([v[f], torch.stack([v[g_, :, n] for g_, n in others], dim=1)], dim=1)
        expected = ((q[f] @ keys.transpose(-1, -2)) * 8**-0.5).softmax(-1) @ values
        torch.testing.assert_close(out[f], expected, rtol=1e-5, atol=1e-5)


def test_dense_cross_frame_attention_is_the_same_with_value_independent_shapes() -> None:
    """The variant a planned run (fake tensors) takes: every frame's tokens, the mask as attention mask."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(FRAMES, 2, TOKENS, 8, generator=g) for _ in range(3))
    mask = subject_mask()[0]
    torch.testing.assert_close(
        dense_cross_frame_attention(q, k, v, mask), cross_frame_attention(q, k, v, mask), rtol=1e-5, atol=1e-6
    )


@torch.no_grad()
def test_spatial_qcache_and_sacfa_compose_on_the_same_layer(unet) -> None:
    """STqcache_attn1 blends the decoder query; SACFA adds the other frames' subject keys: both apply."""
    set_qcache(unet, QCacheOptions(temporal=False, spatial=True, attn1=True, weight=0.5))
    store = SubjectStore(SubjectOptions("a fox", levels=(1,)))
    set_sacfa(unet, store)
    try:
        layer = decoder_self_attention(unet)
        parts = processor_parts(layer)
        assert isinstance(layer.processor, ComposedProcessor)
        assert [type(p) for p in parts] == [QCacheBlendProcessor, SacfaProcessor]
        blend, sacfa = parts
        sacfa.store = FixedMasks(subject_mask())
        x, recorded = frames_input(5), frames_input(6)
        qstore = blend.store
        qstore.record(blend.slot, layer.to_q(recorded))
        out = layer(x, None, FRAMES)
        # By hand: blended query, then cross-frame attention with the subject keys.
        q = 0.5 * layer.to_q(x) + 0.5 * layer.to_q(recorded)
        heads = layer.split_heads(q, layer.to_k(x), layer.to_v(x))
        manual = cross_frame_attention(*heads, subject_mask()[0])
        expected = layer.to_out(manual.transpose(1, 2).reshape(FRAMES, TOKENS, -1))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        # Removing one trick leaves the other in place.
        set_qcache(unet, None)
        assert processor_parts(layer) == (sacfa,)
        set_qcache(unet, QCacheOptions(temporal=False, spatial=True, attn1=True, weight=0.5))
        set_sacfa(unet, None)
        assert [type(p) for p in processor_parts(layer)] == [QCacheBlendProcessor]
    finally:
        set_sacfa(unet, None)
        set_qcache(unet, None)
    assert isinstance(qstore, QCacheStore)
    assert all(type(a.processor) is AttnProcessor for a in unet.attention_layers().values())


# ----------------------------------------------------------------------------- locating the subject
def test_subject_token_positions(model) -> None:
    ids = model.text_token_ids(["A person, swimming in the ocean.", "a dog", "a red fox and a person"])
    subject = model.text_token_ids(["a person"])[0]
    assert subject_token_positions(ids[0], subject) == [1, 2]
    assert subject_token_positions(ids[1], subject) == []
    assert subject_token_positions(ids[2], subject) == [5, 6]


def test_prompts_must_mention_the_subject() -> None:
    assert mentions("A Person, swimming.", "a person") and not mentions("a personal trainer", "a person")
    story = PromptJob("a cat sleeps", 3, scenes=())
    check_subject_in_prompts("cat", [story])
    with pytest.raises(ValueError, match=r"`subject` 'dog'.*line 3"):
        check_subject_in_prompts("dog", [story])


def _tracked(unet, model, prompts: list[str], phrase: str = "a person", levels=(1, 2)):
    store = set_subject_tracking(unet, SubjectOptions(phrase, levels=levels))
    texts = model.get_learned_conditioning(prompts)
    store.set_scenes(
        subject_scenes(texts, model.text_token_ids(prompts), model.text_token_ids([phrase]), prompts)
    )
    return store, texts


def _inputs(clips: int = 1, frames: int = FRAMES):
    g = torch.Generator().manual_seed(7)
    return torch.randn(clips, 4, frames, 8, 8, generator=g), torch.randint(
        0, 999, (clips, frames), generator=g
    )


@torch.no_grad()
def test_masks_threshold_the_softmax_mass_on_the_subject_words(unet, model) -> None:
    store, texts = _tracked(unet, model, ["a person swimming in the ocean"], levels=(1,))
    try:
        layers = list(spatial_attention(unet, UNetSide.ENCODER, 1, AttentionSite.SECOND).values())
        assert len(layers) == 2 and all(isinstance(a.processor, SubjectMapProcessor) for a in layers)
        inputs = []
        handles = [a.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for a in layers]
        x, t = _inputs()
        unet(x, t, texts)
        for handle in handles:
            handle.remove()
        # By hand: per layer, each position's softmax mass on "a person" (tokens 1 and 2), mean
        # over heads; the layers averaged; min-max per frame; threshold 0.5.
        maps = []
        for layer, hidden in zip(layers, inputs, strict=True):
            q, k = layer.split_heads(layer.to_q(hidden), layer.to_k(texts))
            probs = (torch.einsum("rhnd,bhmd->rhnm", q, k) * q.shape[-1] ** -0.5).softmax(-1)
            maps.append(probs[..., 1:3].mean(-1).mean(1))  # (frames, n)
        mean = torch.stack(maps).mean(0)
        low, high = mean.amin(-1, keepdim=True), mean.amax(-1, keepdim=True)
        expected = (mean - low) >= 0.5 * (high - low)
        masks = store.masks(1)
        assert masks.shape == (1, FRAMES, TOKENS) and masks.any() and not masks.all()
        assert torch.equal(masks[0], expected)
    finally:
        set_subject_tracking(unet, None)


@torch.no_grad()
def test_unconditional_rows_take_their_clips_subject_and_the_sequential_call_reuses_it(unet, model) -> None:
    store, texts = _tracked(unet, model, ["a person swimming in the ocean"])
    uncond = model.get_learned_conditioning([""])
    try:
        x, t = _inputs(clips=2)
        cond = texts.expand(2, -1, -1)
        unet(x, t, torch.cat([cond, uncond.expand(2, -1, -1)]), context_branches=2)
        batched = {level: store.masks(level) for level in (1, 2)}
        for m in batched.values():
            assert m.shape[0] == 4 and m[:2].any()
            assert torch.equal(m[2:], m[:2])  # the unconditional branch: the same subject as its clip
        unet(x, t, cond)
        unet(x, t, uncond.expand(2, -1, -1))  # the sequential path's second call, same input
        for level in (1, 2):
            assert torch.equal(store.masks(level), batched[level][:2])
        unet(x.clone(), t, uncond.expand(2, -1, -1))  # another input: no subject
        assert store.masks(1) is None
    finally:
        set_subject_tracking(unet, None)


@torch.no_grad()
def test_sacfa_on_the_unet_changes_only_videos_with_the_subject(unet, model) -> None:
    x, t = _inputs()
    prompts = ["a person swimming in the ocean", "a red car"]
    texts = model.get_learned_conditioning(prompts)
    plain = unet(x.expand(2, -1, -1, -1, -1), t.expand(2, -1), texts)
    store, _ = _tracked(unet, model, prompts)
    set_sacfa(unet, store)
    try:
        out = unet(x.expand(2, -1, -1, -1, -1), t.expand(2, -1), texts)
        assert not torch.allclose(out[0], plain[0], atol=1e-5)
        assert torch.equal(out[1], plain[1])  # "a red car" has no person: plain attention
        store.set_scenes(())
        assert torch.equal(unet(x.expand(2, -1, -1, -1, -1), t.expand(2, -1), texts), plain)
    finally:
        set_sacfa(unet, None)
        set_subject_tracking(unet, None)


def test_levels_without_spatial_transformers_are_an_error(unet) -> None:
    with pytest.raises(ValueError, match=r"`subject_levels`.*\[3\]"):
        set_subject_tracking(unet, SubjectOptions("a person", levels=(1, 3)))
