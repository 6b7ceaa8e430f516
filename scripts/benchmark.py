"""FIFO speed benchmark: the published sequential path against the batched fast path.

    python scripts/benchmark.py --preset medium                 # CPU-sized model
    python scripts/benchmark.py --preset full --device cuda     # VideoCrafter2 at 320x512
    python scripts/benchmark.py --preset tiny --iterations 1 --lengths --json out.json
    python scripts/benchmark.py --report OUT_DIR --budget_s 420   # the GPU report (tools/bench/report.py)

One model with random weights, one seed. Every path starts from the same queue and the same DDIM
noise and their first iterations' results are compared. On CPU (``--processes``, default 3) each
path is timed alone in fresh processes, in alternating order, and its row keeps the best process's
median: on a CPU with few cores the published path's time can be bimodal between processes with
the placement of its OpenMP threads, whatever ran before it (``tools/bench/measure.py``,
``time_in_processes``; measurements in docs/performance.md). On CUDA (``--processes 0``) every timed
iteration runs all paths in this process, in alternating order (so that drift in the machine's
load hits them alike). The paths:

- sequential: ``fifo_step`` with one window and one guidance branch per U-Net call
  (``window_batch=1``, ``CFGDenoiser(batch_branches=False)``), as published, in fp32;
- fast: ``fifo_step`` with ``--window_batch`` windows (default: chosen by
  ``fifo.perf.auto_window_batch``, i.e. all of them unless memory is short) and both guidance
  branches per call; with the U-Net and encoders in ``--dtype`` (default fp16 on CUDA, fp32 on
  CPU; a second copy of the model when not fp32); run as
  ``fifo.perf.plan_fast_path`` says (on CPU: the batch split into one slice per thread,
  evaluated in parallel, transformers in cache-sized chunks, temporal convolutions as 2D
  ones; ``--shards``, ``--transformer_chunk`` and ``--conv3d`` override it). The sequential
  path runs the layers as published;
- compiled (unless ``--no_compile``): the fast path with its U-Net through ``torch.compile``
  (``fifo/compile.py``); its compile time (first iteration less the steady state) is printed apart;
- fast_bf16 (CPU with native bf16, ``--dtype`` left out, unless ``--no_bf16``): the fast path with
  bf16 weights, as ``videocrafter_main.py --dtype bf16`` runs it.

Each path's FLOPs per output frame are counted (``FlopCounterMode``, on fake tensors) and set
against the machine's peak, measured in the same run (a large matrix product in the path's dtype):
achieved TFLOP/s and the fraction of the peak. A warning is printed when the machine's load
average exceeds the benchmark's threads (other work competes; the ratio then means little).

On CPU both paths run after ``fifo.perf.tune_cpu_allocator`` (as the CLI does), unless
``--default_allocator``.

One iteration dequeues one output frame, so seconds per iteration = seconds per output frame.
Timed: ``fifo_step`` (U-Net calls, guidance, DDIM update, write-back). Not timed: the text
embeddings (computed once), the DDIM noise draw and the queue shift (shared by both paths and
negligible) and the VAE decode of the output frame (the same for both paths; its time is
printed separately). In one process the queue advances with the sequential path's result.

The measurement code lives in ``tools/bench/`` (shared with ``--report``); this script is its
command line. Peak memory: on CUDA ``max_memory_allocated`` with reset statistics; on CPU the peak RSS of a
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
import json
import logging
import sys
from pathlib import Path

# Run from anywhere without installing the project.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from fifo.options import Precision  # noqa: E402
from infra.cli_help import DefaultsHelpFormatter  # noqa: E402
from infra.cuda_runtime import cuda  # noqa: E402
from lvdm.build import config_facts, load_config  # noqa: E402
from lvdm.modules.attention_kernels import cpu_has_native_bf16  # noqa: E402
from tools.bench.measure import PROBE_MARK, fresh_process_probe, probe  # noqa: E402, F401 -- tests use them
from tools.bench.options import BenchOptions  # noqa: E402
from tools.bench.presets import PRESETS  # noqa: E402

logger = logging.getLogger("benchmark")

DTYPES = [p.value for p in Precision]


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
    p.add_argument(
        "--mechanisms",
        action="store_true",
        help="instead: MIGA's mechanisms (docs/miga.md) against plain FIFO, whole iterations of the run's "
        "sampler interleaved in this process, seconds per output frame",
    )
    p.add_argument(
        "--zigzag_length",
        type=int,
        default=None,
        help="with --mechanisms: L_zig of the zigzag row (default: 4 where it divides the frames a window "
        "writes back, else the largest length below that does)",
    )
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
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's own, 12.0 for the U-Nets, 5.0 for Wan2.1)",
    )
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
        "--allow_cpu_full",
        "--allow-cpu-full",  # the hyphenated spelling, accepted as an alias
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
    p.add_argument(
        "--no_compile",
        action="store_true",
        help="leave out the fast path with its U-Net through torch.compile (its row; in --report, the compiled "
        "rows): compiling takes minutes on a CPU, printed apart from the steady state",
    )
    p.add_argument(
        "--cache_dir",
        default=None,
        help="where the compiled row keeps compiled artifacts between runs, Inductor's cache "
        "(default: results/benchmark/compiled in the checkout)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="OUT_DIR",
        help="the one-command report (made for a GPU): sequential vs fast in fp16 and bf16, with and without "
        "compile, SDPA kernel, peak memory vs plan, NaN/Inf check, start-up, --parallel windows over all GPUs; "
        "writes OUT_DIR/report.json and report.md, row by row",
    )
    p.add_argument(
        "--budget_s",
        type=float,
        default=420.0,
        help="--report: seconds after which no new row starts and a row stops after its current iteration "
        "(the rows measured are kept)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="time each path alone in this many fresh processes and keep its best (default: 3 on CPU, where "
        "the published path's thread placement makes single processes bimodal; 0 on CUDA: every path in "
        "this process, interleaved)",
    )
    p.add_argument(
        "--no_bf16",
        action="store_true",
        help="on a CPU with native bf16 (AVX512-BF16/AMX) and --dtype left out, the fast path is also timed in "
        "bf16 as a row of its own; this leaves that row out",
    )
    p.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    return p


def resolve_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill in the device-dependent defaults and check the combinations; errors exit with 2."""
    if args.device is None:
        args.device = "cuda" if cuda().is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda().is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.preset is None:
        args.preset = "full" if device.type == "cuda" else "medium"
    preset = PRESETS[args.preset]
    if preset.gpu_only and device.type != "cuda" and not args.allow_cpu_full:
        parser.error(
            f"--preset {args.preset} is the real VideoCrafter2 U-Net (1.4B parameters) at 320x512: "
            "meant for a GPU. On a CPU one iteration takes many minutes; use --preset medium, or "
            "pass --allow_cpu_full to run it anyway."
        )
    dtype_given = args.dtype is not None
    if args.dtype is None:
        args.dtype = "fp16" if device.type == "cuda" else "fp32"
    if args.processes is None:
        args.processes = 3 if device.type == "cpu" and args.report is None and args._probe is None else 0
    if args.processes < 0:
        parser.error("--processes must be ≥ 0 (0: every path in this process)")
    args.bf16_row = (
        device.type == "cpu"
        and args.processes > 0
        and not dtype_given
        and not args.no_bf16
        and cpu_has_native_bf16()
    )
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
    args.compile = not args.no_compile
    if args.cache_dir is None:
        args.cache_dir = str(REPO / "results" / "benchmark" / "compiled")
    if args.budget_s <= 0:
        parser.error("--budget_s must be > 0 (seconds)")
    if args.report is not None and args.dtype == "fp16" and device.type == "cpu":
        parser.error("--report on a CPU measures bf16 only; leave --dtype out")
    if preset.mechanisms_only and not args.mechanisms:
        parser.error(
            f"--preset {args.preset} is a Wan2.1 model, whose transformer has no sequential and fast U-Net "
            "paths to set side by side: add --mechanisms (plain FIFO and MIGA's mechanisms, per output frame)"
        )
    facts = config_facts(load_config(REPO / preset.config))
    if args.guidance is None:
        args.guidance = facts.family.default_guidance
    if args.video_length is None:
        args.video_length = facts.temporal_length
    if args.video_length < 2 or args.video_length % 2:
        parser.error("--video_length must be an even number ≥ 2")
    args.height, args.width = facts.default_size
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = resolve_args(args, parser)
    opts = BenchOptions.from_namespace(args)
    if args._probe is not None:
        with torch.inference_mode():
            result = probe(opts, json.loads(args._probe))
        print(PROBE_MARK + json.dumps(result), flush=True)
        return 0
    if args.mechanisms:
        from cli.messages import cli_message
        from fifo.options import TrickArguments
        from infra.errors import UserError
        from tools.bench.mechanisms import format_mechanisms, mechanism_benchmark

        try:
            results = mechanism_benchmark(opts, TrickArguments(zigzag_length=args.zigzag_length))
        except UserError as err:  # e.g. a --zigzag_length that does not divide the preset's block
            print(f"error: {cli_message(err)}", file=sys.stderr)
            return 2
        if args.json is not None:
            text = json.dumps(results, indent=2)
            print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")
        print(format_mechanisms(results, opts))
        return 0
    if args.parallel == "windows":
        from tools.bench.parallel import parallel_windows_benchmark

        return parallel_windows_benchmark(opts)
    if args.report is not None:
        from tools.bench.report import run_report

        doc = run_report(Path(args.report), opts, args.budget_s, compile_rows=opts.compile)
        print((Path(args.report) / "report.md").read_text(), end="")
        logger.info(
            "report %s: %s",
            "complete" if doc["complete"] else "incomplete",
            Path(args.report) / "report.json",
        )
        return 0
    from tools.bench.table import benchmark, format_table

    results = benchmark(opts)
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
