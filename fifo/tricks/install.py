"""A mode's tricks, built once per model: processors on the U-Net, and what the FIFO loop takes.

:func:`install_tricks` puts every trick of a :class:`~fifo.options.ModeOptions` in place and
returns :class:`Tricks`: the tail sampler and the step hooks for
:class:`~fifo.sampler.FifoSampler`, and the subject store that :meth:`Tricks.for_video` points at
each video's prompts. With no trick on, the U-Net keeps plain attention, the tail is Gaussian
and there are no hooks: the published computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from fifo.geometry import FifoGeometry
from fifo.guidance import BranchDenoiser, GuidedDenoiser
from fifo.hooks import StepHook, TailSampler, gaussian_tail
from fifo.options import ModeOptions
from fifo.schedule import DDIMSchedule
from fifo.step import Schedule
from fifo.tricks.anchors import LongRangeGuidance
from fifo.tricks.qcache import set_qcache
from fifo.tricks.reflect import SelfReflection
from fifo.tricks.sacfa import set_sacfa
from fifo.tricks.srg import SelfRecurrentGuidance, set_srg_recorders
from fifo.tricks.subject import SubjectStore, set_subject_tracking, subject_scenes
from fifo.tricks.tailcoh import CoherentTail


@dataclass(frozen=True)
class Tricks:
    """What the FIFO loop takes from a mode's tricks.

    Attributes:
        tail_sampler: what enters the queue's tail (the coherent tail, or Gaussian noise).
        hooks: the step hooks (self-recurrent guidance).
        subject: the store SACFA and SRG read, or None.
    """

    tail_sampler: TailSampler = gaussian_tail
    hooks: tuple[StepHook, ...] = ()
    subject: SubjectStore | None = None

    def window_denoiser(self, denoise: GuidedDenoiser) -> GuidedDenoiser:
        """The guided denoiser of the FIFO windows with every hook's part (``StepHook.wrap_windows``)."""
        for hook in self.hooks:
            denoise = hook.wrap_windows(denoise)
        return denoise

    @contextlib.contextmanager
    def for_video(self, model: nn.Module, prompts: Sequence[str], texts: Tensor) -> Iterator[None]:
        """While the FIFO loop of one video runs: its scenes' ``prompts`` and text tokens (S, m, d)
        tell the subject store where the subject's words are (nothing to do without one)."""
        if self.subject is None:
            yield
            return
        # Token ids are host data, also when the run is planned on fake tensors.
        with unset_fake_temporarily():
            prompt_ids = model.text_token_ids(list(prompts)).tolist()
            subject_ids = model.text_token_ids([self.subject.options.phrase]).tolist()
        self.subject.set_scenes(subject_scenes(texts, prompt_ids, subject_ids, prompts))
        try:
            yield
        finally:
            self.subject.set_scenes(())


def install_tricks(
    model: nn.Module,
    mode: ModeOptions,
    schedule: DDIMSchedule,
    geometry: FifoGeometry,
    denoise: BranchDenoiser,
) -> Tricks:
    """Install ``mode``'s tricks on ``model``'s U-Net (replacing any installed before).

    ``denoise`` is the model denoiser SRG runs its guided pass through (one branch, no guidance).

    Raises:
        ValueError: ``--subject_levels`` without spatial transformers, ``--srg_windows`` beyond
            the queue's windows.
    """
    unet = model.unet
    set_qcache(unet, mode.qcache)
    set_sacfa(unet, None)  # SRG's key recorders go first on the layers they share with SACFA
    store = set_subject_tracking(unet, mode.subject)
    set_srg_recorders(unet, store if mode.srg is not None else None)
    set_sacfa(unet, store if mode.sacfa else None)
    hooks: tuple[StepHook, ...] = ()
    if mode.srg is not None:
        hooks = (SelfRecurrentGuidance(mode.srg, store, denoise, schedule, geometry),)
    hooks += miga_hooks(mode, schedule, geometry)
    tail = CoherentTail(mode.tail, schedule) if mode.tail is not None else gaussian_tail
    return Tricks(tail, hooks, store)


def miga_hooks(mode: ModeOptions, schedule: Schedule, geometry: FifoGeometry) -> tuple[StepHook, ...]:
    """MIGA's step hooks of ``mode`` (``reflect``, then ``anchors``): they touch no layer of the
    model, only the queue and the windows' guided denoiser, so every family runs them (the
    U-Nets through :func:`install_tricks`, Wan2.1 directly)."""
    hooks: tuple[StepHook, ...] = ()
    if mode.reflect is not None:  # before the anchors: its passes see the queue's own frames
        hooks += (SelfReflection(mode.reflect, schedule, geometry),)
    if mode.anchors is not None:
        hooks += (LongRangeGuidance(mode.anchors.count(geometry), geometry),)
    return hooks
