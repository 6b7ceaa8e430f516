"""``--dry_run`` for Wan2.1: :class:`~fifo.wan_generator.WanGenerator`'s run to the device boundary.

As :func:`fifo.dry_run.plan_run` does for the U-Nets, with the same overrides
(:class:`fifo.dry_run.PlannedRun` over the family's generator class): the model is built on
fake tensors (no weights in memory) and the generator's own ``run`` goes through its stages on
them — the text encoding, one guided base-clip step and its decode, the FIFO loop with the
mode's step hooks and queue (MIGA's anchors, reflection, zigzag) until its second output: the
stream's first latent frame (one video frame) and the next (four, through the causal decoder's
cache). The frames stop on the device. The memory at the peak counts the tensors on the device
(not the offloaded text encoder's host copy); the FLOPs per output frame are those of the
second iteration and its decode over its 4 video frames.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fifo.dry_run import StageProbe, planned_class, run_to_the_device_boundary
from fifo.guidance import CFGDenoiser
from fifo.miga_cost import miga_costs
from fifo.options import GenerationSettings, ModeOptions
from fifo.perf import WindowMemory, planned_window_batch
from fifo.plan import RunPlan, fake_mode_of
from fifo.prompts import PromptJob
from fifo.wan_generator import generator_class
from infra.memory import LiveTensorBytes


class DeviceTensorBytes(LiveTensorBytes):
    """:class:`~infra.memory.LiveTensorBytes` of the tensors on ``device`` only: the offloaded text
    encoder's host copy (``WanModel.offload_text_encoder``) is not device memory."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device_type = torch.device(device).type

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == self.device_type:
            super()._track(tensor)


@dataclass
class WanRunPlan(RunPlan):
    """A Wan plan: the calls are the transformer's, counted per latent frame (4 video frames);
    ``tflop_per_frame`` is per output (video) frame."""

    video_frames_per_latent: int = 4
    window_frames: int = 0  # latent frames per window
    network: ClassVar[str] = "transformer"

    def lines(self) -> list[str]:
        lines = super().lines()
        lines[1] = (
            f"{self.windows} FIFO windows of {self.window_frames} latent frames, {self.window_batch} per "
            f"transformer call: {self.unet_calls_per_frame} transformer calls per latent frame "
            f"({self.video_frames_per_latent} video frames) and {self.tflop_per_frame:.2f} TFLOP per output frame"
        )
        if self.miga:
            lines.append(
                f"(MIGA's frames are latent frames, and its output frame an iteration's latent frame: "
                f"{self.video_frames_per_latent} video frames)"
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
        # The text tokens' shape and dtype (what the memory depends on), without running UMT5.
        width = model.text_encoder.config.d_model
        context = torch.zeros(1, model.max_sequence_length, width, dtype=model.dtype, device=model.device)
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
    """Run ``job`` through :class:`~fifo.wan_generator.WanGenerator`'s own run to the device
    boundary and measure what the run needs (the arguments of :func:`fifo.dry_run.plan_run`,
    the model a :class:`~lvdm.wan.model.WanModel` on fake tensors; see the module doc)."""
    geometry = mode.queue_geometry(settings.geometry)  # zigzag's queue, or FIFO's
    n_windows = len(geometry.windows())
    latent_hw = (settings.height // model.vae_scale, settings.width // model.vae_scale)
    guided = settings.guidance != 1.0
    weights = model.resident_weight_bytes()
    fake = fake_mode_of(model)
    settings = replace(settings, progress=False)
    window_batch = 1 if not settings.batched else (settings.window_batch or n_windows)
    with efficient_attention(device):
        per_window = wan_window_memory(model, geometry.video_length, latent_hw, guided, n_windows)
        if settings.batched and settings.window_batch is None and budget_bytes is not None:
            window_batch = planned_window_batch(n_windows, per_window, budget_bytes, weights, device)
        # The stream's first latent frame decodes to one video frame, each later one to four: the
        # plan runs to the second and counts the FLOPs of that one.
        probe = StageProbe(2, counted_from=1)
        start = time.perf_counter()
        with fake, torch.no_grad():
            generator = planned_class(generator_class(model))(
                model, mode, replace(settings, window_batch=window_batch), "dry-run", probe=probe
            )
        seconds_to_first_step = seconds_to_model + time.perf_counter() - start
        tracker = DeviceTensorBytes(device)
        run_to_the_device_boundary(generator, job, fake, tracker)
    calls = math.ceil(n_windows / window_batch) if settings.batched else n_windows * (2 if guided else 1)
    shapes = dict(probe.shapes)
    if probe.frames:
        shapes["decode_first"] = probe.frames[0][2]
    return WanRunPlan(
        device=device,
        dtype=settings.dtype.value,
        attention="diffusers (planned as efficient)" if device.type == "cuda" else "diffusers",
        window_batch=window_batch,
        windows=n_windows,
        unet_calls_per_frame=calls,
        tflop_per_frame=probe.frame_flops() / 1e12,
        peak_memory_bytes=weights + tracker.peak,
        weights_bytes=weights,
        per_window_bytes=per_window.per_window_bytes,
        seconds_to_first_step=seconds_to_first_step,
        stage_shapes=shapes,
        budget_bytes=budget_bytes,
        miga=miga_costs(mode, geometry, model.channels * latent_hw[0] * latent_hw[1] * 4),
        video_frames_per_latent=model.family.video_frames_per_latent,
        window_frames=geometry.video_length,
    )
