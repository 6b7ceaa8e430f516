"""A FIFO run as an explicit state and a step that advances it by one iteration.

:class:`FifoState` is everything that changes from one iteration to the next: the queue, the
noise source's stream, the iteration counter, the current image tokens (re-seeded every frame
in ``t2v_seed_ar``) and how many output frames came out. :meth:`FifoSampler.step` runs one
iteration (every window's DDIM step, the dequeue, the shift) and returns what came out: an
output frame, or nothing during the queue's warm-up. Whatever consumes the frames (video and
PNG writers, progress, a state saver, another rank) sits around the loop, not inside it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import maybe_get_fake_mode

from fifo.conditioning import VideoConditioning
from fifo.families import image_latent
from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser, ModelDenoiser
from fifo.noise import NoiseSource
from fifo.options import ModeOptions
from fifo.parallel import RankGroup, local_windows
from fifo.schedule import DDIMSchedule
from fifo.step import initial_queue, iteration_noise, shift_queue


class NonFiniteError(RuntimeError):
    """NaN or infinite values in a stage of the run: stopping beats writing garbage frames."""


def check_finite(tensor: Tensor, stage: str, iteration: int | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the stage (and iteration) if ``tensor`` has NaN or inf.

    One reduction and one host sync per call; fake tensors (a planned run) hold no values and pass.
    """
    if maybe_get_fake_mode(tensor) is not None or bool(torch.isfinite(tensor).all()):
        return
    where = stage if iteration is None else f"{stage} at FIFO iteration {iteration}"
    hint = (
        " Half precision overflows first: try --dtype bf16 or --dtype fp32."
        if tensor.dtype in (torch.float16, torch.bfloat16) or stage != "the decoded frame"
        else ""
    )
    raise NonFiniteError(
        f"non-finite values (NaN or inf) in {where}; the run stopped, nothing more was written.{hint}"
    )


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """(1, 3, t, H, W) in [-1, 1] → (t, H, W, 3) uint8."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class FifoState:
    """A FIFO run at an iteration boundary.

    Attributes:
        queue: (1, c, L, h, w) latents at increasing noise levels.
        noise: where the run's remaining random draws come from.
        iteration: iterations done so far.
        image_tokens: (1, 16, d) image tokens appended to every window's text (image modes),
            or None.
        image_latent: (1, c, 1, h, w), the hybrid families' image latent when the run made it from
            its own frames (the seeded modes on DynamiCrafter, :mod:`fifo.seeding`), or None (it
            comes from the input image, or the family takes none).
        frames_emitted: output frames produced so far.
        extras: the state of the tricks' step hooks, by hook name (tensors and plain values
            only, so that it can be saved and restored with the rest).
    """

    queue: Tensor
    noise: NoiseSource
    iteration: int = 0
    image_tokens: Tensor | None = None
    frames_emitted: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    image_latent: Tensor | None = None


class TailSampler(Protocol):
    """What enters the queue at the tail after the shift: (1, c, 1, h, w).

    ``queue`` is the queue before the shift (its last slot is the previous tail).
    """

    def __call__(self, queue: Tensor, noise: NoiseSource) -> Tensor: ...


def gaussian_tail(queue: Tensor, noise: NoiseSource) -> Tensor:
    """Fresh Gaussian noise, as published."""
    return noise.tail(queue[:, :, :1])


WindowsStep = Callable[..., Tensor]
"""(denoise, queue, geometry, schedule, contexts, uncond, noise, window_batch) → the queue after
one DDIM step of every window (:func:`fifo.parallel.local_windows`)."""


class StepHook:
    """A trick's part of every step. Override what the trick needs; the defaults do nothing.

    Hooks run in the order they are given to :class:`FifoSampler`. A hook keeps whatever must
    survive from one iteration to the next in ``state.extras[self.name]``.
    """

    name = "hook"

    def wrap_windows(self, denoise: GuidedDenoiser) -> GuidedDenoiser:
        """The guided denoiser the FIFO windows run through, as this trick needs it (default: as is)."""
        return denoise

    def before_windows(self, sampler: FifoSampler, state: FifoState) -> None:
        """Called at the start of every iteration, before any window runs (``state`` as it is)."""

    def after_windows(
        self, sampler: FifoSampler, state: FifoState, queue: Tensor, contexts: Tensor
    ) -> Tensor:
        """The queue after every window's DDIM step, before the dequeue: return it (changed or not).

        ``state.queue`` is still the queue before the step; ``contexts`` (W, m, d) is what each
        window of the iteration was conditioned on, in ``geometry.windows()`` order.
        """
        return queue

    def after_dequeue(self, sampler: FifoSampler, state: FifoState, latent: Tensor) -> None:
        """Called with each iteration's dequeued latent (1, c, 1, h, w), before the shift."""


@dataclass
class StepOutput:
    """What one iteration produced.

    Attributes:
        iteration: the iteration's number (0-based).
        latent: (1, c, 1, h, w), the dequeued (clean) latent, also during the warm-up.
        video: (1, 3, 1, H, W) in ~[-1, 1], the decoded output frame; None during the warm-up.
        frame_index: the frame's index in the video, or None.
    """

    iteration: int
    latent: Tensor
    video: Tensor | None = None
    frame_index: int | None = None

    @functools.cached_property
    def frame(self) -> np.ndarray | None:
        """The output frame as (H, W, 3) uint8 (converted when first asked for), or None."""
        return None if self.video is None else to_uint8_frames(self.video)[0]


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
            :func:`fifo.parallel.local_windows`; :class:`fifo.parallel.DistributedWindows` splits
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
        windows_step: WindowsStep = local_windows,
        group: RankGroup | None = None,
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
        geo, it = self.geometry, state.iteration
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
                frame_video = self.decode(clean)
                check_finite(frame_video, "the decoded frame", it)
            if self.mode.reseeds_each_frame:
                self._reseed(state, frame_video)
            if keep:
                output = StepOutput(it, clean, frame_video, state.frames_emitted)
                state.frames_emitted += 1
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
