"""Long-range frame guidance (MIGA, ``anchors``): clean frames of the whole video in front of each window.

MIGA's second consistency mechanism (docs/miga.md): every FIFO window sees, in front of its own
frames, m_guid clean frames sampled uniformly over what the video has produced so far, so that
the frames being denoised are steered by distant, finished frames and not only by their
neighbours in the queue. The window keeps the model's frame count f: the anchors take the
place of the first m_guid frames that a lookahead window reads but does not write back (its
first f/2), at timestep 0 (clean). What each window writes back is unchanged in number and
place, so every queue slot is still denoised once per iteration, and the extra cost in U-Net
frames is zero.

The frames come from a bounded bank (:func:`bank_add`): every output frame's clean latent is
offered; frame i is kept when i is a multiple of the bank's stride, and when the bank holds
more than its capacity it drops every second frame and doubles the stride. The kept frames
are therefore spread evenly over the whole video at any length, in at most ``capacity``
latents (4·m_guid): memory does not grow with the video. The anchors are m_guid of them at
evenly spaced positions, oldest first (:func:`bank_anchors`). Nothing is random: the bank is a
function of the frames, saved with the state (``FifoState.hook_state["anchors"]``), so a resumed
run and every rank of ``--parallel windows`` select the same anchors.

Before the video has m_guid frames (the queue's warm-up, and its first frames) the windows run
as plain FIFO windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.hooks import LoopView, StepHook
from fifo.state import FifoState

# The bank keeps at most this many frames per anchor (see the module doc).
BANK_PER_ANCHOR = 4


def new_bank() -> dict[str, Any]:
    """An empty bank: no frames kept (``frames`` (k, c, h, w) once there are), stride 1, none seen."""
    return {"frames": None, "stride": 1, "seen": 0}


def bank_add(bank: dict[str, Any], latent: Tensor, capacity: int) -> None:
    """Offer the next output frame's clean latent (1, c, 1, h, w) to ``bank`` (in place).

    Frame ``seen`` is kept when it is a multiple of the stride; past ``capacity`` kept frames the
    bank keeps every second one (frames 0, 2·stride, 4·stride, ...) and doubles the stride.
    """
    index = bank["seen"]
    bank["seen"] = index + 1
    if index % bank["stride"]:
        return
    frame = latent[:, :, 0].detach().clone()  # (1, c, h, w)
    frames = frame if bank["frames"] is None else torch.cat([bank["frames"], frame])
    if frames.shape[0] > capacity:
        frames = frames[::2].clone()
        bank["stride"] *= 2
    bank["frames"] = frames


def bank_anchors(bank: dict[str, Any], count: int) -> Tensor | None:
    """``count`` kept frames at evenly spaced positions, oldest first, as (1, c, count, h, w);
    None while the bank holds fewer than ``count``."""
    frames = bank["frames"]
    if frames is None or frames.shape[0] < count:
        return None
    positions = np.rint(np.linspace(0, frames.shape[0] - 1, count)).astype(np.int64)
    return frames[torch.from_numpy(positions).to(frames.device)].permute(1, 0, 2, 3).unsqueeze(0)


class AnchoredWindows:
    """The windows' guided denoiser with the current anchors in front of every window.

    Rows of ``x`` (b, c, f, h, w) are windows; their first ``anchors.shape[2]`` frames are
    replaced by the anchors at timestep 0, the rest is the window as the queue holds it. The
    output of the anchor frames is what the model predicts for them; the FIFO step discards it
    (those frames are not written back).
    """

    def __init__(self, denoise: GuidedDenoiser) -> None:
        self.denoise = denoise
        self.anchors: Tensor | None = None  # (1, c, m, h, w), set before every iteration

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None) -> Tensor:
        if self.anchors is None:
            return self.denoise(x, t, cond, uncond)
        m = self.anchors.shape[2]
        if t.dim() != 2:
            raise ValueError("anchored windows need per-frame timesteps (b, f)")
        x = torch.cat([self.anchors.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1), x[:, :, m:]], dim=2)
        t = torch.cat([torch.zeros_like(t[:, :m]), t[:, m:]], dim=1)
        return self.denoise(x, t, cond, uncond)


class LongRangeGuidance(StepHook):
    """The ``anchors`` step hook (see the module doc).

    Args:
        count: m_guid, anchors per window (``AnchorOptions.count``).
        geometry: the queue layout (which dequeued frames are output frames).
    """

    name = "anchors"

    def __init__(self, count: int, geometry: FifoGeometry) -> None:
        self.count, self.geometry = count, geometry
        self.capacity = BANK_PER_ANCHOR * count
        self.windows: list[AnchoredWindows] = []

    def bank(self, state: FifoState) -> dict[str, Any]:
        """This hook's part of the state: the bank of :func:`new_bank`."""
        return state.hook_state.setdefault(self.name, new_bank())

    def wrap_windows(self, denoise: GuidedDenoiser) -> GuidedDenoiser:
        wrapped = AnchoredWindows(denoise)
        self.windows.append(wrapped)
        return wrapped

    def before_windows(self, loop: LoopView, state: FifoState) -> None:
        anchors = bank_anchors(self.bank(state), self.count)
        for wrapped in self.windows:
            wrapped.anchors = anchors

    def after_dequeue(self, loop: LoopView, state: FifoState, latent: Tensor) -> None:
        if state.iteration >= self.geometry.discarded_frames():  # an output frame
            bank_add(self.bank(state), latent, self.capacity)
