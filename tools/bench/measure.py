"""Measurements on a :class:`~tools.bench.core.Bench`: both paths timed side by side, their peak
memory (CUDA: in the same run; CPU: fresh processes), whole FIFO runs, the sampler's own cost.

One iteration dequeues one output frame, so seconds per iteration = seconds per output frame.
Timed: ``fifo_step`` (U-Net calls, guidance, DDIM update, write-back). Not timed: the text
embeddings (computed once), the DDIM noise draw and the queue shift (shared by both paths and
negligible) and the VAE decode of the output frame (the same for both paths; timed apart).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fifo.guidance import CFGDenoiser
from fifo.step import fifo_step, iteration_noise, shift_queue
from infra.cuda_runtime import cuda
from infra.memory import current_rss_bytes, peak_memory_bytes, peak_memory_reset
from tools.bench.core import COMPILED, PATHS, REPO, Bench, setup, sync, timer
from tools.bench.options import BenchOptions

logger = logging.getLogger("benchmark")

PROBE_MARK = "BENCHMARK_PROBE_RESULT "
SCRIPT = REPO / "scripts" / "benchmark.py"


def time_paths(
    bench: Bench, paths: Sequence[str] = PATHS, stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Interleaved timing of ``paths`` (in alternating order, so that drift in the machine's load
    hits them alike); on CUDA also their peak memory. The queue advances with the first path's
    result. ``stop()`` is asked after each iteration: True ends the timing there (a time budget).

    Returns ``times`` (timed iterations per path), ``warmup_times`` (the warm-up iterations',
    compilation included), ``cuda_peaks``, ``max_abs_diff`` between the paths (None with one
    path), ``decode_seconds``, the last ``queue``, its decoded output ``frame`` and whether it
    was ``stopped`` early; ``first_outputs``, each path's result of the first iteration (before
    the shift; every path starts from the same queue and noise)."""
    opts, device = bench.opts, bench.device
    times: dict[str, list[float]] = {p: [] for p in paths}
    warmup: dict[str, list[float]] = {p: [] for p in paths}
    peaks: dict[str, int] = dict.fromkeys(paths, 0)
    diffs: list[float] = []
    first_outputs: dict[str, Tensor] = {}
    queue = bench.queue
    total = opts.warmup + opts.iterations
    for it in range(total):
        timed = it >= opts.warmup
        noise = iteration_noise(bench.generator, bench.geometry, queue, bench.schedule)
        outputs: dict[str, Tensor] = {}
        order = list(paths) if it % 2 == 0 else list(paths)[::-1]
        for path in order:
            if device.type == "cuda":
                peak_memory_reset(device)
            sink: list[float] = []
            with timer(device, sink):
                outputs[path] = bench.step(path, queue, noise)
            (times if timed else warmup)[path].append(sink[0])
            if device.type == "cuda":
                peaks[path] = max(peaks[path], peak_memory_bytes(device))
        if it == 0:
            first_outputs = dict(outputs)
        if len(paths) > 1:
            diffs.append(float((outputs[paths[0]] - outputs[paths[1]]).abs().max()))
        logger.info(
            "iteration %d/%d%s: %s",
            it + 1,
            total,
            "" if timed else " (warm-up)",
            ", ".join(f"{p} {(times if timed else warmup)[p][-1]:.3f}s" for p in paths),
        )
        queue = shift_queue(outputs[paths[0]], bench.generator)
        if stop is not None and it + 1 < total and stop():
            break
    stopped = len(times[paths[0]]) < opts.iterations
    decode_times: list[float] = []
    clean = queue[:, :, bench.geometry.output_slot : bench.geometry.output_slot + 1]
    for _ in range(1 if stopped else 2):  # the first decode warms the autoencoder's kernels up
        decode_times.clear()
        with timer(device, decode_times):
            frame = bench.decode(clean)
    return {
        "times": times,
        "warmup_times": warmup,
        "cuda_peaks": peaks,
        "max_abs_diff": max(diffs) if diffs else None,
        "decode_seconds": decode_times[0],
        "queue": queue,
        "first_outputs": first_outputs,
        "frame": frame,
        "stopped": stopped,
    }


def run_fifo(bench: Bench, path: str, iterations: int, video_dir: Path | None) -> dict[str, Any]:
    """A FIFO run of ``iterations`` on ``path`` as the pipeline does it; output frames decoded
    and streamed to a GIF in ``video_dir`` (None: no decode). Returns frames and seconds."""
    from fifo.state import to_uint8_frames
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
    sync(bench.device)
    return {"iterations": iterations, "frames": frames, "seconds": time.perf_counter() - start}


