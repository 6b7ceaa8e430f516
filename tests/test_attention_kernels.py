"""The attention kernels by backend name (lvdm/modules/attention_kernels.py): bf16 on a CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lvdm.modules import attention_kernels as kernels


class _FusedCalls(TorchDispatchMode):
    """Counts calls of PyTorch's fused attention kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.startswith("_scaled_dot_product"):
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _qkv(
    b: int, heads: int, n: int, m: int, d: int, dtype: torch.dtype, spread: float = 1.0
) -> tuple[torch.Tensor, ...]:
    """q, k, v with entries of standard deviation ``spread`` for q and k (logits grow with its square)."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(b, heads, n, d, generator=g) * spread).to(dtype)
    k = (torch.randn(b, heads, m, d, generator=g) * spread).to(dtype)
    v = torch.randn(b, heads, m, d, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("spread", [1.0, 4.0], ids=["logits-std-1", "logits-std-16"])
@pytest.mark.parametrize(
    ("shape", "keys"),
    [((32, 4, 16, 8), 16), ((2, 5, 40, 64), 77)],
    ids=["temporal", "cross"],
)
def test_bf16_cpu_attention_is_as_accurate_as_the_fused_kernel(shape, keys, spread) -> None:
    """Against the float64 attention of the same bf16 inputs: within twice the fused kernel's own
    error, large logits included (where bf16 scores would be ~30x off)."""
    b, heads, n, d = shape
    q, k, v = _qkv(b, heads, n, keys, d, torch.bfloat16, spread)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    fused_error = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max()
    out = kernels._attend_bf16_cpu(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert (out.double() - exact).abs().max() <= 2 * fused_error + 2**-8


def test_bf16_cpu_attention_in_slices_is_the_one_pass_result(monkeypatch) -> None:
    q, k, v = _qkv(6, 4, 32, 32, 8, torch.bfloat16)
    whole = kernels._attend_bf16_cpu(q, k, v)
    monkeypatch.setattr(kernels, "CPU_SCORES_BYTES", 32 * 32 * 4 * 5)  # 5 of 24 rows per slice
    assert torch.equal(kernels._attend_bf16_cpu(q, k, v), whole)


@pytest.mark.parametrize(
    ("native", "keys", "products"),
    [(True, 16, True), (True, kernels.CPU_BF16_MATMUL_MAX_KEYS + 1, False), (False, 16, False)],
    ids=["few-keys", "many-keys", "no-native-bf16"],
)
def test_sdpa_backend_in_bf16_on_a_cpu_takes_the_products_over_few_keys(
    monkeypatch, native, keys, products
) -> None:
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: native)
    q, k, v = _qkv(2, 2, 16, keys, 8, torch.bfloat16)
    with _FusedCalls() as fused:
        out = kernels._KERNELS["sdpa"](q, k, v)
    assert fused.calls == (0 if products else 1)
    expected = kernels._attend_bf16_cpu(q, k, v) if products else F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, expected)


def test_sdpa_backend_in_fp32_is_pytorchs_fused_kernel() -> None:
    q, k, v = _qkv(2, 2, 16, 16, 8, torch.float32)
    with _FusedCalls() as fused:
        out = kernels._KERNELS["sdpa"](q, k, v)
    assert fused.calls == 1 and torch.equal(out, F.scaled_dot_product_attention(q, k, v))


def test_bf16_cpu_attention_compiles_in_one_graph(monkeypatch) -> None:
    """`--compile` traces the kernel choice without a graph break (the CPU's bf16 support is read
    as a constant, not queried inside the compiled U-Net)."""
    monkeypatch.setattr(kernels, "_CPU_NATIVE_BF16", True)
    q, k, v = _qkv(2, 2, 16, 16, 8, torch.bfloat16)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(kernels._KERNELS["sdpa"], fullgraph=True, backend="eager")
        assert torch.equal(compiled(q, k, v), kernels._attend_bf16_cpu(q, k, v))
    finally:
        torch._dynamo.reset()
