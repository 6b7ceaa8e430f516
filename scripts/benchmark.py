"""FIFO speed benchmark: the published sequential path against the batched fast path.

    python scripts/benchmark.py --preset medium                 # CPU-sized model
    python scripts/benchmark.py --preset full --device cuda     # VideoCrafter2 at 320x512
    python scripts/benchmark.py --preset tiny --iterations 1 --lengths --json out.json

One process, one model with random weights, one seed. Each timed FIFO iteration runs both
paths on the same queue and the same DDIM noise, in alternating order (so that drift in the
machine's load hits both alike), and compares their outputs:

- sequential: ``fifo_step`` with one window and one guidance branch per U-Net call
  (``window_batch=1``, ``CFGDenoiser(batch_branches=False)``), as published, in fp32;
- fast: ``fifo_step`` with ``--window_batch`` windows (default: chosen by
  ``fifo.perf.auto_window_batch``, i.e. all of them unless memory is short) and both guidance
  branches per call; with the U-Net and encoders in ``--dtype`` (default fp16 on CUDA, fp32 on
  CPU; a second copy of the model when not fp32); run as
  ``fifo.perf.plan_fast_path`` says (on CPU: the batch split into one slice per thread,
  evaluated in parallel, transformers in cache-sized chunks, temporal convolutions as 2D
  ones; ``--shards``, ``--transformer_chunk`` and ``--conv3d`` override it). The sequential
  path runs the layers as published.

On CPU both paths run after ``fifo.perf.tune_cpu_allocator`` (as the CLI does), unless
``--default_allocator``.

One iteration dequeues one output frame, so seconds per iteration = seconds per output frame.
Timed: ``fifo_step`` (U-Net calls, guidance, DDIM update, write-back). Not timed: the text
embeddings (computed once), the DDIM noise draw and the queue shift (shared by both paths and
negligible) and the VAE decode of the output frame (the same for both paths; its time is
printed separately). The queue then advances with the sequential path's result.

Peak memory: on CUDA ``max_memory_allocated`` with reset statistics; on CPU the peak RSS of a
fresh process (this script re-invokes itself) that runs only that path, since a process's
peak RSS does not come down. The fast path's memory is also measured over whole FIFO runs of
``--lengths`` output frames (decode + GIF streaming included) to show that it does not grow
with the video length: the peak, and what is still held after the run. On CPU with more than
one thread both vary by up to ~200 MiB between otherwise identical processes (the C
allocator's per-thread arenas keep freed memory), whatever the length; within one process the
RSS between iterations stays constant (no tensor accumulates across iterations).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Run from anywhere without installing the project.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from fifo.geometry import FifoGeometry  # noqa: E402
from fifo.guidance import CFGDenoiser, GuidedDenoiser, ModelDenoiser  # noqa: E402
from fifo.noise import NoiseSource  # noqa: E402
from fifo.options import Precision  # noqa: E402
from fifo.parallel import LaunchEnv  # noqa: E402
from fifo.perf import (  # noqa: E402
    FastPathPlan,
    ShardedDenoiser,
    UNetExecution,
    apply_execution,
    auto_window_batch,
    plan_fast_path,
    tune_cpu_allocator,
)
from fifo.plan import WindowMemory, window_memory  # noqa: E402
from fifo.schedule import DDIMSchedule  # noqa: E402
from fifo.step import fifo_step, initial_queue, iteration_noise, shift_queue  # noqa: E402
from infra.cli_help import DefaultsHelpFormatter  # noqa: E402
from infra.memory import current_rss_bytes, peak_memory_bytes, peak_memory_reset  # noqa: E402
from lvdm.build import config_facts, load_config, load_model  # noqa: E402
from lvdm.models.ddpm3d import LatentDiffusion  # noqa: E402

logger = logging.getLogger("benchmark")

PATHS = ("sequential", "fast")
DTYPES = [p.value for p in Precision]
PROBE_MARK = "BENCHMARK_PROBE_RESULT "
PROMPT = "a red panda eating bamboo in a misty forest"


@dataclass(frozen=True)
class Preset:
    """A model config and the video size it is benchmarked at (default: the config's own)."""

    name: str
    config: str
    description: str
    gpu_only: bool = False


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "configs/tiny_t2v.yaml", "tiny test model, 64x64, f=8"),
    "medium": Preset(
        "medium",
        "configs/bench_medium.yaml",
        "VideoCrafter2's U-Net structure at CPU size (C=32), 128x128, f=16",
    ),
    "full": Preset(
        "full",
        "configs/inference_t2v_512_v2.0.yaml",
        "VideoCrafter2 (1.4B U-Net), 320x512, f=16",
        gpu_only=True,
    ),
}


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Seconds per output frame of FIFO diagonal denoising: the published sequential "
        "path (one window, one guidance branch per U-Net call, fp32) against the batched fast path.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model and size: "
        + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
        + " (default: full on CUDA, medium on CPU)",
    )
    p.add_argument("--device", default=None, help="cuda when available, else cpu")
    p.add_argument("--iterations", type=int, default=4, help="timed FIFO iterations (output frames)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--seed", type=int, default=123, help="weights, queue and noise seed")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="fast path weights' dtype (default: fp16 on CUDA, fp32 on CPU); the sequential path is fp32",
    )
    p.add_argument(
        "--window_batch",
        type=int,
        default=None,
        help="fast path: windows per U-Net call (default: fifo.perf.auto_window_batch, from the memory "
        "per window measured on fake tensors)",
    )
    p.add_argument(
        "--video_length",
        type=int,
        default=None,
        help="frames per window f (default: the model's temporal_length)",
    )
    p.add_argument("--num_partitions", type=int, default=4, help="n (DDIM steps = f·n)")
    p.add_argument("--no_lookahead", action="store_true", help="turn lookahead denoising off")
    p.add_argument("--guidance", type=float, default=12.0, help="classifier-free guidance scale")
    p.add_argument("--no_guidance", action="store_true", help="no unconditional branch")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (same noise fed to both paths)")
    p.add_argument("--fps", type=int, default=8, help="frame-rate conditioning")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="fast path: parallel slices of each batched call (default: fifo.perf.plan_fast_path; "
        "one per thread on CPU, 1 on CUDA)",
    )
    p.add_argument(
        "--transformer_chunk",
        type=int,
        default=None,
        help="fast path: tokens per transformer chunk, 0 for none (default: fifo.perf.plan_fast_path)",
    )
    p.add_argument(
        "--conv3d",
        action="store_true",
        help="fast path: temporal convolutions as published 3D ones, whatever the plan says",
    )
    p.add_argument(
        "--default_allocator",
        action="store_true",
        help="CPU: leave glibc malloc as it is (no fifo.perf.tune_cpu_allocator)",
    )
    p.add_argument(
        "--lengths",
        type=int,
        nargs="*",
        default=[8, 32],
        help="output lengths whose whole FIFO run measures the fast path's peak memory "
        "(none: skip; costs length + f·n − f iterations each)",
    )
    p.add_argument(
        "--no_memory",
        action="store_true",
        help="timing only: skip the per-path peak-memory measurement (fresh processes on CPU)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="machine-readable results: to PATH, or to stdout (instead of the table) without PATH",
    )
    p.add_argument(
        "--allow-cpu-full",
        dest="allow_cpu_full",
        action="store_true",
        help="run --preset full on a CPU anyway (~6 GB of weights, minutes per U-Net call)",
    )
    p.add_argument(
        "--parallel",
        choices=("windows",),
        default=None,
        help="under torchrun with K processes: seconds per output frame with the windows split over the "
        "K ranks (one thread each on CPU) against rank 0 alone (K threads on CPU), in the same run",
    )
    p.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    return p


