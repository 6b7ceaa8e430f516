"""``--dry_run`` for Wan2.1: the run's stages once on fake tensors on the target device.

As :func:`fifo.dry_run.plan_run` does for the U-Nets: the model is built on fake tensors (no
weights in memory), and the generator's own code runs once on them — the text encoding, a base
clip step with guidance, one FIFO iteration (every window's flow step, batched as the run
batches them), the decode of a dequeued latent frame through the causal decoder's cache. The
memory at the peak and the FLOPs of one iteration and its decode are measured; an iteration
gives one latent frame, that is 4 video frames, so the FLOPs per output frame are a quarter.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from fifo.flow import sample_flow
from fifo.guidance import CFGDenoiser
from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, ModeOptions
from fifo.perf import WindowMemory, planned_window_batch
from fifo.plan import RunPlan, UnseededStream, fake_mode_of
from fifo.prompts import PromptJob
from fifo.wan import latent_conditioning
from fifo.wan_generator import WanGenerator
from infra.memory import LiveTensorBytes


class DeviceTensorBytes(LiveTensorBytes):
    """:class:`~infra.memory.LiveTensorBytes` of the tensors on ``device`` only: the offloaded text
    encoder's host copy (``WanModel.offload_text_encoder``) is not device memory."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device_type = device.type

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == self.device_type:
            super()._track(tensor)


@dataclass
class WanRunPlan(RunPlan):
    """A Wan plan: the calls are the transformer's, counted per latent frame (4 video frames);
    ``tflop_per_frame`` is per output (video) frame."""

    video_frames_per_latent: int = 4
    window_frames: int = 0  # latent frames per window

    def lines(self) -> list[str]:
        lines = super().lines()
        lines[1] = (
            f"{self.windows} FIFO windows of {self.window_frames} latent frames, {self.window_batch} per "
            f"transformer call: {self.unet_calls_per_frame} transformer calls per latent frame "
            f"({self.video_frames_per_latent} video frames) and {self.tflop_per_frame:.2f} TFLOP per output frame"
        )
        return lines


