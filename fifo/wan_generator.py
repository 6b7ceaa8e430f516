"""One prompt → one long video on Wan2.1: text, base clip, the FIFO loop over the flow, frames out.

:class:`WanGenerator` is the Wan family's counterpart of :class:`fifo.generator.FifoGenerator`,
with the same ``run(job, layout, resume_options)`` and ``close()``: the
command line picks it for a flow-matching model (:func:`generator_class`). Its stages: the UMT5
text tokens of the prompt or of each scene; the base clip sampled as WanPipeline samples it
(:func:`fifo.flow.sample_flow`, cached on disk under :func:`fifo.resume.base_clip_key`); the
loop of :class:`fifo.wan.WanSampler`; the sinks, the saved state and ``--resume`` as for the
U-Nets (the decoder's cache is part of the state).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from fifo.clip_cache import ClipCache
from fifo.family_rules import check_model_fits
from fifo.flow import FlowSchedule, sample_flow
from fifo.generator import FifoGenerator, GenerationResult
from fifo.guidance import CFGDenoiser
from fifo.noise import NoiseSource, derived_seed
from fifo.options import GenerationSettings, ModeOptions
from fifo.outputs import OutputLayout
from fifo.parallel import DistributedWindows, RankGroup, share_state
from fifo.prompts import PromptJob
from fifo.resume import (
    ResumeOptions,
    RunInterrupted,
    StateSaver,
    StateStore,
    base_clip_key,
    partial_video_path,
    resume_fingerprint,
    state_folder,
)
from fifo.sinks import FrameSink, PngSink, VideoSink
from fifo.state import FifoState, check_finite, to_uint8_frames
from fifo.step import fifo_step
from fifo.wan import WanSampler, latent_conditioning
from infra.progress import progress as progress_bar
from infra.video_io import VideoWriter, stale_temporary_files
from lvdm.build import model_facts

logger = logging.getLogger(__name__)


def generator_class(model: torch.nn.Module) -> type:
    """The generator of a loaded model's family: :class:`WanGenerator` for flow matching."""
    return WanGenerator if model.family.flow_matching else FifoGenerator


class FrameCountSaver(StateSaver):
    """Saves every ``every_frames`` output frames even when an iteration emits several."""

    def after_step(self, state: FifoState) -> None:
        if self.every_frames is None:
            super().after_step(state)
            return
        last = max(self._last_frames, 0)
        if state.frames_emitted // self.every_frames > last // self.every_frames:
            self.save(state)


