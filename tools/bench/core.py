"""What every measurement shares: the model with random weights, the queue, both paths, timers.

Two paths compute one FIFO iteration (``fifo_step``) on the same queue and noise:

- ``sequential``: one window and one guidance branch per U-Net call, as published, in fp32, with
  the layers as published;
- ``fast``: ``window_batch`` windows and both guidance branches per call, the U-Net in
  ``BenchOptions.dtype``, run as ``fifo.perf.plan_fast_path`` says;
- ``compiled`` (with ``BenchOptions.compile``): the fast path with its U-Net (a copy) through
  ``torch.compile`` (``fifo.compile``), compiled during the warm-up.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fifo.compile import compile_unet
from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser, GuidedDenoiser, ModelDenoiser
from fifo.noise import NoiseSource
from fifo.options import Precision
from fifo.perf import (
    FastPathPlan,
    ShardedDenoiser,
    UNetExecution,
    WindowMemory,
    apply_execution,
    auto_window_batch,
    plan_fast_path,
    tune_cpu_allocator,
)
from fifo.plan import window_memory
from fifo.schedule import DDIMSchedule
from fifo.step import fifo_step, initial_queue
from infra.cuda_runtime import cuda
from lvdm.build import load_model
from lvdm.models.ddpm3d import LatentDiffusion
from tools.bench.options import BenchOptions
from tools.bench.presets import PRESETS, PROMPT

logger = logging.getLogger("benchmark")

REPO = Path(__file__).resolve().parents[2]
PATHS = ("sequential", "fast")
COMPILED = "compiled"


@dataclass
class Bench:
    """Everything both paths share: model, queue layout, embeddings, seeded generator."""

    opts: BenchOptions
    device: torch.device
    model: LatentDiffusion
    geometry: FifoGeometry
    schedule: DDIMSchedule
    latent_hw: tuple[int, int]
    contexts: Tensor  # (W, 77, d), the prompt for every window
    uncond: Tensor | None  # (1, 77, d) empty-prompt embedding, or None without guidance
    generator: NoiseSource
    queue: Tensor  # (1, c, L, h, w) the initial queue from random "base clip" latents
    window_batch: int | None  # the fast path's
    auto_window_batch: int | None
    plan: FastPathPlan  # the fast path's execution plan
    allocator_tuned: bool
    fast_model: LatentDiffusion  # the model in --dtype (the sequential path's fp32 model when fp32)
    window_memory: WindowMemory  # the fast path's activation memory per window (measured on fake tensors)
    compiled_model: LatentDiffusion | None = None  # the fast model's copy with a compiled U-Net
    denoisers: dict[str, ShardedDenoiser] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.uncond is not None and self.opts.guidance != 1.0

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths this set-up runs: sequential, fast, and compiled with ``compile``."""
        return PATHS if self.compiled_model is None else (*PATHS, COMPILED)

    def path_model(self, path: str) -> LatentDiffusion:
        if path == COMPILED:
            assert self.compiled_model is not None, "set up without compile"
            return self.compiled_model
        return self.model if path == "sequential" else self.fast_model

    def guided_denoiser(self, path: str) -> GuidedDenoiser:
        """The path's guided denoiser in one thread (no parallel slices), its U-Net set up for it."""
        model = self.path_model(path)
        if path == "sequential":
            apply_execution(model.unet, UNetExecution())
            return CFGDenoiser(ModelDenoiser(model, self.opts.fps), self.opts.guidance, batch_branches=False)
        apply_execution(model.unet, self.plan.unet)
        return CFGDenoiser(ModelDenoiser(model, self.opts.fps), self.opts.guidance)

    def path_denoiser(self, path: str) -> GuidedDenoiser:
        """The path's guided denoiser, with its U-Net set up for it (the plan's execution in
        ``dtype`` on the fast path, the published layers in fp32 on the sequential one)."""
        if path == "sequential":
            return self.guided_denoiser(path)
        guided = self.guided_denoiser(path)
        if path not in self.denoisers:
            self.denoisers[path] = ShardedDenoiser(guided, self.plan.shards)
        return self.denoisers[path]

    def path_window_batch(self, path: str) -> int | None:
        return 1 if path == "sequential" else self.window_batch

    def path_dtype(self, path: str) -> str:
        return "fp32" if path == "sequential" else self.opts.dtype

    def close(self) -> None:
        """Stop the parallel slices' worker threads."""
        for denoiser in self.denoisers.values():
            denoiser.close()

    def step(self, path: str, queue: Tensor, noise: Tensor | None) -> Tensor:
        """One FIFO iteration (before the shift) on ``path``: (1, c, L, h, w) → (1, c, L, h, w)."""
        return fifo_step(
            self.path_denoiser(path),
            queue,
            self.geometry,
            self.schedule,
            self.contexts,
            self.uncond,
            noise,
            window_batch=self.path_window_batch(path),
        )

    def calls_per_frame(self, path: str) -> int:
        n_windows = len(self.geometry.windows())
        if path == "sequential":
            return n_windows * (2 if self.guided else 1)
        return math.ceil(n_windows / (self.window_batch or n_windows))

    def decode(self, z: Tensor) -> Tensor:
        """(1, c, 1, h, w) latents → (1, 3, 1, H, W), as the generator decodes an output frame
        (the autoencoder stays fp32 whatever the dtype)."""
        return self.model.decode_first_stage_2DAE(z).float()


