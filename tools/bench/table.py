"""``scripts/benchmark.py``'s measurement as one results document, and the table it prints."""

from __future__ import annotations

import logging
import platform
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from fifo.compile import compiled_graphs
from fifo.step import iteration_noise
from tools.bench.core import (
    COMPILED,
    PATHS,
    Bench,
    device_description,
    load_average,
    load_warning,
    setup,
    sync,
)
from tools.bench.flops import achieved, iteration_flops, peak_matmul_tflops
from tools.bench.gif import gif_palette_line, palette_comparison
from tools.bench.measure import (
    TimedRow,
    length_memory,
    path_memory,
    sampler_overhead,
    time_in_processes,
    time_paths,
    writer_seconds_per_frame,
)
from tools.bench.options import BenchOptions
from tools.bench.presets import PRESETS

logger = logging.getLogger("benchmark")

FAST_BF16 = "fast_bf16"  # the fast path timed in bf16 beside the default fp32 one (CPUs with native bf16)


def compile_warmup(bench: Bench) -> dict[str, Any] | None:
    """Compile the compiled path's U-Net for the run's shapes with one untimed iteration, apart
    from the timing (so a failure drops that path instead of the run). None without ``compile``."""
    if COMPILED not in bench.paths:
        return None
    before = compiled_graphs()
    start = time.perf_counter()
    try:
        noise = iteration_noise(bench.generator, bench.geometry, bench.queue, bench.schedule)
        bench.step(COMPILED, bench.queue, noise)
        sync(bench.device)
    except Exception as err:  # noqa: BLE001 -- no C++ compiler, an unsupported op...: say so, time the rest
        logger.warning("--compile failed, the compiled path is left out: %s", err)
        bench.compiled_model = None
        return {"error": repr(err)[-2000:], "first_iteration_seconds": None, "compile_seconds": None}
    return {
        "error": None,
        "first_iteration_seconds": time.perf_counter() - start,
        "compile_seconds": None,  # filled in once the steady state is known
        "graphs_compiled": compiled_graphs() - before,
        "cache_dir": bench.opts.cache_dir,
    }


def timed_rows(bench: Bench, opts: BenchOptions) -> list[TimedRow]:
    """The table's rows for ``opts``: each path in its dtype (compiled with ``compile``), and the
    fast path in bf16 with ``bf16_row``."""
    rows = [TimedRow(p, p, bench.path_dtype(p)) for p in PATHS]
    if opts.compile:
        rows.append(TimedRow(COMPILED, COMPILED, opts.dtype))
    if opts.bf16_row and opts.dtype != "bf16":
        rows.append(TimedRow(FAST_BF16, "fast", "bf16"))
    return rows


def path_rows(
    bench: Bench, timing: dict[str, Any], memory: dict[str, dict[str, int]], rows: list[TimedRow]
) -> dict[str, Any]:
    """One row per timed row: time, U-Net calls, FLOPs and the fraction of the peak in its dtype.

    FLOPs are counted on the eager model: a compiled U-Net, or the same U-Net in another dtype,
    does the same matrix work."""
    overhead = sampler_overhead(bench)
    rows = [r for r in rows if r.name in timing["times"]]
    peaks = {dtype: peak_matmul_tflops(bench.device, dtype) for dtype in {r.dtype for r in rows}}
    counted: dict[str, int] = {}
    out = {}
    for row in rows:
        t = timing["times"][row.name]
        counted_path = row.path if row.path in bench.paths else "fast"
        if counted_path not in counted:
            counted[counted_path] = iteration_flops(bench, counted_path)
        flops = counted[counted_path]
        seconds = statistics.median(t)
        out[row.name] = {
            "dtype": row.dtype,
            "window_batch": bench.path_window_batch(row.path),
            "unet_calls_per_frame": bench.calls_per_frame(row.path),
            "seconds_per_frame": seconds,
            "seconds_per_frame_mean": statistics.fmean(t),
            "iteration_seconds": t,
            "warmup_seconds": timing["warmup_times"][row.name],
            "process_medians": timing.get("process_medians", {}).get(row.name),
            "sampler_overhead_seconds": overhead["sequential" if row.path == "sequential" else "fast"],
            "peak_memory_bytes": memory.get(row.name, {}).get("peak_memory_bytes"),
            "baseline_memory_bytes": memory.get(row.name, {}).get("baseline_memory_bytes"),
            "flops_per_frame": flops,
            "peak_tflops": peaks[row.dtype]["tflops"],
            **achieved(flops, seconds, peaks[row.dtype]["tflops"]),
        }
    return out


def process_compile(timing: dict[str, Any]) -> dict[str, Any]:
    """The compiled row's compile figures when it was timed in fresh processes: its first
    process's first warm-up iteration (compiling, from the Inductor cache where it could), or
    why the row is missing."""
    error = timing.get("errors", {}).get(COMPILED)
    first = timing.get("first_warmup_times", {}).get(COMPILED) or [None]
    return {
        "error": error,
        "first_iteration_seconds": first[0],
        "compile_seconds": None,  # filled in once the steady state is known
        "graphs_compiled": None,  # counted in the probe process, not here
        "cache_dir": None,
    }


