"""How the batched FIFO path runs fast, applied from outside the model's layers.

- :func:`plan_fast_path` says how a batched U-Net call runs on a device (:class:`FastPathPlan`);
  :func:`apply_execution` applies its :class:`UNetExecution` to a U-Net (transformer sequences in
  cache-sized chunks, temporal convolutions as the equivalent 2D ones) by swapping those layers
  for variants that compute the same thing differently; the model modules stay as published.
- :class:`ShardedDenoiser` splits a batched call into parallel slices (CPU).
- :func:`auto_window_batch` picks how many windows go in one call from the memory at hand and
  the memory per window measured on fake tensors (:func:`fifo.plan.window_memory`).
- :func:`tune_cpu_allocator` keeps glibc from mapping fresh pages for every large tensor.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infra.cuda_runtime import cuda
from infra.memory import current_rss_bytes, total_ram_bytes
from lvdm.modules.attention import SpatialTransformer, TemporalTransformer
from lvdm.modules.networks.openaimodel3d import TemporalConv

logger = logging.getLogger(__name__)

# Share of free device memory that the batch may plan to use, and memory held back for
# workspaces (cuDNN/cuBLAS) that the allocator does not show.
CUDA_FREE_FRACTION = 0.85
CUDA_RESERVE_BYTES = 512 * 2**20
# On CPU, all windows in one call unless they would need more than this share of the RAM.
CPU_RAM_FRACTION = 0.5
# On CPU, transformers run chunks of at most this many tokens (UNetExecution.transformer_chunk).
# Measured with scripts/benchmark.py --preset medium on 2 cores, one thread per shard: no chunks
# (batch-sized activations spill out of cache) and 8192 lost to 2048-4096; 1024 lost too.
CPU_TRANSFORMER_CHUNK = 4096
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class UNetExecution:
    """How the U-Net computes, without changing what (see :func:`apply_execution`).

    Attributes:
        transformer_chunk: run every transformer's sequences in chunks of at most this many
            tokens (None: the whole batch at once). On CPU, chunks whose activations stay in
            cache run faster than one batch-sized pass over memory.
        temporal_conv_2d: compute the (3, 1, 1) temporal convolutions as 2D (3, 1)
            convolutions over (time, h·w). The same arithmetic; on CPU oneDNN runs it faster
            than its 3D kernel, and much faster than the generic 3D kernel PyTorch uses for a
            batch of one.
    """

    transformer_chunk: int | None = None
    temporal_conv_2d: bool = False

    def __post_init__(self) -> None:
        if self.transformer_chunk is not None and self.transformer_chunk < 1:
            raise ValueError(f"transformer_chunk must be ≥ 1 or None, got {self.transformer_chunk}")


def rows_per_chunk(rows: int, tokens: int, groups: int, max_tokens: int | None) -> int:
    """How many sequences of ``tokens`` tokens a transformer runs at once.

    At most ``max_tokens`` tokens per chunk (at least one sequence), and either a multiple of
    ``groups`` or a divisor of it, so that a chunk never splits the frames that share one
    context row unevenly. ``None``: all ``rows`` at once.
    """
    if max_tokens is None:
        return rows
    fit = max(1, max_tokens // tokens)
    if fit >= groups:
        return min(rows, fit // groups * groups)
    return max(d for d in range(1, fit + 1) if groups % d == 0)


class _ChunkedSequences:
    """Transformer variant: ``transform`` over chunks of at most ``max_tokens`` tokens.

    Every sequence is independent in a transformer's token part, so the result is the one of
    a single pass. Mixed in before SpatialTransformer / TemporalTransformer.
    """

    max_tokens: int

    def transform(self, y: Tensor, context: Tensor | None, context_repeats: int = 1) -> Tensor:
        """y: (rows, n, c), context: (rows / r, m, d) or None → (rows, n, c)."""
        rows, tokens, _ = y.shape
        groups = 1 if context is None else context_repeats
        per = rows_per_chunk(rows, tokens, groups, self.max_tokens)
        if per >= rows:
            return super().transform(y, context, context_repeats)
        # A chunk holds whole clips (per a multiple of groups) or part of one clip's frames.
        repeats = min(per, groups)
        out: Tensor | None = None
        for lo in range(0, rows, per):
            hi = min(rows, lo + per)
            ctx = None if context is None else context[lo // groups : (hi - 1) // groups + 1]
            part = super().transform(y[lo:hi], ctx, repeats)
            if out is None:
                out = part.new_empty((rows, *part.shape[1:]))
            out[lo:hi] = part
        assert out is not None
        return out


class ChunkedSpatialTransformer(_ChunkedSequences, SpatialTransformer):
    """A SpatialTransformer whose sequences run in chunks (same parameters, same result)."""


class ChunkedTemporalTransformer(_ChunkedSequences, TemporalTransformer):
    """A TemporalTransformer whose sequences run in chunks (same parameters, same result)."""


class TemporalConvAs2d(TemporalConv):
    """A TemporalConv computed as the equivalent 2D (3, 1) convolution over (time, h·w)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        weight = self.weight.reshape(*self.weight.shape[:3], 1)  # (out, in, 3, 1)
        y = F.conv2d(x.reshape(b, c, t, h * w), weight, self.bias, padding=(1, 0))
        return y.reshape(b, -1, t, h, w)


