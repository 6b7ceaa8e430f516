"""A run executed to the device boundary on fake tensors: what ``--dry_run`` measures.

:func:`plan_run` calls the real :meth:`FifoGenerator.run <fifo.generator.FifoGenerator.run>` of a
:class:`PlannedGenerator`: the generator whose world (files, caches, seeded random streams) ends
where a tensor would leave the device. The stages are the run's own: the conditioning, the base
clip (one DDIM step of it, or the seed model's, encoded), the FIFO loop for a few iterations, the
decode; the frames stop at the device boundary (nothing is converted, written or cached), and the
run stops after ``iterations`` output frames. :class:`~infra.memory.LiveTensorBytes` counts the
memory of that execution at its peak and ``FlopCounterMode`` the FLOPs of its output frames.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from fifo.conditioning import VideoConditioning
from fifo.generator import FifoGenerator
from fifo.miga_cost import miga_costs
from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, ModeOptions
from fifo.outputs import OutputLayout
from fifo.perf import FastPathPlan, planned_window_batch
from fifo.plan import RunPlan, UnseededStream, fake_mode_of, weight_bytes, window_memory
from fifo.prompts import PromptJob
from fifo.resume import ResumeOptions, StateStore
from fifo.seed_clips import SeedClips
from fifo.seed_model import SEED_MODE, seed_settings
from fifo.state import FifoState, StepOutput
from infra.memory import LiveTensorBytes

DRY_RUN_ITERATIONS = 1  # output frames a dry run makes (the first after the queue's warm-up)


class PlanComplete(Exception):
    """Raised at the device boundary when a planned run has made its frames: the run stops there."""


class StageProbe:
    """What a planned run saw at its stages and at the device boundary: shapes, not tensors (a
    kept tensor would count as live memory), and the FLOPs of the FIFO loop, counted from where
    it starts, or after the first ``counted_from`` frames (:meth:`start_counting`; counting costs
    time per op, so the base clip and those frames are not counted), to each frame.

    Attributes:
        shapes: each stage's output shape: ``text``, ``image_tokens`` (image and seeded modes),
            ``base_step`` (the base clip's latents), ``decode`` (an output frame, (1, 3, 1, H, W)),
            ``fifo_queue`` (the queue after the last planned iteration), ``fifo_latent``.
        frames: the output frames that reached the device boundary: (iteration, device, shape).
    """

    def __init__(self, iterations: int, counted_from: int = 0) -> None:
        self.iterations = iterations
        self.counted_from = counted_from  # frames not in the FLOPs per frame (the first ones)
        self.flops: FlopCounterMode | None = None
        self.shapes: dict[str, list[int]] = {}
        self.frames: list[tuple[int, torch.device, list[int]]] = []
        self.flops_at: list[int] = []

    def start_counting(self) -> None:
        """Count FLOPs from here (inside the run's other modes) until :meth:`stop_counting`."""
        self.flops = FlopCounterMode(display=False)
        self.flops.__enter__()
        self.mark()

    def stop_counting(self) -> None:
        if self.flops is not None:
            self.flops.__exit__(None, None, None)

    def record(self, stage: str, tensor: Tensor | None) -> None:
        if tensor is not None:
            self.shapes[stage] = list(tensor.shape)

    def mark(self) -> None:
        """Note the FLOPs counted so far (where counting starts, after each frame): from
        ``counted_from`` frames on, counting starts or goes on."""
        if self.flops is not None:
            self.flops_at.append(self.flops.get_total_flops())
        elif len(self.frames) == self.counted_from:
            self.start_counting()

    def frame_flops(self) -> float:
        """FLOPs per output (video) frame: the counted iterations' (windows, hooks, decode, shift)
        over the video frames they decoded (one per iteration on the U-Nets; on Wan four, but one
        for the stream's first latent frame, which is why Wan's plan does not count it)."""
        frames = sum(shape[2] for _, _, shape in self.frames[self.counted_from :])
        if len(self.flops_at) < 2 or frames == 0:
            return 0.0
        return (self.flops_at[-1] - self.flops_at[0]) / frames


class PlannedRun:
    """What makes a generator's run end at the device boundary, laid over a family's generator
    class (:class:`PlannedGenerator` over :class:`~fifo.generator.FifoGenerator`,
    :func:`planned_class` over any): its stages and its loop are the generator's own; what
    faces the world is replaced. Random draws come
    from an unseeded stream (fake tensors have no random state), the base clip is one step (DDIM's
    or the flow's) and is neither cached nor written, no stale file is looked for, no state saved, and each
    output frame stops on the device (its shape recorded) instead of going to the sinks. The
    queue's warm-up (iterations that decode no frame) is skipped: the planned iterations are the
    first that make a frame. The run raises :class:`PlanComplete` after ``probe.iterations`` frames.
    """

    probe: StageProbe

    def __init__(self, *args: Any, probe: StageProbe, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = probe
        self._step = self.sampler.step
        self.sampler.step = self._step_to_the_device_boundary  # the loop calls the sampler's step

    def noise_sources(self) -> tuple[NoiseSource, NoiseSource]:
        return NoiseSource(UnseededStream(self.device)), NoiseSource(UnseededStream(self.device))

    def state_store(
        self, job: PromptJob, paths: Any, resume_options: ResumeOptions | None
    ) -> StateStore | None:
        return None

    def conditioning(self, job: PromptJob, image: bool = True) -> tuple[VideoConditioning, Tensor | None]:
        conditioning, image_tokens = super().conditioning(job, image)
        self.probe.record("text", conditioning.texts)
        return conditioning, image_tokens

    def base_clip(
        self, job: PromptJob, cond: Tensor, cache_dir: Path, noise: NoiseSource
    ) -> tuple[Tensor, bool]:
        _, latents = self.sample_base_clip(cond, noise, steps=1)
        return latents, False

    def keep_base_clip(self, latents: Tensor, video: Tensor, folder: Path) -> None:
        self.probe.record("base_step", latents)

    def first_state(self, *args: Any, **kwargs: Any) -> tuple[FifoState, list, bool]:
        state, saved, cached = super().first_state(*args, **kwargs)
        self.probe.record("image_tokens", state.image_tokens)
        state.iteration = max(state.iteration, self.geometry.discarded_frames())
        self.probe.mark()  # counting starts here (or after the frames it does not count)
        return state, saved, cached

    def _step_to_the_device_boundary(self, state: FifoState, conditioning: VideoConditioning) -> StepOutput:
        output = self._step(state, conditioning)
        probe = self.probe
        if output.video is not None:
            probe.frames.append((output.iteration, output.video.device, list(output.video.shape)))
            probe.record("decode", output.video)
            probe.record("fifo_latent", output.latent)
            probe.record("fifo_queue", state.queue)
            probe.mark()
            if len(probe.frames) >= probe.iterations:
                raise PlanComplete(f"{len(probe.frames)} frame(s) at the device boundary")
        return StepOutput(output.iteration, output.latent)  # the frame stays on the device


class PlannedGenerator(PlannedRun, FifoGenerator):
    """The U-Nets' :class:`~fifo.generator.FifoGenerator` run to the device boundary (:class:`PlannedRun`)."""


_PLANNED: dict[type, type] = {FifoGenerator: PlannedGenerator}


def planned_class(generator: type[FifoGenerator]) -> type[PlannedRun]:
    """``generator`` (a family's class: :func:`fifo.wan_generator.generator_class`) run to the
    device boundary: :class:`PlannedRun` laid over it."""
    if generator not in _PLANNED:
        _PLANNED[generator] = type(f"Planned{generator.__name__}", (PlannedRun, generator), {})
    return _PLANNED[generator]


def run_to_the_device_boundary(
    generator: PlannedRun, job: PromptJob, fake: FakeTensorMode, tracker: LiveTensorBytes
) -> None:
    """Call the planned generator's :meth:`~fifo.generator.FifoGenerator.run` in ``fake`` (the
    mode it was built in) until its probe has its frames, ``tracker`` counting the memory; closes it."""
    try:
        with fake, torch.no_grad(), tracker:
            try:
                generator.run(job, OutputLayout(Path("dry-run"), "dry-run"), sinks=[])
            except PlanComplete:
                pass
            finally:
                generator.probe.stop_counting()  # before the modes around it end
    finally:
        generator.close()


def plan_run(
    model: nn.Module,
    mode: ModeOptions,
    settings: GenerationSettings,
    job: PromptJob,
    device: torch.device,
    budget_bytes: int | None,
    seconds_to_model: float,
    seed_model: nn.Module | None = None,
    plan: FastPathPlan | None = None,
    iterations: int | None = None,
) -> RunPlan:
    """Run ``job`` on fake tensors to the device boundary and measure what the run needs.

    Args:
        model: the model, built on fake tensors on ``device`` in the run's dtype.
        settings: the run's settings; a ``window_batch`` of None means as many windows per call as
            ``budget_bytes`` allows (all of them without a budget).
        budget_bytes: the device memory the run may use, or None.
        seconds_to_model: time spent so far (model built, checkpoint checked); the generator's set-up
            (unconditional context, processors) is added for the time to the first step.
        seed_model: the seeded modes' text model (``--seed_config``), on fake tensors, or None.
        plan: the generators' speed plan (None: the run's default).
        iterations: output frames to make before stopping (None: :data:`DRY_RUN_ITERATIONS`).
    """
    geometry = mode.queue_geometry(settings.geometry)
    n_windows = len(geometry.windows())
    latent_hw = (settings.height // model.vae_scale, settings.width // model.vae_scale)
    guided = settings.guidance != 1.0
    weights = weight_bytes(model) + (weight_bytes(seed_model) if seed_model is not None else 0)
    fake = fake_mode_of(model)
    settings = replace(settings, progress=False)
    window_batch = 1 if not settings.batched else (settings.window_batch or n_windows)
    probe = StageProbe(DRY_RUN_ITERATIONS if iterations is None else iterations)

    def build(window_batch: int) -> PlannedGenerator:
        """The generators set up as the run's (processors, execution plan, tricks)."""
        seed_clips = None
        with fake, torch.no_grad():
            if seed_model is not None:
                seed = PlannedGenerator(
                    seed_model,
                    SEED_MODE,
                    seed_settings(settings),
                    "dry-run-seed",
                    plan=plan,
                    probe=StageProbe(0),
                )
                seed_clips = SeedClips(seed)
            return PlannedGenerator(
                model, mode, replace(settings, window_batch=window_batch), "dry-run", plan=plan,
                seed_clips=seed_clips, probe=probe,
            )  # fmt: skip

    start = time.perf_counter()
    generator = build(window_batch)
    seconds_to_first_step = seconds_to_model + time.perf_counter() - start
    per_window = window_memory(model, geometry.video_length, latent_hw, guided, n_windows)
    if settings.batched and settings.window_batch is None and budget_bytes is not None:
        fitting = planned_window_batch(n_windows, per_window, budget_bytes, weights, device)
        if fitting != window_batch:
            generator.close()
            window_batch = fitting
            generator = build(window_batch)
    tracker = LiveTensorBytes()
    run_to_the_device_boundary(generator, job, fake, tracker)
    calls = math.ceil(n_windows / window_batch) if settings.batched else n_windows * (2 if guided else 1)
    return RunPlan(
        device=device,
        dtype=settings.dtype.value,
        attention=str(model.unet.attention_backend),
        window_batch=window_batch,
        windows=n_windows,
        unet_calls_per_frame=calls,
        tflop_per_frame=probe.frame_flops() / 1e12,
        peak_memory_bytes=weights + tracker.peak,
        weights_bytes=weights,
        per_window_bytes=per_window.per_window_bytes,
        seconds_to_first_step=seconds_to_first_step,
        stage_shapes=probe.shapes,
        budget_bytes=budget_bytes,
        miga=miga_costs(mode, geometry, model.channels * latent_hw[0] * latent_hw[1] * 4),
    )
