"""What some members of the model family add to the attention layers (``lvdm.modules.attention``).

- VideoCrafter1 text-to-video: relative-position embeddings in the temporal attention
  (:class:`RelativePosition`, :func:`attend_relative`).
- DynamiCrafter: 16 image tokens per frame of a clip, each frame attending to its own
  (:func:`per_frame_image_tokens`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lvdm.family import IMAGE_TOKENS_PER_FRAME


class RelativePosition(nn.Module):
    """Learned embeddings of the clipped distance between two frames (VideoCrafter1's temporal
    attention, ``use_relative_position``): (len_q, len_k) → (len_q, len_k, dim_head).

    Key ``embeddings_table`` (2·max_distance + 1, dim_head), as published.
    """

    def __init__(self, dim_head: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.embeddings_table = nn.Parameter(torch.empty(2 * max_distance + 1, dim_head))
        nn.init.xavier_uniform_(self.embeddings_table)

    def forward(self, len_q: int, len_k: int) -> Tensor:
        device = self.embeddings_table.device
        distance = torch.arange(len_k, device=device)[None, :] - torch.arange(len_q, device=device)[:, None]
        return self.embeddings_table[
            distance.clamp(-self.max_distance, self.max_distance) + self.max_distance
        ]


def attend_relative(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention with relative-position terms on the scores and on the values, q (b, heads, n, d),
    for a ``CrossAttention`` layer ``attn`` that holds the two :class:`RelativePosition` tables:
    softmax((q·k + q·E_k[i, j]) / sqrt(d)) then + Σ_j p_ij E_v[i, j]. Explicit (the fused kernels
    take no value term); the temporal sequences it serves are a clip's frames, short.

    In fp16/bf16 the scores are computed in fp32 from the query scaled first, as the fused
    kernels do: a half-precision q·kᵀ overflows (fp16 ends at 65504) before the scale brings it
    down. fp32 inputs take the published order of operations."""
    n, m = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5
    if q.dtype in (torch.float16, torch.bfloat16):
        table_k = attn.relative_position_k(n, m).float()
        table_v = attn.relative_position_v(n, m).to(q.dtype)
        qs = q.float() * scale
        scores = torch.einsum("bhid,bhjd->bhij", qs, k.float()) + torch.einsum("bhid,ijd->bhij", qs, table_k)
        probs = scores.softmax(dim=-1).to(q.dtype)
        return torch.einsum("bhij,bhjd->bhid", probs, v) + torch.einsum("bhij,ijd->bhid", probs, table_v)
    table_k = attn.relative_position_k(n, m).to(q.dtype)
    table_v = attn.relative_position_v(n, m).to(q.dtype)
    scores = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, table_k)) * scale
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhij,bhjd->bhid", probs, v) + torch.einsum("bhij,ijd->bhid", probs, table_v)


def per_frame_image_tokens(image: Tensor, frames: int) -> tuple[Tensor, int]:
    """Image tokens (b, m, d) of clips of ``frames`` frames, as keys for the frames' queries.

    The published rule (DynamiCrafter's U-Net): when there are 16 tokens per frame, frame k of a
    clip attends to tokens [16k, 16k + 16) only: (b·frames, 16, d), one row per frame (1
    repeat). Otherwise every frame attends to all of them: (b, m, d), ``frames`` repeats.
    """
    if frames > 1 and image.shape[1] == frames * IMAGE_TOKENS_PER_FRAME:
        return image.reshape(image.shape[0] * frames, IMAGE_TOKENS_PER_FRAME, image.shape[2]), 1
    return image, frames
