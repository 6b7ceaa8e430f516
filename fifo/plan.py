"""What a planned run is made of: fake tensors, the activation memory of a window, and the plan.

PyTorch's ``FakeTensorMode`` makes tensors that carry shape, dtype and device but no data: a
run executes on them in seconds (:mod:`fifo.dry_run`), also for a GPU that is not present, and
any device or dtype mismatch raises as it would on the GPU. :class:`RunPlan` is what that
execution measured (``--dry_run`` prints it).

One batched U-Net call of one and of two windows on fake tensors gives the activation memory
per window (:func:`window_memory`) that :func:`fifo.perf.auto_window_batch` divides the free
memory by.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode, maybe_get_fake_mode

from fifo.conditioning import with_image_tokens
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.miga_cost import cost_lines
from fifo.perf import WindowMemory, usable_cuda_bytes
from infra.memory import LiveTensorBytes

logger = logging.getLogger(__name__)


def fake_tensors() -> FakeTensorMode:
    """A fake-tensor mode in which real tensors (a real model's weights, constants) may take part."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def fake_mode_of(model: nn.Module) -> FakeTensorMode:
    """The fake-tensor mode a model built on fake tensors belongs to (its tensors work only there),
    or a new one for a real model (its weights then take part as fake copies, no data copied)."""
    mode = maybe_get_fake_mode(next(model.parameters()))
    return mode if mode is not None else fake_tensors()


class UnseededStream:
    """Standard-normal draws without a generator (fake tensors have no random state)."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(shape, device=self.device, dtype=dtype)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


# ---------------------------------------------------------------------------------- per window
def _measure_window_memory(
    model: nn.Module, frames: int, latent_hw: tuple[int, int], guidance: bool, most_windows: int
) -> WindowMemory:
    counts = (1, max(2, most_windows))
    device = model.device
    peaks = []
    with fake_mode_of(model), torch.no_grad():
        context = model.get_learned_conditioning([""])
        family = model.family
        if family.has_image_tokens:
            tokens = torch.zeros(1, family.image_tokens, context.shape[-1], device=device)
            context = with_image_tokens(context, tokens)
        model_denoiser = ModelDenoiser(model, fps=8)
        if family.needs_input_image:  # the hybrid families' image latent, concatenated to each frame
            model_denoiser.image_latent = torch.zeros(1, model.channels, 1, *latent_hw, device=device)
        denoise = CFGDenoiser(model_denoiser, 12.0 if guidance else 1.0)
        for windows in counts:
            x = torch.zeros(windows, model.channels, frames, *latent_hw, device=device)
            t = torch.zeros(windows, frames, dtype=torch.long, device=device)
            cond = context.expand(windows, -1, -1).to(device)
            tracker = LiveTensorBytes()
            with tracker:
                denoise(x, t, cond, cond if guidance else None)
            peaks.append(tracker.peak)
    per_window = max(1, (peaks[1] - peaks[0]) // (counts[1] - 1))
    return WindowMemory(fixed_bytes=max(0, peaks[0] - per_window), per_window_bytes=per_window)


# The parameters' part of a model's set-up key (every parameter's name, shape and dtype: ~0.1 s
# on the full-size model), hashed once per model and precision; the layers' part is read on
# every call, since tricks and the speed plan change processors and layer classes in place.
_PARAMETER_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Any]] = weakref.WeakKeyDictionary()


def _precision_guard(model: nn.Module) -> tuple:
    """What tells that the parameters' dtypes or device changed since they were hashed: the first
    parameter of each top-level part (``set_precision`` and ``.to`` convert whole parts)."""
    return tuple(
        (name, param.dtype, param.device)
        for name, child in model.named_children()
        for param in itertools.islice(child.parameters(), 1)
    )


def _model_setup_key(model: nn.Module) -> tuple:
    """What a call's memory depends on besides its inputs: the architecture, weights' dtype and
    device, and how each layer computes (layer classes, attention processors and backends)."""
    guard = _precision_guard(model)
    cached = _PARAMETER_DIGESTS.get(model)
    if cached is None or cached[0] != guard:
        parameters = hashlib.sha256()
        for name, tensor in model.named_parameters():
            parameters.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        cached = _PARAMETER_DIGESTS[model] = (guard, parameters)
    digest = cached[1].copy()  # the same digest as hashing the parameters again, then the layers
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        digest.update(f"{name}:{type(module).__name__}:{getattr(module, 'max_tokens', '')}".encode())
        if processor is not None:
            digest.update(f"{type(processor).__name__}:{processor.backend}".encode())
    return digest.hexdigest(), str(model.device)


# Measurements by model set-up, size and window count: a process that builds the same model
# again (one run per prompt file in a sweep, the tests) measures it once. Bounded.
_WINDOW_MEMORY: dict[tuple, WindowMemory] = {}
_WINDOW_MEMORY_ENTRIES = 32


def window_memory(
    model: nn.Module,
    frames: int,
    latent_hw: tuple[int, int],
    guidance: bool,
    most_windows: int = 2,
    store: Path | None = None,
) -> WindowMemory:
    """The activation memory of one batched U-Net call per window (both guidance branches), measured
    on fake tensors with the model as it is set up (weights' dtype, attention backend, processors,
    execution plan) for one window and for ``most_windows``: seconds, once per model set-up, size
    and window count in a process.

    Args:
        store: a folder that keeps measurements between processes (a sweep starts one per
            setting; ``--resume`` starts another): one small JSON file per set-up, size, window
            count and torch version, written atomically. A file that cannot be read or written
            is measured again, never an error.
    """
    key = (_model_setup_key(model), frames, tuple(latent_hw), guidance, most_windows)
    if key not in _WINDOW_MEMORY:
        if len(_WINDOW_MEMORY) >= _WINDOW_MEMORY_ENTRIES:
            _WINDOW_MEMORY.pop(next(iter(_WINDOW_MEMORY)))
        path = None
        if store is not None:
            # torch's version is part of the name: fake-tensor kernels (and so the count) change with it.
            name = hashlib.sha256(repr((key, torch.__version__)).encode()).hexdigest()[:32]
            path = store / f"{name}.json"
        memory = _read_window_memory(path) if path is not None else None
        if memory is None:
            memory = _measure_window_memory(model, frames, tuple(latent_hw), guidance, most_windows)
            if path is not None:
                _write_window_memory(path, memory)
        _WINDOW_MEMORY[key] = memory
    return _WINDOW_MEMORY[key]


def _read_window_memory(path: Path) -> WindowMemory | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        memory = WindowMemory(int(saved["fixed_bytes"]), int(saved["per_window_bytes"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.debug("window memory %s unreadable (%s): measuring again", path, err)
        return None
    if memory.fixed_bytes < 0 or memory.per_window_bytes < 1:
        return None
    return memory


def _write_window_memory(path: Path, memory: WindowMemory) -> None:
    # Ranks of one job may write the same file at once: each through its own temporary name.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(memory)), encoding="utf-8")
        tmp.replace(path)
    except OSError as err:  # a read-only cache costs the measurement next time, nothing more
        logger.debug("window memory not kept in %s: %s", path, err)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- the plan
@dataclass
class RunPlan:
    """What a run will need, from its stages run once on fake tensors."""

    device: torch.device
    dtype: str
    attention: str  # the attention kernel, as the plan reports it
    window_batch: int  # windows per U-Net call on the batched path (1 on --sequential)
    windows: int
    unet_calls_per_frame: int
    tflop_per_frame: float
    peak_memory_bytes: int
    weights_bytes: int
    per_window_bytes: int
    seconds_to_first_step: float
    stage_shapes: dict[str, list[int]]
    budget_bytes: int | None = None  # device memory free before the weights load (or --max_memory)
    # MIGA's mechanisms (fifo/miga_cost.py): their extra U-Net frames and kept latents, by name.
    miga: dict[str, dict[str, Any]] = field(default_factory=dict)
    network: ClassVar[str] = "U-Net"  # the denoising network, in the lines of MIGA's costs

    def usable_bytes(self, weights_bytes: int | None = None) -> int | None:
        """What the run may fill beyond weights of ``weights_bytes`` (default: its own), or None
        without a budget. On CUDA by the rule of a real run's automatic window batch
        (:func:`fifo.perf.usable_cuda_bytes` of the memory free after the weights); elsewhere the
        budget less the weights."""
        if self.budget_bytes is None:
            return None
        free = self.budget_bytes - (self.weights_bytes if weights_bytes is None else weights_bytes)
        return usable_cuda_bytes(free) if self.device.type == "cuda" else free

    @property
    def fits(self) -> bool | None:
        """Whether the peak beyond the weights stays within :meth:`usable_bytes`; None when there
        was no budget to check it against."""
        usable = self.usable_bytes()
        return None if usable is None else self.peak_memory_bytes - self.weights_bytes <= usable

    def json(self) -> dict[str, Any]:
        """The plan as one JSON object (the dry run's last line)."""
        out = asdict(self)
        out["device"] = str(self.device)
        out["usable_bytes"] = self.usable_bytes()
        out["fits"] = self.fits
        return out

    def lines(self) -> list[str]:
        """The plan for people."""
        gib = 2**30
        usable = self.usable_bytes()
        if usable is None:
            budget = " (no memory budget: not checked)"
        else:
            verdict = "fits" if self.fits else "does NOT fit"
            budget = (
                f" of {self.budget_bytes / gib:.2f} GiB free: {verdict} (beyond the weights a run fills "
                f"{usable / gib:.2f} GiB"
                + (
                    ", keeping 15 % of the free memory and 512 MiB for workspaces"
                    if self.device.type == "cuda"
                    else ""
                )
                + ")"
            )
        return [
            f"device {self.device}, {self.dtype} weights, attention {self.attention}",
            f"{self.windows} FIFO windows, {self.window_batch} per U-Net call: "
            f"{self.unet_calls_per_frame} U-Net calls and {self.tflop_per_frame:.1f} TFLOP per output frame",
            f"peak device memory {self.peak_memory_bytes / gib:.2f} GiB{budget} "
            f"(weights {self.weights_bytes / gib:.2f} GiB, {self.per_window_bytes / gib:.2f} GiB more per window "
            "in a call)",
            f"time to the first step: {self.seconds_to_first_step:.1f} s here (model built, checkpoint checked; "
            "reading the weights from disk comes on top)",
            "stages: " + ", ".join(f"{k} {tuple(v)}" for k, v in self.stage_shapes.items()),
            *cost_lines(self.miga, self.network),
        ]
