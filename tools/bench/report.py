"""The one-command speed report (``scripts/benchmark.py --report OUT_DIR``), made for a GPU run.

Rows, cheapest and most telling first, each written to ``OUT_DIR/report.json`` and
``OUT_DIR/report.md`` as soon as it is measured (a run killed at its time limit keeps them):

0. the main job: the user's command itself (``videocrafter_main.py`` on the preset's config, random
   weights, a few frames written to a video file) in a fresh process, cold start included;
1. start-up: the model built on the meta device and its checkpoint (the random weights, saved
   first) loaded, then the cold first FIFO iteration and its decode;
2. the published sequential path (fp32) against the fast path in fp16, interleaved, with the
   attention kernel SDPA picked, the peak ``max_memory_allocated`` next to the plan's estimate
   (``fifo.plan.window_memory``, what ``--dry_run`` and the automatic window batch use) and a
   NaN/Inf check of the latents and the decoded frame;
3. the fast path in bf16; 4. both compiled (``torch.compile``, compile time apart);
5. ``--parallel windows`` over every GPU against one (torchrun), where there are several.

Every row has every field: a row that does not apply (fp16 on a CPU, compile where Inductor
cannot build, one GPU) says so in ``reason`` with null numbers; a row the time budget
(``--budget_s``) leaves out is ``skipped``; a row cut short keeps the iterations it timed.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import infra.cuda_runtime as cuda_runtime
from infra.cuda_runtime import cuda
from lvdm.build import load_model
from lvdm.models.ddpm3d import LatentDiffusion
from tools.bench.core import COMPILED, REPO, Bench, device_description, load_warning, setup, sync
from tools.bench.flops import achieved, iteration_flops, peak_matmul_tflops
from tools.bench.measure import SCRIPT, time_paths
from tools.bench.options import BenchOptions
from tools.bench.presets import PRESETS

logger = logging.getLogger("benchmark")

ROW_FIELDS = (
    "name", "path", "dtype", "compile", "status", "reason", "seconds_per_frame", "iteration_seconds",
    "warmup_seconds", "compile_seconds", "unet_calls_per_frame", "window_batch", "flops_per_frame",
    "tflops_achieved", "peak_tflops", "fraction_of_peak", "sdpa_kernels", "peak_memory_bytes",
    "activation_bytes", "planned_activation_bytes", "finite_latents", "finite_frame",
)  # fmt: skip
STARTUP_FIELDS = ("status", "reason", "checkpoint_bytes", "build_and_load_seconds", "first_frame_seconds")
PARALLEL_FIELDS = ("status", "reason", "gpus", "output")
MAIN_JOB_FIELDS = ("status", "reason", "seconds", "frames", "video_bytes", "command")
MAIN_JOB_FRAMES = 3  # output frames of the main job's video (after the FIFO queue's warm-up)


class BudgetSpent(Exception):
    """The report's time budget ran out before a row started."""


@dataclass
class Budget:
    """Seconds left of ``--budget_s``, counted from creation."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


def row(name: str, path: str | None, dtype: str | None, compiled: bool, **values: Any) -> dict[str, Any]:
    """A report row with every field (None where not measured)."""
    out: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    out.update(name=name, path=path, dtype=dtype, compile=compiled, **values)
    return out


class SdpaKernels(TorchDispatchMode):
    """Counts the attention kernels ``scaled_dot_product_attention`` dispatches to (flash,
    memory-efficient, cuDNN, CPU flash, math) in the code it wraps, and the explicit products
    around a softmax (as ``bmm_softmax``: the ``sdpa`` backend's bf16 path on a CPU, or the
    ``math`` backend), the U-Net's only softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 -- PyTorch's protocol
        name = func.overloadpacket.__name__
        if (
            "scaled_dot_product" in name
            or name.startswith("_efficient_attention")
            or name.startswith("_flash")
        ):
            self.counts[name] = self.counts.get(name, 0) + 1
        elif name in ("softmax", "_softmax"):  # inference mode skips the decomposition
            self.counts["bmm_softmax"] = self.counts.get("bmm_softmax", 0) + 1
        return func(*args, **(kwargs or {}))