@contextlib.contextmanager
def efficient_attention(device: torch.device) -> Iterator[None]:
    """On CUDA, the transformer's attention planned with PyTorch's memory-efficient kernel, called
    directly (what SDPA picks on a GPU; on fake tensors without one it would take the math kernel
    and count the whole attention matrix), as the U-Nets' plan does. Elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    sdpa = F.scaled_dot_product_attention

    def attend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if attn_mask is not None or dropout_p or kw.get("enable_gqa"):
            return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, False, 0.0, is_causal, scale=scale
        )[0]

    F.scaled_dot_product_attention = attend
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def wan_window_memory(
    model: nn.Module, frames: int, latent_hw: tuple[int, int], guided: bool, most: int
) -> WindowMemory:
    """Activation memory of a batched transformer call of one window and of ``most`` windows
    (both guidance branches), measured on fake tensors: the line through the two."""
    counts = (1, max(2, most))
    peaks = []
    with fake_mode_of(model), torch.no_grad():
        context = model.encode_text([""])
        denoise = CFGDenoiser(model.velocity, 5.0 if guided else 1.0)
        for windows in counts:
            x = torch.zeros(windows, model.channels, frames, *latent_hw, device=model.device)
            t = torch.zeros(windows, frames, device=model.device)
            cond = context.expand(windows, -1, -1)
            tracker = DeviceTensorBytes(str(model.device))
            with tracker:
                denoise(x, t, cond, cond if guided else None)
            peaks.append(tracker.peak)
    per_window = max(1, (peaks[1] - peaks[0]) // (counts[1] - 1))
    return WindowMemory(fixed_bytes=max(0, peaks[0] - per_window), per_window_bytes=per_window)


def plan_wan_run(
    model: nn.Module,
    mode: ModeOptions,
    settings: GenerationSettings,
    job: PromptJob,
    device: torch.device,
    budget_bytes: int | None,
    seconds_to_model: float,
) -> WanRunPlan:
    """Run every stage once on fake tensors and measure what the run needs (the arguments of
    :func:`fifo.dry_run.plan_run`, the model a :class:`~lvdm.wan.model.WanModel` on fake tensors)."""
    with efficient_attention(device):
        return _plan(model, mode, settings, job, device, budget_bytes, seconds_to_model)


def _plan(
    model: nn.Module,
    mode: ModeOptions,
    settings: GenerationSettings,
    job: PromptJob,
    device: torch.device,
    budget_bytes: int | None,
    seconds_to_model: float,
) -> WanRunPlan:
    geometry = settings.geometry
    n_windows = len(geometry.windows())
    latent_hw = (settings.height // model.vae_scale, settings.width // model.vae_scale)
    guided = settings.guidance != 1.0
    weights = model.resident_weight_bytes()
    fake = fake_mode_of(model)
    window_batch = 1 if not settings.batched else (settings.window_batch or n_windows)
    per_window = wan_window_memory(model, geometry.video_length, latent_hw, guided, n_windows)
    if settings.batched and settings.window_batch is None and budget_bytes is not None:
        window_batch = planned_window_batch(n_windows, per_window, budget_bytes, weights, device)
    start = time.perf_counter()
    with fake, torch.no_grad():
        generator = WanGenerator(model, mode, replace(settings, window_batch=window_batch), "dry-run")
    seconds_to_first_step = seconds_to_model + time.perf_counter() - start
    sampler = generator.sampler
    with fake, torch.no_grad():
        noise = NoiseSource(UnseededStream(device))
        tracker = DeviceTensorBytes(device)
        flops = FlopCounterMode(display=False)
        with tracker:
            texts = model.encode_text(list(job.prompts))
            length = job.story_length if job.is_story else settings.new_video_length
            conditioning = latent_conditioning(texts, tuple(sc.frames for sc in job.scenes), length)
            x_T = noise.latents((1, model.channels, geometry.video_length, *latent_hw))
            base = sample_flow(
                generator.base_denoiser,
                x_T,
                generator.schedule,
                texts[:1],
                generator.uncond_context,
                False,
                1,
            )
            cache = sampler.decoder.start()
            first = sampler.decoder.decode(base[:, :, :1], cache)  # the stream's first frame: 1 video frame
            state = sampler.initial_state(base, noise)
            with flops:  # one iteration and the decode of its latent frame (4 video frames)
                contexts = conditioning.window_contexts(geometry, 0, None)
                queue = sampler.windows_step(
                    sampler.denoise, state.queue, geometry, sampler.schedule, contexts, sampler.uncond,
                    None, sampler.window_batch,
                )  # fmt: skip
                latent = queue[:, :, geometry.output_slot : geometry.output_slot + 1]
                frames = sampler.decoder.decode(latent, cache)
    per_latent = model.family.video_frames_per_latent
    calls = math.ceil(n_windows / window_batch) if settings.batched else n_windows * (2 if guided else 1)
    return WanRunPlan(
        device=device,
        dtype=settings.dtype.value,
        attention="diffusers (planned as efficient)" if device.type == "cuda" else "diffusers",
        window_batch=window_batch,
        windows=n_windows,
        unet_calls_per_frame=calls,
        tflop_per_frame=flops.get_total_flops() / per_latent / 1e12,
        peak_memory_bytes=weights + tracker.peak,
        weights_bytes=weights,
        per_window_bytes=per_window.per_window_bytes,
        seconds_to_first_step=seconds_to_first_step,
        stage_shapes={
            "text": list(texts.shape),
            "base_step": list(base.shape),
            "decode_first": list(first.shape),
            "fifo_queue": list(queue.shape),
            "decode": list(frames.shape),
        },
        budget_bytes=budget_bytes,
        video_frames_per_latent=per_latent,
        window_frames=geometry.video_length,
    )
