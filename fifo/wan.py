"""FIFO on Wan2.1 text-to-video: the queue along the flow, the dequeued frames through the causal
autoencoder as a stream.

:class:`WanSampler` is :class:`~fifo.sampler.FifoSampler`, the loop of the U-Nets: the queue
layout (:class:`~fifo.geometry.FifoGeometry`: partitions, lookahead), its build from the base
clip (:func:`~fifo.step.initial_queue`), one step of every window per iteration
(:func:`~fifo.step.fifo_step` over :func:`~fifo.step.denoise_windows`), the step hooks (MIGA's
``anchors`` and ``reflect``), the shift, stories (per-window text), the noise source, the sinks
and the saved state. What differs is the model's part:

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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fifo.conditioning import VideoConditioning
from fifo.noise import NoiseSource
from fifo.sampler import FifoSampler
from fifo.state import FifoState
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
    return VideoConditioning(texts, scenes, latent_frames(length), output_frames=length)


class WanSampler(FifoSampler):
    """The FIFO loop over a flow model: :class:`~fifo.sampler.FifoSampler` with the stream
    decoder (see the module doc).

    Args:
        model: the :class:`~lvdm.wan.model.WanModel` (its autoencoder and family).
        The rest: as :class:`~fifo.sampler.FifoSampler` (``schedule`` a
        :class:`~fifo.flow.FlowSchedule`; no image tokens or image latent).
    """

    def __init__(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.decoder = StreamDecoder(model.vae, model.to_autoencoder)
        self.per_latent = model.family.video_frames_per_latent

    def decode(self, z: Tensor) -> Tensor:
        """A clip's latents (1, c, t, h, w), the stream's start, → its video frames
        (1, 3, 1 + 4·(t − 1), H, W), through a fresh cache."""
        cache = self.decoder.start()
        return torch.cat([self.decoder.decode(z[:, :, i : i + 1], cache) for i in range(z.shape[2])], dim=2)

    def decode_output(self, state: FifoState, latent: Tensor) -> Tensor:
        """The next latent frame of the video through the cache in ``state`` (advanced in place)."""
        cache = DecoderCache.from_state_dict(state.hook_state[DECODER])
        video = self.decoder.decode(latent, cache)
        state.hook_state[DECODER] = cache.state_dict()
        return video

    def unit_frames(self, state: FifoState) -> int:
        """1 for the video's first latent frame, four for every later one."""
        first = self.geometry.at(state.iteration).discarded_frames()  # the video's first latent frame
        return 1 if state.iteration == first else self.per_latent

    def initial_state(
        self,
        base_latents: Tensor,
        noise: NoiseSource,
        image_tokens: Tensor | None = None,
        image_latent: Tensor | None = None,
    ) -> FifoState:
        """The base clip (1, c, f, h, w) noised into the queue, and a fresh decoder cache."""
        state = super().initial_state(base_latents, noise, image_tokens, image_latent)
        state.hook_state[DECODER] = self.decoder.start().state_dict()
        return state
