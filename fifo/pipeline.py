"""A Python API over the run the command line makes: a model loaded once, then videos as frames.

    from fifo.pipeline import FifoPipeline

    pipe = FifoPipeline.from_config("configs/tiny_t2v.yaml", random_init=True)
    for frame in pipe.frames("a red fox in the snow", mode="t2v", length=8):
        ...  # (H, W, 3) uint8, as each one is written

It goes the command line's way (:class:`~fifo.generator.FifoGenerator`, or
:class:`~fifo.wan_generator.WanGenerator` for a Wan2.1 config: the same model set-up, settings,
noise and files), so a call gives the frames of the equivalent command. See
``docs/api.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fifo.options import GenerationSettings, Precision, TrickArguments, parse_mode
from fifo.outputs import OutputLayout
from fifo.prompts import PromptJob
from fifo.wan_generator import generator_class
from infra.errors import SettingsError
from lvdm.build import config_facts, load_config, load_model, model_identity
from lvdm.modules.attention_kernels import AttentionBackend


class FifoPipeline:
    """One loaded model, ready to generate long videos (see the module's docstring).

    Args:
        model: the loaded model (its attention backend set).
        model_id: the weights' fingerprint (the base-clip cache and saved states use it).
        defaults: the settings a call starts from: the config's window length and size, and
            the command line's defaults for the rest.
    """

    def __init__(self, model: torch.nn.Module, model_id: str, defaults: GenerationSettings) -> None:
        self.model, self.model_id, self.defaults = model, model_id, defaults

    @classmethod
    def from_config(
        cls,
        config: str | Path,
        ckpt: str | Path | None = None,
        *,
        dtype: str | Precision | None = None,
        device: str | torch.device = "cpu",
        random_init: bool = False,
        seed: int = GenerationSettings.seed,
        attention: AttentionBackend | str = AttentionBackend.SDPA,
    ) -> FifoPipeline:
        """Load ``config`` with the weights of ``ckpt`` (or random ones, seeded by ``seed``, with
        ``random_init``) on ``device`` in ``dtype`` (default: fp32 on a CPU, fp16 on CUDA), with the
        ``attention`` kernel (an ``AttentionBackend`` or its value: ``sdpa``, ``xformers``, ``math``), as ``--config``, ``--ckpt_path``,
        ``--dtype``, ``--device``, ``--random_init``, ``--seed`` and ``--attention`` do.

        Raises:
            lvdm.checkpoint.CheckpointError, lvdm.build.ConfigError: a checkpoint or config that
                cannot be used (the message says why).
            infra.errors.SettingsError: ``attention`` other than ``sdpa`` for a Wan2.1 config (its
                transformer runs diffusers' attention).
        """
        precision = Precision(dtype) if dtype is not None else Precision.default_for(device)
        backend = AttentionBackend(attention)
        facts = config_facts(load_config(config))
        if facts.family.flow_matching and backend is not AttentionBackend.SDPA:
            # as the command line refuses --attention for Wan2.1, before anything is loaded
            raise SettingsError(
                f"`attention` {backend.value!r}: the Wan2.1 transformer runs diffusers' own attention"
            )
        model = load_model(config, ckpt, random_init, device=device, seed=seed, dtype=precision.torch_dtype)
        if not model.family.flow_matching:
            model.unet.set_attn_processor(backend)
        defaults = GenerationSettings(
            video_length=facts.temporal_length,
            height=facts.default_size[0],
            width=facts.default_size[1],
            seed=seed,
            dtype=precision,
            guidance=facts.family.default_guidance,  # as the command line's default
        )
        return cls(model, model_identity(config, ckpt, random_init, seed), defaults)

    def settings(self, length: int | None = None, **overrides: Any) -> GenerationSettings:
        """The settings of a call: :attr:`defaults` with ``length`` output frames and ``overrides``
        (any :class:`~fifo.options.GenerationSettings` field, e.g. ``num_partitions=2``)."""
        known = {f.name for f in fields(GenerationSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown settings {unknown}; the settings are {sorted(known)}")
        if length is not None:
            overrides["new_video_length"] = length
        return replace(self.defaults, **overrides)

    def frames(
        self,
        prompt: str,
        *,
        mode: str = "t2v",
        length: int | None = None,
        image: str | Path | None = None,
        tricks: TrickArguments | None = None,
        output_dir: str | Path = "results",
        experiment: str = "api",
        **settings: Any,
    ) -> Iterator[np.ndarray]:
        """Generate one video of ``prompt`` and yield its frames, (H, W, 3) uint8, as they come.

        ``mode`` is a ``--mode`` string (``t2v``, ``i2v`` with ``image``, tricks such as
        ``t2v_tailcoh`` with their ``tricks`` values); ``settings`` are fields of
        :class:`~fifo.options.GenerationSettings`. The files a run writes (the video, its base
        clip ``origin.gif``, the base-clip cache) go under ``output_dir`` as the command line
        writes them under ``--output_dir``.

        Raises:
            fifo.options.ModeError: an unknown or inconsistent ``mode``.
        """
        run_settings = self.settings(length, **settings)
        job = PromptJob(prompt, line=1, image=None if image is None else Path(image))
        generator = generator_class(self.model)(
            self.model, parse_mode(mode, tricks=tricks), run_settings, self.model_id
        )
        output_dir = Path(output_dir)
        with contextlib.closing(generator), torch.inference_mode():
            suffix = ".mp4" if run_settings.use_mp4 else ".gif"
            yield from generator.stream(
                job, OutputLayout(output_dir, experiment, output_dir / "latents", suffix)
            )

    def generate(self, prompt: str, **kwargs: Any) -> np.ndarray:
        """The whole video of :meth:`frames` (same arguments): (t, H, W, 3) uint8."""
        return np.stack(list(self.frames(prompt, **kwargs)))