def benchmark(opts: BenchOptions) -> dict[str, Any]:
    """Run every measurement and return the results (the JSON document)."""
    load_before = load_average()
    with torch.inference_mode():
        # With --processes the paths are timed in their own processes; this one counts FLOPs,
        # the sampler's own cost and memory (the compiled path needs no compiling here).
        bench = setup(opts if opts.processes == 0 else replace(opts, compile=False))
        logger.info(
            "preset %s: %d windows of %d frames, latent %s, fast path window_batch=%s, dtype %s%s",
            opts.preset,
            len(bench.geometry.windows()),
            bench.geometry.video_length,
            bench.latent_hw,
            bench.window_batch or "all",
            opts.dtype,
            ", and compiled" if opts.compile else "",
        )
        if opts.processes == 0:  # every path in this process, interleaved
            compiled = compile_warmup(bench)
            rows = [TimedRow(p, p, bench.path_dtype(p)) for p in bench.paths]
            timing = time_paths(bench, bench.paths)
        else:
            rows = timed_rows(bench, opts)
            timing = time_in_processes(opts, rows)
            compiled = process_compile(timing) if opts.compile else None
        memory = path_memory(bench, timing) if not opts.no_memory else {}
        paths = path_rows(bench, timing, memory, rows)
        lengths = length_memory(bench) if opts.lengths else []
        writer_seconds = writer_seconds_per_frame(bench)
        gif_palette = palette_comparison()
        bench.close()
    threads = torch.get_num_threads()
    warnings = [w for w in (load_warning(threads, load_before), load_warning(threads)) if w]
    for warning in warnings[:1]:
        logger.warning("%s", warning)
    fast = paths["fast"]["seconds_per_frame"]
    if compiled is not None and COMPILED in paths and compiled["first_iteration_seconds"] is not None:
        # The first call's time less a steady iteration: what compiling cost, once per shape.
        compiled["compile_seconds"] = max(
            0.0, compiled["first_iteration_seconds"] - paths[COMPILED]["seconds_per_frame"]
        )
    return {
        "device": device_description(bench.device),
        "preset": opts.preset,
        "config": PRESETS[opts.preset].config,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {
            "height": opts.height,
            "width": opts.width,
            "latent_hw": list(bench.latent_hw),
            "video_length": bench.geometry.video_length,
            "num_partitions": bench.geometry.num_partitions,
            "lookahead": bench.geometry.lookahead,
            "windows": len(bench.geometry.windows()),
            "guidance": None if not bench.guided else opts.guidance,
            "eta": opts.eta,
            "seed": opts.seed,
            "iterations": opts.iterations,
            "warmup": opts.warmup,
            "dtype": opts.dtype,
            "window_batch": bench.window_batch,
            "auto_window_batch": bench.auto_window_batch,
            "threads": threads if bench.device.type == "cpu" else None,
            "shards": bench.plan.shards,
            "transformer_chunk": bench.plan.unet.transformer_chunk,
            "temporal_conv_2d": bench.plan.unet.temporal_conv_2d,
            "allocator_tuned": bench.allocator_tuned,
            "compile": opts.compile,
        },
        "paths": paths,
        "speedup": paths["sequential"]["seconds_per_frame"] / fast,
        "speedup_compiled": (
            paths["sequential"]["seconds_per_frame"] / paths[COMPILED]["seconds_per_frame"]
            if COMPILED in paths
            else None
        ),
        "speedup_bf16": (
            paths["sequential"]["seconds_per_frame"] / paths[FAST_BF16]["seconds_per_frame"]
            if FAST_BF16 in paths
            else None
        ),
        "timing": (
            "interleaved in one process"
            if opts.processes == 0
            else f"each path alone in {opts.processes} fresh process(es), the best process's median"
        ),
        "compile": compiled,
        "max_abs_diff": timing["max_abs_diff"],
        "decode_seconds_per_frame": timing["decode_seconds"],
        # The frame writer thread's work per frame (GIF palette and frame, state PNG): hidden
        # behind the generating thread's compute as long as it is shorter.
        "writer_seconds_per_frame": writer_seconds,
        "writer_overlap": min(1.0, (fast + timing["decode_seconds"]) / writer_seconds)
        if writer_seconds
        else 1.0,
        # The writer's GIF palette step against Pillow's median cut, at 320x512, in this run.
        "gif_palette": gif_palette,
        "memory_kind": (
            "cuda max_memory_allocated (reset per measurement)"
            if bench.device.type == "cuda"
            else "peak RSS of a fresh process (weights and libraries included)"
        ),
        "memory_by_length": lengths,
        "window_activation_estimate_bytes": bench.window_memory.per_window_bytes,
        "load_average": {"before": load_before, "after": load_average(), "threads": threads},
        "load_warning": warnings[0] if warnings else None,
    }


def mib(n: int | None) -> str:
    """Bytes as MiB or GiB for people; '-' for not measured."""
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _above(m: dict[str, Any]) -> int | None:
    """Peak memory above the memory held after set-up (weights, embeddings, queue)."""
    if m.get("peak_memory_bytes") is None or m.get("baseline_memory_bytes") is None:
        return None
    return max(0, m["peak_memory_bytes"] - m["baseline_memory_bytes"])


