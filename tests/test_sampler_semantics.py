"""What the FIFO generator feeds the U-Net, on the tiny models (fifo.generator.FifoGenerator).

- t2v_seed_ar: the context keeps its length (77 text + 16 image tokens) and its image tokens are
  replaced, after every frame, by the newest frame's (the published variant appends them).
- Q-cache with weight 0 is exactly the plain U-Net.
- plain t2v never needs an image embedder (the published code seeds in every mode).
- stories: each window gets the text of the scene its middle slot's output frame belongs to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fifo.conditioning import VideoConditioning
from fifo.generator import FifoGenerator
from fifo.geometry import FifoGeometry
from fifo.options import GenerationSettings, QCacheOptions, parse_mode
from fifo.outputs import OutputLayout
from fifo.prompts import PromptJob, Scene
from fifo.tricks.qcache import set_qcache
from infra.image_io import load_image
from infra.video_io import read_video
from lvdm.build import load_model
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[1]
T2V = ROOT / "configs" / "tiny_t2v.yaml"
I2V = ROOT / "configs" / "tiny_i2v.yaml"
TEXT_TOKENS = 77
IMAGE_TOKENS = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _live_model(config: Path):
    """Random weights, with the zero-initialised layers (output convolution, transformer
    projections, norms' biases) made non-zero: a freshly initialised U-Net predicts exactly 0 and
    its attention layers add nothing, which would make the Q-cache and image tokens invisible."""
    model = load_model(config, None, random_init=True, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def t2v_model():
    return _live_model(T2V)


@pytest.fixture(scope="module")
def i2v_model():
    return _live_model(I2V)


def settings(**kw) -> GenerationSettings:
    base = dict(
        video_length=4, num_partitions=1, new_video_length=3, height=64, width=64, progress=False, seed=3
    )
    base.update(kw)
    return GenerationSettings(**base)


class Recorder:
    """Wraps the generator's windows step (one FIFO iteration over the windows) and keeps
    (contexts, uncond) of every iteration."""

    def __init__(self, monkeypatch, generator: FifoGenerator) -> None:
        self.contexts: list[torch.Tensor] = []
        self.unconds: list[torch.Tensor] = []
        real = generator.sampler.windows_step

        def wrapped(denoise, queue, geometry, schedule, contexts, uncond, *args, **kwargs):
            self.contexts.append(contexts.detach().clone())
            self.unconds.append(uncond.detach().clone())
            return real(denoise, queue, geometry, schedule, contexts, uncond, *args, **kwargs)

        monkeypatch.setattr(generator.sampler, "windows_step", wrapped)


def wrap_image_tokens(monkeypatch, generator: FifoGenerator) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    calls: list = []
    real = generator.sampler.image_tokens

    def wrapped(images: torch.Tensor) -> torch.Tensor:
        out = real(images)
        calls.append((tuple(images.shape), out.detach().clone()))
        return out

    monkeypatch.setattr(generator.sampler, "image_tokens", wrapped)
    return calls


# ----------------------------------------------------------------------------- seeding
def test_seed_ar_context_length_constant_and_tokens_replaced(tmp_path, monkeypatch, i2v_model) -> None:
    s = settings(new_video_length=3)
    gen = FifoGenerator(i2v_model, parse_mode("t2v_seed_ar"), s, "test-model")
    rec = Recorder(monkeypatch, gen)
    token_calls = wrap_image_tokens(monkeypatch, gen)
    result = gen.run(PromptJob("a fox", line=1), OutputLayout(tmp_path, "exp", tmp_path / "cache"))
    iterations = gen.geometry.num_iterations(3)
    assert result.frames == 3 and len(rec.contexts) == iterations
    n_windows = len(gen.geometry.windows())
    shapes = {tuple(c.shape) for c in rec.contexts}
    assert shapes == {(n_windows, TEXT_TOKENS + IMAGE_TOKENS, 32)}  # never grows
    assert {tuple(u.shape) for u in rec.unconds} == {(1, TEXT_TOKENS + IMAGE_TOKENS, 32)}
    # One frame embedded at a time: the base clip's first frame, then every newest frame.
    assert [shape for shape, _ in token_calls] == [(1, 3, 64, 64)] * (1 + iterations)
    for it, ctx in enumerate(rec.contexts):
        # Iteration `it` uses the tokens of the frame that came out of iteration it − 1 (or the seed).
        expected = token_calls[it][1].expand(n_windows, -1, -1)
        torch.testing.assert_close(ctx[:, TEXT_TOKENS:], expected, rtol=0, atol=0)
        # The text part never changes.
        torch.testing.assert_close(ctx[:, :TEXT_TOKENS], rec.contexts[0][:, :TEXT_TOKENS], rtol=0, atol=0)
    for before, after in zip(rec.contexts, rec.contexts[1:]):
        assert not torch.equal(before[:, TEXT_TOKENS:], after[:, TEXT_TOKENS:])


def test_seed_uses_the_first_base_frame_for_every_step(tmp_path, monkeypatch, i2v_model) -> None:
    s = settings()
    gen = FifoGenerator(i2v_model, parse_mode("t2v_seed"), s, "test-model")
    rec = Recorder(monkeypatch, gen)
    token_calls = wrap_image_tokens(monkeypatch, gen)
    cache = tmp_path / "cache"
    gen.run(PromptJob("a fox", line=1), OutputLayout(tmp_path, "exp", cache))
    assert len(token_calls) == 1
    (cache_file,) = cache.glob("*.pt")
    base = torch.load(cache_file, weights_only=True)["latents"]
    first = i2v_model.decode_first_stage_2DAE(base)[:, :, 0]
    expected = i2v_model.get_image_embeds(first)
    for ctx in rec.contexts:
        assert ctx.shape[1] == TEXT_TOKENS + IMAGE_TOKENS
        torch.testing.assert_close(ctx[:, TEXT_TOKENS:], expected.expand(ctx.shape[0], -1, -1))


def test_i2v_conditions_on_the_input_image(tmp_path, monkeypatch, i2v_model) -> None:
    image = write_png(tmp_path / "in.png", (90, 40))
    gen = FifoGenerator(i2v_model, parse_mode("i2v"), settings(), "test-model")
    rec = Recorder(monkeypatch, gen)
    gen.run(PromptJob("a fox", line=1, image=image), OutputLayout(tmp_path, "exp", tmp_path / "cache"))
    expected = i2v_model.get_image_embeds(load_image(image, 64, 64))
    for ctx in rec.contexts:
        torch.testing.assert_close(ctx[:, TEXT_TOKENS:], expected.expand(ctx.shape[0], -1, -1))


# ----------------------------------------------------------------------------- plain t2v
def test_plain_t2v_needs_no_image_embedder(tmp_path, monkeypatch, t2v_model, i2v_model) -> None:
    assert not t2v_model.has_image_embedder and not hasattr(t2v_model, "embedder")
    result = FifoGenerator(t2v_model, parse_mode("t2v"), settings(), "m").run(
        PromptJob("a fox", line=1), OutputLayout(tmp_path / "a", "exp", tmp_path / "cache")
    )
    assert result.frames == 3
    # With the image model, plain t2v never embeds an image while generating.
    gen = FifoGenerator(i2v_model, parse_mode("t2v_TTqcache"), settings(), "m")

    def refuse(*_args, **_kwargs):
        raise AssertionError("t2v must not embed images")

    monkeypatch.setattr(i2v_model, "get_image_embeds", refuse)
    assert (
        gen.run(PromptJob("a fox", line=1), OutputLayout(tmp_path / "b", "exp", tmp_path / "cache")).frames
        == 3
    )


@pytest.mark.parametrize("mode", ["i2v", "t2v_seed", "t2v_seed_ar_unilatent"])
def test_image_modes_refuse_the_text_model(t2v_model, mode: str) -> None:
    with pytest.raises(ValueError, match="image-to-video model"):
        FifoGenerator(t2v_model, parse_mode(mode), settings(), "m")


# ----------------------------------------------------------------------------- Q-cache
@pytest.mark.parametrize("model_name", ["t2v", "i2v"])
def test_qcache_weight_zero_is_the_plain_unet(request, model_name: str) -> None:
    model = request.getfixturevalue(f"{model_name}_model")
    unet = model.unet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 8, 8, generator=gen)
    t = torch.tensor([[10, 200, 400, 900], [0, 300, 600, 999]])
    ctx_len = TEXT_TOKENS + (IMAGE_TOKENS if model_name == "i2v" else 0)
    context = torch.randn(2, ctx_len, 32, generator=gen)
    try:
        set_qcache(unet, None)
        with torch.inference_mode():
            plain = model.apply_model(x, t, context, fps=8)
        for temporal, spatial, attn1, attn2 in [
            (True, False, True, False),
            (False, True, False, True),
            (True, True, True, True),
        ]:
            options = QCacheOptions(temporal, spatial, attn1, attn2, weight=0.0)
            set_qcache(unet, options)
            with torch.inference_mode():
                blended = model.apply_model(x, t, context, fps=8)
            assert torch.equal(blended, plain), options
        set_qcache(unet, QCacheOptions(True, True, True, True, weight=0.9))
        with torch.inference_mode():
            assert not torch.allclose(model.apply_model(x, t, context, fps=8), plain)
    finally:
        set_qcache(unet, None)


def test_qcache_weight_zero_gives_the_plain_video(tmp_path, t2v_model) -> None:
    videos = []
    for mode, weight in (("t2v", 0.9), ("t2v_TTqcache_STqcache_attn1_attn2", 0.0)):
        gen = FifoGenerator(t2v_model, parse_mode(mode, weight), settings(eta=0.0), "m")
        with torch.inference_mode():
            result = gen.run(
                PromptJob("a fox", line=1), OutputLayout(tmp_path / mode, "exp", tmp_path / "cache")
            )
        videos.append(read_video(result.video_path))
    set_qcache(t2v_model.unet, None)
    np.testing.assert_array_equal(videos[0], videos[1])


# ----------------------------------------------------------------------------- stories
def _expected_scenes(geo: FifoGeometry, length: int, bounds: np.ndarray) -> list[list[int]]:
    """Simulate the queue with tags: which output frame does each window's middle slot become?"""
    queue = list(range(geo.queue_length))
    next_tag = geo.queue_length
    middle_tags: list[list[int]] = []
    frame_of: dict[int, int] = {}
    for it in range(geo.num_iterations(length)):
        middle_tags.append([queue[(w.start + w.end) // 2] for w in geo.windows()])
        frame_of[queue[geo.output_slot]] = it - geo.discarded_frames()
        queue = queue[1:] + [next_tag]
        next_tag += 1
    scenes = []
    for tags in middle_tags:
        frames = [min(max(frame_of.get(tag, length), 0), length - 1) for tag in tags]
        scenes.append([int(np.searchsorted(bounds, f, side="right")) for f in frames])
    return scenes


@pytest.mark.parametrize("lookahead", [True, False])
def test_story_switches_the_text_at_the_requested_frames(tmp_path, monkeypatch, t2v_model, lookahead) -> None:
    scenes = (Scene(1, "a cat sleeps"), Scene(1, "the cat wakes up"), Scene(2, "the cat runs"))
    job = PromptJob(scenes[0].prompt, line=1, scenes=scenes)
    s = settings(video_length=4, num_partitions=2, lookahead=lookahead, new_video_length=99)
    gen = FifoGenerator(t2v_model, parse_mode("t2v"), s, "m")
    rec = Recorder(monkeypatch, gen)
    result = gen.run(job, OutputLayout(tmp_path, "exp", tmp_path / "cache"))
    assert result.frames == 4  # the story's length, not --new_video_length
    texts = t2v_model.get_learned_conditioning([sc.prompt for sc in scenes])
    used = []
    for ctx in rec.contexts:
        rows = []
        for window_ctx in ctx:
            matches = [k for k in range(len(scenes)) if torch.equal(window_ctx, texts[k])]
            assert len(matches) == 1
            rows.append(matches[0])
        used.append(rows)
    bounds = np.cumsum([sc.frames for sc in scenes])
    assert used == _expected_scenes(gen.geometry, 4, bounds)
    assert {k for rows in used for k in rows} == {0, 1, 2}


def test_story_window_texts_directly(t2v_model) -> None:
    """VideoConditioning.window_texts alone: scene rows tagged by value, every iteration of a long story."""
    scenes = (Scene(5, "a"), Scene(2, "b"), Scene(7, "c"), Scene(1, "d"))
    job = PromptJob("a", line=1, scenes=scenes)
    length = sum(sc.frames for sc in scenes)
    texts = torch.arange(len(scenes), dtype=torch.float32).reshape(-1, 1, 1).expand(-1, 77, 32)
    conditioning = VideoConditioning(texts, tuple(sc.frames for sc in job.scenes), length)
    for la in (True, False):
        geo = settings(video_length=4, num_partitions=3, lookahead=la).geometry
        expected = _expected_scenes(geo, length, np.cumsum([sc.frames for sc in scenes]))
        for it in range(geo.num_iterations(length)):
            picked = conditioning.window_texts(geo, it)
            assert picked[:, 0, 0].long().tolist() == expected[it], (la, it)


def test_single_prompt_windows_share_the_text() -> None:
    geo = settings().geometry
    texts = torch.randn(1, 77, 32)
    picked = VideoConditioning(texts, (), 3).window_texts(geo, 0)
    assert picked.shape == (len(geo.windows()), 77, 32)
    assert all(torch.equal(p, texts[0]) for p in picked)