def sdpa_kernels(bench: Bench, path: str) -> dict[str, int]:
    """The attention kernels of one U-Net call of ``path``'s batch shape (one window on the
    sequential path, the window batch on the fast one; both guidance branches there)."""
    denoise = bench.guided_denoiser(path)
    windows = bench.path_window_batch(path) or len(bench.geometry.windows())
    _, c, _, h, w = bench.queue.shape
    x = torch.zeros(windows, c, bench.geometry.video_length, h, w, device=bench.device)
    t = torch.zeros(windows, bench.geometry.video_length, dtype=torch.long, device=bench.device)
    counter = SdpaKernels()
    with counter:
        denoise(
            x,
            t,
            bench.contexts[:windows],
            None if bench.uncond is None else bench.uncond.expand(windows, -1, -1),
        )
    return counter.counts


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def measure_paths(bench: Bench, paths: tuple[str, ...], budget: Budget, names: dict[str, str]) -> list[dict]:
    """Time ``paths`` interleaved on ``bench`` and make one row each."""
    timing = time_paths(bench, paths, stop=budget.spent)
    rows = []
    for path in paths:
        times = timing["times"][path]
        seconds = statistics.median(times) if times else None
        dtype = bench.path_dtype(path)
        flops = iteration_flops(bench, path)
        peak = peak_matmul_tflops(bench.device, dtype)["tflops"]
        warm = timing["warmup_times"][path]
        values: dict[str, Any] = {
            "status": "measured" if not timing["stopped"] else "stopped: budget spent",
            "seconds_per_frame": seconds,
            "iteration_seconds": times,
            "warmup_seconds": warm,
            "compile_seconds": max(0.0, warm[0] - seconds) if path == COMPILED and warm and seconds else None,
            "unet_calls_per_frame": bench.calls_per_frame(path),
            "window_batch": bench.path_window_batch(path) or len(bench.geometry.windows()),
            "flops_per_frame": flops,
            "peak_tflops": peak,
            **achieved(flops, seconds, peak),
            "finite_latents": finite(timing["queue"]),
            "finite_frame": finite(timing["frame"]),
        }
        if path != COMPILED:  # one eager call; the compiled one runs the same kernels' choice
            values["sdpa_kernels"] = sdpa_kernels(bench, path)
        if bench.device.type == "cuda":
            held = cuda().memory_allocated(bench.device)  # weights, embeddings, queue
            values["peak_memory_bytes"] = timing["cuda_peaks"][path]
            values["activation_bytes"] = max(0, timing["cuda_peaks"][path] - held)
            if path == "fast":
                values["planned_activation_bytes"] = bench.window_memory.for_windows(values["window_batch"])
        rows.append(row(names[path], path, dtype, path == COMPILED, **values))
    return rows


def startup(opts: BenchOptions, model: LatentDiffusion, folder: Path) -> dict[str, Any]:
    """Build on meta + load the checkpoint (the random weights saved to ``folder`` first), then
    the cold first FIFO iteration of the fast path and its decode."""
    ckpt = folder / "random_weights.pt"
    torch.save(model.state_dict(), ckpt)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(opts.dtype)
    sync(torch.device(opts.device))
    start = time.perf_counter()
    loaded = load_model(REPO / PRESETS[opts.preset].config, ckpt, device=opts.device, dtype=dtype)
    sync(torch.device(opts.device))
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        bench = setup(replace(opts, dtype="fp32", compile=False), model=loaded)  # weights already in dtype
        sync(bench.device)
        first = time.perf_counter()
        queue = bench.step("fast", bench.queue, None)
        bench.decode(queue[:, :, bench.geometry.output_slot : bench.geometry.output_slot + 1])
        sync(bench.device)
        bench.close()
    return {
        "status": "measured",
        "reason": None,
        "checkpoint_bytes": ckpt.stat().st_size,
        "build_and_load_seconds": load_seconds,
        "first_frame_seconds": time.perf_counter() - first,
        "setup_seconds": first - start,
    }