def _fraction(p: dict[str, Any]) -> str:
    if p.get("fraction_of_peak") is None:
        return "-"
    return f"{p['tflops_achieved'] * 1e3:.1f} GF/s {100 * p['fraction_of_peak']:.1f}%"


def format_table(r: dict[str, Any]) -> str:
    """The results for people (what ``scripts/benchmark.py`` prints)."""
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
        f"{s['iterations']} timed iteration(s) after {s['warmup']} warm-up, {r.get('timing', 'interleaved in one process')}",
        f"fast path: {s['shards']} parallel slice(s) per call, transformer chunks of "
        f"{s['transformer_chunk'] or 'all'} tokens, temporal convs {'2D' if s['temporal_conv_2d'] else '3D'}; "
        f"glibc malloc tuned: {'yes' if s['allocator_tuned'] else 'no'}",
    ]
    if r.get("load_warning"):
        lines.append(r["load_warning"])
    lines += [
        "",
        f"{'path':<34}{'s/frame':>9}{'mean':>9}{'calls':>7}{'GFLOP/frame':>13}{'achieved, of peak':>22}"
        f"{'peak memory':>13}{'above set-up':>14}",
    ]
    for name, p in r["paths"].items():
        label = f"{name} ({p['dtype']}, " + (
            "1 window/call)" if name == "sequential" else f"{p['window_batch'] or 'all'} windows/call)"
        )
        lines.append(
            f"{label:<34}{p['seconds_per_frame']:>9.3f}{p['seconds_per_frame_mean']:>9.3f}"
            f"{p['unet_calls_per_frame']:>7}{p['flops_per_frame'] / 1e9:>13.1f}{_fraction(p):>22}"
            f"{mib(p['peak_memory_bytes']):>13}{mib(_above(p)):>14}"
        )
    peaks = {p["dtype"]: p["peak_tflops"] for p in r["paths"].values()}
    per_process = {name: p["process_medians"] for name, p in r["paths"].items() if p.get("process_medians")}
    if per_process:
        lines.append(
            "each process's median s/frame: "
            + "; ".join(f"{name} " + ", ".join(f"{m:.2f}" for m in ms) for name, ms in per_process.items())
        )
    bf16 = f"; sequential / fast bf16: {r['speedup_bf16']:.2f}x" if r.get("speedup_bf16") else ""
    lines += [
        "",
        f"speed-up (sequential / fast): {r['speedup']:.2f}x{bf16}    max |sequential − fast| = {r['max_abs_diff']:.2e}",
        "machine peak (largest square matrix product, same run): "
        + ", ".join(f"{d} {'-' if v is None else f'{v * 1e3:.1f} GFLOP/s'}" for d, v in peaks.items()),
    ]
    c = r.get("compile")
    if c and c["error"]:
        lines.append(f"--compile: failed, no compiled row ({c['error'][:300]})")
    elif c and r.get("speedup_compiled") is None:
        lines.append("--compile: the compiled row was not timed")
    elif c:
        lines.append(
            f"--compile: {r['speedup_compiled']:.2f}x over sequential, "
            f"{r['paths']['fast']['seconds_per_frame'] / r['paths']['compiled']['seconds_per_frame']:.2f}x over "
            f"the eager fast path; compile {c['compile_seconds']:.1f} s once"
            + (f" ({c['graphs_compiled']} graph(s))" if c["graphs_compiled"] is not None else "")
            + ", not in the steady state above (Inductor's cache makes later runs compile faster)"
        )
    lines += [
        f"fifo_step without the U-Net: sequential {r['paths']['sequential']['sampler_overhead_seconds'] * 1e3:.2f} ms, "
        f"fast {r['paths']['fast']['sampler_overhead_seconds'] * 1e3:.2f} ms per frame; "
        f"VAE decode (not timed above) {r['decode_seconds_per_frame']:.3f} s per frame",
        f"frame writer (GIF palette and frame, state PNG; its own thread) {r['writer_seconds_per_frame']:.3f} s "
        f"per frame against the fast path's {r['paths']['fast']['seconds_per_frame']:.3f} s U-Net and "
        f"{r['decode_seconds_per_frame']:.3f} s decode: {r['writer_overlap']:.0%} of it overlaps the compute",
        gif_palette_line(r["gif_palette"]),
        f"memory: {r['memory_kind']}; activations per fast-path window (measured on fake tensors) "
        f"{mib(r['window_activation_estimate_bytes'])}",
    ]
    if r["memory_by_length"]:
        lines.append("fast path, whole FIFO runs (decode and GIF streaming included):")
        for m in r["memory_by_length"]:
            held = m["end_memory_bytes"] - m["baseline_memory_bytes"]
            lines.append(
                f"  {m['length']:>4} frames ({m['iterations']} iterations): peak {mib(m['peak_memory_bytes'])} "
                f"(+{mib(_above(m))} above set-up), held after the run {'+' if held >= 0 else '−'}"
                f"{mib(abs(held))}"
            )
    return "\n".join(lines)
