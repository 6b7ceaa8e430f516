"""Attention layers of the 3D U-Net: spatial and temporal transformers.

Each :class:`CrossAttention` delegates its computation to a swappable *processor* (the way
diffusers does it). The default :class:`AttnProcessor` projects q/k/v and runs the attention
kernel; the FIFO method's tricks (``fifo.tricks``) install processors on chosen layers that
change parts of that computation, without flags threaded through the forward passes. The U-Net
installs plain processors with ``UNetModel.set_attn_processor``.

A context row may be shared by several consecutive samples of ``x``: the spatial transformers
fold a clip's frames into the batch, ``(b·t, n, c)``, and cross-attend the clip's one context
``(b, m, d)``. Layers take that repeat count explicitly (``context_repeats = t``). Self-attention
layers get the same count: the consecutive rows of ``x`` that form one clip (1 where a row is a
whole sequence, as in the temporal transformers). Plain attention attends within each row; a
processor that attends across the frames of a clip reads it.

**Processor hooks.** A processor changes attention through three hooks, each a no-op by default:

- ``process_query(attn, q)``: the projected query ``(rows, n, heads·d)`` (Q-caches blend it);
- ``attend_self(attn, q, k, v, rows_per_clip, inner)``: self-attention over split heads
  ``(rows, heads, n, d)``; ``inner(q, k, v)`` is the attention it would otherwise run
  (cross-frame attention adds keys and values here);
- ``attend_text(attn, q, k, v, context_repeats, inner)``: the attention over the context's
  text tokens (the whole context when it has no image tokens), keys ``(rows / r, heads, m, d)``
  (a trick that reads the cross-attention maps observes them here).

**Several tricks on one layer** compose instead of replacing each other: :func:`add_processor`
puts a processor next to those already on a layer (a :class:`ComposedProcessor`: queries pass
through every part in order; each attention hook is a chain in which a part calls ``inner`` to
run the next part's, the last one's ``inner`` being the kernel), :func:`remove_processors`
takes a kind of processor off again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# The kernels live in their own module; their names stay importable from here.
from lvdm.modules.attention_kernels import (  # noqa: F401
    _KERNELS,
    ATTENTION_BACKENDS,
    CUDA_MAX_ATTENTION_BATCH,
    AttentionBackend,
    xformers_available,
)
from lvdm.modules.attention_variants import RelativePosition, attend_relative, per_frame_image_tokens


def max_attention_batch(device: torch.device) -> int | None:
    """The largest batch one attention kernel launch takes on ``device`` (None: no limit)."""
    return CUDA_MAX_ATTENTION_BATCH if device.type == "cuda" else None


def run_attention(backend: AttentionBackend, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention with ``backend`` over q (b, heads, n, d), k and v (b, heads, m, d).

    A batch beyond what one kernel launch takes (CUDA's grid limit) runs in slices: same result.
    """
    kernel = _KERNELS[backend]
    limit = max_attention_batch(q.device)
    if limit is None or q.shape[0] <= limit:
        return kernel(q, k, v)
    return torch.cat(
        [kernel(q[i : i + limit], k[i : i + limit], v[i : i + limit]) for i in range(0, q.shape[0], limit)]
    )


class AttnProcessor:
    """Default attention: project q/k/v, attend, add the image-token branch, project out.

    Args:
        backend: the kernel (:class:`AttentionBackend`; its value is accepted too).
    """

    def __init__(self, backend: AttentionBackend | str = AttentionBackend.SDPA) -> None:
        try:
            self.backend = AttentionBackend(backend)
        except ValueError:
            raise ValueError(
                f"unknown attention backend {backend!r}; valid: {', '.join(ATTENTION_BACKENDS)}"
            ) from None

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        """Hook for tricks that change the query, ``q``: (b, n, heads·dim_head)."""
        return q

    def attend_self(
        self,
        attn: CrossAttention,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rows_per_clip: int,
        inner: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """Hook for tricks that change self-attention: q, k, v (rows, heads, n, d) → same shape.

        ``rows_per_clip`` consecutive rows form one clip; ``inner`` runs the attention otherwise run.
        """
        return inner(q, k, v)

    def attend_text(
        self,
        attn: CrossAttention,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        context_repeats: int,
        inner: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """Hook on the attention over the text tokens: q (b·r, heads, n, d), k, v (b, heads, m, d).

        ``inner`` runs the attention otherwise run; the result is (b·r, heads, n, d).
        """
        return inner(q, k, v)

    def __call__(
        self, attn: CrossAttention, x: Tensor, context: Tensor | None = None, context_repeats: int = 1
    ) -> Tensor:
        """x: (b·r, n, c), context: (b, m, d) or None (self-attention), r = ``context_repeats``.

        For self-attention, ``context_repeats`` is the number of consecutive rows per clip.
        """
        kernel = functools.partial(run_attention, self.backend)
        if attn.relative_position is not None:
            kernel = functools.partial(attend_relative, attn)
        q = self.process_query(attn, attn.to_q(x))
        if context is None:
            out = self.attend_self(
                attn, *attn.split_heads(q, attn.to_k(x), attn.to_v(x)), context_repeats, kernel
            )
            return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            # A context row shared by `context_repeats` consecutive samples (the frames of a
            # clip): fold them into the query sequence instead of projecting the context once
            # per frame. Softmax is per query row, so the result is the same.
            return attend_shared_context(kernel, q, k, v, context_repeats)

        if attn.image_cross_attention and context.shape[1] > attn.text_context_len:
            # Text and image tokens get their own keys/values; the two results are added.
            # (Text alone: the image branch attends to nothing and adds zero, as published.)
            text, image = context[:, : attn.text_context_len], context[:, attn.text_context_len :]
            out = self.attend_text(
                attn, *attn.split_heads(q, attn.to_k(text), attn.to_v(text)), context_repeats, attend
            )
            image, image_repeats = per_frame_image_tokens(image, context_repeats)
            image_out = attend_shared_context(
                kernel, *attn.split_heads(q, attn.to_k_ip(image), attn.to_v_ip(image)), image_repeats
            )
            out = out + attn.image_weight(image_out)
        else:
            out = self.attend_text(
                attn, *attn.split_heads(q, attn.to_k(context), attn.to_v(context)), context_repeats, attend
            )
        return attn.to_out(rearrange(out, "b h n d -> b n (h d)"))


class ComposedProcessor(AttnProcessor):
    """Several processors' hooks on one layer (see the module doc), computed with ``backend``.

    Queries pass through every part's ``process_query`` in order. ``attend_self`` and
    ``attend_text`` are chains: the first part's hook runs with ``inner`` set to the second
    part's, and so on; the last part's ``inner`` is the kernel. A part that only observes calls
    ``inner`` with what it got; a part that changes the attention may compute it itself.
    """

    def __init__(
        self, parts: Sequence[AttnProcessor], backend: AttentionBackend = AttentionBackend.SDPA
    ) -> None:
        super().__init__(backend)
        if len(parts) < 2:
            raise ValueError("a ComposedProcessor needs at least two parts")
        self.parts = tuple(parts)

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        for part in self.parts:
            q = part.process_query(attn, q)
        return q

    def attend_self(
        self,
        attn: CrossAttention,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rows_per_clip: int,
        inner: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        for part in reversed(self.parts):
            inner = functools.partial(part.attend_self, attn, rows_per_clip=rows_per_clip, inner=inner)
        return inner(q, k, v)

    def attend_text(
        self,
        attn: CrossAttention,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        context_repeats: int,
        inner: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        for part in reversed(self.parts):
            inner = functools.partial(part.attend_text, attn, context_repeats=context_repeats, inner=inner)
        return inner(q, k, v)


def processor_parts(layer: CrossAttention) -> tuple[AttnProcessor, ...]:
    """The tricks' processors on ``layer`` (none where it runs plain attention)."""
    processor = layer.processor
    if isinstance(processor, ComposedProcessor):
        return processor.parts
    return () if type(processor) is AttnProcessor else (processor,)


def _set_parts(layer: CrossAttention, parts: tuple[AttnProcessor, ...], backend: AttentionBackend) -> None:
    if not parts:
        layer.processor = AttnProcessor(backend)
    elif len(parts) == 1:
        layer.processor = parts[0]
    else:
        layer.processor = ComposedProcessor(parts, backend)


def add_processor(layer: CrossAttention, processor: AttnProcessor, backend: AttentionBackend) -> None:
    """Put ``processor`` on ``layer`` after the tricks' processors already there (kernel: ``backend``)."""
    _set_parts(layer, (*processor_parts(layer), processor), backend)


def remove_processors(
    layer: CrossAttention, kind: type | tuple[type, ...], backend: AttentionBackend
) -> None:
    """Take every processor of ``kind`` off ``layer``; plain attention (``backend``) where none is left."""
    _set_parts(layer, tuple(p for p in processor_parts(layer) if not isinstance(p, kind)), backend)


def attend_shared_context(
    kernel: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, repeats: int
) -> Tensor:
    """Attention of q (b·r, heads, n, d) over k, v (b, heads, m, d): r query rows per key row.

    The r query rows of a key row are attended as one longer sequence, ``(b, heads, r·n, d)``.
    """
    if repeats == 1:
        return kernel(q, k, v)
    b, h, n, d = q.shape
    q = q.reshape(b // repeats, repeats, h, n, d).transpose(1, 2).reshape(b // repeats, h, repeats * n, d)
    out = kernel(q, k, v).reshape(b // repeats, h, repeats, n, d).transpose(1, 2)
    return out.reshape(b, h, n, d)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when called without ``context``.

    Args:
        query_dim: channels of ``x``.
        context_dim: channels of the context tokens (``None``: self-attention).
        heads, dim_head: head count and width.
        image_cross_attention: the context holds ``text_context_len`` text tokens followed by
            image tokens, attended with separate ``to_k_ip``/``to_v_ip`` projections
            (VideoCrafter1 image-to-video, DynamiCrafter).
        image_cross_attention_scale_learnable: the image branch is weighted by
            ``tanh(alpha) + 1`` with a learned scalar ``alpha`` (DynamiCrafter 256).
        relative_position: relative-position embeddings on scores and values, for distances up
            to this (the temporal attention of VideoCrafter1 text-to-video), or None.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        image_cross_attention: bool = False,
        text_context_len: int = 77,
        image_cross_attention_scale_learnable: bool = False,
        relative_position: int | None = None,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        self.text_context_len = text_context_len
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner_dim, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner_dim, bias=False)
            if image_cross_attention_scale_learnable:
                self.alpha = nn.Parameter(torch.tensor(0.0))
        # VideoCrafter1's temporal attention: relative positions up to this many frames apart.
        self.relative_position = relative_position
        if relative_position is not None:
            self.relative_position_k = RelativePosition(dim_head, relative_position)
            self.relative_position_v = RelativePosition(dim_head, relative_position)
        self.processor: AttnProcessor = AttnProcessor()

    def image_weight(self, image_out: Tensor) -> Tensor:
        """The image branch's result as it is added to the text branch's (weight 1, or
        ``tanh(alpha) + 1`` when learned)."""
        alpha = getattr(self, "alpha", None)
        return image_out if alpha is None else image_out * (torch.tanh(alpha) + 1).to(image_out.dtype)

    def split_heads(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """(b, n, heads·d) → (b, heads, n, d) for each tensor."""
        return tuple(rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in tensors)

    def forward(self, x: Tensor, context: Tensor | None = None, context_repeats: int = 1) -> Tensor:
        """x: (b·r, n, query_dim), context: (b, m, context_dim) shared by r = ``context_repeats``
        consecutive samples, or None for self-attention (then r is the rows per clip) → (b·r, n,
        query_dim)."""
        if context is not None and x.shape[0] != context.shape[0] * context_repeats:
            raise ValueError(
                f"attention: {x.shape[0]} query rows do not make {context.shape[0]} context rows "
                f"× {context_repeats} repeats"
            )
        return self.processor(self, x, context, context_repeats)


class GEGLU(nn.Module):
    """Gated GELU projection: one linear layer yields the value and its gate."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: attn1 (self), attn2 (cross, or self without a context), feed-forward."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        relative_position: int | None = None,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout, relative_position=relative_position)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(
            dim,
            context_dim,
            n_heads,
            d_head,
            dropout,
            image_cross_attention,
            image_cross_attention_scale_learnable=image_scale_learnable,
            relative_position=relative_position,
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None, context_repeats: int = 1) -> Tensor:
        """x: (b·r, n, dim), context: (b, m, context_dim) shared by r consecutive rows, or None."""
        # attn1 learns the clip layout too (rows per clip), for processors that attend across frames.
        x = self.attn1(self.norm1(x), None, context_repeats) + x
        x = self.attn2(self.norm2(x), context, context_repeats) + x
        return self.ff(self.norm3(x)) + x


def _pointwise(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a Linear, or a kernel-1 Conv1d/Conv2d, to channels-last ``x`` (…, c)."""
    if isinstance(layer, nn.Linear):
        return layer(x)
    return F.linear(x, layer.weight.flatten(1), layer.bias)


def _make_pointwise(use_linear: bool, dims: int, c_in: int, c_out: int) -> nn.Module:
    # The published layers are Linear, or kernel-1 convolutions (same maths, other key shapes).
    if use_linear:
        return nn.Linear(c_in, c_out)
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, kernel_size=1)


class _Transformer(nn.Module):
    """What the spatial and temporal transformers share: norm, projections in and out, blocks.

    The projections are Linear layers (``use_linear``) or kernel-1 convolutions of
    ``POINTWISE_DIMS`` dimensions, as in the published checkpoints.
    """

    POINTWISE_DIMS = 2
    CROSS_ATTENTION = True

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_linear: bool = False,
        image_cross_attention: bool = False,
        image_scale_learnable: bool = False,
        relative_position: int | None = None,
    ) -> None:
        super().__init__()
        if context_dim is not None and not self.CROSS_ATTENTION:
            raise ValueError(f"{type(self).__name__} attends only to itself: context_dim must be None")
        inner = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = _make_pointwise(use_linear, self.POINTWISE_DIMS, in_channels, inner)
        self.transformer_blocks = nn.ModuleList()
        self.proj_out = _make_pointwise(use_linear, self.POINTWISE_DIMS, inner, in_channels)
        # Blocks last: random initialisation draws in the published order (--random_init videos
        # stay the same), while the checkpoint keys keep the module order above.
        self.transformer_blocks.extend(
            BasicTransformerBlock(
                inner,
                n_heads,
                d_head,
                dropout,
                context_dim,
                image_cross_attention,
                image_scale_learnable,
                relative_position,
            )
            for _ in range(depth)
        )

    def transform(self, y: Tensor, context: Tensor | None, context_repeats: int = 1) -> Tensor:
        """The token part: y (rows, n, c) → (rows, n, c); context (rows / r, m, d) or None.

        Every row (a frame's positions, or a position's frames) is an independent sequence.
        """
        y = _pointwise(self.proj_in, y)
        for block in self.transformer_blocks:
            y = block(y, context, context_repeats)
        return _pointwise(self.proj_out, y)


class SpatialTransformer(_Transformer):
    """Attention over the h·w positions of each frame; cross-attends the text (and image) tokens.

    Input and output: (b·t, c, h, w); context: (b, m, context_dim), shared by the t frames.
    """

    def forward(self, x: Tensor, context: Tensor | None = None, frames: int = 1) -> Tensor:
        """x: (b·frames, c, h, w); context: (b, m, context_dim), one row per clip."""
        _, _, h, w = x.shape
        y = rearrange(self.norm(x), "b c h w -> b (h w) c")
        y = self.transform(y, context, frames)
        return rearrange(y, "b (h w) c -> b c h w", h=h, w=w) + x


class TemporalTransformer(_Transformer):
    """Self-attention along time at each spatial position.

    Input and output: (b, c, t, h, w). The group norm spans all frames of a clip, so each
    sample of the batch must be one whole clip. The published variants are supported:
    self-attention only, no causal mask; relative positions (``relative_position`` = the
    config's ``temporal_length``, VideoCrafter1 text-to-video) or none.
    """

    POINTWISE_DIMS = 1
    CROSS_ATTENTION = False  # temporal_selfatt_only: attn2 is self-attention too

    def forward(self, x: Tensor) -> Tensor:
        _, _, _, h, w = x.shape
        y = rearrange(self.norm(x), "b c t h w -> (b h w) t c")
        y = self.transform(y, None)
        return rearrange(y, "(b h w) t c -> b c t h w", h=h, w=w) + x
