"""How close each path comes to the machine's limit: FLOPs of one output frame (``FlopCounterMode``)
and the machine's peak, measured in the same run as a large matrix product in the path's dtype.

FlopCounterMode counts the matrix products, convolutions and attention kernels (2 FLOPs per
multiply-add), which is where the U-Net's work is; norms and pointwise operations are not counted.
The counts come from the shapes alone.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from tools.bench.core import Bench, sync

# Side of the square matrix product that measures a device's peak: large enough to reach it
# (an H100 needs ~8192 for bf16), small enough for a CPU to finish in a fraction of a second
# (1024: ~2 GFLOP, which MKL/oneDNN run at their peak on a few cores).
PEAK_GEMM_SIZE = {"cuda": 8192, "cpu": 1024}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def guided_call_flops(bench: Bench, path: str, windows: int) -> int:
    """FLOPs of one guided denoiser call of ``path`` on ``windows`` windows (both guidance branches:
    one U-Net call with both on the fast path, one per branch on the sequential path), with the
    path's model, dtype and execution, in one thread.

    Counted on a real call (zeros in): the counter reads only shapes, and a real call costs less
    than the same call on fake tensors, whose per-operator overhead is ~40x a tiny U-Net's compute."""
    denoise = bench.guided_denoiser(path)
    _, c, _, h, w = bench.queue.shape
    frames = bench.geometry.video_length
    counter = FlopCounterMode(display=False)
    with counter:
        x = torch.zeros(windows, c, frames, h, w, device=bench.device)
        t = torch.zeros(windows, frames, dtype=torch.long, device=bench.device)
        cond = bench.contexts[:windows]
        uncond = None if bench.uncond is None else bench.uncond.expand(windows, -1, -1)
        denoise(x, t, cond, uncond)
    return int(counter.get_total_flops())


def iteration_flops(bench: Bench, path: str) -> int:
    """FLOPs of one FIFO iteration (= one output frame) on ``path``: its U-Net calls, in chunks of
    the path's window batch (one window on the sequential path), with guidance. The rest of
    ``fifo_step`` (slicing, the DDIM update) is pointwise: no FLOPs by this count. The parallel
    slices of a call split the same work, so they are not counted apart."""
    windows = len(bench.geometry.windows())
    per_call = min(windows, bench.path_window_batch(path) or windows)
    chunks = [per_call] * (windows // per_call) + ([windows % per_call] if windows % per_call else [])
    counted: dict[int, int] = {}
    for size in chunks:
        if size not in counted:
            counted[size] = guided_call_flops(bench, path, size)
    return sum(counted[size] for size in chunks)


def context_free_head_flops(unet: nn.Module, x: Tensor, timesteps: Tensor, fps: int = 8) -> int:
    """FLOPs of the U-Net's layers that see no context (time embedding, input convolution, initial
    temporal attention) for the clips ``x`` (b, c, t, h, w): what the fast path computes once for
    both guidance branches (``UNetModel.forward``)."""
    from einops import rearrange

    b, _, t, _, _ = x.shape
    counter = FlopCounterMode(display=False)
    with counter:
        x = torch.zeros_like(x).to(unet.dtype)
        emb = unet.embed_time(torch.zeros_like(timesteps), b, t, fps).type(x.dtype)
        h = unet.input_blocks[0](rearrange(x, "b c t h w -> (b t) c h w"), emb, None, b)
        if unet.addition_attention:
            unet.init_attn(h, emb, None, b)
    return int(counter.get_total_flops())


def peak_matmul_tflops(device: torch.device, dtype: str, repeats: int = 3) -> dict[str, Any]:
    """The device's measured peak: the best of ``repeats`` timed square matrix products in
    ``dtype`` (after one warm-up), with all of torch's threads on CPU.

    Returns ``tflops`` (None where the dtype does not run on the device), ``size`` and ``seconds``
    (the best product's), or ``reason`` when not measured."""
    size = PEAK_GEMM_SIZE.get(device.type, 2048)
    torch_dtype = DTYPES[dtype]
    if device.type == "cpu" and dtype == "fp16":
        return {"tflops": None, "size": size, "seconds": None, "reason": "fp16 is not a CPU dtype here"}
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen).to(torch_dtype)
    b = torch.randn(size, size, device=device, generator=gen).to(torch_dtype)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:  # the first product warms kernels and caches up
            best = min(best, time.perf_counter() - start)
    return {"tflops": 2 * size**3 / best / 1e12, "size": size, "seconds": best, "reason": None}


def achieved(flops: int | None, seconds: float | None, peak_tflops: float | None) -> dict[str, Any]:
    """TFLOP/s achieved by ``flops`` in ``seconds``, and the fraction of ``peak_tflops`` it is."""
    if flops is None or not seconds:
        return {"tflops_achieved": None, "fraction_of_peak": None}
    rate = flops / seconds / 1e12
    return {"tflops_achieved": rate, "fraction_of_peak": rate / peak_tflops if peak_tflops else None}
