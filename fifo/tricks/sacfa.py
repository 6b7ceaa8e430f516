"""Subject-Aware Cross-Frame Attention (Ouroboros-Diffusion, ``sacfa``).

In the spatial self-attention (``attn1``) of the decoder's transformers at the subject levels,
each frame's queries attend to the frame's own tokens and also to the subject tokens of the
other frames of its clip (its FIFO window): the keys and values of the positions inside the
other frames' subject masks are concatenated to the frame's own, so the subject's appearance
is shared across the window while the background stays each frame's own. The subject masks
come from the encoder's cross-attention maps of the same pass (``fifo.tricks.subject``).

Choices made here (see docs/usage.md, "Ouroboros-Diffusion's tricks"):

- A frame attends to the subject tokens of the *other* frames (its own are already among its
  keys); the demo concatenates the subject tokens of all frames, its own included.
- Masks are computed per level from that level's encoder cross-attention maps (the same
  resolution), where the demo resizes one set of maps to each layer.
- The layers: the decoder's spatial self-attention at ``SubjectOptions.levels`` (default 1 and
  2: half and quarter latent resolution, the demo's down-sampling factors 2 and 4).

A clip without a subject mask runs plain attention (the same computation, bit for bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from fifo.tricks.subject import (
    Attend,
    SubjectStore,
    remove_trick_processors,
    spatial_attention,
)
from lvdm.modules.attention import AttentionBackend, AttnProcessor, CrossAttention, add_processor
from lvdm.modules.layer_names import AttentionSite, UNetSide


def cross_frame_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """One clip's attention with the other frames' subject tokens: q, k, v (t, heads, n, d), mask (t, n).

    Frame f attends to its own n tokens and to every subject token (mask True) of the frames g ≠ f.
    """
    t, _, n, _ = q.shape
    frame_of, position = mask.nonzero(as_tuple=True)  # the subject tokens of the clip, (s,)
    extra_k = k[frame_of, :, position].transpose(0, 1)  # (heads, s, d)
    extra_v = v[frame_of, :, position].transpose(0, 1)
    keys = torch.cat([k, extra_k.expand(t, -1, -1, -1)], dim=2)  # (t, heads, n + s, d)
    values = torch.cat([v, extra_v.expand(t, -1, -1, -1)], dim=2)
    frames = torch.arange(t, device=q.device)
    allowed = torch.cat(
        [torch.ones(t, n, dtype=torch.bool, device=q.device), frame_of[None, :] != frames[:, None]], dim=1
    )
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None, None, :])


def dense_cross_frame_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """:func:`cross_frame_attention` with every frame's tokens as keys and the mask as an attention
    mask: the same result up to rounding, with shapes that do not depend on the mask's values (a
    run planned on fake tensors, where the mask has none)."""
    t, heads, n, d = q.shape
    every = k.transpose(0, 1).reshape(1, heads, t * n, d).expand(t, -1, -1, -1)
    every_v = v.transpose(0, 1).reshape(1, heads, t * n, d).expand(t, -1, -1, -1)
    frames = torch.arange(t, device=q.device)
    other_subject = mask.reshape(1, t * n) & (frames.repeat_interleave(n)[None, :] != frames[:, None])
    allowed = torch.cat([torch.ones(t, n, dtype=torch.bool, device=q.device), other_subject], dim=1)
    keys, values = torch.cat([k, every], dim=2), torch.cat([v, every_v], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None, None, :])


class SacfaProcessor(AttnProcessor):
    """Decoder spatial self-attention at ``level``: cross-frame attention to the subject tokens."""

    def __init__(
        self, store: SubjectStore, level: int, backend: AttentionBackend = AttentionBackend.SDPA
    ) -> None:
        super().__init__(backend)
        self.store, self.level = store, level

    def attend_self(
        self, attn: CrossAttention, q: Tensor, k: Tensor, v: Tensor, rows_per_clip: int, inner: Attend
    ) -> Tensor:
        """q, k, v (clips·t, heads, n, d) with t = ``rows_per_clip`` → (clips·t, heads, n, d)."""
        t = rows_per_clip
        masks = self.store.pass_masks(self.level, q.shape[0] // t, t)
        if masks is None:
            return inner(q, k, v)
        if is_fake(masks):
            # A planned run: every clip has a subject that covers every position (the most keys).
            return torch.cat(
                [
                    dense_cross_frame_attention(q[c : c + t], k[c : c + t], v[c : c + t], masks[c // t])
                    for c in range(0, q.shape[0], t)
                ]
            )
        if not bool(masks.any()):
            return inner(q, k, v)
        with_subject = masks.flatten(1).any(1).tolist()
        # The plain attention only where some clip has no subject (no in-place writes: SRG
        # differentiates through this).
        plain = None if all(with_subject) else inner(q, k, v)
        parts = []
        for clip, has in enumerate(with_subject):
            rows = slice(clip * t, (clip + 1) * t)
            parts.append(
                cross_frame_attention(q[rows], k[rows], v[rows], masks[clip]) if has else plain[rows]
            )
        return torch.cat(parts)


def set_sacfa(unet: nn.Module, store: SubjectStore | None) -> None:
    """Install SACFA on the decoder's spatial self-attention at the store's levels; None removes it.

    The processors go next to other tricks' on the same layers (a spatial Q-cache's blend, SRG's
    key recorder, which must be installed first so that it sees the keys before this one).
    """
    remove_trick_processors(unet, (SacfaProcessor,))
    if store is None:
        return
    backend = unet.attention_backend
    for level in store.options.levels:
        for layer in spatial_attention(unet, UNetSide.DECODER, level, AttentionSite.SELF).values():
            add_processor(layer, SacfaProcessor(store, level, backend), backend)