def main_job(opts: BenchOptions, folder: Path, timeout: float) -> dict[str, Any]:
    """The command line's main job as a user runs it, in a fresh process: the preset's config on
    random weights, ``MAIN_JOB_FRAMES`` output frames written to a GIF under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompt.txt"
    prompts.write_text("a red fox running through snow\n")
    cmd = [
        sys.executable, str(REPO / "videocrafter_main.py"), "--config", str(REPO / PRESETS[opts.preset].config),
        "--random_init", "-p", str(prompts), "--height", str(opts.height), "--width", str(opts.width),
        "--video_length", str(opts.video_length), "-n", str(opts.num_partitions),
        "--new_video_length", str(MAIN_JOB_FRAMES), "--device", opts.device, "--output_dir", str(folder / "out"),
        "--no_progress", "--allow_full_on_cpu",
    ]  # fmt: skip
    out = {**dict.fromkeys(MAIN_JOB_FIELDS), "command": " ".join(cmd[1:])}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, timeout))
    except subprocess.TimeoutExpired:
        return {**out, "status": "stopped", "reason": f"not done within {timeout:.0f} s (the budget)"}
    seconds = time.perf_counter() - start
    videos = [p for p in (folder / "out").rglob("*.gif") if p.name != "origin.gif"]
    if proc.returncode != 0 or len(videos) != 1:
        return {**out, "status": "failed", "seconds": seconds,
                "reason": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}  # fmt: skip
    return {**out, "status": "measured", "seconds": seconds, "frames": MAIN_JOB_FRAMES,
            "video_bytes": videos[0].stat().st_size}  # fmt: skip


def parallel_windows(opts: BenchOptions, budget: Budget) -> dict[str, Any]:
    """``--parallel windows`` over every GPU against one, in a torchrun child (several GPUs only)."""
    gpus = cuda().device_count() if cuda().is_available() else 0
    empty = dict.fromkeys(PARALLEL_FIELDS)
    if gpus < 2:
        return {
            **empty,
            "status": "not applicable",
            "reason": f"{gpus} GPU(s): needs at least 2",
            "gpus": gpus,
        }
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", str(SCRIPT)]
    cmd += ["--preset", opts.preset, "--parallel", "windows", "--iterations", "2", "--dtype", opts.dtype]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=max(1, budget.left()))
    except subprocess.TimeoutExpired:
        return {**empty, "status": "stopped: budget spent", "gpus": gpus}
    ok = proc.returncode == 0
    return {
        **empty,
        "status": "measured" if ok else "failed",
        "reason": None if ok else proc.stderr[-2000:],
        "gpus": gpus,
        "output": proc.stdout[-2000:],
    }


class Report:
    """The report's document, written out after every row."""

    def __init__(self, out_dir: Path, opts: BenchOptions, budget: Budget) -> None:
        self.out_dir, self.opts, self.budget = out_dir, opts, budget
        out_dir.mkdir(parents=True, exist_ok=True)
        device = torch.device(opts.device)
        self.doc: dict[str, Any] = {
            "device": device_description(device),
            "preset": opts.preset,
            "config": PRESETS[opts.preset].config,
            "torch": torch.__version__,
            "settings": {"height": opts.height, "width": opts.width, "video_length": opts.video_length,
                         "num_partitions": opts.num_partitions, "guidance": opts.guidance, "eta": opts.eta,
                         "iterations": opts.iterations, "warmup": opts.warmup, "budget_s": budget.seconds},
            "main_job": {**dict.fromkeys(MAIN_JOB_FIELDS), "status": "skipped", "reason": "not reached"},
            "startup": {**dict.fromkeys(STARTUP_FIELDS), "status": "skipped", "reason": "not reached"},
            "rows": [],
            "parallel_windows": {**dict.fromkeys(PARALLEL_FIELDS), "status": "skipped", "reason": "not reached"},
            "load_warning": None,
            "complete": False,
            "seconds": None,
        }  # fmt: skip
        self.write()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.doc["rows"].extend(rows)
        self.write()

    def write(self) -> None:
        self.doc["seconds"] = self.budget.seconds - self.budget.left()
        (self.out_dir / "report.json").write_text(json.dumps(self.doc, indent=2) + "\n")
        (self.out_dir / "report.md").write_text(markdown(self.doc))


