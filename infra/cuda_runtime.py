"""Every CUDA runtime call the tool makes, in one place, and a strict emulation of named GPUs.

The tool asks the CUDA runtime for little: whether a GPU is there and how many, to bind a rank to
its GPU, the free memory, the device's properties and compute capability, synchronisation and the
allocator's statistics, timing events, the cuDNN autotuner flag, and which backend the ranks'
data collectives use. :func:`cuda` returns the runtime those calls go to: :class:`CudaRuntime`
(``torch.cuda`` itself) unless :func:`emulated` put an :class:`EmulatedCuda` in its place.

The emulation describes a machine with one or more of the GPUs of :data:`GPUS` and checks every
argument as PyTorch does (``set_device`` needs an index, an index past the device count is an
invalid ordinal, a CPU device is refused), and records the calls. Together with PyTorch's fake
tensors (which carry a CUDA device without a GPU), the tool's CUDA path runs line by line on a
machine without one: that is how ``--dry_run --plan_for GPU`` plans for a card one does not have,
and how the tests prove the CUDA path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    """What the tool needs to know of a GPU model.

    Attributes:
        key: the name ``--plan_for`` takes (``rtx4090``).
        name: the name the driver reports.
        total_memory: bytes of device memory (the board's nominal capacity).
        capability: the compute capability (major, minor); ``sm_89`` is (8, 9).
        multi_processor_count: streaming multiprocessors.
    """

    key: str
    name: str
    total_memory: int
    capability: tuple[int, int]
    multi_processor_count: int

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def fused_bf16_attention(self) -> bool:
        """Whether PyTorch's fused attention kernels (flash, memory-efficient) take bf16 here:
        from Ampere (sm_80) on. Below it SDPA falls back to the math kernel, which holds the
        whole attention matrix."""
        return self.capability >= (8, 0)

    def describe(self) -> str:
        return f"{self.name} ({self.total_memory / GIB:.0f} GiB, {self.sm})"


# The driver keeps some memory for the CUDA context of each process (kernels, cuBLAS and cuDNN
# workspaces): the free memory a process sees at its start is the total less this much.
CONTEXT_BYTES = 512 * 2**20

GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090", 24 * GIB, (8, 9), 128),
        GpuSpec("a100-40gb", "NVIDIA A100-SXM4-40GB", 40 * GIB, (8, 0), 108),
        GpuSpec("a100-80gb", "NVIDIA A100-SXM4-80GB", 80 * GIB, (8, 0), 108),
        GpuSpec("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, (9, 0), 132),
        GpuSpec("l4", "NVIDIA L4", 24 * GIB, (8, 9), 58),
        GpuSpec("t4", "Tesla T4", 16 * GIB, (7, 5), 40),
        GpuSpec("v100", "Tesla V100-SXM2-32GB", 32 * GIB, (7, 0), 80),
    )
}


def gpu_spec(key: str) -> GpuSpec:
    """The GPU named ``key`` (case and ``-``/``_`` do not matter); KeyError naming the choices."""
    wanted = key.lower().replace("_", "-")
    if wanted in GPUS:
        return GPUS[wanted]
    raise KeyError(f"{key!r} is not a known GPU; one of {', '.join(GPUS)}")


class CudaRuntime:
    """The tool's CUDA runtime calls, passed to ``torch.cuda`` and ``torch.backends.cudnn``."""

    emulated = False

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def set_device(self, device: int | torch.device) -> None:
        """Make ``device`` this process's current GPU (``torch.cuda.set_device``: an index)."""
        torch.cuda.set_device(device)

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def mem_get_info(self, device: int | torch.device | None = None) -> tuple[int, int]:
        """(free, total) bytes of the device, as the driver counts them."""
        return torch.cuda.mem_get_info(device)

    def spec(self, device: int | torch.device | None = None) -> GpuSpec:
        """The device's name, memory, capability and multiprocessors."""
        props = torch.cuda.get_device_properties(device)
        known = [s for s in GPUS.values() if s.name == props.name]
        return GpuSpec(
            known[0].key if known else props.name,
            props.name,
            int(props.total_memory),
            (int(props.major), int(props.minor)),
            int(props.multi_processor_count),
        )

    def synchronize(self, device: int | torch.device | None = None) -> None:
        torch.cuda.synchronize(device)

    def memory_allocated(self, device: int | torch.device | None = None) -> int:
        return int(torch.cuda.memory_allocated(device))

    def memory_reserved(self, device: int | torch.device | None = None) -> int:
        return int(torch.cuda.memory_reserved(device))

    def max_memory_allocated(self, device: int | torch.device | None = None) -> int:
        return int(torch.cuda.max_memory_allocated(device))

    def reset_peak_memory_stats(self, device: int | torch.device | None = None) -> None:
        torch.cuda.reset_peak_memory_stats(device)

    def event(self) -> Any:
        """A timing event (``record()``, ``synchronize()``, ``elapsed_time(other)`` in ms)."""
        return torch.cuda.Event(enable_timing=True)

    def set_cudnn_benchmark(self, enabled: bool) -> None:
        """cuDNN's autotuner: each convolution shape is timed once and its fastest kernel kept
        (a run's shapes are fixed, so only its first calls pay)."""
        torch.backends.cudnn.benchmark = enabled

    def data_backend(self) -> str:
        """The torch.distributed backend of the ranks' data collectives on GPUs."""
        return "nccl"


def _index(device: Any, optional: bool) -> int:
    """A device argument → its index, refusing what ``torch.cuda._utils._get_device_index`` refuses."""
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {device}")
        if device.index is None:
            if not optional:
                raise ValueError(
                    f"Expected a torch.device with a specified index or an integer, but got:{device}"
                )
            return -1
        return device.index
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    if device is None and optional:
        return -1
    raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")


@dataclass
class CudaCall:
    """One call the emulation received: its name and the device index it resolved (or None)."""

    name: str
    device: int | None
    args: tuple = ()


class _EmulatedEvent:
    def __init__(self) -> None:
        self.time: float | None = None

    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        if self.time is None:
            raise RuntimeError("CUDA error: an event must be recorded before it is synchronized")

    def elapsed_time(self, end: _EmulatedEvent) -> float:
        if self.time is None or end.time is None:
            raise RuntimeError("CUDA error: elapsed_time needs two recorded events")
        return (end.time - self.time) * 1000.0


class EmulatedCuda(CudaRuntime):
    """A machine with ``count`` GPUs of model ``gpu``, strict about arguments as PyTorch is.

    Memory: the allocator statistics count what :meth:`allocate` was told (a run on fake tensors
    allocates nothing); the free memory is the total less the CUDA context and that.
    """

    emulated = True

    def __init__(self, gpu: GpuSpec | str, count: int = 1) -> None:
        self.gpu = gpu if isinstance(gpu, GpuSpec) else gpu_spec(gpu)
        self.count = count
        self.current = 0
        self.calls: list[CudaCall] = []
        self.allocated = [0] * count
        self.peak = [0] * count
        self.cudnn_benchmark = False
        self._lock = threading.Lock()

    def _device(self, name: str, device: Any, optional: bool = True, *args: Any) -> int:
        index = _index(device, optional)
        if index < 0:
            index = self.current
        if index >= self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        with self._lock:
            self.calls.append(CudaCall(name, index, args))
        return index

    def names(self) -> list[str]:
        """The names of the calls received, in order."""
        return [c.name for c in self.calls]

    def is_available(self) -> bool:
        self.calls.append(CudaCall("is_available", None))
        return True

    def device_count(self) -> int:
        self.calls.append(CudaCall("device_count", None))
        return self.count

    def set_device(self, device: int | torch.device) -> None:
        index = _index(device, optional=False)
        if index < 0:
            return  # torch ignores a negative index
        if index >= self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        self.calls.append(CudaCall("set_device", index))
        self.current = index

    def current_device(self) -> int:
        self.calls.append(CudaCall("current_device", self.current))
        return self.current

    def mem_get_info(self, device: int | torch.device | None = None) -> tuple[int, int]:
        i = self._device("mem_get_info", device)
        total = self.gpu.total_memory
        return max(0, total - CONTEXT_BYTES - self.allocated[i]), total

    def spec(self, device: int | torch.device | None = None) -> GpuSpec:
        self._device("get_device_properties", device)
        return self.gpu

    def synchronize(self, device: int | torch.device | None = None) -> None:
        self._device("synchronize", device)

    def memory_allocated(self, device: int | torch.device | None = None) -> int:
        return self.allocated[self._device("memory_allocated", device)]

    def memory_reserved(self, device: int | torch.device | None = None) -> int:
        return self.allocated[self._device("memory_reserved", device)]

    def max_memory_allocated(self, device: int | torch.device | None = None) -> int:
        return self.peak[self._device("max_memory_allocated", device)]

    def reset_peak_memory_stats(self, device: int | torch.device | None = None) -> None:
        i = self._device("reset_peak_memory_stats", device)
        self.peak[i] = self.allocated[i]

    def allocate(self, nbytes: int, device: int | None = None) -> None:
        """Count ``nbytes`` more (negative: fewer) as held by the allocator on ``device``."""
        i = self.current if device is None else device
        self.allocated[i] += nbytes
        self.peak[i] = max(self.peak[i], self.allocated[i])

    def event(self) -> _EmulatedEvent:
        self.calls.append(CudaCall("event", None))
        return _EmulatedEvent()

    def set_cudnn_benchmark(self, enabled: bool) -> None:
        self.calls.append(CudaCall("set_cudnn_benchmark", None, (enabled,)))
        self.cudnn_benchmark = enabled

    def data_backend(self) -> str:
        # No NCCL without GPUs: the ranks' collectives go through gloo (on fake tensors they
        # are not called: see fifo.parallel).
        self.calls.append(CudaCall("data_backend", None))
        return "gloo"


_runtime: CudaRuntime = CudaRuntime()


def cuda() -> CudaRuntime:
    """The CUDA runtime the tool's calls go to (an emulation while :func:`emulated` is active)."""
    return _runtime


@contextlib.contextmanager
def emulated(gpu: GpuSpec | str, count: int = 1) -> Iterator[EmulatedCuda]:
    """Within the block, :func:`cuda` is an emulation of ``count`` GPUs of model ``gpu``."""
    global _runtime
    previous = _runtime
    _runtime = EmulatedCuda(gpu, count)
    try:
        yield _runtime
    finally:
        _runtime = previous


def bind_device(device: str | torch.device) -> torch.device:
    """This process's device made current: on CUDA, ``cuda`` means ``cuda:0``; the GPU is set as
    the current device (for everything CUDA does implicitly, NCCL included) and cuDNN's
    autotuner is on (a run's shapes are fixed). Returns the device with its index."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    device = torch.device("cuda", 0 if device.index is None else device.index)
    runtime = cuda()
    runtime.set_device(device.index)
    runtime.set_cudnn_benchmark(True)
    return device
