"""Perceiver resampler (IP-Adapter / VideoCrafter1): CLIP image tokens -> a few context tokens.

A fixed set of learned latent queries cross-attends to the projected image tokens (and to
themselves) through ``depth`` pairs of attention and feed-forward layers. Module names follow the
published checkpoints (``image_proj_model.*``): ``latents``, ``proj_in``,
``layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}``, ``layers.{i}.1.{0,1,3}``, ``proj_out``, ``norm_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeedForward", "PerceiverAttention", "Resampler"]


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:
    """Pre-norm MLP without biases: ``(b, n, dim) -> (b, n, dim)``."""
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to the image tokens and to themselves (keys/values from both).

    Args:
        dim: Feature width of tokens and latents.
        dim_head: Width of one attention head.
        heads: Number of heads.
    """

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(b, n, heads * dim_head) -> (b, heads, n, dim_head)``."""
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Image tokens ``x (b, n, dim)``, latents ``(b, l, dim)`` -> update for the latents ``(b, l, dim)``."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n_latents, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)
        # softmax(q k^T / sqrt(dim_head)) v; SDPA's default scale is exactly 1 / sqrt(dim_head).
        out = F.scaled_dot_product_attention(self._split_heads(q), self._split_heads(k), self._split_heads(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n_latents, -1))


class Resampler(nn.Module):
    """Perceiver resampler: image tokens ``(b, n, embedding_dim)`` -> ``(b, num_queries, output_dim)``.

    Args:
        dim: Internal width of latents and attention.
        depth: Number of (attention, feed-forward) layer pairs.
        dim_head: Width of one attention head.
        heads: Number of attention heads.
        num_queries: Number of learned latent queries (= output tokens).
        embedding_dim: Width of the input image tokens.
        output_dim: Width of the output tokens.
        ff_mult: Hidden width multiplier of the feed-forward layers.
        video_length: DynamiCrafter's per-frame variant: ``num_queries`` queries for each of
            ``video_length`` frames (``num_queries · video_length`` output tokens, frame-major).
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 8,
        dim_head: int = 64,
        heads: int = 16,
        num_queries: int = 8,
        embedding_dim: int = 768,
        output_dim: int = 1024,
        ff_mult: int = 4,
        video_length: int | None = None,
    ) -> None:
        super().__init__()
        self.num_queries, self.video_length = num_queries, video_length
        total_queries = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, total_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), FeedForward(dim, ff_mult)]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, embedding_dim) -> (b, num_queries·(video_length or 1), output_dim)``."""
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
