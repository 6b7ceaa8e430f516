"""Memory of this process and of a CUDA device: what is held now, and the peak of a stretch of code;
and the memory of a run on fake tensors (:class:`LiveTensorBytes`)."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from infra.cuda_runtime import cuda


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
        cuda().synchronize(device)
        cuda().reset_peak_memory_stats(device)
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
        cuda().synchronize(device)
        return cuda().max_memory_allocated(device)
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensors that the ops run under it create and that are still alive: now and at
    the peak. Works on fake tensors (PyTorch's ``FakeTensorMode``), where nothing is allocated, so
    a run on a device that is not here can be measured as a caching allocator would count it
    (``max_memory_allocated``): every storage once, from the op that creates it until the last
    tensor using it is gone. Tensors that existed before are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._bytes: dict[int, int] = {}  # storage → its size
        self._users: dict[int, int] = {}  # storage → tensors alive on it
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self._users[key] -= 1
        if self._users[key] == 0:
            self.current -= self._bytes.pop(key)
            del self._users[key]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._bytes:
            self._bytes[key] = storage.nbytes()
            self._users[key] = 0
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self._users[key] += 1
        weakref.finalize(tensor, self._release, key)

    def reset_peak(self) -> None:
        """Start a new peak measurement from what is alive now."""
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 -- PyTorch's protocol
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out