def resolve_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill in the device-dependent defaults and check the combinations; errors exit with 2."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.preset is None:
        args.preset = "full" if device.type == "cuda" else "medium"
    preset = PRESETS[args.preset]
    if preset.gpu_only and device.type != "cuda" and not args.allow_cpu_full:
        parser.error(
            f"--preset {args.preset} is the real VideoCrafter2 U-Net (1.4B parameters) at 320x512: "
            "meant for a GPU. On a CPU one iteration takes many minutes; use --preset medium, or "
            "pass --allow-cpu-full to run it anyway."
        )
    if args.dtype is None:
        args.dtype = "fp16" if device.type == "cuda" else "fp32"
    for name in ("iterations", "num_partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1")
    if args.warmup < 0:
        parser.error("--warmup must be ≥ 0")
    if args.window_batch is not None and args.window_batch < 1:
        parser.error("--window_batch must be ≥ 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be ≥ 1")
    if args.shards is not None and args.shards < 1:
        parser.error("--shards must be ≥ 1")
    if args.transformer_chunk is not None and args.transformer_chunk < 0:
        parser.error("--transformer_chunk must be ≥ 0 (0: no chunks)")
    if any(n < 1 for n in args.lengths):
        parser.error("--lengths must be ≥ 1")
    facts = config_facts(load_config(REPO / preset.config))
    if args.video_length is None:
        args.video_length = facts.temporal_length
    if args.video_length < 2 or args.video_length % 2:
        parser.error("--video_length must be an even number ≥ 2")
    args.height, args.width = facts.default_size
    return args