_CHUNKED = {SpatialTransformer: ChunkedSpatialTransformer, TemporalTransformer: ChunkedTemporalTransformer}
_PLAIN = {chunked: plain for plain, chunked in _CHUNKED.items()}


def apply_execution(unet: nn.Module, execution: UNetExecution) -> None:
    """Make a U-Net compute as ``execution`` says; ``UNetExecution()`` restores the published layers.

    The layers concerned change class in place (as ``torch.nn.utils.parametrize`` does): the same
    module objects, parameters and checkpoint keys, with a ``forward`` that computes the same
    thing another way. Nothing else in the model changes.
    """
    for layer in unet.modules():
        kind = type(layer)
        plain = _PLAIN.get(kind, kind)
        if plain in _CHUNKED:
            if execution.transformer_chunk is None:
                layer.__class__ = plain
            else:
                layer.__class__ = _CHUNKED[plain]
                layer.max_tokens = execution.transformer_chunk
        elif isinstance(layer, TemporalConv):
            layer.__class__ = TemporalConvAs2d if execution.temporal_conv_2d else TemporalConv


def current_execution(unet: nn.Module) -> UNetExecution:
    """The :class:`UNetExecution` a U-Net runs with now (read off its layers)."""
    chunk = next((m.max_tokens for m in unet.modules() if isinstance(m, _ChunkedSequences)), None)
    conv_2d = any(isinstance(m, TemporalConvAs2d) for m in unet.modules())
    return UNetExecution(transformer_chunk=chunk, temporal_conv_2d=conv_2d)


@dataclass(frozen=True)
class FastPathPlan:
    """How the batched FIFO path runs a U-Net call on a device.

    Attributes:
        shards: slices of the batch evaluated in parallel threads (:class:`ShardedDenoiser`);
            1: the whole batch in one call.
        unet: how the U-Net computes (``UNetModel.set_execution``); the default is as published.
    """

    shards: int = 1
    unet: UNetExecution = UNetExecution()

    def describe(self) -> str:
        """The plan in words, for the log."""
        parts = [f"{self.shards} parallel slices per call" if self.shards > 1 else "one slice per call"]
        if self.unet.transformer_chunk is not None:
            parts.append(f"transformer chunks of {self.unet.transformer_chunk} tokens")
        if self.unet.temporal_conv_2d:
            parts.append("temporal convolutions as 2D ones")
        if self.unet == UNetExecution():
            parts.append("layers as published")
        return ", ".join(parts)

    def describe_run(self, window_batch: int | None, windows: int, batched: bool, bf16_hint: bool) -> str:
        """How a generator runs its FIFO windows, in words, for the log (``bf16_hint``: say that
        this CPU computes bf16 natively)."""
        if not batched:
            return "sequential path: one window and one guidance branch per call, layers as published"
        per_call = "all" if window_batch is None else min(window_batch, windows)
        text = f"fast path: {per_call} of {windows} windows and both guidance branches per U-Net call; {self.describe()}"
        if bf16_hint:
            text += (
                "; this CPU computes bf16 natively: --dtype bf16 runs larger models faster, "
                "at bf16's precision (measurements: docs/performance.md)"
            )
        return text


