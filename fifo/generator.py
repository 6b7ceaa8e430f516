"""One prompt → one long video: conditioning, base clip, the FIFO loop, frames to the sinks.

:class:`FifoGenerator` sets a loaded model up once for a mode and settings (the tricks'
attention processors, tail sampler and step hooks, the fast path, the guided denoiser) and then generates one video per
:class:`~fifo.prompts.PromptJob`. :meth:`FifoGenerator.run` is a short composition of stages
that can also run alone: :meth:`~FifoGenerator.conditioning`, :meth:`~FifoGenerator.base_clip`,
then the state/step loop of :class:`~fifo.sampler.FifoSampler` with the sinks around it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fifo.clip_cache import ClipCache
from fifo.conditioning import VideoConditioning, with_image_tokens
from fifo.ddim import sample_ddim
from fifo.family_rules import check_model_fits, frame_value
from fifo.guidance import CFGDenoiser, ModelDenoiser, image_latent
from fifo.noise import NoiseOrder, NoiseSource, derived_seed
from fifo.options import GenerationSettings, ModeOptions, Precision
from fifo.outputs import OutputLayout, VideoPaths
from fifo.parallel import DistributedWindows, PeerFailed, RankGroup, share_state
from fifo.perf import FastPathPlan, ShardedDenoiser, apply_execution, auto_window_batch, plan_fast_path
from fifo.plan import window_memory
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
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from fifo.seed_model import BaseClipSource
from fifo.sinks import FrameSink, FrameWriter, PngSink, VideoSink
from fifo.state import FifoState, check_finite, to_uint8_frames
from fifo.step import fifo_step
from fifo.tricks.install import install_tricks
from infra.image_io import load_image
from infra.progress import progress as progress_bar
from infra.video_io import VideoWriter, stale_temporary_files
from lvdm.build import model_facts
from lvdm.models.ddpm3d import LatentDiffusion
from lvdm.modules.attention_kernels import cpu_has_native_bf16

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationResult:
    prompt: str
    video_path: Path
    frames: int
    seconds: float
    base_clip_cached: bool


class FifoGenerator:
    """Generates long videos for prompt jobs with one loaded model.

    Args:
        model: the loaded model (its device is used; its U-Net gets the mode's processors and
            the fast path's execution).
        mode: the parsed ``--mode``.
        settings: sampling/output settings.
        model_id: fingerprint of the weights (``lvdm.build.model_identity``), for the cache.
        plan: how batched calls run (default: ``plan_fast_path`` of the device on the batched
            path, the published layers on the sequential one).
        group: the ranks that share each video's windows (``--parallel windows``), or None.
        memory_store: a folder that keeps the window-memory measurement behind the automatic
            window batch between processes (:func:`fifo.plan.window_memory`), or None.
        seed_clips: where the seeded modes' base clips come from when another (text-to-video)
            model samples them (:mod:`fifo.seed_clips`; DynamiCrafter), or None: this model's own.
        seed_model: names that text model where this process has no ``seed_clips`` (the ranks of
            ``--parallel windows`` other than the writer, which receive the state from it).
    """

    def __init__(
        self,
        model: LatentDiffusion,
        mode: ModeOptions,
        settings: GenerationSettings,
        model_id: str,
        plan: FastPathPlan | None = None,
        group: RankGroup | None = None,
        memory_store: Path | None = None,
        seed_clips: BaseClipSource | None = None,
        seed_model: str | None = None,
    ) -> None:
        if seed_model is None and seed_clips is not None:
            seed_model = seed_clips.model_id
        check_model_fits(model_facts(model), mode, settings, "this model", seed_model)
        self.model, self.mode, self.settings, self.model_id = model, mode, settings, model_id
        self.seed_clips = seed_clips
        self.group = group
        self.geometry = mode.queue_geometry(settings.geometry)  # zigzag's queue, or FIFO's
        self.device = model.device
        scale = model.vae_scale
        self.latent_hw = (settings.height // scale, settings.width // scale)
        # Weights in the run's dtype (a no-op when load_model put them there already).
        model.set_precision(settings.dtype.torch_dtype)
        # --rng published: one stream for the whole process, seeded once (as the published
        # seed_everything) when the first video starts, and continued over the prompts.
        self._published_noise: NoiseSource | None = None
        self.setup(plan, memory_store)

    def setup(self, plan: FastPathPlan | None, memory_store: Path | None) -> None:
        """The family's part of the set-up (here the U-Net's; :class:`fifo.wan_generator.WanGenerator`
        has its own): ``schedule``, ``window_batch``, ``base_denoiser`` (the base clip's guided
        denoiser), ``fifo_denoiser``, ``uncond_context``, ``tricks`` and ``sampler``, which the
        stages below use."""
        model, mode, settings = self.model, self.mode, self.settings
        # How the FIFO windows run: batched on the fast path (window chunks, on CPU parallel
        # slices and the plan's layer variants), or one window and one branch per call with
        # the layers as published (--sequential).
        if plan is None:
            plan = plan_fast_path(self.device) if settings.batched else FastPathPlan()
        chunk_whole_clips = mode.uses_subject or model.family.per_frame_image_tokens
        if chunk_whole_clips and plan.unet.transformer_chunk is not None:
            # SACFA and SRG read every frame of a clip in one attention call, and per-frame image
            # tokens are matched to the frames of whole clips: no chunks.
            plan = replace(plan, unet=replace(plan.unet, transformer_chunk=None))
        self.plan = plan
        apply_execution(model.unet, self.plan.unet)
        n_windows = len(self.geometry.windows())
        self.window_batch = settings.window_batch if settings.batched else 1
        if self.window_batch is None:
            guided = settings.guidance != 1.0
            memory = window_memory(
                model, self.geometry.video_length, self.latent_hw, guided, n_windows, store=memory_store
            )
            self.window_batch = auto_window_batch(n_windows, memory, self.device)
        # Logged when the first video starts: a generator that only samples base clips (the seeded
        # modes' text model, fifo/seed_clips.py) or plans a run never runs FIFO windows.
        bf16_hint = self.device.type == "cpu" and settings.dtype is Precision.FP32 and cpu_has_native_bf16()
        self._path_description: str | None = self.plan.describe_run(
            self.window_batch, n_windows, settings.batched, bf16_hint
        )
        self.model_denoiser = model_denoiser = ModelDenoiser(model, frame_value(model.family, settings))
        # The base clip always batches its two guidance branches; the FIFO windows do on the fast path.
        guidance, rescale = settings.guidance, settings.guidance_rescale
        self.base_denoiser = ShardedDenoiser(
            CFGDenoiser(model_denoiser, guidance, rescale=rescale), self.plan.shards
        )
        self.fifo_denoiser = ShardedDenoiser(
            CFGDenoiser(model_denoiser, guidance, batch_branches=settings.batched, rescale=rescale),
            self.plan.shards,
        )
        self.schedule = DDIMSchedule.from_model(model, self.geometry.steps, settings.eta)
        # The tricks' processors, tail sampler and step hooks (plain attention and a Gaussian
        # tail when none is on).
        self.tricks = install_tricks(model, mode, self.schedule, self.geometry, model_denoiser)
        # The unconditional context never changes: empty text (+ zero-image tokens, as published).
        self.uncond_context = model.get_learned_conditioning([""])
        if model.has_image_embedder:
            zeros = torch.zeros(1, 3, 224, 224, device=self.device)
            self.uncond_context = torch.cat([self.uncond_context, model.get_image_embeds(zeros)], dim=1)
        self.sampler = FifoSampler(
            model,
            mode,
            self.tricks.window_denoiser(self.fifo_denoiser),
            self.schedule,
            self.geometry,
            self.uncond_context,
            self.window_batch,
            windows_step=fifo_step if self.group is None else DistributedWindows(self.group),
            group=self.group,
            tail_sampler=self.tricks.tail_sampler,
            hooks=self.tricks.hooks,
            model_denoiser=model_denoiser,
        )

    def close(self) -> None:
        """Release the worker threads of the parallel slices (if any were started)."""
        self.base_denoiser.close()
        self.fifo_denoiser.close()
        if self.seed_clips is not None:
            self.seed_clips.close()

    # ------------------------------------------------------------------ stages
    def conditioning(self, job: PromptJob, image: bool = True) -> tuple[VideoConditioning, Tensor | None]:
        """The job's text conditioning, and its input image's tokens (``i2v``, unless not ``image``) or None."""
        s = self.settings
        texts = self.model.get_learned_conditioning(job.prompts)  # (scenes, 77, d)
        length = job.story_length if job.is_story else s.new_video_length
        conditioning = VideoConditioning(texts, tuple(sc.frames for sc in job.scenes), length)
        image_tokens = None
        if self.mode.main.takes_input_image:
            picture = load_image(job.image, s.height, s.width)
            # Every rank needs the hybrid families' image latent; the tokens only the writer.
            self.model_denoiser.image_latent = image_latent(self.model, picture)
            if image:
                image_tokens = self.sampler.image_tokens(picture)
        return conditioning, image_tokens

    def noise_sources(self) -> tuple[NoiseSource, NoiseSource]:
        """The base clip's and the FIFO queue's noise sources for the next video: two fresh streams
        seeded from ``--seed`` (a cached base clip gives the same video as a freshly sampled one);
        ``--rng published``: the process's one stream."""
        s = self.settings
        if s.rng is NoiseOrder.PUBLISHED:
            if self._published_noise is None:
                self._published_noise = NoiseSource.seeded(s.seed, self.device, NoiseOrder.PUBLISHED)
            return self._published_noise, self._published_noise
        return (
            NoiseSource.seeded(s.seed, self.device),
            NoiseSource.seeded(derived_seed(s.seed, "fifo"), self.device),
        )

    def cache_key(self, job: PromptJob, noise: NoiseSource | None = None) -> dict:
        """Everything that changes the base clip's noise and latent (:func:`base_clip_key`); with
        ``--rng published`` also the stream's state before it (a second prompt starts where the first left it)."""
        published = self.settings.rng is NoiseOrder.PUBLISHED
        rng = {"rng": noise.fingerprint()} if published and noise is not None else {}
        return rng | base_clip_key(job, self.mode, self.settings, self.model_id, self.device)

    def sample_base_clip(
        self, cond: Tensor, noise: NoiseSource, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample a base clip from fresh noise: (x_T, latents), both (1, c, f, h, w).

        ``steps`` stops after that many DDIM steps (a dry run plans one); None runs them all.
        """
        shape = (1, self.model.channels, self.settings.video_length, *self.latent_hw)
        x_T = noise.latents(shape)
        latents = sample_ddim(
            self.base_denoiser,
            x_T,
            self.schedule,
            cond,
            self.uncond_context,
            use_scale=self.model.use_scale,
            noise=noise,
            progress=self.settings.progress and steps is None,
            max_steps=steps,
        )
        return x_T, latents

    def base_clip(
        self, job: PromptJob, cond: Tensor, cache_dir: Path, noise: NoiseSource
    ) -> tuple[Tensor, bool]:
        """Sample (or reuse) the base clip: clean latents (1, c, f, h, w), and whether it was cached."""
        key, cache = self.cache_key(job, noise), ClipCache(cache_dir)
        cached = cache.load(key)
        if cached is not None:
            if "noise_after" in cached:  # the stream continues where sampling left it
                noise.load_state_dict(cached["noise_after"])
            return cached["latents"].to(self.device), True
        x_T, latents = self.sample_base_clip(cond, noise)
        check_finite(latents, "the base clip's latents")
        entry = {"x_T": x_T.cpu(), "latents": latents.cpu()}
        if self.settings.rng is NoiseOrder.PUBLISHED:
            entry["noise_after"] = noise.state_dict()
        cache.save(key, entry)
        return latents, False

    def _start_state(self, job: PromptJob, conditioning, image_tokens, cache_dir: Path, exp_dir: Path):
        """The base clip (sampled or cached), origin.gif, and the state before the first iteration."""
        base_noise, fifo_noise = self.noise_sources()
        if self.seed_clips is not None:
            # Sampled by the text model, encoded frame by frame by this model's autoencoder.
            base_video, cached = self.seed_clips.video(job, cache_dir, base_noise)
            base = self.model.encode_first_stage_2DAE(base_video.to(self.device))
        else:
            # The base clip is conditioned on the text (+ the input image for i2v).
            cond = with_image_tokens(conditioning.first_text, image_tokens)
            base, cached = self.base_clip(job, cond, cache_dir, base_noise)
            base_video = self.sampler.decode(base)
        check_finite(base_video, "the decoded base clip")
        self.keep_base_clip(base, base_video, exp_dir)
        seed_latent = None
        if self.mode.seeds_image:
            image_tokens = self.sampler.image_tokens(base_video[:, :, 0])
            check_finite(image_tokens, "the seeding image tokens")
            seed_latent = self.sampler.image_latent(base_video[:, :, 0])  # None but for hybrid families
        return self.sampler.initial_state(base, fifo_noise, image_tokens, seed_latent), cached

    def keep_base_clip(self, latents: Tensor, video: Tensor, folder: Path) -> None:
        """The base clip leaving the device: latents (1, c, f, h, w), frames (1, 3, f, H, W) → origin.gif."""
        with VideoWriter(folder / "origin.gif", fps=self.settings.output_fps) as origin:
            for frame in to_uint8_frames(video):
                origin.write(frame)

    def run(
        self,
        job: PromptJob,
        layout: OutputLayout,
        resume_options: ResumeOptions | None = None,
        sinks: Sequence[FrameSink] | None = None,
    ) -> GenerationResult:
        """Generate one video where ``layout`` puts it (``layout.paths(job)``); base latents cached
        in ``layout.clip_cache``.

        With ``resume_options`` the state is saved as the run goes (and restored with ``resume``), and
        the run stops cleanly when ``resume_options.stop_requested()`` (raising :class:`RunInterrupted`).
        With several ranks (``group``) every rank runs this; rank 0 alone samples the base clip,
        writes the files and the state, and shares what the others need. ``sinks`` replace the
        default ones (the video file, and the PNG frames with ``save_frames``).
        """
        frames = self.stream(job, layout, resume_options, sinks)
        while True:
            try:
                next(frames)
            except StopIteration as done:
                return done.value

    def stream(
        self,
        job: PromptJob,
        layout: OutputLayout,
        resume_options: ResumeOptions | None = None,
        sinks: Sequence[FrameSink] | None = None,
    ) -> Generator[np.ndarray, None, GenerationResult]:
        """:meth:`run` as it goes: yields every output frame (H, W, 3) uint8 after the sinks took it
        (on the writer; the other ranks yield nothing), and returns the :class:`GenerationResult`."""
        start = time.perf_counter()
        self._log_path_once()
        paths = layout.paths(job)
        store = self.state_store(job, paths, resume_options)
        try:
            conditioning, image_tokens = self.conditioning(job, image=self.is_writer)
        except Exception as err:
            if self.group is None:
                raise
            self.group.settle(err)  # the other ranks stop too; raises err
        state, saved_frames, cached = self.first_state(
            job,
            conditioning,
            image_tokens,
            store,
            resume_options,
            layout.clip_cache,
            paths,
        )
        sinks = self.default_sinks(paths) if sinks is None else list(sinks)
        saver = (
            None
            if store is None
            else StateSaver(store, resume_options.save_every_frames, resume_options.save_every_seconds)
        )
        with contextlib.ExitStack() as stack:
            for sink in sinks:
                stack.enter_context(sink)
            stack.enter_context(self.tricks.for_video(self.model, job.prompts, conditioning.texts))
            for index, frame in enumerate(saved_frames):  # the frames before the interruption
                for sink in sinks:
                    sink.write(index, frame)
            yield from self.loop(state, conditioning, sinks, saver, resume_options, paths)
        if store is not None:  # complete: no state, no partial video of an earlier interruption
            store.remove()
            partial_video_path(paths.video).unlink(missing_ok=True)
        return GenerationResult(
            job.prompt, paths.video, state.frames_emitted, time.perf_counter() - start, cached
        )

    # ------------------------------------------------------------------ its stages
    @property
    def is_writer(self) -> bool:
        """Whether this process writes the files (a single process, or rank 0)."""
        return self.group is None or self.group.is_writer

    def _log_path_once(self) -> None:
        if self._path_description is not None:
            logger.info("%s", self._path_description)
            self._path_description = None  # once per process

    def state_store(
        self, job: PromptJob, paths: VideoPaths, resume_options: ResumeOptions | None
    ) -> StateStore | None:
        """The writer's preparation of the video's folder: temporary files of a killed run
        removed, and the state folder when the run saves its state (else None)."""
        if not self.is_writer:
            return None
        for stale in stale_temporary_files(paths.video):  # left by a killed run
            stale.unlink()
        if resume_options is None:
            return None
        fingerprint = resume_fingerprint(
            job, self.mode, self.settings, self.model_id, self.device, paths.video
        )
        return StateStore(state_folder(paths.video), fingerprint)

    def first_state(
        self,
        job: PromptJob,
        conditioning: VideoConditioning,
        image_tokens: Tensor | None,
        store: StateStore | None,
        resume_options: ResumeOptions | None,
        cache_dir: Path,
        paths: VideoPaths,
    ) -> tuple[FifoState, list[np.ndarray], bool]:
        """The state the loop starts from on this rank, the frames written before it (a resumed
        run), and whether the base clip came from the cache: the writer resumes or starts the run;
        with several ranks, every rank then gets the writer's state."""
        state, saved_frames, cached = None, [], False
        try:
            if self.is_writer:
                resumed = None
                if store is not None and resume_options.resume:
                    base_clip = paths.folder / "origin.gif"
                    resumed = store.resume(self.noise_sources()[1], self.device, base_clip, paths.video)
                if resumed is not None:
                    state, saved_frames = resumed
                else:
                    state, cached = self._start_state(
                        job, conditioning, image_tokens, cache_dir, paths.folder
                    )
        except Exception as err:
            if self.group is None:
                raise
            self.group.settle(err)  # the other ranks stop too; raises err
        if self.group is not None:
            self.group.settle(None)
            state = share_state(self.group, state, self.noise_sources()[1])
        return state, saved_frames, cached

    def default_sinks(self, paths: VideoPaths) -> list[FrameSink]:
        """The writer's sinks: the video file, and the PNG frames with ``save_frames``; none elsewhere."""
        if not self.is_writer:
            return []
        sinks: list[FrameSink] = [VideoSink(paths.video, self.settings.output_fps)]
        if self.settings.save_frames:
            sinks.append(PngSink(paths.folder / "fifo"))
        return sinks

    def loop(
        self,
        state: FifoState,
        conditioning: VideoConditioning,
        sinks: Sequence[FrameSink],
        saver: StateSaver | None,
        resume_options: ResumeOptions | None,
        paths: VideoPaths,
    ) -> Iterator[np.ndarray]:
        """The FIFO loop with the sinks, the state saver, the progress and the stop request around
        it; yields every output frame after the sinks took it.

        Raises:
            RunInterrupted: a stop was requested (every rank stops after the same iteration).
        """
        total = self.sampler.num_iterations(conditioning)
        disable = not (self.settings.progress and self.is_writer)
        with contextlib.ExitStack() as stack:
            # The frames go to the sinks and the saved state on a writer thread (GIF palettes and
            # PNGs overlap with the next frame's compute); a state is saved once they are written.
            consumers = [sink.write for sink in sinks] + ([saver.write_frame] if saver is not None else [])
            frames_out = stack.enter_context(FrameWriter(consumers))
            if saver is not None:
                saver.before_save = frames_out.drain
            progress = stack.enter_context(
                progress_bar(total=total, initial=state.iteration, desc="FIFO", unit="it", disable=disable)
            )
            steps = self.sampler.steps(state, conditioning)
            while True:
                output = None
                try:
                    output = next(steps, None)
                    if output is None:
                        break
                    if output.frames is not None:
                        for k, frame in enumerate(output.frames):
                            frames_out.write(output.frame_index + k, frame)
                    progress.update(1)
                    progress.set_postfix_str(
                        f"frames {state.frames_emitted}/{conditioning.video_frames}", refresh=False
                    )
                    if saver is not None:
                        saver.after_step(state)
                except Exception as err:
                    if self.group is None or isinstance(err, PeerFailed):
                        raise
                    self.group.settle(err)  # the other ranks learn it at the end of this iteration
                stop = resume_options is not None and resume_options.stop_requested()
                if self.group is not None:
                    stop = self.group.settle(None, stop)  # every rank stops after the same iteration
                if stop and state.iteration < total:
                    partial = None
                    if saver is not None:
                        saver.save(state)  # after the frames so far are written
                        video = next(sink for sink in sinks if isinstance(sink, VideoSink))
                        partial = video.finish_as(partial_video_path(paths.video))
                    raise RunInterrupted(state.frames_emitted, partial)
                if output.frames is not None and self.is_writer:
                    yield from output.frames