# ------------------------------------------------------------------------------------ set-up
@dataclass
class Bench:
    """Everything both paths share: model, queue layout, embeddings, seeded generator."""

    args: argparse.Namespace
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
    fast_denoiser: ShardedDenoiser | None = None

    @property
    def guided(self) -> bool:
        return self.uncond is not None and self.args.guidance != 1.0

    def path_denoiser(self, path: str) -> GuidedDenoiser:
        """The path's guided denoiser, with its U-Net set up for it (the plan's execution in
        ``--dtype`` on the fast path, the published layers in fp32 on the sequential one)."""
        if path == "sequential":
            apply_execution(self.model.unet, UNetExecution())
            return CFGDenoiser(
                ModelDenoiser(self.model, self.args.fps), self.args.guidance, batch_branches=False
            )
        apply_execution(self.fast_model.unet, self.plan.unet)
        if self.fast_denoiser is None:
            guided = CFGDenoiser(ModelDenoiser(self.fast_model, self.args.fps), self.args.guidance)
            self.fast_denoiser = ShardedDenoiser(guided, self.plan.shards)
        return self.fast_denoiser

    def step(self, path: str, queue: Tensor, noise: Tensor | None) -> Tensor:
        """One FIFO iteration (before the shift) on ``path``."""
        fast = path == "fast"
        return fifo_step(
            self.path_denoiser(path),
            queue,
            self.geometry,
            self.schedule,
            self.contexts,
            self.uncond,
            noise,
            window_batch=self.window_batch if fast else 1,
        )

    def calls_per_frame(self, path: str) -> int:
        n_windows = len(self.geometry.windows())
        if path == "sequential":
            return n_windows * (2 if self.guided else 1)
        return math.ceil(n_windows / (self.window_batch or n_windows))

    def decode(self, z: Tensor) -> Tensor:
        """(1, c, 1, h, w) latents → (1, 3, 1, H, W), as the generator decodes an output frame
        (the autoencoder stays fp32 whatever --dtype)."""
        return self.model.decode_first_stage_2DAE(z).float()


