"""``--compile``: the U-Net's forward pass through ``torch.compile``, compiled once per call shape.

A FIFO run calls the U-Net with few distinct shapes: every iteration's windows go through it in
chunks of ``window_batch`` windows (plus one smaller remainder chunk when the windows do not divide
evenly, and the base clip's single clip before the queue starts). The shapes are fixed for a run,
so the U-Net is compiled with ``dynamic=False``: each distinct shape is compiled once, at its first
call, into kernels specialised for it (no symbolic sizes), and every later call of that shape
reuses them. A run of the default settings compiles two or three shapes; PyTorch recompiles up to
``torch._dynamo.config.recompile_limit`` (8) shapes before it falls back to eager for new ones.

The compiled artifacts (Inductor's FX graph cache and, on CUDA, Triton's kernels) are kept in a
folder of the run's cache (``TORCHINDUCTOR_CACHE_DIR``): the next process of a sweep with the same
model, shapes and dtype loads them instead of compiling again (tracing still costs a few seconds).

Compilation changes how, not what, the U-Net computes: results equal eager ones within floating
point rounding (Inductor fuses and reorders operations). The compile time falls on the first call
of each shape; :func:`compiled_graphs` says how many graphs were compiled so far in the process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from infra.errors import UserError

logger = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


class CompileUnavailable(UserError, ValueError):
    """``torch.compile`` cannot run here; the message says to run without compiling."""


def use_compile_cache(folder: Path) -> Path:
    """Keep compiled artifacts in ``folder`` from now on in this process (and its children).

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` when it looks up or writes an artifact, so this must
    run before the first compilation that should use it. Returns the folder (created)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(folder)
    return folder


def compile_unet(
    unet: nn.Module, cache_dir: Path | None = None, mode: str | None = None, backend: str = "inductor"
) -> None:
    """Make ``unet``'s calls go through ``torch.compile`` (in place, lazily: nothing compiles
    until the first call of each input shape).

    Args:
        unet: the U-Net module (``model.unet``); its parameters, keys and layers stay as they are.
        cache_dir: folder for the compiled artifacts, kept across runs (None: PyTorch's default,
            a folder under the system's temporary directory).
        mode: ``torch.compile``'s mode (None: its default; ``"max-autotune"`` tries more kernels
            at a longer compile).
        backend: ``torch.compile``'s backend: ``"inductor"`` (generated kernels: the speed-up);
            ``"aot_eager"`` traces the same graph and runs it with eager kernels (seconds to
            compile instead of minutes on a CPU: the tests check tracing with it).
    Raises:
        CompileUnavailable: ``torch.compile`` is not supported here (e.g. a Python version Dynamo
            does not support); the message says to run without ``--compile``.
    """
    if cache_dir is not None:
        where = use_compile_cache(cache_dir)
        logger.info("compiled U-Net artifacts kept in %s", where)
    try:
        # dynamic=False: each of the run's few call shapes gets kernels specialised for it (see the
        # module's docstring); symbolic shapes would cost speed and gain nothing here.
        unet.compile(dynamic=False, mode=mode, backend=backend)
    except RuntimeError as err:  # e.g. "Dynamo is not supported on Python 3.x"
        raise CompileUnavailable(
            f"torch.compile is not available here ({err}); run without `compile`"
        ) from err


def uncompile_unet(unet: nn.Module) -> None:
    """Undo :func:`compile_unet`: ``unet``'s calls run eagerly again."""
    unet._compiled_call_impl = None  # what nn.Module.compile sets; None means the plain forward


def is_compiled(unet: nn.Module) -> bool:
    """Whether ``unet``'s calls go through ``torch.compile``."""
    return getattr(unet, "_compiled_call_impl", None) is not None


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (one per shape and graph break)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def reset_compiled() -> None:
    """Forget every compiled graph of this process (the on-disk cache stays): the next call of a
    compiled module compiles again, from the cache where it can."""
    torch._dynamo.reset()
