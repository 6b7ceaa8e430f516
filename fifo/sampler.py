"""The FIFO loop: a step that advances a :class:`~fifo.state.FifoState` by one iteration.

:meth:`FifoSampler.step` runs one
iteration (every window's DDIM step, the dequeue, the shift) and returns what came out: an
output frame, or nothing during the queue's warm-up. Whatever consumes the frames (video and
PNG writers, progress, a state saver, another rank) sits around the loop, not inside it.

This is the core of the method: it imports no file, process-group or cache code. What it
plugs into (tail samplers, step hooks, the windows' step, the processes sharing a video) is
declared in :mod:`fifo.hooks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from fifo.conditioning import VideoConditioning
from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser, ModelDenoiser, image_latent
from fifo.hooks import FrameShare, StepHook, TailSampler, WindowsStep, gaussian_tail
from fifo.noise import NoiseSource
from fifo.options import ModeOptions
from fifo.schedule import DDIMSchedule
from fifo.state import FifoState, StepOutput, check_finite
from fifo.step import fifo_step, initial_queue, iteration_noise, shift_queue


class FifoSampler:
    """The FIFO loop of one model with fixed mode and settings.

    Args:
        model: the LatentDiffusion (decoder, image embedder).
        mode: the parsed ``--mode`` (``unilatent``, re-seeding).
        denoise: the guided denoiser the windows run through.
        schedule: the DDIM schedule of f·n steps.
        geometry: the queue layout (``settings.geometry``).
        uncond: (1, m, d) unconditional context, or None for no guidance.
        window_batch: windows per denoiser call (None: all; 1: one by one).
        tail_sampler: what enters the queue at the tail (default: fresh Gaussian noise).
        hooks: the tricks' parts of every step (:class:`StepHook`), in order.
        windows_step: runs one iteration's windows (default: all in this process,
            :func:`fifo.step.fifo_step`; :class:`fifo.parallel.DistributedWindows` splits
            them over ranks).
        group: the ranks sharing this video (None: one process). Only its writer (rank 0)
            decodes and embeds frames; it broadcasts the re-seeded image tokens.
        model_denoiser: the denoiser under ``denoise`` that concatenates the hybrid families'
            image latent; a state's own image latent (``FifoState.image_latent``) is set on it
            before every iteration. None: the states carry none.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: ModeOptions,
        denoise: GuidedDenoiser,
        schedule: DDIMSchedule,
        geometry: FifoGeometry,
        uncond: Tensor | None,
        window_batch: int | None,
        tail_sampler: TailSampler = gaussian_tail,
        hooks: Sequence[StepHook] = (),
        windows_step: WindowsStep = fifo_step,
        group: FrameShare | None = None,
        model_denoiser: ModelDenoiser | None = None,
    ) -> None:
        self.model, self.mode, self.denoise = model, mode, denoise
        self.model_denoiser = model_denoiser
        self.schedule, self.geometry, self.uncond = schedule, geometry, uncond
        self.window_batch = window_batch
        self.tail_sampler, self.hooks = tail_sampler, tuple(hooks)
        self.windows_step, self.group = windows_step, group

    @property
    def is_writer(self) -> bool:
        """Whether this process decodes the output frames (a single process, or rank 0)."""
        return self.group is None or self.group.is_writer

    # ------------------------------------------------------------------ model operations
    def decode(self, z: Tensor) -> Tensor:
        """Latents (1, c, t, h, w) → frames (1, 3, t, H, W) in ~[-1, 1], float32 (as published)."""
        return self.model.decode_first_stage_2DAE(z).float()

    def decode_output(self, state: FifoState, latent: Tensor) -> Tensor:
        """The dequeued latent (1, c, 1, h, w) → its output frames (1, 3, k, H, W), k =
        :meth:`unit_frames` (a family whose decoder keeps a cache between units keeps it in
        ``state.hook_state``)."""
        return self.decode(latent)

    def unit_frames(self, state: FifoState) -> int:
        """Output frames the latent dequeued at ``state.iteration`` decodes to (1 on the U-Nets)."""
        return 1

    def image_tokens(self, images: Tensor) -> Tensor:
        """Images (b, 3, H, W) in [-1, 1] → image tokens (b, 16, d)."""
        return self.model.get_image_embeds(images.to(self.model.device))

    def image_latent(self, images: Tensor) -> Tensor | None:
        """Images (b, 3, H, W) in [-1, 1] → the hybrid families' image latent (b, c, 1, h, w), or
        None for a family that takes none."""
        return image_latent(self.model, images)

    # ------------------------------------------------------------------ the run
    def num_iterations(self, conditioning: VideoConditioning) -> int:
        return self.geometry.num_iterations(conditioning.length)

    def initial_state(
        self,
        base_latents: Tensor,
        noise: NoiseSource,
        image_tokens: Tensor | None = None,
        image_latent: Tensor | None = None,
    ) -> FifoState:
        """The state before the first iteration: the base clip (1, c, f, h, w) noised into the queue."""
        queue = initial_queue(base_latents, self.geometry, self.schedule, self.mode.unilatent, noise)
        return FifoState(queue=queue, noise=noise, image_tokens=image_tokens, image_latent=image_latent)

    def step(self, state: FifoState, conditioning: VideoConditioning) -> StepOutput:
        """Advance ``state`` by one iteration (in place) and return what it produced."""
        it = state.iteration
        geo = self.geometry.at(it)  # the queue's layout this iteration (FIFO's never changes)
        if state.image_latent is not None:
            self.model_denoiser.image_latent = state.image_latent
        for hook in self.hooks:
            hook.before_windows(self, state)
        contexts = conditioning.window_contexts(geo, it, state.image_tokens)
        noise = iteration_noise(state.noise, geo, state.queue, self.schedule)
        queue = self.windows_step(
            self.denoise, state.queue, geo, self.schedule, contexts, self.uncond, noise, self.window_batch
        )
        for hook in self.hooks:
            queue = hook.after_windows(self, state, queue, contexts)
        check_finite(queue, "the queue", it)
        keep = it >= geo.discarded_frames()
        clean = queue[:, :, geo.output_slot : geo.output_slot + 1]
        for hook in self.hooks:
            hook.after_dequeue(self, state, clean)
        output = StepOutput(it, clean)
        if keep or self.mode.reseeds_each_frame:
            frame_video = None
            if self.is_writer:
                frame_video = self.decode_output(state, clean)
                check_finite(frame_video, "the decoded frame", it)
            if self.mode.reseeds_each_frame:
                self._reseed(state, frame_video)
            if keep:
                # The last unit's frames beyond the video's length are dropped.
                count = min(self.unit_frames(state), max(0, conditioning.video_frames - state.frames_emitted))
                if frame_video is not None and frame_video.shape[2] != count:
                    frame_video = frame_video[:, :, :count]
                output = StepOutput(it, clean, frame_video, state.frames_emitted)
                state.frames_emitted += count
        state.queue = shift_queue(queue, self.tail_sampler(queue, state.noise))
        state.iteration += 1
        return output

    def _reseed(self, state: FifoState, frame_video: Tensor | None) -> None:
        """Replace (never append) the image tokens, and the image latent where the state carries
        one, with the newest frame's (1, 3, 1, H, W) (None on the ranks that do not decode)."""
        tokens = latent = None
        if frame_video is not None:
            tokens = self.image_tokens(frame_video[:, :, 0])
            if state.image_latent is not None:
                latent = self.image_latent(frame_video[:, :, 0])
        if self.group is not None:
            tokens = self.group.broadcast(tokens, (tuple(state.image_tokens.shape), state.image_tokens.dtype))
            if state.image_latent is not None:
                like = (tuple(state.image_latent.shape), state.image_latent.dtype)
                latent = self.group.broadcast(latent, like)
        check_finite(tokens, "the re-seeded image tokens", state.iteration)
        state.image_tokens = tokens
        if state.image_latent is not None:
            check_finite(latent, "the re-seeded image latent", state.iteration)
            state.image_latent = latent

    def steps(self, state: FifoState, conditioning: VideoConditioning) -> Iterator[StepOutput]:
        """Step ``state`` until the video is complete, yielding every iteration's output."""
        while state.iteration < self.num_iterations(conditioning):
            yield self.step(state, conditioning)
