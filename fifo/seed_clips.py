"""Base clips from a second, text-to-video model: ``t2v_seed`` / ``t2v_seed_ar`` on a family that
conditions every frame on an image (DynamiCrafter).

DynamiCrafter cannot sample a base clip from text alone: its U-Net takes an image latent on every
frame and image tokens in every cross-attention. So the base clip comes from a text-to-video model
(``--seed_config``, VideoCrafter2 by default: same 320×512 size, 16 frames, same text encoder and
the same Stable Diffusion autoencoder), which samples it exactly as a ``t2v`` run of that model
would (same cache, same noise stream). The clip's frames are then encoded by the main model's own
autoencoder into the FIFO queue, and its first frame becomes the image condition of every window:
the image latent (hybrid conditioning) and the image tokens, as ``i2v`` would take an input image.
``t2v_seed_ar`` re-seeds both from the newest output frame after every frame.

Only the writer (rank 0 under ``--parallel windows``) samples the base clip; the other ranks get the
state, image latent included, from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from fifo.noise import NoiseSource
from fifo.prompts import PromptJob

if TYPE_CHECKING:
    from fifo.generator import FifoGenerator


class SeedClips:
    """Base clips (decoded frames) from a text-to-video generator (see the module's docstring).

    Args:
        generator: a :class:`~fifo.generator.FifoGenerator` of the text model in
            :data:`fifo.seed_model.SEED_MODE` and :func:`fifo.seed_model.seed_settings` (only its
            base-clip stage is used).
    """

    def __init__(self, generator: FifoGenerator) -> None:
        self.generator = generator

    @property
    def model_id(self) -> str:
        return self.generator.model_id

    def video(self, job: PromptJob, cache_dir: Path, noise: NoiseSource) -> tuple[Tensor, bool]:
        """The job's base clip sampled (or reused from ``cache_dir``) by the text model and decoded:
        frames (1, 3, f, H, W) in ~[-1, 1], and whether the latents were cached."""
        g = self.generator
        conditioning, _ = g.conditioning(job)
        latents, cached = g.base_clip(job, conditioning.first_text, cache_dir, noise)
        return g.sampler.decode(latents), cached

    def close(self) -> None:
        self.generator.close()