class WanGenerator:
    """Generates long videos for prompt jobs with one loaded Wan2.1 model.

    Args:
        model: the :class:`~lvdm.wan.model.WanModel`.
        mode: the parsed ``--mode`` (checked: what Wan runs, :func:`fifo.family_rules.check_family_mode`).
        settings: sampling/output settings; lengths in video frames, ``video_length`` in latent frames.
        model_id: fingerprint of the weights, for the cache and the saved state.
        group: the ranks that share each video's windows (``--parallel windows``), or None.
        **_: the U-Net generator's other options (speed plan, window memory, seed models),
            which do not apply.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mode: ModeOptions,
        settings: GenerationSettings,
        model_id: str,
        group: RankGroup | None = None,
        **_: object,
    ) -> None:
        check_model_fits(model_facts(model), mode, settings, "this model")
        self.model, self.mode, self.settings, self.model_id = model, mode, settings, model_id
        self.group, self.geometry, self.device = group, settings.geometry, model.device
        model.set_precision(settings.dtype.torch_dtype)
        scale = model.vae_scale
        self.latent_hw = (settings.height // scale, settings.width // scale)
        self.schedule = FlowSchedule.create(self.geometry.steps, model.flow_shift).to(self.device)
        self.base_denoiser = CFGDenoiser(model.velocity, settings.guidance)
        denoiser = CFGDenoiser(model.velocity, settings.guidance, batch_branches=settings.batched)
        self.uncond = model.encode_text([""])  # WanPipeline's default negative prompt
        window_batch = settings.window_batch if settings.batched else 1
        self.sampler = WanSampler(
            model,
            mode,
            denoiser,
            self.schedule,
            self.geometry,
            self.uncond,
            window_batch,
            windows_step=fifo_step if group is None else DistributedWindows(group),
            group=group,
        )

    def close(self) -> None:
        """Nothing to release (the U-Net generator's worker threads have no counterpart)."""

    def noise_sources(self) -> tuple[NoiseSource, NoiseSource]:
        """The base clip's and the queue's noise sources, seeded from ``--seed``."""
        s = self.settings
        return NoiseSource.seeded(s.seed, self.device), NoiseSource.seeded(
            derived_seed(s.seed, "fifo"), self.device
        )

    def base_clip(
        self, job: PromptJob, cond: Tensor, cache_dir: Path, noise: NoiseSource
    ) -> tuple[Tensor, bool]:
        """The base clip's clean latents (1, c, f, h, w), sampled or reused, and whether reused."""
        key = base_clip_key(job, self.mode, self.settings, self.model_id, self.device) | {"flow": "euler"}
        cache = ClipCache(cache_dir)
        cached = cache.load(key)
        if cached is not None:
            return cached["latents"].to(self.device), True
        shape = (1, self.model.channels, self.settings.video_length, *self.latent_hw)
        x_T = noise.latents(shape)
        latents = sample_flow(
            self.base_denoiser, x_T, self.schedule, cond, self.uncond, progress=self.settings.progress
        )
        check_finite(latents, "the base clip's latents")
        cache.save(key, {"latents": latents.cpu()})
        return latents, False

    def _start_state(
        self, job: PromptJob, texts: Tensor, cache_dir: Path, exp_dir: Path
    ) -> tuple[FifoState, bool]:
        """The base clip (sampled or cached), origin.gif, and the state before the first iteration."""
        base_noise, fifo_noise = self.noise_sources()
        base, cached = self.base_clip(job, texts[:1], cache_dir, base_noise)
        decoder = self.sampler.decoder
        cache = decoder.start()
        video = torch.cat([decoder.decode(base[:, :, i : i + 1], cache) for i in range(base.shape[2])], dim=2)
        check_finite(video, "the decoded base clip")
        with VideoWriter(exp_dir / "origin.gif", fps=self.settings.output_fps) as origin:
            for frame in to_uint8_frames(video):
                origin.write(frame)
        return self.sampler.initial_state(base, fifo_noise), cached

    def run(
        self,
        job: PromptJob,
        layout: OutputLayout,
        resume_options: ResumeOptions | None = None,
    ) -> GenerationResult:
        """Generate one video where ``layout`` puts it (see FifoGenerator.run)."""
        start = time.perf_counter()
        s = self.settings
        writer = self.group is None or self.group.is_writer
        paths = layout.paths(job)
        video_path, exp_dir = paths.video, paths.folder
        store = None
        if writer:
            for stale in stale_temporary_files(video_path):  # left by a killed run
                stale.unlink()
            if resume_options is not None:
                fingerprint = resume_fingerprint(job, self.mode, s, self.model_id, self.device, video_path)
                store = StateStore(state_folder(video_path), fingerprint)
        texts = self.model.encode_text(list(job.prompts))  # (scenes, m, d)
        length = job.story_length if job.is_story else s.new_video_length
        conditioning = latent_conditioning(texts, tuple(sc.frames for sc in job.scenes), length)
        state, cached, saved_frames = None, False, []
        if writer:
            resumed = None
            if store is not None and resume_options.resume:
                resumed = store.resume(
                    self.noise_sources()[1], self.device, exp_dir / "origin.gif", video_path
                )
            if resumed is not None:
                state, saved_frames = resumed
            else:
                state, cached = self._start_state(job, texts, layout.clip_cache, exp_dir)
        if self.group is not None:
            state = share_state(self.group, state, self.noise_sources()[1])

        sinks: list[FrameSink] = []
        if writer:
            video = VideoSink(video_path, s.output_fps)
            sinks.append(video)
            if s.save_frames:
                sinks.append(PngSink(exp_dir / "fifo"))
        saver = (
            None
            if store is None
            else FrameCountSaver(store, resume_options.save_every_frames, resume_options.save_every_seconds)
        )
        total = self.sampler.num_iterations(conditioning)
        logger.info(
            "Wan FIFO: %d latent frames per window, %d flow steps per frame, %d iterations for %d video frames",
            self.geometry.video_length, self.geometry.steps, total, length,
        )  # fmt: skip
        with contextlib.ExitStack() as stack:
            for sink in sinks:
                stack.enter_context(sink)
            for index, frame in enumerate(saved_frames):  # the frames before the interruption
                for sink in sinks:
                    sink.write(index, frame)
            progress = stack.enter_context(
                progress_bar(
                    total=total,
                    initial=state.iteration,
                    desc="FIFO",
                    unit="it",
                    disable=not (s.progress and writer),
                )
            )
            while state.iteration < total:
                output = self.sampler.step(state, conditioning, length)
                for offset, frame in enumerate(output.frames):
                    for sink in sinks:
                        sink.write(output.first_index + offset, frame)
                    if saver is not None:
                        saver.write_frame(output.first_index + offset, frame)
                progress.update(1)
                if saver is not None:
                    saver.after_step(state)
                stop = resume_options is not None and resume_options.stop_requested()
                if self.group is not None:
                    stop = self.group.any(stop)  # every rank stops after the same iteration
                if stop and state.iteration < total:
                    partial = None
                    if saver is not None:
                        saver.save(state)
                        partial = video.finish_as(partial_video_path(video_path))
                    raise RunInterrupted(state.frames_emitted, partial)
        if store is not None:
            store.remove()
            partial_video_path(video_path).unlink(missing_ok=True)
        return GenerationResult(
            job.prompt, video_path, state.frames_emitted, time.perf_counter() - start, cached
        )
