"""FIFO on Wan2.1 text-to-video: the queue along the flow, the dequeued frames through the causal
autoencoder as a stream.

What is the same as on the U-Nets: the queue layout (:class:`~fifo.geometry.FifoGeometry`:
partitions, lookahead), its build from the base clip (:func:`~fifo.step.initial_queue`), one
step of every window per iteration (:func:`~fifo.step.fifo_step` over
:func:`~fifo.step.denoise_windows`), the shift, stories (per-window text), the noise source,
the sinks and the saved state. What differs is the model's part:

- the schedule is the flow's (:class:`~fifo.flow.FlowSchedule`): each slot at its own σ, each
  window's frames advanced one Euler step, the transformer fed one timestep per frame (per token);
- a queue unit (one latent frame) is four video frames, the stream's first one: the dequeued
  latents are decoded in order by :class:`~lvdm.wan.stream.StreamDecoder`, whose temporal
  cache travels in the state (``FifoState.hook_state["decoder"]``), so a resumed run decodes on
  exactly where it stopped;
- lengths are in video frames (``-l``, scene lengths) and converted to latent frames here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fifo.conditioning import VideoConditioning
from fifo.flow import FlowSchedule
from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.hooks import FrameShare, WindowsStep
from fifo.noise import NoiseSource
from fifo.options import ModeOptions
from fifo.state import FifoState, check_finite, to_uint8_frames
from fifo.step import fifo_step, initial_queue, shift_queue
from lvdm.wan.stream import DecoderCache, StreamDecoder

DECODER = "decoder"  # the key of the decoder's cache in FifoState.hook_state


def latent_frames(video_frames: int, per_latent: int = 4) -> int:
    """Latent frames whose decode covers ``video_frames`` video frames (the first latent frame
    is one video frame, each later one ``per_latent``)."""
    return 0 if video_frames <= 0 else 1 + math.ceil((video_frames - 1) / per_latent)


def latent_conditioning(texts: Tensor, scene_frames: tuple[int, ...], length: int) -> VideoConditioning:
    """A video's conditioning with its lengths in latent frames: ``length`` and the scenes'
    frames (video frames) converted; a latent frame belongs to the scene of its first video frame."""
    bounds = np.cumsum(scene_frames) if scene_frames else np.zeros(0, dtype=np.int64)
    latent_bounds = [latent_frames(int(b)) for b in bounds]
    scenes = tuple(int(b - a) for a, b in zip([0, *latent_bounds[:-1]], latent_bounds))
    return VideoConditioning(texts, scenes, latent_frames(length))


@dataclass
class WanStepOutput:
    """What one iteration produced.

    Attributes:
        iteration: the iteration's number.
        latent: (1, c, 1, h, w), the dequeued latent.
        frames: the output frames it decoded to, (H, W, 3) uint8 each (none in the warm-up; the
            last latent's frames beyond the video's length are dropped).
        first_index: the index in the video of ``frames[0]``.
    """

    iteration: int
    latent: Tensor
    frames: list[np.ndarray] = field(default_factory=list)
    first_index: int = 0


class WanSampler:
    """The FIFO loop over a flow model (see the module doc).

    Args:
        model: the :class:`~lvdm.wan.model.WanModel` (its autoencoder and family).
        mode: the parsed ``--mode`` (``unilatent``).
        denoise: the guided velocity of a batch of windows.
        schedule: the flow schedule of f·n steps.
        geometry: the queue layout.
        uncond: (1, m, d) the unconditional text tokens, or None for no guidance.
        window_batch: windows per call (None: all).
        windows_step: runs one iteration's windows (:func:`fifo.step.fifo_step`, or
            :class:`fifo.parallel.DistributedWindows` over ranks).
        group: the ranks sharing the video (None: one process); only its writer decodes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mode: ModeOptions,
        denoise: GuidedDenoiser,
        schedule: FlowSchedule,
        geometry: FifoGeometry,
        uncond: Tensor | None,
        window_batch: int | None,
        windows_step: WindowsStep = fifo_step,
        group: FrameShare | None = None,
    ) -> None:
        self.mode, self.denoise, self.schedule, self.geometry = mode, denoise, schedule, geometry
        self.uncond, self.window_batch = uncond, window_batch
        self.windows_step, self.group = windows_step, group
        self.decoder = StreamDecoder(model.vae, model.to_autoencoder)
        self.per_latent = model.family.video_frames_per_latent

    @property
    def is_writer(self) -> bool:
        return self.group is None or self.group.is_writer

    def num_iterations(self, conditioning: VideoConditioning) -> int:
        return self.geometry.num_iterations(conditioning.length)

    def initial_state(self, base_latents: Tensor, noise: NoiseSource) -> FifoState:
        """The base clip (1, c, f, h, w) noised into the queue, and a fresh decoder cache."""
        queue = initial_queue(base_latents, self.geometry, self.schedule, self.mode.unilatent, noise)
        return FifoState(queue=queue, noise=noise, hook_state={DECODER: self.decoder.start().state_dict()})

    def step(self, state: FifoState, conditioning: VideoConditioning, video_frames: int) -> WanStepOutput:
        """Advance ``state`` by one iteration (in place): every window one flow step, the dequeue
        (decoded through the cache in the state), the shift. ``video_frames``: the video's
        length in video frames (the last latent's extra frames are dropped)."""
        geo, it = self.geometry, state.iteration
        contexts = conditioning.window_contexts(geo, it, None)
        queue = self.windows_step(
            self.denoise, state.queue, geo, self.schedule, contexts, self.uncond, None, self.window_batch
        )
        check_finite(queue, "the queue", it)
        clean = queue[:, :, geo.output_slot : geo.output_slot + 1]
        output = WanStepOutput(it, clean, first_index=state.frames_emitted)
        if it >= geo.discarded_frames() and self.is_writer:
            cache = DecoderCache.from_state_dict(state.hook_state[DECODER])
            video = self.decoder.decode(clean, cache)
            check_finite(video, "the decoded frames", it)
            state.hook_state[DECODER] = cache.state_dict()
            frames = list(to_uint8_frames(video))[: max(0, video_frames - state.frames_emitted)]
            output.frames = frames
            state.frames_emitted += len(frames)
        elif it >= geo.discarded_frames():  # the other ranks count the frames the writer writes
            unit = 1 if it == geo.discarded_frames() else self.per_latent
            state.frames_emitted += min(unit, max(0, video_frames - state.frames_emitted))
        state.queue = shift_queue(queue, state.noise.tail(queue[:, :, :1]))
        state.iteration += 1
        return output
