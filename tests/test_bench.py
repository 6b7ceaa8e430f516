"""The speed report and its parts (``tools/bench/``, ``scripts/benchmark.py --report``), the FLOP
count of both paths, ``--compile`` (``fifo/compile.py``) and the device preparation script.

All on the tiny model on one CPU thread: the report's rehearsal is the GPU run's command with
``--preset tiny`` (rows that need CUDA say so), so a typo shows before GPU time is spent.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fifo import compile as fcompile
from lvdm.modules.attention_kernels import cpu_has_native_bf16
from tests.conftest import load_script
from tools.bench import core, flops, gif, report
from tools.bench.measure import command_line, time_paths
from tools.bench.options import BenchOptions

TINY = [
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--num_partitions",
    "1",
    "--lengths",
    "--no_compile",
]


@pytest.fixture(scope="module")
def bench_script():
    return load_script("scripts/benchmark.py")


def _opts(bench_script, argv: list[str]) -> BenchOptions:
    parser = bench_script.build_parser()
    return BenchOptions.from_namespace(bench_script.resolve_args(parser.parse_args(argv), parser))


@pytest.fixture(scope="module")
def tiny_bench(bench_script, one_thread):
    """The tiny model with guidance, n = 1 (2 windows), both paths in fp32."""
    opts = _opts(bench_script, [*TINY, "--iterations", "3", "--warmup", "0"])
    with torch.inference_mode():
        bench = core.setup(opts)
    yield bench
    bench.close()


# ------------------------------------------------------------------------------------ FLOPs
def test_fast_path_counts_the_same_unet_work_less_the_shared_head(tiny_bench) -> None:
    """Sequential: 2 calls per window (one per guidance branch), each with its own context-free
    head. Fast: one call for both branches, the head once per window. So the counts differ by
    exactly one head per window, counted on its own."""
    bench = tiny_bench
    windows = len(bench.geometry.windows())
    with torch.inference_mode():
        sequential = flops.iteration_flops(bench, "sequential")
        fast = flops.iteration_flops(bench, "fast")
        _, c, _, h, w = bench.queue.shape
        x = torch.zeros(1, c, bench.geometry.video_length, h, w)
        t = torch.zeros(1, bench.geometry.video_length, dtype=torch.long)
        head = flops.context_free_head_flops(bench.model.unet, x, t)
    assert head > 0 and fast > 0
    assert sequential == fast + windows * head
    # Whatever the window batch, the fast path does the same work.
    one_per_call = replace(bench, window_batch=1)
    with torch.inference_mode():
        assert flops.iteration_flops(one_per_call, "fast") == fast


def test_peak_and_fraction() -> None:
    peak = flops.peak_matmul_tflops(torch.device("cpu"), "fp32", repeats=1)
    assert peak["tflops"] > 0 and peak["size"] == flops.PEAK_GEMM_SIZE["cpu"] and peak["reason"] is None
    assert flops.peak_matmul_tflops(torch.device("cpu"), "fp16")["tflops"] is None
    assert flops.achieved(2 * 10**12, 2.0, 4.0) == {"tflops_achieved": 1.0, "fraction_of_peak": 0.25}
    assert flops.achieved(None, 2.0, 4.0)["fraction_of_peak"] is None


# ------------------------------------------------------------------------------------ timing
def test_a_stop_keeps_the_timed_iterations(tiny_bench) -> None:
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 1  # spent after the first iteration

    with torch.inference_mode():
        timing = time_paths(tiny_bench, ("fast",), stop=stop)
    assert timing["stopped"] and len(timing["times"]["fast"]) == 1 and timing["times"]["fast"][0] > 0
    assert torch.isfinite(timing["frame"]).all()


def test_load_warning(monkeypatch) -> None:
    monkeypatch.setattr(core.os, "getloadavg", lambda: (9.5, 9.0, 8.0))
    warning = core.load_warning(2)
    assert warning is not None and "9.5" in warning and "2 thread" in warning
    monkeypatch.setattr(core.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert core.load_warning(2) is None
    assert core.load_warning(2, 3.0) is not None


def test_fresh_process_command_line_round_trips(bench_script) -> None:
    opts = _opts(bench_script, [*TINY, "--window_batch", "3", "--conv3d", "--dtype", "bf16"])
    again = _opts(bench_script, [*command_line(opts), "--lengths", "--no_compile"])
    assert again == opts


def test_paths_timed_alone_in_fresh_processes(bench_script, capsys, monkeypatch) -> None:
    """--processes: every row in its own process, the best process's median kept, the paths
    compared on their first iteration (the same input in every process).

    The probes run in this process (a fresh process per probe costs seconds each; spawning one
    is tested with the memory probes, tests/test_fifo_equivalence.py); what they are asked to do
    goes through the command line that a fresh process would parse."""
    from tools.bench import measure

    def in_process(opts, spec):
        again = _opts(bench_script, [*measure.command_line(opts), "--lengths", "--no_compile"])
        with torch.inference_mode():
            return measure.probe(again, spec)

    monkeypatch.setattr(measure, "fresh_process_probe", in_process)
    monkeypatch.setattr(gif, "FRAMES", 1)  # the palette comparison on one frame (the tool's: 8)
    argv = [*TINY, "--iterations", "1", "--warmup", "0", "--no_memory", "--processes", "2", "--no_bf16"]
    assert bench_script.main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["timing"] == "each path alone in 2 fresh process(es), the best process's median"
    assert list(r["paths"]) == ["sequential", "fast"] and r["speedup_bf16"] is None
    for p in r["paths"].values():
        assert len(p["process_medians"]) == 2 and p["seconds_per_frame"] == min(p["process_medians"]) > 0
    # The same input in every process: the paths agree as they do in one process (tiny: ~1e-3 of the
    # scale, where guidance 12 amplifies fp32 rounding at the 1x1 level).
    assert 0 < r["max_abs_diff"] < 0.05
    # The frame writer's cost per frame, next to the U-Net's, and how much of it overlaps.
    from tools.bench.table import format_table

    assert r["writer_seconds_per_frame"] > 0 and 0 < r["writer_overlap"] <= 1
    assert "frame writer (GIF palette and frame, state PNG; its own thread)" in format_table(r)
    # Its GIF palette step against Pillow's median cut, timed side by side in the same run.
    g = r["gif_palette"]
    assert g["frames"] == 1 and g["size"] == [320, 512] and g["seconds"] > 0 and g["median_cut_seconds"] > 0
    assert g["ratio"] == pytest.approx(g["median_cut_seconds"] / g["seconds"])
    assert g["min_psnr_gain_db"] == pytest.approx(g["psnr_db"] - g["median_cut_psnr_db"])
    assert "GIF palette of a 320x512 frame" in format_table(
        r
    ) and "against Pillow's median cut" in format_table(r)


def test_the_rows_of_each_setting(tiny_bench) -> None:
    """sequential and fast; the compiled row with compile; the bf16 row where asked (the CPU's
    native bf16 and no --dtype: scripts/benchmark.py), with the fast path's FLOPs."""
    from tools.bench.table import FAST_BF16, path_rows, timed_rows

    rows = timed_rows(tiny_bench, replace(tiny_bench.opts, compile=True, bf16_row=True))
    assert [(r.name, r.path, r.dtype) for r in rows] == [
        ("sequential", "sequential", "fp32"),
        ("fast", "fast", "fp32"),
        ("compiled", "compiled", "fp32"),
        (FAST_BF16, "fast", "bf16"),
    ]
    plain = replace(tiny_bench.opts, compile=False, bf16_row=False)
    assert [r.name for r in timed_rows(tiny_bench, plain)] == ["sequential", "fast"]
    timing = {"times": {r.name: [1.0] for r in rows}, "warmup_times": {r.name: [] for r in rows}}
    out = path_rows(tiny_bench, timing, {}, rows)
    assert (
        out[FAST_BF16]["flops_per_frame"]
        == out["compiled"]["flops_per_frame"]
        == out["fast"]["flops_per_frame"]
    )
    assert out[FAST_BF16]["dtype"] == "bf16" and out[FAST_BF16]["unet_calls_per_frame"] == 1


