"""The attention kernels the processors of ``lvdm.modules.attention`` run: q (b, heads, n, d),
k and v (b, heads, m, d) → (b, heads, n, d), one per :class:`AttentionBackend`."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBackend(StrEnum):
    """The kernel an attention processor runs."""

    SDPA = "sdpa"  # PyTorch's scaled_dot_product_attention (its fused kernels): the default
    XFORMERS = "xformers"  # xformers' memory-efficient kernel (CUDA only, optional package)
    MATH = "math"  # explicit softmax: the numerical reference
    EFFICIENT = "efficient"  # PyTorch's memory-efficient CUDA kernel, called directly (plans)


ATTENTION_BACKENDS = tuple(b.value for b in AttentionBackend)

# CUDA launches attention kernels with the batch (and heads) on grid axes limited to 65,535
# blocks: a larger batch fails with "invalid configuration argument". The temporal attention's
# batch is samples·h·w (16 samples at 512x512: 65,536), so on CUDA it runs in slices below this.
CUDA_MAX_ATTENTION_BATCH = 32768


def xformers_available() -> bool:
    """Whether the optional xformers package is importable."""
    return importlib.util.find_spec("xformers") is not None


# bf16 attention on a CPU over at most this many keys (a clip's frames, the text tokens) runs as
# matrix products (_attend_bf16_cpu); over more keys (the spatial self-attention) PyTorch's fused
# kernel is as fast or faster (docs/performance.md).
CPU_BF16_MATMUL_MAX_KEYS = 128
# _attend_bf16_cpu computes its scores in slices of at most this many bytes, so that a long
# batch never holds all of its q·kᵀ at once.
CPU_SCORES_BYTES = 64 * 2**20


def _query_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


# Asked once, at import: a CPU's features do not change, and torch.compile cannot trace the query
# (reading this constant inside a compiled U-Net is no graph break).
_CPU_NATIVE_BF16 = _query_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX), as oneDNN says."""
    return _CPU_NATIVE_BF16


def _attend_bf16_cpu(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """bf16 attention on a CPU as fp32 scores, an fp32 softmax, and a bf16 product with the values.

    PyTorch's fused CPU kernel runs bf16 slower than fp32. Over few keys this is faster than it
    (docs/performance.md) with the same accuracy: the scores stay fp32 as in the fused kernel
    (rounding them to bf16 as well is faster still but far less accurate where the logits are
    large), and only the probabilities are rounded to bf16 for the product with the values.
    """
    b, heads, n, d = q.shape
    m = k.shape[2]
    q, k, v = q.reshape(b * heads, n, d), k.reshape(b * heads, m, d), v.reshape(b * heads, m, d)
    scale = d**-0.5
    rows = max(1, CPU_SCORES_BYTES // (n * m * 4))
    out = q.new_empty(b * heads, n, d)
    for lo in range(0, b * heads, rows):
        part = slice(lo, lo + rows)
        scores = torch.bmm(q[part].float().mul_(scale), k[part].float().transpose(1, 2))
        torch.bmm(scores.softmax(dim=-1).to(v.dtype), v[part], out=out[part])
    return out.reshape(b, heads, n, d)


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's ``scaled_dot_product_attention`` (the fused kernel for the device and dtype),
    except bf16 over few keys on a CPU with native bf16, where :func:`_attend_bf16_cpu` is faster."""
    if (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and k.shape[2] <= CPU_BF16_MATMUL_MAX_KEYS
        and cpu_has_native_bf16()
    ):
        return _attend_bf16_cpu(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def _attend_math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax(q kᵀ / sqrt(d)) v, as the published code computes it; the reference for tests.
    In fp16/bf16 the scores are fp32 from the query scaled first, as the fused kernels compute
    them (a half-precision q·kᵀ overflows before the scale)."""
    scale = q.shape[-1] ** -0.5
    if q.dtype in (torch.float16, torch.bfloat16):
        weights = torch.einsum("bhid,bhjd->bhij", q.float() * scale, k.float())
        return torch.einsum("bhij,bhjd->bhid", weights.softmax(dim=-1).to(v.dtype), v)
    weights = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return torch.einsum("bhij,bhjd->bhid", weights.softmax(dim=-1), v)


def xformers_failure(device: str | torch.device) -> str | None:
    """One tiny xformers attention call on ``device`` (a CUDA GPU that is here): None when it
    runs, else what failed. An xformers build that does not match this PyTorch or CUDA imports
    (with a warning) and fails only at its first call: this finds it before a model is loaded."""
    try:
        import xformers.ops  # optional dependency, CUDA only

        q = torch.zeros(1, 8, 2, 64, device=device, dtype=torch.float16)  # (batch, seq, heads, dim)
        xformers.ops.memory_efficient_attention(q, q, q).sum().item()  # .item(): the kernel ran
    except Exception as err:  # any failure of the probe is the answer, reported to the user
        return f"{type(err).__name__}: {err}"
    return None


def _attend_xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    import xformers.ops  # optional dependency, CUDA only

    # xformers wants (batch, seq, heads, dim).
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return xformers.ops.memory_efficient_attention(q, k, v).transpose(1, 2)


def _attend_efficient(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's memory-efficient CUDA kernel, called directly (what SDPA picks on a GPU; a plan
    on fake CUDA tensors uses it to count the fused kernel's memory, not the math fallback's)."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]


_KERNELS: dict[AttentionBackend, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    AttentionBackend.SDPA: _attend_sdpa,
    AttentionBackend.MATH: _attend_math,
    AttentionBackend.XFORMERS: _attend_xformers,
    AttentionBackend.EFFICIENT: _attend_efficient,
}