def setup(args: argparse.Namespace) -> Bench:
    """Load the preset's model with random weights and build the shared inputs."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = device.type == "cpu" and not args.default_allocator and tune_cpu_allocator()
    preset = PRESETS[args.preset]
    model = load_model(REPO / preset.config, None, random_init=True, device=device, seed=args.seed)
    geometry = FifoGeometry(args.video_length, args.num_partitions, not args.no_lookahead)
    schedule = DDIMSchedule.from_model(model, geometry.steps, args.eta)
    scale = model.vae_scale
    latent_hw = (args.height // scale, args.width // scale)
    n_windows = len(geometry.windows())
    # Embeddings once, outside every timed region.
    contexts = model.get_learned_conditioning([PROMPT]).expand(n_windows, -1, -1)
    uncond = None if args.no_guidance else model.get_learned_conditioning([""])
    generator = NoiseSource.seeded(args.seed, device)
    base = generator.randn((1, model.channels, geometry.video_length, *latent_hw))
    queue = initial_queue(base, geometry, schedule, unilatent=False, noise=generator)
    fast_model = model
    if args.dtype != "fp32":  # the fast path's weights in --dtype; the sequential path keeps fp32
        fast_model = copy.deepcopy(model)
        fast_model.set_precision(Precision(args.dtype).torch_dtype)
    plan = plan_fast_path(device)
    if args.shards is not None:
        plan = replace(plan, shards=args.shards)
    if args.transformer_chunk is not None:
        plan = replace(plan, unet=replace(plan.unet, transformer_chunk=args.transformer_chunk or None))
    if args.conv3d:
        plan = replace(plan, unet=replace(plan.unet, temporal_conv_2d=False))
    guided = uncond is not None and args.guidance != 1.0
    apply_execution(fast_model.unet, plan.unet)  # measured as the fast path runs
    memory = window_memory(fast_model, geometry.video_length, latent_hw, guided, n_windows)
    auto = auto_window_batch(n_windows, memory, device)
    window_batch = args.window_batch if args.window_batch is not None else auto
    if window_batch is not None and window_batch >= n_windows:
        window_batch = None  # all windows in one call
    return Bench(
        args,
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
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timer(device: torch.device, into: list[float]) -> Iterator[None]:
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    into.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------------ measuring
def time_paths(bench: Bench) -> dict[str, Any]:
    """Interleaved timing of both paths; on CUDA also their peak memory."""
    args, device = bench.args, bench.device
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    peaks: dict[str, int] = dict.fromkeys(PATHS, 0)
    diffs: list[float] = []
    queue = bench.queue
    total = args.warmup + args.iterations
    for it in range(total):
        timed = it >= args.warmup
        noise = iteration_noise(bench.generator, bench.geometry, queue, bench.schedule)
        outputs: dict[str, Tensor] = {}
        last: dict[str, float] = {}
        order = PATHS if it % 2 == 0 else PATHS[::-1]
        for path in order:
            if device.type == "cuda":
                peak_memory_reset(device)
            sink: list[float] = []
            with _timer(device, sink):
                outputs[path] = bench.step(path, queue, noise)
            last[path] = sink[0]
            if timed:
                times[path].append(sink[0])
            if device.type == "cuda":
                peaks[path] = max(peaks[path], peak_memory_bytes(device))
        diffs.append(float((outputs["sequential"] - outputs["fast"]).abs().max()))
        logger.info(
            "iteration %d/%d%s: sequential %.3fs, fast %.3fs",
            it + 1,
            total,
            "" if timed else " (warm-up)",
            last["sequential"],
            last["fast"],
        )
        queue = shift_queue(outputs["sequential"], bench.generator)
    decode_times: list[float] = []
    clean = queue[:, :, bench.geometry.output_slot : bench.geometry.output_slot + 1]
    for _ in range(2):
        decode_times.clear()
        with _timer(device, decode_times):
            bench.decode(clean)
    return {
        "times": times,
        "cuda_peaks": peaks,
        "max_abs_diff": max(diffs),
        "decode_seconds": decode_times[0],
    }


def run_fifo(bench: Bench, path: str, iterations: int, video_dir: Path | None) -> dict[str, Any]:
    """A FIFO run of ``iterations`` on ``path`` as the pipeline does it; output frames decoded
    and streamed to a GIF in ``video_dir`` (None: no decode). Returns frames and seconds."""
    from fifo.run import to_uint8_frames
    from infra.video_io import VideoWriter

    geo = bench.geometry
    skip = geo.discarded_frames()
    queue = bench.queue
    frames = 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        writer = None
        if video_dir is not None:
            writer = stack.enter_context(VideoWriter(video_dir / "benchmark.gif", fps=8))
        for it in range(iterations):
            noise = iteration_noise(bench.generator, geo, queue, bench.schedule)
            queue = bench.step(path, queue, noise)
            if writer is not None and it >= skip:
                frame = bench.decode(queue[:, :, geo.output_slot : geo.output_slot + 1])
                writer.write(to_uint8_frames(frame)[0])
                frames += 1
            queue = shift_queue(queue, bench.generator)
    _sync(bench.device)
    return {"iterations": iterations, "frames": frames, "seconds": time.perf_counter() - start}


def _current_memory(device: torch.device) -> int:
    """Memory held now: RSS on CPU, allocated tensors on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    return current_rss_bytes()


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Hidden ``--_probe`` mode: one measurement in this (fresh) process.

    ``{"kind": "path", "path": P}``: one iteration of path P. ``{"kind": "length", "length": L}``:
    a whole fast-path FIFO run for L output frames. Returns peak memory, the memory after
    set-up (weights, embeddings), and the run's frames and seconds.
    """
    spec = json.loads(args._probe)
    bench = setup(args)
    _sync(bench.device)
    baseline = _current_memory(bench.device)
    # Drop the set-up's transient peak (model construction) where the platform allows it.
    reset = peak_memory_reset(bench.device)
    with tempfile.TemporaryDirectory() as tmp:
        if spec["kind"] == "path":
            run = run_fifo(bench, spec["path"], 1, None)
        else:
            length = int(spec["length"])
            run = run_fifo(bench, "fast", bench.geometry.num_iterations(length), Path(tmp))
            run["length"] = length
    return {
        **run,
        "peak_memory_bytes": peak_memory_bytes(bench.device),
        "baseline_memory_bytes": baseline,
        "end_memory_bytes": _current_memory(bench.device),
        "peak_reset_after_setup": reset,
    }


def fresh_process_probe(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`probe` in a new Python process (a clean peak RSS) and return its result."""
    forwarded = {
        "--preset": args.preset,
        "--device": args.device,
        "--seed": args.seed,
        "--dtype": args.dtype,
        "--video_length": args.video_length,
        "--num_partitions": args.num_partitions,
        "--guidance": args.guidance,
        "--eta": args.eta,
        "--fps": args.fps,
    }
    cmd = [sys.executable, str(Path(__file__).resolve())]
    for flag, value in forwarded.items():
        cmd += [flag, str(value)]
    if args.window_batch is not None:
        cmd += ["--window_batch", str(args.window_batch)]
    for flag, value in (
        ("--threads", args.threads),
        ("--shards", args.shards),
        ("--transformer_chunk", args.transformer_chunk),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    for flag, on in (
        ("--no_lookahead", args.no_lookahead),
        ("--no_guidance", args.no_guidance),
        ("--default_allocator", args.default_allocator),
        ("--conv3d", args.conv3d),
    ):
        if on:
            cmd.append(flag)
    if args.allow_cpu_full:
        cmd.append("--allow-cpu-full")
    cmd += ["--lengths", "--_probe", json.dumps(spec)]
    logger.info("fresh process: %s", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(PROBE_MARK) :])