def run_report(
    out_dir: Path, opts: BenchOptions, budget_s: float, compile_rows: bool = True
) -> dict[str, Any]:
    """Measure every row within ``budget_s`` seconds; returns the document (also written).
    ``compile_rows=False`` leaves the compiled rows out (said skipped)."""
    budget = Budget(budget_s)
    report = Report(out_dir, opts, budget)
    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    dtypes = ("fp16", "bf16")
    pending = [(d, c) for c in (False, True) for d in dtypes]  # eager rows before the compiled ones
    skip_reason: dict[tuple[str, bool], str] = {}
    if not cuda:
        skip_reason = {
            ("fp16", c): "fp16 runs on CUDA only here (CPU kernels are slow or missing)"
            for c in (False, True)
        }
    elif not cuda_runtime.cuda().spec(device).fused_bf16_attention:
        gpu = cuda_runtime.cuda().spec(device).describe()
        skip_reason = {("bf16", c): f"bf16 below sm_80 ({gpu}): no fused attention kernel takes it, and the run "
                       "refuses it" for c in (False, True)}  # fmt: skip
    if skip_reason:
        pending = [p for p in pending if p not in skip_reason]
        report.add([row(f"fast {d}" + (" compiled" if c else ""), "fast", d, c, status="not applicable",
                        reason=skip_reason[(d, c)]) for d, c in skip_reason])  # fmt: skip
    if not compile_rows:
        left_out = [(d, c) for d, c in pending if c]
        pending = [p for p in pending if not p[1]]
        report.add([row(f"fast {d} compiled", "fast", d, True, status="skipped", reason="--no_compile_rows")
                    for d, _ in left_out])  # fmt: skip
    # The user's command first: it proves the main job where the report runs, before any row.
    report.doc["main_job"] = main_job(opts, out_dir / "main_job", budget.left())
    report.write()
    with torch.inference_mode():
        fp32_opts = replace(opts, dtype="fp32", compile=False)
        base = setup(fp32_opts)  # the fp32 model every set-up below shares
        model = base.model
        base.close()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report.doc["startup"] = startup(
                replace(opts, dtype=dtypes[0] if cuda else "bf16"), model, Path(tmp)
            )
        report.write()
        first = True
        for dtype, compiled in pending:
            if budget.spent():
                raise BudgetSpent
            with torch.inference_mode():
                bench = setup(replace(opts, dtype=dtype, compile=compiled), model=model)
                paths = (COMPILED,) if compiled else ("fast",)
                if first:  # the published path once, interleaved with the first fast row
                    paths = ("sequential", *paths)
                names = {
                    "sequential": "sequential fp32",
                    "fast": f"fast {dtype}",
                    COMPILED: f"fast {dtype} compiled",
                }
                try:
                    report.add(measure_paths(bench, paths, budget, names))
                except Exception as err:  # noqa: BLE001 -- a row that cannot run says why; the rest go on
                    if not compiled:
                        raise
                    logger.warning("compiled %s row failed: %s", dtype, err)
                    report.add(
                        [row(names[COMPILED], "fast", dtype, True, status="failed", reason=repr(err)[-2000:])]
                    )
                bench.close()
                first = False
                del bench
        if cuda:
            report.doc["parallel_windows"] = parallel_windows(opts, budget)
        else:
            report.doc["parallel_windows"] = {**dict.fromkeys(PARALLEL_FIELDS), "status": "not applicable",
                                              "reason": "CPU: see torchrun scripts/benchmark.py --parallel windows",
                                              "gpus": 0}  # fmt: skip
        # Complete unless a row was cut short by the budget.
        report.doc["complete"] = not any(r["status"].startswith("stopped") for r in report.doc["rows"])
    except BudgetSpent:
        logger.warning("report: the %.0f s budget is spent; the rows measured so far are kept", budget_s)
    done = {(r["dtype"], r["compile"]) for r in report.doc["rows"]}
    report.add([row(f"fast {d}" + (" compiled" if c else ""), "fast", d, c, status="skipped",
                    reason="budget spent") for d, c in pending if (d, c) not in done])  # fmt: skip
    report.doc["load_warning"] = load_warning(torch.get_num_threads()) if not cuda else None
    report.write()
    return report.doc


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def markdown(doc: dict[str, Any]) -> str:
    """The report as markdown, ready for docs/performance.md."""
    dev = doc["device"]
    s = doc["settings"]
    lines = [
        f"Device: {dev['type']} ({dev['name']}), torch {doc['torch']}; preset {doc['preset']} "
        f"({s['height']}×{s['width']}, f = {s['video_length']}, n = {s['num_partitions']}, guidance {s['guidance']}), "
        f"random weights; {s['iterations']} timed iteration(s) after {s['warmup']} warm-up; "
        f"{'complete' if doc['complete'] else 'incomplete'} in {_num(doc['seconds'], '.0f')} s of {s['budget_s']:.0f} s.",
        "",
        "| path | dtype | compile | s / frame | TFLOP / frame | TFLOP/s | of peak | SDPA kernel | peak memory "
        "| activations (planned) | finite | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gib = 2**30
    mj = doc["main_job"]
    lines[1:1] = [
        "",
        f"Main job (the command line, {MAIN_JOB_FRAMES} frames to a video file, fresh process): "
        f"{_num(mj['seconds'], '.1f')} s ({mj['status']}"
        + (
            f": {mj['reason'].strip().splitlines()[-1] if mj['reason'] else ''}"
            if mj["status"] != "measured"
            else ""
        )
        + ")",
        "",
    ]
    for r in doc["rows"]:
        kernels = ", ".join(k.removeprefix("_scaled_dot_product_") for k in r["sdpa_kernels"] or {}) or "–"
        act = _num(r["activation_bytes"] and r["activation_bytes"] / gib, ".2f")
        planned = _num(r["planned_activation_bytes"] and r["planned_activation_bytes"] / gib, ".2f")
        fin = (
            "–"
            if r["finite_latents"] is None
            else ("yes" if r["finite_latents"] and r["finite_frame"] else "**NO**")
        )
        fraction = _num(r["fraction_of_peak"] and 100 * r["fraction_of_peak"], ".1f")
        status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        compile_text = "yes" if r["compile"] else "no"
        if r["compile_seconds"] is not None:
            compile_text += f" ({r['compile_seconds']:.0f} s once)"
        lines.append(
            f"| {r['path']} | {r['dtype']} | {compile_text} | {_num(r['seconds_per_frame'], '.3f')} "
            f"| {_num(r['flops_per_frame'] and r['flops_per_frame'] / 1e12, '.3g')} "
            f"| {_num(r['tflops_achieved'], '.3g')} | {fraction}{'' if fraction == '–' else ' %'} | {kernels} "
            f"| {_num(r['peak_memory_bytes'] and r['peak_memory_bytes'] / gib, '.2f')} GiB | {act} ({planned}) GiB "
            f"| {fin} | {status} |"
        )
    st = doc["startup"]
    lines += [
        "",
        f"Start-up: build on meta + load {_num(st['checkpoint_bytes'] and st['checkpoint_bytes'] / gib, '.2f')} GiB "
        f"checkpoint {_num(st['build_and_load_seconds'], '.1f')} s, first (cold) FIFO iteration + decode "
        f"{_num(st['first_frame_seconds'], '.2f')} s ({st['status']}).",
    ]
    pw = doc["parallel_windows"]
    lines.append(f"--parallel windows: {pw['status']}" + (f" ({pw['reason']})" if pw["reason"] else ""))
    if pw.get("output"):
        lines += ["", "```", pw["output"].strip(), "```"]
    if doc.get("load_warning"):
        lines += ["", doc["load_warning"]]
    return "\n".join(lines) + "\n"