def fast_plan(opts: BenchOptions, device: torch.device) -> FastPathPlan:
    """``fifo.perf.plan_fast_path`` with the options' overrides (the ablation flags)."""
    plan = plan_fast_path(device)
    if opts.shards is not None:
        plan = replace(plan, shards=opts.shards)
    if opts.transformer_chunk is not None:
        plan = replace(plan, unet=replace(plan.unet, transformer_chunk=opts.transformer_chunk or None))
    if opts.conv3d:
        plan = replace(plan, unet=replace(plan.unet, temporal_conv_2d=False))
    return plan


def setup(opts: BenchOptions, model: LatentDiffusion | None = None) -> Bench:
    """Load the preset's model with random weights (or take ``model``, the fp32 one of an earlier
    set-up of the same preset and seed) and build the shared inputs."""
    device = torch.device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    tuned = device.type == "cpu" and not opts.default_allocator and tune_cpu_allocator()
    if model is None:
        preset = PRESETS[opts.preset]
        model = load_model(REPO / preset.config, None, random_init=True, device=device, seed=opts.seed)
    apply_execution(model.unet, UNetExecution())
    geometry = FifoGeometry(opts.video_length, opts.num_partitions, not opts.no_lookahead)
    schedule = DDIMSchedule.from_model(model, geometry.steps, opts.eta)
    scale = model.vae_scale
    latent_hw = (opts.height // scale, opts.width // scale)
    n_windows = len(geometry.windows())
    # Embeddings once, outside every timed region.
    contexts = model.get_learned_conditioning([PROMPT]).expand(n_windows, -1, -1)
    uncond = None if opts.no_guidance else model.get_learned_conditioning([""])
    generator = NoiseSource.seeded(opts.seed, device)
    base = generator.randn((1, model.channels, geometry.video_length, *latent_hw))
    queue = initial_queue(base, geometry, schedule, unilatent=False, noise=generator)
    fast_model = model
    if opts.dtype != "fp32":  # the fast path's weights in the dtype; the sequential path keeps fp32
        fast_model = copy.deepcopy(model)
        fast_model.set_precision(Precision(opts.dtype).torch_dtype)
    plan = fast_plan(opts, device)
    guided = uncond is not None and opts.guidance != 1.0
    apply_execution(fast_model.unet, plan.unet)  # measured as the fast path runs
    memory = window_memory(fast_model, geometry.video_length, latent_hw, guided, n_windows)
    auto = auto_window_batch(n_windows, memory, device)
    window_batch = opts.window_batch if opts.window_batch is not None else auto
    if window_batch is not None and window_batch >= n_windows:
        window_batch = None  # all windows in one call
    compiled = None
    if opts.compile:  # a copy, so that the fast path stays eager
        compiled = copy.deepcopy(fast_model)
        compile_unet(compiled.unet, None if opts.cache_dir is None else Path(opts.cache_dir))
    return Bench(
        opts,
        device,
        model,
        geometry,
        schedule,
        latent_hw,
        contexts,
        uncond,
        generator,
        queue,
        window_batch,
        auto,
        plan,
        tuned,
        fast_model,
        memory,
        compiled,
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock reading covers it."""
    if device.type == "cuda":
        cuda().synchronize(device)


@contextlib.contextmanager
def timer(device: torch.device, into: list[float]) -> Iterator[None]:
    """Append the seconds the block took (the device's work included) to ``into``."""
    import time

    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    into.append(time.perf_counter() - start)


def device_description(device: torch.device) -> dict[str, Any]:
    """The device's name; on CPU also torch's threads and the machine's cores."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": cuda().spec(device).name,
            "count": cuda().device_count(),
        }
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"type": device.type, "name": name, "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def load_average() -> float | None:
    """The machine's one-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def load_warning(threads: int, load: float | None = None) -> str | None:
    """A warning when other work competes for the cores: the load average ``load`` (default: now,
    this process included) above the threads the benchmark uses. The sequential path suffers most from competition (one
    loaded run took 166 s for an iteration of 15 s), so the ratio then means little."""
    load = load_average() if load is None else load
    if load is None or load <= threads:
        return None
    return (
        f"WARNING: the machine's load average ({load:.1f}) exceeds this benchmark's {threads} thread(s): "
        "other processes compete for the cores, so the times and the ratio mean little; rerun on a quiet machine"
    )
