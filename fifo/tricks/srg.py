"""Self-recurrent guidance (Ouroboros-Diffusion, ``srg``).

A bank of the subject's features, a moving average over the frames already dequeued, pulls the
front of the queue (its least noisy frames) towards the subject as it looked so far. After
every iteration's windows (:meth:`SelfRecurrentGuidance.after_windows`), the front window runs
once more through the U-Net, conditional branch only, with gradients for its written-back
frames alone; the subject features of those frames are compared with the bank, and the
gradient of that distance is a guidance term on the DDIM update of those frames (Eq. 6 of the
paper, as its demo computes it):

    x_{t−1} ← x_{t−1} − w · sqrt(1 − ᾱ_{t−1} − σ_t²) · sqrt(1 − ᾱ_t) · ∇_{x_t} L,
    L = mean over guided frames and sites of mean((f(x_t) − bank)²)

(the demo subtracts the same term inside its DDIM step; the step is linear in it, so applying
it after the windows' step gives the same update). The dequeued frame's features, computed in
that same pass, enter the bank (:meth:`after_dequeue`): ``bank ← m·bank + (1 − m)·f``.

Features: at each decoder spatial self-attention (``attn1``) at the subject levels, a frame's
keys averaged over its subject mask, one (heads·d,) vector per layer ("site"); the demo keeps
the same layers' keys. The bank is kept in ``FifoState.hook_state["srg"]`` (tensors and plain
values), so that it is saved and restored with the state.

Cost and memory: one more forward and one backward pass of one window (f frames, one guidance
branch) per guided window and iteration; the graph of that one pass is the only one ever held
(``torch.inference_mode(False)`` and ``torch.enable_grad()`` around it alone, inputs cloned out
of the caller's inference mode; everything else runs as before, without autograd).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from fifo.geometry import FifoGeometry, Window
from fifo.guidance import BranchDenoiser
from fifo.hooks import LoopView, StepHook
from fifo.options import SrgOptions
from fifo.schedule import DDIMSchedule
from fifo.state import FifoState
from fifo.tricks.subject import Attend, SubjectStore, remove_trick_processors, spatial_attention
from lvdm.modules.attention import AttentionBackend, AttnProcessor, CrossAttention, add_processor
from lvdm.modules.layer_names import AttentionSite, UNetSide


class SubjectKeyRecorder(AttnProcessor):
    """Decoder spatial self-attention: hands its keys to the store while SRG records; attention unchanged."""

    def __init__(
        self, store: SubjectStore, level: int, site: str, backend: AttentionBackend = AttentionBackend.SDPA
    ) -> None:
        super().__init__(backend)
        self.store, self.level, self.site = store, level, site

    def attend_self(
        self, attn: CrossAttention, q: Tensor, k: Tensor, v: Tensor, rows_per_clip: int, inner: Attend
    ) -> Tensor:
        self.store.record_keys(self.site, self.level, k)
        return inner(q, k, v)


def set_srg_recorders(unet: nn.Module, store: SubjectStore | None) -> None:
    """Install the key recorders on the decoder's spatial self-attention at the store's levels (None: remove).

    Install them before SACFA (``fifo.tricks.sacfa.set_sacfa``) on the same layers, so that they
    come first in the processor chain and see every call.
    """
    remove_trick_processors(unet, (SubjectKeyRecorder,))
    if store is None:
        return
    backend = unet.attention_backend
    for level in store.options.levels:
        for site, layer in spatial_attention(unet, UNetSide.DECODER, level, AttentionSite.SELF).items():
            add_processor(layer, SubjectKeyRecorder(store, level, site, backend), backend)


def subject_features(keys: dict[str, tuple[int, Tensor]], masks: dict[int, Tensor]) -> tuple[dict, Tensor]:
    """Per site, each frame's keys averaged over its subject mask.

    Args:
        keys: site → (level, keys (t, heads, n, d)) of one clip.
        masks: level → (t, n) bool.
    Returns:
        (site → (t, heads·d) features, (t,) bool: the frames with a subject).
    """
    features, present = {}, None
    for site, (level, k) in keys.items():
        mask = masks[level].to(k.dtype)  # (t, n)
        t, heads, n, d = k.shape
        flat = k.permute(0, 2, 1, 3).reshape(t, n, heads * d)
        features[site] = (mask[..., None] * flat).sum(1) / mask.sum(1).clamp_min(1.0)[:, None]
        present = masks[level].any(1) if present is None else present & masks[level].any(1)
    return features, present if present is not None else torch.zeros(0, dtype=torch.bool)


def subject_distance(features: dict[str, Tensor], bank: dict[str, Tensor], frames: Tensor) -> Tensor | None:
    """L: mean over the chosen ``frames`` (bool (t,)) and the sites of mean((feature − bank)²), or None."""
    if not (is_fake(frames) or bool(frames.any())):
        return None
    # Weights rather than boolean indexing: shapes that do not depend on values (planned runs).
    weight = frames.to(next(iter(features.values())).dtype) if features else None
    terms = [
        (((features[s] - bank[s].to(features[s].dtype)) ** 2).mean(-1) * weight).sum()
        / weight.sum().clamp_min(1)
        for s in features
        if s in bank
    ]
    if not terms:
        return None
    return torch.stack(terms).mean()


class SelfRecurrentGuidance(StepHook):
    """The SRG step hook (see the module doc).

    Args:
        options: weight, bank momentum, guided windows.
        store: the subject store (with the key recorders installed).
        denoise: the model denoiser (x, t, context) → eps, conditional branch alone.
        schedule, geometry: the run's DDIM schedule and queue layout.
    """

    name = "srg"

    def __init__(
        self,
        options: SrgOptions,
        store: SubjectStore,
        denoise: BranchDenoiser,
        schedule: DDIMSchedule,
        geometry: FifoGeometry,
    ) -> None:
        windows = geometry.windows()
        self.options, self.store, self.denoise = options, store, denoise
        self.schedule, self.geometry = schedule, geometry
        # Front first (windows() lists the noisiest first), with the index into the iteration's contexts.
        count = options.guided_windows(geometry)
        self.guided = [(len(windows) - 1 - i, windows[-1 - i]) for i in range(count)]

    def state(self, state: FifoState) -> dict[str, Any]:
        """This hook's part of ``state.hook_state``: the bank (site → (heads·d,)), its frame count, the pending features."""
        return state.hook_state.setdefault(self.name, {"bank": {}, "frames": 0, "pending": None})

    def after_windows(self, loop: LoopView, state: FifoState, queue: Tensor, contexts: Tensor) -> Tensor:
        bank_state = self.state(state)
        for number, (index, window) in enumerate(self.guided):
            # A planned run (fake tensors) plans the guided pass with its backward, bank or not.
            guide = (bool(bank_state["bank"]) or is_fake(state.queue)) and self.options.weight > 0
            features, present, grad = self.guidance_gradient(
                state.queue, window, contexts[index : index + 1], bank_state["bank"], guide
            )
            if number == 0:  # the front window holds the frame dequeued next
                out = self.geometry.output_slot - window.start
                bank_state["pending"] = (
                    {s: f[out].detach().clone() for s, f in features.items()}
                    if is_fake(present) or present[out]
                    else None
                )
            if grad is not None:
                queue = queue.clone()
                queue[:, :, window.write_start : window.end] -= self.update(window, grad).to(queue.dtype)
        return queue

    def after_dequeue(self, loop: LoopView, state: FifoState, latent: Tensor) -> None:
        bank_state = self.state(state)
        pending, bank_state["pending"] = bank_state["pending"], None
        if pending is None:
            return
        m = self.options.momentum
        bank = bank_state["bank"]
        for site, feature in pending.items():
            bank[site] = feature if site not in bank else m * bank[site] + (1.0 - m) * feature
        bank_state["frames"] += 1

    # ------------------------------------------------------------------ the guided pass
    def guidance_gradient(
        self, queue: Tensor, window: Window, context: Tensor, bank: dict[str, Tensor], guide: bool
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """One pass of ``window`` of ``queue`` (before this iteration's step) through the U-Net.

        Returns the subject features of its frames (site → (f, heads·d)), which frames have a
        subject (f,), and ∇L with respect to its written-back frames (1, c, w, h, w') or None.
        """
        index = torch.from_numpy(self.geometry.slot_indices()[window.start : window.end])
        lo, hi = window.write_start - window.start, window.end - window.start
        grad_mode = torch.enable_grad() if guide else torch.no_grad()
        with torch.inference_mode(False), grad_mode:
            # Clones: the caller's tensors may be inference tensors, which autograd cannot save.
            clip = queue[:, :, window.start : window.end].clone()
            guided = clip[:, :, lo:hi].detach().requires_grad_(guide)
            x = torch.cat([clip[:, :, :lo], guided, clip[:, :, hi:]], dim=2)
            t = self.schedule.timesteps.to(queue.device)[index.to(queue.device)][None].clone()
            self.store.start_recording()
            try:
                self.denoise(x, t, context.clone())
            finally:
                keys = self.store.take_keys()
            masks = {level: self.store.masks(level) for level in {lvl for lvl, _ in keys.values()}}
            if not keys or any(m is None for m in masks.values()):
                return {}, torch.zeros(x.shape[2], dtype=torch.bool), None
            features, present = subject_features(keys, {lvl: m[0] for lvl, m in masks.items()})
            frames = torch.zeros_like(present)
            frames[lo:hi] = present[lo:hi]
            if guide and not bank and is_fake(x):
                bank = {s: torch.zeros_like(f[0]) for s, f in features.items()}
            loss = subject_distance(features, bank, frames) if guide else None
            if loss is None:
                grad = None
            elif is_fake(x) and x.device.type == "cuda" and not torch.cuda.is_available():
                # A run planned for a GPU that is not present: autograd's engine needs a real CUDA
                # context. The saved activations (the memory) are counted; the backward's FLOPs
                # (about twice the guided forward's) are not, as docs/scaling.md says.
                grad = torch.zeros_like(guided)
            else:
                grad = torch.autograd.grad(loss, guided)[0].detach()
        return {s: f.detach() for s, f in features.items()}, present, grad

    def update(self, window: Window, grad: Tensor) -> Tensor:
        """The guidance term of the written-back frames: w · sqrt(1 − ᾱ_prev − σ²) · sqrt(1 − ᾱ_t) · ∇L."""
        index = torch.from_numpy(self.geometry.slot_indices()[window.write_start : window.end])
        s = self.schedule
        a_t, a_prev, sigma = (v.cpu()[index].double() for v in (s.alphas, s.alphas_prev, s.sigmas))
        coef = self.options.weight * (1.0 - a_prev - sigma**2).clamp_min(0).sqrt() * (1.0 - a_t).sqrt()
        return grad * coef.to(grad.device, grad.dtype).reshape(1, 1, -1, 1, 1)