def plan_fast_path(device: str | torch.device, threads: int | None = None) -> FastPathPlan:
    """The fast path's execution plan for ``device``.

    CUDA (and other accelerators): one call, layers as published; the device is fed best by
    big batches (and fp16 autocast, chosen elsewhere).
    CPU: one shard per intra-op thread (``threads``, default ``torch.get_num_threads()``),
    transformer chunks of :data:`CPU_TRANSFORMER_CHUNK` tokens and 2D temporal convolutions.
    The U-Net's samples are independent, so spreading them over the cores keeps every core
    busy, where splitting each small operation (norms, activations, attention over 16 frames)
    across the cores leaves threads waiting at every operation's end.
    """
    if torch.device(device).type != "cpu":
        return FastPathPlan()
    threads = torch.get_num_threads() if threads is None else threads
    return FastPathPlan(
        shards=max(1, threads),
        unet=UNetExecution(transformer_chunk=CPU_TRANSFORMER_CHUNK, temporal_conv_2d=True),
    )


class ShardedDenoiser:
    """A denoiser whose batched calls run as parallel slices of the batch (CPU).

    Every tensor argument is a batch along dim 0 (None passes through): ``shards`` slices
    (at most one per sample) are evaluated at once on worker threads, each with
    ``threads // shards`` intra-op threads, then concatenated: the same result as one call.
    The intra-op thread count is process-wide in PyTorch; it is lowered for the duration of a
    call and restored afterwards, so do not run other PyTorch work in parallel with a call.
    The U-Net's per-pass state (the Q-cache store) is per thread.

    Args:
        denoise: any callable whose tensor arguments share their batch dimension and whose
            result has one row per sample (a guided denoiser ``(x, t, cond, uncond) → eps``).
        shards: the most slices per call; 1 makes this a plain pass-through.
        threads: intra-op threads to share out (default: ``torch.get_num_threads()`` at the call).
    """

    def __init__(self, denoise: Callable[..., Tensor], shards: int, threads: int | None = None) -> None:
        if shards < 1:
            raise ValueError(f"shards must be ≥ 1, got {shards}")
        self.denoise, self.shards, self.threads = denoise, shards, threads
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, *args: Tensor | None) -> Tensor:
        n = args[0].shape[0]
        shards = min(self.shards, n)
        if shards <= 1 or any(a is not None and a.shape[0] != n for a in args):
            return self.denoise(*args)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.shards, thread_name_prefix="unet-shard")
        total = torch.get_num_threads() if self.threads is None else self.threads
        bounds = [round(i * n / shards) for i in range(shards + 1)]
        # Grad, inference and autocast modes are per thread: carry the caller's into the workers.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        device_type = args[0].device.type
        autocast = torch.is_autocast_enabled(device_type)
        autocast_dtype = torch.get_autocast_dtype(device_type)

        def run(k: int) -> Tensor:
            part = slice(bounds[k], bounds[k + 1])
            with (
                torch.inference_mode(inference),
                torch.set_grad_enabled(grad),
                torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast),
            ):
                return self.denoise(*(None if a is None else a[part] for a in args))

        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, total // shards))
        try:
            parts = list(self._pool.map(run, range(shards)))
        finally:
            torch.set_num_threads(previous)
        return torch.cat(parts)

    def close(self) -> None:
        """Stop the worker threads (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ShardedDenoiser:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def tune_cpu_allocator(mmap_threshold: int = 2**30) -> bool:
    """Let glibc's malloc reuse freed memory for large tensors instead of mapping new pages.

    By default glibc serves every allocation above ~32 MiB with a fresh ``mmap`` and returns it
    with ``munmap``; each new tensor of that size then page-faults on every 4 KiB page and the
    kernel zeroes it. The batched CPU path allocates such tensors thousands of times per
    iteration, and the page faults cost whole seconds of system time per iteration on the
    medium preset (docs/performance.md). Raising the mmap and trim
    thresholds keeps that memory in the heap for reuse; the cost is that the process's
    resident memory stays at its peak instead of shrinking between iterations.

    Process-wide; a no-op (False) where the C library is not glibc or refuses the value.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    for threshold in (mmap_threshold, 32 * 2**20):  # older glibc caps the threshold at 32 MiB
        if mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1:
            mallopt(_M_TRIM_THRESHOLD, min(2 * int(threshold), 2**31 - 1))  # a C int
            logger.debug("glibc malloc: mmap threshold %d MiB", threshold // 2**20)
            return True
    return False


def usable_cuda_bytes(free_bytes: int) -> int:
    """Of ``free_bytes`` of free GPU memory, what a run plans to fill with activations:
    ``CUDA_FREE_FRACTION`` of it less ``CUDA_RESERVE_BYTES`` (cuDNN/cuBLAS workspaces, which
    the allocator does not show, and fragmentation). One rule for the automatic window batch of
    a run and for a dry run's plan."""
    return int(CUDA_FREE_FRACTION * free_bytes) - CUDA_RESERVE_BYTES


@dataclass(frozen=True)
class WindowMemory:
    """Activation memory of a batched U-Net call: ``fixed_bytes + windows · per_window_bytes``.

    The line goes through calls of one window and of all windows, both measured. Between them
    it errs on the safe side: transformer chunks (the CPU plan) make memory grow less than
    linearly with the windows of a call.
    """

    fixed_bytes: int
    per_window_bytes: int

    def for_windows(self, windows: int) -> int:
        return self.fixed_bytes + windows * self.per_window_bytes


def cuda_windows_that_fit(memory: WindowMemory, free_bytes: int) -> int:
    """How many windows of one batched call fit in ``free_bytes`` of free GPU memory (the weights
    already loaded) by :func:`usable_cuda_bytes`; below 1 when not even one does."""
    return int((usable_cuda_bytes(free_bytes) - memory.fixed_bytes) // memory.per_window_bytes)


def planned_window_batch(
    n_windows: int, memory: WindowMemory, budget_bytes: int, weight_bytes: int, device: torch.device
) -> int:
    """Windows per call that a plan with a memory budget picks, in [1, n_windows]: on CUDA by the
    rule of a real run's automatic window batch (:func:`cuda_windows_that_fit`), elsewhere what
    fits next to the weights."""
    if device.type == "cuda":
        fitting = cuda_windows_that_fit(memory, budget_bytes - weight_bytes)
    else:
        fitting = (budget_bytes - weight_bytes - memory.fixed_bytes) // memory.per_window_bytes
    return max(1, min(n_windows, fitting))


def auto_window_batch(n_windows: int, memory: WindowMemory, device: str | torch.device) -> int | None:
    """Windows per U-Net call for the batched FIFO path, from the measured memory per window.

    Args:
        n_windows: windows per iteration.
        memory: a call's activation memory per window and beyond it
            (:func:`fifo.plan.window_memory`, measured on fake tensors with the model as it runs).
        device: where the U-Net runs.
    Returns:
        CUDA: an int in [1, n_windows]: as many windows as fit in ``CUDA_FREE_FRACTION`` of the
        free device memory (free + cached by PyTorch, less ``CUDA_RESERVE_BYTES``). Never below 1,
        so with guidance a single window still needs two samples' activations: where even that
        does not fit, only the sequential path fits.
        CPU and other devices: None (all windows in one call) unless all windows would need more
        than ``CPU_RAM_FRACTION`` of the RAM (less what this process holds); then the number that
        fits, at least 1.
    """
    device = torch.device(device)
    per_window = memory.per_window_bytes
    if device.type == "cuda":
        runtime = cuda()
        free, _ = runtime.mem_get_info(device)
        free += runtime.memory_reserved(device) - runtime.memory_allocated(device)  # cached by PyTorch
        budget = usable_cuda_bytes(free) - memory.fixed_bytes
        fits = cuda_windows_that_fit(memory, free)
        chosen = min(n_windows, max(1, fits))
        if fits < 1:
            logger.warning(
                "auto window batch: even one window (%.2f GiB measured) may not fit in %.2f GiB; "
                "the sequential path (one guidance branch per call) needs about half of that",
                memory.for_windows(1) / 2**30,
                (budget + memory.fixed_bytes) / 2**30,
            )
        logger.info(
            "auto window batch: %d of %d windows per call (%.2f GiB per window, %.2f GiB free)",
            chosen,
            n_windows,
            per_window / 2**30,
            (budget + memory.fixed_bytes) / 2**30,
        )
        return chosen
    total = total_ram_bytes()
    if total <= 0:
        return None
    budget = CPU_RAM_FRACTION * total - current_rss_bytes()
    if memory.for_windows(n_windows) <= budget:
        return None
    chosen = min(n_windows, max(1, int((budget - memory.fixed_bytes) // per_window)))
    logger.info(
        "auto window batch: %d of %d windows per call (all would need %.2f GiB of RAM)",
        chosen,
        n_windows,
        memory.for_windows(n_windows) / 2**30,
    )
    return chosen
