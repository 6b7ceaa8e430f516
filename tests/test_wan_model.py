"""Wan2.1 on the tiny random model: the flow schedule against diffusers' scheduler, the base clip
against WanPipeline itself, the streamed causal decoder against a whole-clip decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from fifo.flow import FlowSchedule, sample_flow  # noqa: E402
from fifo.guidance import CFGDenoiser  # noqa: E402
from lvdm.build import config_facts, load_config, load_model  # noqa: E402
from lvdm.wan.stream import DecoderCache, StreamDecoder  # noqa: E402

CONFIG = "configs/tiny_wan_t2v.yaml"


@pytest.fixture(scope="module")
def model(one_thread):
    return load_model(CONFIG, None, random_init=True, seed=3)


@pytest.mark.parametrize("steps, shift", [(8, 3.0), (20, 5.0), (3, 1.0)])
def test_flow_schedule_is_the_schedulers(steps: int, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    schedule = FlowSchedule.create(steps, shift)
    # Index 0 is the least noisy level; the scheduler lists the noisiest first, then 0.
    assert torch.equal(schedule.sigmas.flip(0), scheduler.sigmas[:-1])
    assert torch.equal(schedule.sigmas_prev.flip(0), scheduler.sigmas[1:])
    assert torch.equal(schedule.timesteps.flip(0), scheduler.timesteps)
    assert schedule.sigma_values[-1] == 1.0 and np.all(np.diff(schedule.sigma_values) > 0)


def test_facts_of_the_wan_configs() -> None:
    tiny = config_facts(load_config(CONFIG))
    assert tiny.family.flow_matching and tiny.size_multiple == 16 and tiny.default_size == (64, 64)
    full = config_facts(load_config("configs/wan2.1_t2v_14b.yaml"))
    assert full.default_size == (480, 832) and full.temporal_length == 20
    assert full.family.video_frames_per_latent == 4


def test_base_clip_is_wan_pipelines(model) -> None:
    """Same noise, same prompt: our text encoding, guidance and flow loop give WanPipeline's latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    steps, frames = 6, 3  # 3 latent frames = 9 video frames
    x_T = torch.randn(1, model.channels, frames, 8, 8, generator=torch.Generator().manual_seed(5))
    pipe = WanPipeline(
        tokenizer=model.tokenizer,
        text_encoder=model.text_encoder,
        vae=model.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=model.flow_shift),
        transformer=model.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red  fox &amp; a tree"
    expected = pipe(
        prompt,
        height=64,
        width=64,
        num_frames=4 * (frames - 1) + 1,
        num_inference_steps=steps,
        guidance_scale=5.0,
        latents=x_T.clone(),
        output_type="latent",
        max_sequence_length=model.max_sequence_length,
    ).frames
    denoise = CFGDenoiser(model.velocity, 5.0)
    cond, uncond = model.encode_text([prompt]), model.encode_text([""])
    ours = sample_flow(
        denoise, x_T, FlowSchedule.create(steps, model.flow_shift), cond, uncond, progress=False
    )
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected.float(), rtol=0, atol=1e-5)
    assert not torch.equal(ours, x_T)


def test_per_frame_timesteps(model) -> None:
    """Equal per-frame timesteps are the scalar call; different ones change only what they must."""
    x = torch.randn(2, model.channels, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx = model.encode_text(["a", "b"])
    scalar = model.velocity(x, torch.tensor([500.0, 500.0]), ctx)
    per_frame = model.velocity(x, torch.full((2, 3), 500.0), ctx)
    torch.testing.assert_close(per_frame, scalar, rtol=0, atol=1e-5)
    other = model.velocity(x, torch.tensor([[500.0, 900.0, 100.0]] * 2), ctx)
    assert (other - scalar).abs().amax() > 1e-3
    both = model.velocity(x, torch.full((2, 3), 500.0), torch.cat([ctx, ctx.flip(0)]), context_branches=2)
    torch.testing.assert_close(both[:2], per_frame, rtol=0, atol=1e-5)


def test_stream_decoder_is_the_whole_decode(model) -> None:
    """Latent frames one at a time (1, then 4 video frames each), through a saved and restored
    cache, give the autoencoder's decode of the whole clip."""
    z = torch.randn(1, model.channels, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    whole = model.vae.decode(model.to_autoencoder(z)).sample
    decoder = StreamDecoder(model.vae, model.to_autoencoder)
    cache = decoder.start()
    pieces = []
    for i in range(4):
        out = decoder.decode(z[:, :, i : i + 1], cache)
        assert out.shape[2] == (1 if i == 0 else 4)
        pieces.append(out)
        if i == 1:  # as a resumed run: the cache through its saved form
            cache = DecoderCache.from_state_dict(cache.state_dict())
    stream = torch.cat(pieces, dim=2)
    assert stream.shape == (1, 3, 13, 64, 64)
    torch.testing.assert_close(stream, whole, rtol=0, atol=1e-5)


def test_offloaded_text_encoder_gives_the_same_tokens(model) -> None:
    """A text encoder kept in host memory (as on CUDA) encodes as the resident one; the device's
    weights then leave it out."""
    resident = model.encode_text(["a cat on a mat"])
    before = model.resident_weight_bytes()
    model.offload_text_encoder()
    try:
        assert torch.equal(model.encode_text(["a cat on a mat"]), resident)
        encoder = sum(p.numel() * p.element_size() for p in model.text_encoder.parameters())
        assert model.resident_weight_bytes() <= before - encoder
    finally:
        model.text_encoder_offloaded = False