def current_memory(device: torch.device) -> int:
    """Memory held now: RSS on CPU, allocated tensors on CUDA."""
    if device.type == "cuda":
        cuda().synchronize(device)
        return cuda().memory_allocated(device)
    return current_rss_bytes()


def probe(opts: BenchOptions, spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process (the hidden ``--_probe`` mode).

    ``{"kind": "path", "path": P}``: one iteration of path P. ``{"kind": "length", "length": L}``:
    a whole fast-path FIFO run for L output frames. Returns peak memory, the memory after
    set-up (weights, embeddings), and the run's frames and seconds.
    """
    if spec["kind"] == "time":
        return time_probe(opts, spec)
    bench = setup(opts)
    sync(bench.device)
    baseline = current_memory(bench.device)
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
        "end_memory_bytes": current_memory(bench.device),
        "peak_reset_after_setup": reset,
    }


def command_line(opts: BenchOptions) -> list[str]:
    """The benchmark's arguments that reproduce ``opts`` (for a fresh process)."""
    # The size comes with the preset; compiling is asked for per probe; a probe times one path.
    skip = {"height", "width", "lengths", "cache_dir", "compile", "processes", "bf16_row"}
    argv: list[str] = []
    for field in fields(opts):
        value = getattr(opts, field.name)
        if field.name in skip or value is None or value is False:
            continue
        flag = "--allow-cpu-full" if field.name == "allow_cpu_full" else f"--{field.name}"
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def fresh_process_probe(opts: BenchOptions, spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`probe` in a new Python process (a clean peak RSS, threads placed afresh) and
    return its result. The process compiles the U-Net only when ``opts.compile``."""
    compiling = ["--cache_dir", str(opts.cache_dir)] if opts.compile and opts.cache_dir else []
    cmd = [
        sys.executable,
        str(SCRIPT),
        *command_line(opts),
        *(compiling if opts.compile else ["--no_compile"]),
        "--lengths",
        "--_probe",
        json.dumps(spec),
    ]
    logger.info("fresh process: %s", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(PROBE_MARK) :])


def time_probe(opts: BenchOptions, spec: dict[str, Any]) -> dict[str, Any]:
    """``{"kind": "time", "path": P, "queue_file": F}``: ``opts.warmup + opts.iterations``
    iterations of path P alone in this process (:func:`time_paths` with one path); the first
    iteration's result is saved to F, so that the parent compares the paths on the same input."""
    bench = setup(opts)
    try:
        timing = time_paths(bench, [spec["path"]])
    finally:
        bench.close()
    torch.save(timing["first_outputs"][spec["path"]].cpu(), spec["queue_file"])
    return {
        "times": timing["times"][spec["path"]],
        "warmup_times": timing["warmup_times"][spec["path"]],
        "decode_seconds": timing["decode_seconds"],
    }


@dataclass(frozen=True)
class TimedRow:
    """One row of the process-timed table: ``path`` (sequential, fast, compiled) in ``dtype``."""

    name: str
    path: str
    dtype: str


def time_in_processes(opts: BenchOptions, rows: Sequence[TimedRow]) -> dict[str, Any]:
    """Each row timed alone in ``opts.processes`` fresh processes (rows in alternating order per
    round, so that drift in the machine's load hits them alike).

    Why not one process: on a CPU with few cores the published path's time can be bimodal between
    processes, whichever path ran before, while the fast path's is not (docs/performance.md,
    "Generation speed"); pinning its OpenMP threads (``OMP_PROC_BIND``) removes the slow mode, so it is the threads' placement,
    which a process keeps. A row's time is the best of its processes' medians (the placement that
    does not hold it back); every process's median is reported. A compiled row runs in one process:
    each process compiles again (minutes on a CPU, even from Inductor's cache), and its path runs in
    parallel slices of one thread each, which were not bimodal (2.2–2.4 s on ``medium``).

    Returns what :func:`time_paths` returns (``times``/``warmup_times`` of each row's best
    process, ``max_abs_diff`` between the first two rows' first iterations, ``decode_seconds``) plus
    ``process_medians`` per row."""
    times: dict[str, list[float]] = {}
    warmup: dict[str, list[float]] = {}
    medians: dict[str, list[float]] = {r.name: [] for r in rows}
    first_warmup: dict[str, list[float]] = {}
    decode: list[float] = []
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        queues: dict[str, Path] = {}
        for round_ in range(opts.processes):
            for row in rows if round_ % 2 == 0 else list(rows)[::-1]:
                if row.name in errors or (row.path == COMPILED and round_ > 0):
                    continue  # a compiled row: one process (each one compiles for minutes on a CPU)
                queue_file = Path(tmp) / f"{row.name}.pt"
                row_opts = replace(opts, dtype=row.dtype, compile=row.path == COMPILED)
                spec = {"kind": "time", "path": row.path, "queue_file": str(queue_file)}
                try:
                    result = fresh_process_probe(row_opts, spec)
                except RuntimeError as err:
                    if row.path != COMPILED:
                        raise
                    # No C++ compiler, an unsupported op...: say so and time the rest.
                    logger.warning("--compile failed, the compiled row is left out: %s", err)
                    errors[row.name] = str(err)[-2000:]
                    continue
                median = statistics.median(result["times"])
                logger.info(
                    "%s, process %d/%d: %.3f s per frame", row.name, round_ + 1, opts.processes, median
                )
                first_warmup.setdefault(row.name, result["warmup_times"])
                if not medians[row.name] or median < min(medians[row.name]):
                    times[row.name], warmup[row.name] = result["times"], result["warmup_times"]
                medians[row.name].append(median)
                decode.append(result["decode_seconds"])
                queues.setdefault(row.name, queue_file)
        diff = None
        if len(rows) > 1 and all(r.name in queues for r in rows[:2]):
            a, b = (torch.load(queues[r.name], weights_only=True) for r in rows[:2])
            diff = float((a - b).abs().max())
    return {
        "times": times,
        "warmup_times": warmup,
        "first_warmup_times": first_warmup,
        "process_medians": medians,
        "max_abs_diff": diff,
        "decode_seconds": statistics.median(decode),
        "errors": errors,
    }


def path_memory(bench: Bench, timing: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Peak memory of each path: from the timed run on CUDA, fresh processes on CPU."""
    if bench.device.type == "cuda":
        base = cuda().memory_allocated(bench.device)
        return {
            p: {"peak_memory_bytes": timing["cuda_peaks"][p], "baseline_memory_bytes": base} for p in PATHS
        }
    out = {}
    for path in PATHS:
        result = fresh_process_probe(bench.opts, {"kind": "path", "path": path})
        out[path] = {k: result[k] for k in ("peak_memory_bytes", "baseline_memory_bytes")}
    return out


def length_memory(bench: Bench) -> list[dict[str, Any]]:
    """The fast path's peak memory over whole FIFO runs of each of ``lengths`` output frames."""
    results = []
    for length in bench.opts.lengths:
        if bench.device.type == "cuda":
            base = cuda().memory_allocated(bench.device)
            peak_memory_reset(bench.device)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_fifo(bench, "fast", bench.geometry.num_iterations(length), Path(tmp))
            result = {
                **run,
                "length": length,
                "peak_memory_bytes": peak_memory_bytes(bench.device),
                "baseline_memory_bytes": base,
                "end_memory_bytes": current_memory(bench.device),
            }
        else:
            result = fresh_process_probe(bench.opts, {"kind": "length", "length": length})
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
        guided = CFGDenoiser(null, bench.opts.guidance, batch_branches=path == "fast")
        times: list[float] = []
        for _ in range(repeats + 1):
            with timer(bench.device, times):
                fifo_step(
                    guided,
                    bench.queue,
                    bench.geometry,
                    bench.schedule,
                    bench.contexts,
                    bench.uncond,
                    noise,
                    window_batch=bench.path_window_batch(path),
                )
        out[path] = statistics.median(times[1:])
    return out


def writer_seconds_per_frame(bench: Bench, repeats: int = 3) -> float:
    """What the frame writer thread spends on one output frame as a run's default sinks take it:
    the decoded frame (the queue's output slot) copied to the host, GIF-quantised and streamed
    into a video, and kept as the saved state's PNG. The best of ``repeats`` frames, seconds."""
    from fifo.resume import StateStore
    from fifo.state import to_uint8_frames
    from infra.video_io import VideoWriter

    clean = bench.queue[:, :, bench.geometry.output_slot : bench.geometry.output_slot + 1]
    frame = to_uint8_frames(bench.decode(clean))[0]
    best = math.inf
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state", {})
        with VideoWriter(Path(tmp) / "frames.gif", fps=8) as video:
            for index in range(repeats):
                start = time.perf_counter()
                video.write(frame)
                store.write_frame(index, frame)
                best = min(best, time.perf_counter() - start)
    return best
