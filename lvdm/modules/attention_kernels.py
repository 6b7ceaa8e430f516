"""The attention kernels the processors of ``lvdm.modules.attention`` run: q (b, heads, n, d),
k and v (b, heads, m, d) → (b, heads, n, d), by backend name (``--attention``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_BACKENDS = ("sdpa", "xformers", "math", "efficient")

# CUDA launches attention kernels with the batch (and heads) on grid axes limited to 65,535
# blocks: a larger batch fails with "invalid configuration argument". The temporal attention's
# batch is samples·h·w (16 samples at 512x512: 65,536), so on CUDA it runs in slices below this.
CUDA_MAX_ATTENTION_BATCH = 32768


def xformers_available() -> bool:
    """Whether the optional xformers package is importable."""
    return importlib.util.find_spec("xformers") is not None


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _attend_math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax(q kᵀ / sqrt(d)) v, as the published code computes it; the reference for tests."""
    scale = q.shape[-1] ** -0.5
    weights = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return torch.einsum("bhij,bhjd->bhid", weights.softmax(dim=-1), v)


def _attend_xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    import xformers.ops  # optional dependency, CUDA only

    # xformers wants (batch, seq, heads, dim).
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return xformers.ops.memory_efficient_attention(q, k, v).transpose(1, 2)


def _attend_efficient(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's memory-efficient CUDA kernel, called directly (what SDPA picks on a GPU; a plan
    on fake CUDA tensors uses it to count the fused kernel's memory, not the math fallback's)."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]


_KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "sdpa": _attend_sdpa,
    "math": _attend_math,
    "xformers": _attend_xformers,
    "efficient": _attend_efficient,
}