def path_memory(bench: Bench, timing: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Peak memory of each path: from the timed run on CUDA, fresh processes on CPU."""
    if bench.device.type == "cuda":
        base = int(torch.cuda.memory_allocated(bench.device))
        return {
            p: {"peak_memory_bytes": timing["cuda_peaks"][p], "baseline_memory_bytes": base} for p in PATHS
        }
    out = {}
    for path in PATHS:
        result = fresh_process_probe(bench.args, {"kind": "path", "path": path})
        out[path] = {k: result[k] for k in ("peak_memory_bytes", "baseline_memory_bytes")}
    return out


def length_memory(bench: Bench) -> list[dict[str, Any]]:
    """The fast path's peak memory over whole FIFO runs of each ``--lengths``."""
    results = []
    for length in bench.args.lengths:
        if bench.device.type == "cuda":
            base = int(torch.cuda.memory_allocated(bench.device))
            peak_memory_reset(bench.device)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_fifo(bench, "fast", bench.geometry.num_iterations(length), Path(tmp))
            result = {
                **run,
                "length": length,
                "peak_memory_bytes": peak_memory_bytes(bench.device),
                "baseline_memory_bytes": base,
                "end_memory_bytes": _current_memory(bench.device),
            }
        else:
            result = fresh_process_probe(bench.args, {"kind": "length", "length": length})
        results.append(result)
    return results


def sampler_overhead(bench: Bench, repeats: int = 5) -> dict[str, float]:
    """Seconds per iteration of ``fifo_step`` itself (slicing, guidance mix, DDIM update,
    write-back) with a U-Net that costs nothing: what batching cannot save."""

    def null(x: Tensor, t: Tensor, context: Tensor, context_branches: int = 1) -> Tensor:
        return x.repeat(context_branches, 1, 1, 1, 1)  # one output per context

    out = {}
    noise = iteration_noise(bench.generator, bench.geometry, bench.queue, bench.schedule)
    for path in PATHS:
        fast = path == "fast"
        guided = CFGDenoiser(null, bench.args.guidance, batch_branches=fast)
        times: list[float] = []
        for _ in range(repeats + 1):
            with _timer(bench.device, times):
                fifo_step(
                    guided,
                    bench.queue,
                    bench.geometry,
                    bench.schedule,
                    bench.contexts,
                    bench.uncond,
                    noise,
                    window_batch=bench.window_batch if fast else 1,
                )
        out[path] = statistics.median(times[1:])
    return out


# ------------------------------------------------------------------------------------ report
def device_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {"type": device.type, "name": name, "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement and return the results (the JSON document)."""
    with torch.inference_mode():
        bench = setup(args)
        logger.info(
            "preset %s: %d windows of %d frames, latent %s, fast path window_batch=%s, dtype %s",
            args.preset,
            len(bench.geometry.windows()),
            bench.geometry.video_length,
            bench.latent_hw,
            bench.window_batch or "all",
            args.dtype,
        )
        timing = time_paths(bench)
        overhead = sampler_overhead(bench)
        memory = path_memory(bench, timing) if not args.no_memory else {p: {} for p in PATHS}
        lengths = length_memory(bench) if args.lengths else []
    paths = {}
    for path in PATHS:
        t = timing["times"][path]
        paths[path] = {
            "dtype": "fp32" if path == "sequential" else args.dtype,
            "window_batch": 1 if path == "sequential" else bench.window_batch,
            "unet_calls_per_frame": bench.calls_per_frame(path),
            "seconds_per_frame": statistics.median(t),
            "seconds_per_frame_mean": statistics.fmean(t),
            "iteration_seconds": t,
            "sampler_overhead_seconds": overhead[path],
            "peak_memory_bytes": memory[path].get("peak_memory_bytes"),
            "baseline_memory_bytes": memory[path].get("baseline_memory_bytes"),
        }
    preset = PRESETS[args.preset]
    return {
        "device": device_description(bench.device),
        "preset": args.preset,
        "config": preset.config,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {
            "height": args.height,
            "width": args.width,
            "latent_hw": list(bench.latent_hw),
            "video_length": bench.geometry.video_length,
            "num_partitions": bench.geometry.num_partitions,
            "lookahead": bench.geometry.lookahead,
            "windows": len(bench.geometry.windows()),
            "guidance": None if not bench.guided else args.guidance,
            "eta": args.eta,
            "seed": args.seed,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "dtype": args.dtype,
            "window_batch": bench.window_batch,
            "auto_window_batch": bench.auto_window_batch,
            "threads": torch.get_num_threads() if bench.device.type == "cpu" else None,
            "shards": bench.plan.shards,
            "transformer_chunk": bench.plan.unet.transformer_chunk,
            "temporal_conv_2d": bench.plan.unet.temporal_conv_2d,
            "allocator_tuned": bench.allocator_tuned,
        },
        "paths": paths,
        "speedup": paths["sequential"]["seconds_per_frame"] / paths["fast"]["seconds_per_frame"],
        "max_abs_diff": timing["max_abs_diff"],
        "decode_seconds_per_frame": timing["decode_seconds"],
        "memory_kind": (
            "cuda max_memory_allocated (reset per measurement)"
            if bench.device.type == "cuda"
            else "peak RSS of a fresh process (weights and libraries included)"
        ),
        "memory_by_length": lengths,
        "window_activation_estimate_bytes": bench.window_memory.per_window_bytes,
    }


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _above(m: dict[str, Any]) -> int | None:
    """Peak memory above the memory held after set-up (weights, embeddings, queue)."""
    if m.get("peak_memory_bytes") is None or m.get("baseline_memory_bytes") is None:
        return None
    return max(0, m["peak_memory_bytes"] - m["baseline_memory_bytes"])


def format_table(r: dict[str, Any]) -> str:
    s = r["settings"]
    dev = r["device"]
    threads = dev.get("threads")
    dev_text = dev["name"] + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
    lines = [
        f"FIFO speed benchmark: preset {r['preset']} ({r['config']}, {s['height']}x{s['width']}, "
        f"latent {s['latent_hw'][0]}x{s['latent_hw'][1]}), random weights",
        f"device: {dev['type']} ({dev_text}); torch {r['torch']}",
        f"f={s['video_length']} n={s['num_partitions']} lookahead={'on' if s['lookahead'] else 'off'} "
        f"({s['windows']} windows), guidance {s['guidance'] or 'off'}, eta {s['eta']}, seed {s['seed']}; "
        f"{s['iterations']} timed iteration(s) after {s['warmup']} warm-up, paths interleaved",
        f"fast path: {s['shards']} parallel slice(s) per call, transformer chunks of "
        f"{s['transformer_chunk'] or 'all'} tokens, temporal convs {'2D' if s['temporal_conv_2d'] else '3D'}; "
        f"glibc malloc tuned: {'yes' if s['allocator_tuned'] else 'no'}",
        "",
        f"{'path':<34}{'s/frame':>10}{'mean':>10}{'calls/frame':>13}{'peak memory':>14}{'above set-up':>14}",
    ]
    for name, p in r["paths"].items():
        label = f"{name} ({p['dtype']}, " + (
            "1 window/call)" if name == "sequential" else f"{p['window_batch'] or 'all'} windows/call)"
        )
        lines.append(
            f"{label:<34}{p['seconds_per_frame']:>10.3f}{p['seconds_per_frame_mean']:>10.3f}"
            f"{p['unet_calls_per_frame']:>13}{_mib(p['peak_memory_bytes']):>14}"
            f"{_mib(_above(p)):>14}"
        )
    lines += [
        "",
        f"speed-up (sequential / fast): {r['speedup']:.2f}x    max |sequential − fast| = {r['max_abs_diff']:.2e}",
        f"fifo_step without the U-Net: sequential {r['paths']['sequential']['sampler_overhead_seconds'] * 1e3:.2f} ms, "
        f"fast {r['paths']['fast']['sampler_overhead_seconds'] * 1e3:.2f} ms per frame; "
        f"VAE decode (not timed above) {r['decode_seconds_per_frame']:.3f} s per frame",
        f"memory: {r['memory_kind']}; activations per fast-path window (measured on fake tensors) "
        f"{_mib(r['window_activation_estimate_bytes'])}",
    ]
    if r["memory_by_length"]:
        lines.append("fast path, whole FIFO runs (decode and GIF streaming included):")
        for m in r["memory_by_length"]:
            held = m["end_memory_bytes"] - m["baseline_memory_bytes"]
            lines.append(
                f"  {m['length']:>4} frames ({m['iterations']} iterations): peak {_mib(m['peak_memory_bytes'])} "
                f"(+{_mib(_above(m))} above set-up), held after the run {'+' if held >= 0 else '−'}"
                f"{_mib(abs(held))}"
            )
    return "\n".join(lines)


def parallel_windows_benchmark(args: argparse.Namespace) -> int:
    """``--parallel windows`` under torchrun: rank 0 alone against all ranks, in one run.

    One rank: rank 0 runs every window of an iteration with K intra-op threads on CPU (K = the
    world size; its own GPU on CUDA) while the others wait. K ranks: every rank runs its share of
    the windows with one thread (its GPU) and the written-back frames are exchanged. Both on the
    same queue and noise; each timed iteration runs both, in alternating order.
    """
    import torch.distributed as dist

    from fifo.parallel import DistributedWindows, RankGroup, local_windows, shares_text

    launch = LaunchEnv.from_environment()
    if launch is None:
        raise SystemExit(
            "--parallel windows needs torchrun, e.g. torchrun --nproc_per_node=2 scripts/benchmark.py ..."
        )
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
        args.device = str(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    group = RankGroup(launch.rank, launch.world, device)
    if launch.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    args.threads = 1
    with torch.inference_mode():
        bench = setup(args)
        # Both sides run the fast path's plan: on CPU the one rank splits its calls into K parallel
        # slices of K threads (the best a single process does with K cores), the K ranks one each.
        plan = plan_fast_path(device, threads=launch.world)
        apply_execution(bench.fast_model.unet, plan.unet)
        denoise = CFGDenoiser(ModelDenoiser(bench.fast_model, args.fps), args.guidance)
        alone = ShardedDenoiser(denoise, plan.shards)
        split = DistributedWindows(group)
        common = (bench.geometry, bench.schedule, bench.contexts, bench.uncond)
        times: dict[str, list[float]] = {"one rank": [], f"{launch.world} ranks": []}
        diffs: list[float] = []
        queue = bench.queue
        for it in range(args.warmup + args.iterations):
            noise = iteration_noise(bench.generator, bench.geometry, queue, bench.schedule)
            outputs = {}
            for path in list(times) if it % 2 == 0 else list(times)[::-1]:
                dist.barrier()
                start = time.perf_counter()
                if path == "one rank":
                    if launch.rank == 0:
                        torch.set_num_threads(
                            launch.world if device.type == "cpu" else torch.get_num_threads()
                        )
                        outputs[path] = local_windows(alone, queue, *common, noise, bench.window_batch)
                        torch.set_num_threads(1)
                else:
                    outputs[path] = split(denoise, queue, *common, noise, bench.window_batch)
                _sync(device)
                dist.barrier()
                if it >= args.warmup:
                    times[path].append(time.perf_counter() - start)
            if launch.rank == 0:
                diffs.append(float((outputs["one rank"] - outputs[f"{launch.world} ranks"]).abs().max()))
                queue = outputs["one rank"]
            queue = group.broadcast(
                queue if launch.rank == 0 else None, (tuple(bench.queue.shape), bench.queue.dtype)
            )
            queue = shift_queue(queue, bench.generator)
    if launch.rank == 0:
        one, many = (statistics.median(t) for t in times.values())
        windows = len(bench.geometry.windows())
        print(
            f"FIFO windows over ranks: preset {args.preset}, {windows} windows ({shares_text(windows, launch.world)} "
            f"per rank), device {device.type}, {args.iterations} timed iteration(s)\n"
            f"one rank ({plan.shards} parallel slice(s) of one thread each on CPU): {one:.3f} s/frame\n"
            f"{launch.world} ranks (1 thread each on CPU): {many:.3f} s/frame\n"
            f"speed-up (one rank / {launch.world} ranks): {one / many:.2f}x    max |difference| = {max(diffs):.2e}"
        )
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = resolve_args(args, parser)
    if args._probe is not None:
        with torch.inference_mode():
            result = probe(args)
        print(PROBE_MARK + json.dumps(result), flush=True)
        return 0
    if args.parallel == "windows":
        return parallel_windows_benchmark(args)
    results = benchmark(args)
    if args.json == "-":
        print(json.dumps(results, indent=2))
        return 0
    if args.json is not None:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        logger.info("results written to %s", args.json)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