# ------------------------------------------------------------------------------------ the report
def test_report_rehearsal_on_cpu(bench_script, tmp_path: Path, capsys, one_thread) -> None:
    """The device's command with the tiny preset: every row and field there, JSON and markdown."""
    out = tmp_path / "report"
    argv = [*TINY, "--iterations", "1", "--warmup", "0", "--report", str(out), "--no_compile"]
    assert bench_script.main(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    printed = capsys.readouterr().out
    assert doc["complete"] and doc["device"]["type"] == "cpu" and doc["preset"] == "tiny"
    assert printed == (out / "report.md").read_text()
    rows = {(r["dtype"], r["compile"], r["path"]): r for r in doc["rows"]}
    for r in doc["rows"]:
        assert set(r) == set(report.ROW_FIELDS)
    # CUDA-only rows say why; fp16 is not a CPU dtype here.
    assert (
        rows[("fp16", False, "fast")]["status"] == "not applicable"
        and rows[("fp16", False, "fast")]["reason"]
    )
    seq, fast = rows[("fp32", False, "sequential")], rows[("bf16", False, "fast")]
    for r in (seq, fast):
        assert (
            r["status"] == "measured"
            and r["seconds_per_frame"] > 0
            and r["finite_latents"]
            and r["finite_frame"]
        )
        assert r["flops_per_frame"] > 0 and r["fraction_of_peak"] > 0
    # PyTorch's fused kernel in fp32; bf16 on a CPU with native bf16 runs as matrix products.
    assert any("scaled_dot_product" in k for k in seq["sdpa_kernels"])
    bf16_kernel = "bmm_softmax" if cpu_has_native_bf16() else "_scaled_dot_product_flash_attention_for_cpu"
    assert list(fast["sdpa_kernels"]) == [bf16_kernel]
    for r in (seq, fast):
        assert r["peak_memory_bytes"] is None  # CUDA's max_memory_allocated only
    assert rows[("bf16", True, "fast")]["status"] == "skipped"
    assert set(doc["startup"]) >= set(report.STARTUP_FIELDS) and doc["startup"]["status"] == "measured"
    assert doc["startup"]["build_and_load_seconds"] > 0 and doc["startup"]["checkpoint_bytes"] > 0
    assert doc["parallel_windows"]["status"] == "not applicable"
    md = (out / "report.md").read_text()
    assert "| sequential | fp32 |" in md and "not applicable" in md and "Start-up" in md
    # The first row: the user's command itself, a few frames written to a video file.
    job = doc["main_job"]
    assert set(job) == set(report.MAIN_JOB_FIELDS) and job["status"] == "measured", job["reason"]
    assert job["frames"] == report.MAIN_JOB_FRAMES and job["video_bytes"] > 0 and job["seconds"] > 0
    assert "videocrafter_main.py --config" in job["command"] and "Main job (the command line" in md


def test_report_budget_stop_keeps_what_was_measured(
    bench_script, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """A budget spent after the start-up: the start-up is kept, every row is said skipped, and the
    files are written (not complete). The main job (a fresh process, checked by the rehearsal
    above) is not what this test is about: it is said measured without running."""
    opts = _opts(bench_script, [*TINY, "--iterations", "3", "--warmup", "0"])
    monkeypatch.setattr(report.Budget, "spent", lambda self: True)
    main_job = {**dict.fromkeys(report.MAIN_JOB_FIELDS), "status": "measured"}
    monkeypatch.setattr(report, "main_job", lambda *_args: main_job)
    doc = report.run_report(tmp_path, opts, budget_s=60.0, compile_rows=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(doc)) and saved["complete"] is False
    assert saved["startup"]["status"] == "measured" and saved["startup"]["first_frame_seconds"] > 0
    skipped = [r for r in saved["rows"] if r["status"] == "skipped"]
    assert {(r["dtype"], r["compile"]) for r in skipped} == {("bf16", False), ("bf16", True)}
    assert "incomplete" in (tmp_path / "report.md").read_text()
    assert saved["main_job"] == main_job


def test_a_row_cut_short_keeps_its_timed_iterations(tiny_bench) -> None:
    """The budget runs out after the first of three timed iterations: the row keeps it."""
    budget = report.Budget(60.0)
    checks = []
    budget.spent = lambda: bool(checks.append(1)) or len(checks) >= 1  # spent from the first check on
    with torch.inference_mode():
        (row,) = report.measure_paths(tiny_bench, ("fast",), budget, {"fast": "fast fp32"})
    assert row["status"].startswith("stopped") and len(row["iteration_seconds"]) == 1
    assert row["seconds_per_frame"] == row["iteration_seconds"][0] > 0 and row["finite_latents"]
    assert set(row) == set(report.ROW_FIELDS)


# ------------------------------------------------------------------------------------ --compile
def test_compiled_unet_gives_the_eager_latents(tmp_path: Path, monkeypatch, one_thread) -> None:
    """One guided U-Net call of the tiny model, compiled and eager: the same noise within fp32
    rounding; one graph for the call's shape, no graph break.

    Traced by Dynamo and AOT autograd as ``--compile`` traces it, run with the ``aot_eager``
    backend: Inductor's code generation and C++ builds take minutes of CPU for the tiny model on
    a small CPU (docs/performance.md), over this suite's budget; what this
    project's code decides (what is traced, the guards, the shapes) is the same.

    The tiny U-Net cut to two levels of one block each, transformers on the first level and in
    the middle: every kind of block (the residual block with its temporal convolution, the
    spatial and the temporal transformer, the down- and the up-sampling) is still in the graph;
    tracing time grows with the number of blocks."""
    import yaml

    from fifo.guidance import CFGDenoiser, ModelDenoiser
    from lvdm.build import load_model

    monkeypatch.delenv(fcompile.CACHE_ENV, raising=False)  # restored after the test
    config = yaml.safe_load((core.REPO / "configs/tiny_t2v.yaml").read_text())
    unet = config["model"]["params"]["unet_config"]["params"]
    unet.update(channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1])
    (tmp_path / "small_unet.yaml").write_text(yaml.safe_dump(config))
    model = load_model(tmp_path / "small_unet.yaml", None, random_init=True, seed=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.channels, 8, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (1, 8), generator=gen)
    with torch.inference_mode():
        cond = model.get_learned_conditioning(["a cat"])
        uncond = model.get_learned_conditioning([""])
        denoise = CFGDenoiser(ModelDenoiser(model, 8), 12.0)
        eager = denoise(x, t, cond, uncond)
        fcompile.reset_compiled()
        before = fcompile.compiled_graphs()
        fcompile.compile_unet(model.unet, tmp_path / "compiled", backend="aot_eager")
        try:
            assert fcompile.is_compiled(model.unet)
            compiled = denoise(x, t, cond, uncond)
            again = denoise(x, t, cond, uncond)
            graphs = fcompile.compiled_graphs() - before
        finally:
            fcompile.uncompile_unet(model.unet)
            fcompile.reset_compiled()
    assert not fcompile.is_compiled(model.unet)
    assert graphs == 1  # the whole U-Net in one graph: no graph break, no recompilation on the second call
    scale = eager.abs().max()
    assert (compiled - eager).abs().max() <= 1e-4 * scale
    assert torch.equal(again, compiled)
    assert os.environ[fcompile.CACHE_ENV] == str((tmp_path / "compiled").resolve())


def test_cli_compile_flag() -> None:
    from cli.parser import build_parser

    assert build_parser().parse_args(["-p", "x.txt", "--compile"]).compile is True
    assert build_parser().parse_args(["-p", "x.txt"]).compile is False


# ------------------------------------------------------------------------------------ device prep
def test_prepare_device_installs_what_an_offline_node_lacks_and_keeps_its_torch(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    prep = load_script("scripts/prepare_device.py")
    freeze = "numpy==2.1.0\nPyYAML==6.0.2\ntqdm @ file:///wheels/tqdm.whl\n-e git+https://x/y#egg=z\ntorch==2.4.0+cu121\n"
    assert prep.freeze_names(freeze) == {"numpy", "pyyaml", "tqdm", "torch"}
    missing = prep.missing_closure(["omegaconf", "tqdm", "torch"], {"numpy", "pyyaml", "tqdm"})
    assert set(missing) == {"omegaconf"}  # PyYAML is there; torch is the node's own
    missing = prep.missing_closure(["open-clip-torch"], set())  # no freeze: only torch and CUDA kept
    assert {"open-clip-torch", "ftfy"} <= set(missing)
    assert not [n for n in missing if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-")]

    calls = []

    def pip_download(cmd, check):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for spec in cmd[cmd.index("--platform") :]:
            if "==" in spec:
                (dest / f"{spec.replace('==', '-')}-py3-none-any.whl").write_bytes(b"wheel")

    monkeypatch.setattr(prep.subprocess, "run", pip_download)
    node = tmp_path / "node-freeze.txt"
    node.write_text(freeze)
    dest = tmp_path / "wheels"
    assert prep.main(["--freeze", str(node), "--python", "3.11", "--platform", "manylinux_2_28_aarch64",
                      "--dest", str(dest)]) == 0  # fmt: skip
    cmd = calls[0]
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--platform") + 1] == "manylinux_2_28_aarch64" and "--no-deps" in cmd
    assert not [c for c in cmd if c.startswith(("torch==", "numpy==", "pyyaml=="))]
    command = (dest / "COMMAND.txt").read_text().strip()
    assert command.startswith("python -m pip install --no-index --no-deps wheels/")
    assert command in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        prep.main(["--python", "three", "--dry_run"])
    assert bad.value.code == 2


def test_the_wan_preset_times_fifo_and_the_mechanisms_per_output_frame(
    bench_script, tmp_path, capsys
) -> None:
    out = tmp_path / "wan.json"
    args = ["--preset", "tiny_wan", "--mechanisms", "--iterations", "1", "--warmup", "0", "--device", "cpu"]
    args += [
        "--threads",
        "1",
        "--video_length",
        "2",
        "--num_partitions",
        "2",
        "--no_guidance",
    ]
    assert bench_script.main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mechanism"] for r in rows] == ["fifo", "zigzag", "anchors", "reflect"]
    assert rows[0]["relative_to_fifo"] == 1.0
    assert all(r["seconds_per_frame"] > 0 and r["iterations"] == 1 for r in rows)
    # The paper's L_zig = 4 does not divide the one frame a window of 2 writes back: the row takes 1.
    assert rows[1]["zigzag_length"] == 1
    table = capsys.readouterr().out
    assert "| reflect | t2v_reflect |" in table and "| zigzag | t2v_zigzag (L_zig = 1) |" in table
    assert bench_script.main([*args, "--zigzag_length", "3"]) == 2  # asked for, and it does not fit
    assert "error: --zigzag_length must divide" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # its transformer has no sequential/fast U-Net paths
        bench_script.main(["--preset", "tiny_wan", "--device", "cpu"])
    assert refused.value.code == 2 and "add --mechanisms" in capsys.readouterr().err
