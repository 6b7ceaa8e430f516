"""Speed helpers: how many FIFO windows go into one U-Net call, and peak-memory probes.

The batched FIFO path (``fifo_step(..., batched=True)``) runs ``window_batch`` windows, and
both guidance branches, in one U-Net call. :func:`auto_window_batch` picks that number from
the memory at hand so that the batched path never runs out of memory where the sequential
path (one window, one branch per call) fits. :func:`peak_memory_reset` /
:func:`peak_memory_bytes` measure what a stretch of code needed at its peak.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
from dataclasses import dataclass

import torch
from torch import nn

from lvdm.models.samplers.fifo import FifoGeometry
from lvdm.modules.attention import SpatialTransformer, TemporalTransformer

logger = logging.getLogger(__name__)

# Live activation elements per (frame · latent position), in units of the U-Net's widths
# (see window_activation_bytes): skip connections + current features, and transformer working set.
SKIP_FACTOR = 6
TRANSFORMER_FACTOR = 20
# Margin on top of the estimate (allocator fragmentation, kernel workspaces, dtype copies).
SAFETY = 1.5
# Share of free device memory that the batch may plan to use, and memory held back for
# workspaces (cuDNN/cuBLAS) that the allocator does not show.
CUDA_FREE_FRACTION = 0.85
CUDA_RESERVE_BYTES = 512 * 2**20
# On CPU, all windows in one call unless they would need more than this share of the RAM.
CPU_RAM_FRACTION = 0.5


@dataclass(frozen=True)
class UNetWidths:
    """The U-Net widths that set its activation memory at full latent resolution.

    Attributes:
        model_channels: C, the channels of the full-resolution level.
        widest: the widest token dimension of a transformer at full resolution (C, or the
            extra initial temporal attention's 8 · num_head_channels when that is wider).
        heads: attention heads of the full-resolution spatial transformer.
        attention_backend: ``"sdpa"``, ``"xformers"`` or ``"math"`` (only ``"math"``
            materialises the attention matrix).
    """

    model_channels: int
    widest: int
    heads: int
    attention_backend: str = "sdpa"


def unet_widths(model: nn.Module) -> UNetWidths:
    """Read :class:`UNetWidths` from a LatentDiffusion (``model.unet``) or a bare UNetModel."""
    unet = getattr(model, "unet", model)
    channels = int(unet.model_channels)
    widest, heads = channels, 1
    init_attn = getattr(unet, "init_attn", None)
    if init_attn is not None:
        for layer in init_attn.modules():
            if isinstance(layer, TemporalTransformer):
                widest = max(widest, int(layer.transformer_blocks[0].attn1.to_q.out_features))
    for layer in unet.input_blocks.modules():
        if isinstance(layer, SpatialTransformer):  # the first one sits at full resolution
            heads = int(layer.transformer_blocks[0].attn1.heads)
            break
    return UNetWidths(channels, widest, heads, str(getattr(unet, "attention_backend", "sdpa")))


def window_activation_bytes(
    widths: UNetWidths, frames: int, latent_hw: tuple[int, int], dtype_bytes: int, guidance: bool = True
) -> int:
    """Conservative peak activation memory that one FIFO window adds to a U-Net call.

    The estimate, per sample (one window, one guidance branch) of ``frames`` = t frames at
    latent size h × w, with N = t·h·w latent positions::

        bytes ≈ SAFETY · dtype_bytes · N · (SKIP_FACTOR · C + TRANSFORMER_FACTOR · W)

    - ``SKIP_FACTOR · C``: the encoder's skip connections stay alive until the decoder uses
      them. With channel_mult (1, 2, 4, 4) and 2 res blocks they sum to ≈ 5.1 · N · C
      elements (3 full-resolution maps, the rest at 1/4, 1/16, 1/64 of the positions), plus
      the current feature map: 6.
    - ``TRANSFORMER_FACTOR · W``: the largest transient, a full-resolution transformer's
      GEGLU feed-forward on W-wide tokens: its projection (8W), the gelu of the gate (4W),
      the gated product (4W), the norm output and the residual (2W): ≈ 18W, rounded to 20.
      W is the widest full-resolution token width: C for the spatial/temporal
      transformers, 8 · num_head_channels for VideoCrafter's extra initial temporal
      attention (512 against C = 320 in VideoCrafter2, 4·C in the benchmark's small models).
    - ``SAFETY`` (1.5): allocator fragmentation, float32 copies inside the group norms under
      fp16 autocast, kernel workspaces.

    Measured on CPU in fp32 (peak RSS growth of one fast-path FIFO iteration, 8 windows ×
    2 branches, ``scripts/benchmark.py --preset medium``: C = 32, W = 64, 16 frames of 16×16):
    ≈ 1,390 elements per position, against 1,472 for the bracket above before the safety
    margin (estimate with margin: 552 MiB, measured: 347 MiB). The ``"math"`` attention
    backend also materialises the full-resolution spatial attention scores and their softmax,
    2 · heads · (h·w)² per frame, which are added. With ``guidance`` both branches of a window
    share the call: twice the per-sample memory. Weights are not counted (they are in memory
    before the estimate is used; the model runs without autograd, so autocast keeps no
    low-precision copies of them).
    """
    h, w = latent_hw
    positions = frames * h * w
    elements = positions * (SKIP_FACTOR * widths.model_channels + TRANSFORMER_FACTOR * widths.widest)
    if widths.attention_backend == "math":
        elements += 2 * frames * widths.heads * (h * w) ** 2
    branches = 2 if guidance else 1
    return int(SAFETY * dtype_bytes * elements) * branches


def total_ram_bytes() -> int:
    """Physical memory of the machine (``os.sysconf``), or 0 where it is not known."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc/self/statm``), or 0."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0


def auto_window_batch(
    model: nn.Module,
    geometry: FifoGeometry,
    latent_hw: tuple[int, int],
    device: str | torch.device,
    dtype_bytes: int,
    guidance: bool = True,
) -> int | None:
    """Windows per U-Net call for the batched FIFO path.

    Args:
        model: the LatentDiffusion (or its UNetModel), already on ``device``.
        geometry: the FIFO queue layout (frames per window, number of windows).
        latent_hw: latent (h, w).
        device: where the U-Net runs.
        dtype_bytes: bytes per activation element (4 for fp32, 2 under fp16/bf16 autocast).
        guidance: classifier-free guidance on (each window is two samples in the call).
    Returns:
        CUDA: an int in [1, number of windows]: as many windows as fit in
        ``CUDA_FREE_FRACTION`` of the free device memory (free + cached by PyTorch, less
        ``CUDA_RESERVE_BYTES``) at :func:`window_activation_bytes` each. Never below 1, so
        with guidance a single window still needs two samples' activations: where even
        that does not fit, only the sequential path (``batched=False``) fits.
        CPU and other devices: None (all windows in one call) unless all windows would need
        more than ``CPU_RAM_FRACTION`` of the RAM (less what this process holds); then the
        number that fits, at least 1.
    """
    device = torch.device(device)
    n_windows = len(geometry.windows())
    per_window = max(
        1,
        window_activation_bytes(unet_widths(model), geometry.video_length, latent_hw, dtype_bytes, guidance),
    )
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = CUDA_FREE_FRACTION * (free + cached) - CUDA_RESERVE_BYTES
        fits = int(budget // per_window)
        chosen = min(n_windows, max(1, fits))
        if fits < 1:
            logger.warning(
                "auto window batch: even one window (%.2f GiB estimated) may not fit in %.2f GiB; "
                "the sequential path (one guidance branch per call) needs half of that with guidance",
                per_window / 2**30,
                budget / 2**30,
            )
        logger.info(
            "auto window batch: %d of %d windows per call (%.2f GiB per window, %.2f GiB budget)",
            chosen,
            n_windows,
            per_window / 2**30,
            budget / 2**30,
        )
        return chosen
    total = total_ram_bytes()
    if total <= 0:
        return None
    budget = CPU_RAM_FRACTION * total - current_rss_bytes()
    if n_windows * per_window <= budget:
        return None
    chosen = min(n_windows, max(1, int(budget // per_window)))
    logger.info(
        "auto window batch: %d of %d windows per call (all would need %.2f GiB of RAM)",
        chosen,
        n_windows,
        n_windows * per_window / 2**30,
    )
    return chosen


def _reset_rss_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0, ``clear_refs`` 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
        return True
    return False


def peak_memory_reset(device: str | torch.device) -> bool:
    """Start a new peak-memory measurement. Returns whether the peak was reset.

    CUDA: resets the allocator's peak statistics (always True). CPU: the process peak RSS is
    in general not resettable; on Linux ``/proc/self/clear_refs`` can lower it to the current
    RSS, which is tried (True if it worked). Even then the allocator keeps freed memory
    mapped, so a fresh process per measurement (as ``scripts/benchmark.py`` does) is the
    clean way to measure on CPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return _reset_rss_peak()


def _vm_hwm_bytes() -> int | None:
    """This process's own peak RSS (``VmHWM`` in ``/proc/self/status``), or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory_bytes(device: str | torch.device) -> int:
    """Peak memory since the last reset (or process start), in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache).
    CPU: the process's peak resident set size (weights, interpreter and libraries included):
    ``VmHWM`` on Linux, else ``ru_maxrss``. Linux's ``ru_maxrss`` (KiB) is not used there
    because it also counts the memory image the process replaced at ``exec``: a child started
    by ``subprocess`` from a large parent reports the parent's peak.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere
