"""One prompt → one long video on Wan2.1: :class:`~fifo.generator.FifoGenerator` with the Wan
family's parts.

:class:`WanGenerator` runs the stages of the U-Net generator (the video's folder and saved state,
the first state, the sinks, the loop, ``stream()`` for the Python API, the ranks of
``--parallel windows``) and supplies what differs (:meth:`WanGenerator.setup`): the UMT5 text
tokens of the prompt or of each scene with the lengths in latent frames
(:func:`fifo.wan.latent_conditioning`); the flow schedule and its Euler steps; the base clip
sampled as WanPipeline samples it (:func:`fifo.flow.sample_flow`); the loop of
:class:`fifo.wan.WanSampler`, whose queue unit is a latent frame of four video frames decoded
by the causal autoencoder with its cache in the state; MIGA's step hooks
(:func:`fifo.tricks.install.miga_hooks`), which touch no layer of the model. The command line
and the Python API pick it for a flow-matching model (:func:`generator_class`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from fifo.conditioning import VideoConditioning
from fifo.flow import FlowSchedule, sample_flow
from fifo.generator import FifoGenerator
from fifo.guidance import CFGDenoiser
from fifo.noise import NoiseSource
from fifo.parallel import DistributedWindows
from fifo.perf import FastPathPlan
from fifo.prompts import PromptJob
from fifo.step import fifo_step
from fifo.tricks.install import Tricks, miga_hooks
from fifo.wan import WanSampler, latent_conditioning

logger = logging.getLogger(__name__)


def generator_class(model: torch.nn.Module) -> type[FifoGenerator]:
    """The generator of a loaded model's family: :class:`WanGenerator` for flow matching."""
    return WanGenerator if model.family.flow_matching else FifoGenerator


class WanGenerator(FifoGenerator):
    """Generates long videos for prompt jobs with one loaded Wan2.1 model.

    Args: as :class:`~fifo.generator.FifoGenerator`; ``model`` is the
    :class:`~lvdm.wan.model.WanModel`, ``settings.video_length`` counts latent frames and the
    other lengths video frames. The speed plan, window memory and seed models do not apply.
    """

    def setup(self, plan: FastPathPlan | None, memory_store: Path | None) -> None:
        """The Wan family's parts (see the module doc)."""
        model, settings, geometry = self.model, self.settings, self.geometry
        self.schedule = FlowSchedule.create(geometry.steps, model.flow_shift).to(self.device)
        self.window_batch = settings.window_batch if settings.batched else 1
        self.base_denoiser = CFGDenoiser(model.velocity, settings.guidance)
        self.fifo_denoiser = CFGDenoiser(model.velocity, settings.guidance, batch_branches=settings.batched)
        self.uncond_context = model.encode_text([""])  # WanPipeline's default negative prompt
        self.tricks = Tricks(hooks=miga_hooks(self.mode, self.schedule, geometry))
        self.sampler = WanSampler(
            model,
            self.mode,
            self.tricks.window_denoiser(self.fifo_denoiser),
            self.schedule,
            geometry,
            self.uncond_context,
            self.window_batch,
            windows_step=fifo_step if self.group is None else DistributedWindows(self.group),
            group=self.group,
            hooks=self.tricks.hooks,
        )
        per_call = "all" if self.window_batch is None else min(self.window_batch, len(geometry.windows()))
        self._path_description = (
            f"Wan FIFO: {geometry.video_length} latent frames per window "
            f"({model.family.video_frames_per_latent} video frames each after the stream's first), "
            f"{geometry.steps} flow steps per frame, {per_call} of {len(geometry.windows())} windows per call"
        )

    def close(self) -> None:
        """Nothing to release (no worker threads of parallel slices)."""

    def conditioning(self, job: PromptJob, image: bool = True) -> tuple[VideoConditioning, Tensor | None]:
        """The job's UMT5 text tokens (scenes, m, d), lengths in latent frames; no image tokens."""
        texts = self.model.encode_text(list(job.prompts))
        length = job.story_length if job.is_story else self.settings.new_video_length
        return latent_conditioning(texts, tuple(sc.frames for sc in job.scenes), length), None

    def cache_key(self, job: PromptJob, noise: NoiseSource | None = None) -> dict:
        """The U-Net's key of a base clip, marked as sampled along the flow."""
        return super().cache_key(job, noise) | {"flow": "euler"}

    def sample_base_clip(
        self, cond: Tensor, noise: NoiseSource, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """A base clip from fresh noise along the flow (WanPipeline's loop): (x_T, latents), both
        (1, c, f, h, w); ``steps`` stops after that many Euler steps (a dry run plans one)."""
        shape = (1, self.model.channels, self.settings.video_length, *self.latent_hw)
        x_T = noise.latents(shape)
        latents = sample_flow(
            self.base_denoiser,
            x_T,
            self.schedule,
            cond,
            self.uncond_context,
            progress=self.settings.progress and steps is None,
            max_steps=steps,
        )
        return x_T, latents
