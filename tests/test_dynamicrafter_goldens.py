"""Our DynamiCrafter path against the published DynamiCrafter code (tests/fixtures/tiny_dynamicrafter/).

The goldens were computed by ``tools/reference/make_dynamicrafter_goldens.py`` from the published
code on configs/tiny_dynamicrafter.yaml with deterministic fixture weights (recomputed here from
the key names by ``tools/reference/fixture_weights.py``; every key must exist in our model, so the
published module tree is checked too). Each case agrees within 1e-4 scaled:
|ours − ref| / max(1, max|ref|). The fixture's README.md describes every tensor.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from fifo.conditioning import VideoConditioning
from fifo.ddim import ddim_step
from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.noise import NoiseOrder, NoiseSource, RecordedStream
from fifo.options import parse_mode
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from lvdm.build import build_model
from tests.conftest import REPO
from tools.reference.fixture_weights import fixture_state_dict

FIXTURE = REPO / "tests" / "fixtures" / "tiny_dynamicrafter"
CONFIG = REPO / "configs" / "tiny_dynamicrafter.yaml"
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def scaled_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    return float((ours.double() - ref.double()).abs().max() / max(1.0, float(ref.abs().max())))


@functools.cache
def meta() -> dict:
    return json.loads((FIXTURE / "meta.json").read_text())


@functools.cache
def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / f"{name}.safetensors"))


@functools.cache
def model():
    """The tiny DynamiCrafter with the fixture weights; buffers as our code computes them."""
    built = build_model(CONFIG).eval()
    state = built.state_dict()
    buffers = {name for name, _ in built.named_buffers()}
    weights = fixture_state_dict(
        {k: v.shape for k, v in state.items()}, {k: v for k, v in state.items() if k in buffers}
    )
    built.load_state_dict(weights, strict=True)
    return built


def test_every_published_key_is_ours_and_the_weights_are_recomputed() -> None:
    ours = model().state_dict()
    probes = golden("weights_probe")
    assert set(probes) <= set(ours), sorted(set(probes) - set(ours))[:5]
    for name, probe in probes.items():
        assert torch.equal(ours[name].flatten()[: probe.numel()], probe), name
    assert sorted(k for k in ours if k not in probes) == sorted(meta()["weights"]["buffers_kept"])
    assert len(ours) == meta()["weights"]["num_keys"]


def test_schedule_buffers_and_ddim_arrays() -> None:
    m, g = model(), golden("schedule")
    assert scaled_error(m.alphas_cumprod, g["alphas_cumprod"]) == 0.0
    assert scaled_error(m.scale_arr, g["scale_arr"]) == 0.0
    schedule = DDIMSchedule.from_model(m, meta()["ddim_steps"], meta()["eta"])
    assert torch.equal(schedule.timesteps, g["ddim_timesteps"].long())
    assert schedule.alpha_values[-1] == 0.0  # the zero-terminal-SNR end
    for ours, ref in (
        (schedule.alphas, "ddim_alphas"),
        (schedule.alphas_prev, "ddim_alphas_prev"),
        (schedule.sigmas, "ddim_sigmas"),
        (schedule.scale_arr, "ddim_scale_arr"),
        (schedule.scale_arr_prev, "ddim_scale_arr_prev"),
    ):
        assert scaled_error(ours, g[ref]) <= 1e-6, ref


@torch.no_grad()
def test_text_image_tokens_and_autoencoder() -> None:
    m = model()
    text, image, ae = golden("text"), golden("image_embed"), golden("autoencoder")
    assert scaled_error(m.get_learned_conditioning(meta()["prompts"]), text["text_emb"]) <= TOLERANCE
    assert scaled_error(m.embedder(image["image"]), image["clip_tokens"]) <= TOLERANCE
    assert scaled_error(m.get_image_embeds(image["image"]), image["image_tokens"]) <= TOLERANCE
    zeros = torch.zeros(1, 3, 224, 224)  # what the generator embeds for the unconditional branch
    assert scaled_error(m.get_image_embeds(zeros), image["uncond_image_tokens"]) <= TOLERANCE
    posterior = m.first_stage_model.encode(ae["image"])
    assert scaled_error(posterior.mode(), ae["posterior_mean"]) <= TOLERANCE
    assert scaled_error(m.decode_first_stage_2DAE(ae["decode_z"]), ae["decode_video"]) <= TOLERANCE


@torch.no_grad()
@pytest.mark.parametrize(
    ("case", "timesteps", "context", "fs"),
    [
        ("v__t_fifo", "t_fifo", "context", 24),
        ("v__t_fifo__uncond", "t_fifo", "uncond_context", 24),
        ("v__t_fifo__fs10", "t_fifo", "context", 10),
        ("v__t_clip", "t_clip", "context", 24),
    ],
)
def test_unet_with_per_frame_timesteps_and_image_latent(case, timesteps, context, fs) -> None:
    g = golden("unet_cases")
    t = g[timesteps].long()
    t = t[None] if timesteps == "t_fifo" else t  # (1, t) one per frame, or (1,) one per clip
    concat = g["c_concat"][:, :, :1]  # the same image latent on every frame
    ours = model().apply_model(g["x"], t, g[context], fps=fs, concat=concat)
    assert scaled_error(ours, g[case]) <= TOLERANCE


def guided(rescale: float) -> CFGDenoiser:
    g = golden("unet_cases")
    denoiser = ModelDenoiser(model(), meta()["fs"])
    denoiser.image_latent = g["c_concat"][:, :, :1]
    return CFGDenoiser(denoiser, meta()["guidance"], rescale=rescale)


@torch.no_grad()
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_one_fifo_ddim_step_with_v_prediction(rescale: float) -> None:
    """Frame k at DDIM index fifo_t_indices[k] (the last is t = 999, ᾱ = 0): v → ε and x0 per
    frame, dynamic rescale per frame, guidance (and its rescale) over the window."""
    g, s = golden("unet_cases"), golden("sampler")
    schedule = DDIMSchedule.from_model(model(), meta()["ddim_steps"], meta()["eta"])
    index = torch.tensor(meta()["fifo_t_indices"])
    t = schedule.timesteps[index][None]
    v = guided(rescale)(s["x"], t, g["context"], g["uncond_context"])
    x_prev, x0 = ddim_step(s["x"], v, schedule, index, s["noise"])
    prefix = f"step__gr{rescale}__"
    assert scaled_error(v, s[prefix + "v"]) <= TOLERANCE
    assert scaled_error(x0, s[prefix + "x0_rescaled"]) <= TOLERANCE
    assert scaled_error(x_prev, s[prefix + "x_prev"]) <= TOLERANCE
    assert torch.isfinite(x_prev).all() and torch.isfinite(x0).all()


@torch.no_grad()
@pytest.mark.parametrize("run", [r["name"] for r in meta()["fifo_run"]["runs"]] if FIXTURE.is_dir() else [])
def test_whole_fifo_run_with_recorded_noise(run: str) -> None:
    """Our FIFO loop (all windows batched) replays the published-arithmetic loop draw for draw."""
    spec = meta()["fifo_run"]
    entry = next(r for r in spec["runs"] if r["name"] == run)
    g, data = golden("unet_cases"), golden("fifo_run")
    geometry = FifoGeometry(spec["video_length"], spec["num_partitions"], entry["lookahead"])
    schedule = DDIMSchedule.from_model(model(), spec["ddim_steps"], meta()["eta"])
    sampler = FifoSampler(
        model(),
        parse_mode("i2v"),
        guided(entry["guidance_rescale"]),
        schedule,
        geometry,
        g["uncond_context"],
        window_batch=None,
    )
    stream = RecordedStream(data[f"fifo_run__{run}__noise"], shapes=[tuple(d[3]) for d in entry["draws"]])
    expected = data[f"fifo_run__{run}__frames"]
    conditioning = VideoConditioning(g["context"], (), spec["new_video_length"])
    state = sampler.initial_state(data["base_latents"], NoiseSource(stream, NoiseOrder.PUBLISHED))
    frames = [out.latent for out in sampler.steps(state, conditioning)]
    stream.check_consumed()
    ours = torch.cat(frames, dim=2)
    assert torch.isfinite(ours).all()
    assert scaled_error(ours, expected) <= TOLERANCE
