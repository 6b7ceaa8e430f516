"""fifo/perf.py: the CPU fast path's execution plan, parallel slices and allocator setting.

(The window batch choice and memory helpers are tested with a real model in
test_fifo_equivalence.py.)
"""

from __future__ import annotations

import platform
import sys
import threading

import pytest
import torch

from fifo import perf
from fifo.perf import FastPathPlan, ShardedDenoiser, UNetExecution, plan_fast_path


def _recording_denoiser(log: list[dict]):
    """Stand-in guided denoiser: eps = x · 10 + t + cond mean − uncond mean, one row per sample."""

    def denoise(
        x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None
    ) -> torch.Tensor:
        log.append(
            {
                "rows": x.shape[0],
                "contexts": cond.shape[0] + (0 if uncond is None else uncond.shape[0]),
                "threads": torch.get_num_threads(),
                "thread": threading.get_ident(),
                "inference": torch.is_inference_mode_enabled(),
                "grad": torch.is_grad_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
            }
        )
        out = x * 10 + t.reshape(-1, 1, 1) + cond.mean(dim=(1, 2)).reshape(-1, 1, 1)
        return out if uncond is None else out - uncond.mean(dim=(1, 2)).reshape(-1, 1, 1)

    return denoise


@pytest.mark.parametrize(("n", "branches", "shards"), [(5, 2, 2), (8, 2, 4), (3, 1, 2), (2, 2, 8)])
def test_slices_give_the_whole_call(n: int, branches: int, shards: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, 3, generator=g)
    t = torch.arange(n, dtype=torch.float32)
    cond = torch.randn(n, 7, 2, generator=g)
    uncond = torch.randn(n, 7, 2, generator=g) if branches == 2 else None
    log: list[dict] = []
    whole = _recording_denoiser(log)(x, t, cond, uncond)
    log.clear()
    with ShardedDenoiser(_recording_denoiser(log), shards, threads=4) as sharded:
        out = sharded(x, t, cond, uncond)
    torch.testing.assert_close(out, whole)  # sample order restored
    used = min(shards, n)
    assert len(log) == used
    assert sorted(call["rows"] for call in log) == sorted(
        round((k + 1) * n / used) - round(k * n / used) for k in range(used)
    )
    assert all(call["contexts"] == branches * call["rows"] for call in log)
    assert all(call["threads"] == max(1, 4 // used) for call in log)
    assert all(call["thread"] != threading.get_ident() for call in log)


def test_callers_modes_reach_the_workers_and_threads_come_back() -> None:
    log: list[dict] = []
    before = torch.get_num_threads()
    sharded = ShardedDenoiser(_recording_denoiser(log), 2)
    x, t, cond, uncond = torch.randn(4, 2, 2), torch.zeros(4), torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    with torch.inference_mode():
        sharded(x, t, cond, uncond)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sharded(x, t, cond, uncond)
    sharded.close()
    assert [c["inference"] for c in log] == [True, True, False, False]
    assert [c["grad"] for c in log] == [False] * 4
    assert [c["autocast"] for c in log] == [False, False, True, True]
    assert torch.get_num_threads() == before


def test_one_shard_or_unsplittable_calls_pass_through() -> None:
    log: list[dict] = []
    x, t = torch.randn(4, 2, 2), torch.zeros(4)
    ShardedDenoiser(_recording_denoiser(log), 1)(x, t, torch.randn(4, 3, 2), None)
    ShardedDenoiser(_recording_denoiser(log), 2)(x[:1], t[:1], torch.randn(1, 3, 2), None)
    assert [c["thread"] for c in log] == [threading.get_ident()] * 2
    with pytest.raises(ValueError, match="shards"):
        ShardedDenoiser(_recording_denoiser(log), 0)


def test_errors_in_a_slice_reach_the_caller() -> None:
    def broken(x, t, cond, uncond):
        raise RuntimeError("out of memory in slice")

    before = torch.get_num_threads()
    with ShardedDenoiser(broken, 2) as sharded, pytest.raises(RuntimeError, match="slice"):
        sharded(torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1, 1), None)
    assert torch.get_num_threads() == before


def test_plan_per_device() -> None:
    assert plan_fast_path("cpu", threads=6) == FastPathPlan(
        shards=6, unet=UNetExecution(perf.CPU_TRANSFORMER_CHUNK, temporal_conv_2d=True)
    )
    assert plan_fast_path("cpu", threads=1).shards == 1
    assert plan_fast_path("cuda") == FastPathPlan()  # big batches feed a GPU best
    assert plan_fast_path(torch.device("cuda", 1)) == FastPathPlan()


def test_allocator_tuning_where_glibc() -> None:
    tuned = perf.tune_cpu_allocator()
    is_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tuned is is_glibc
    block = torch.ones(64 * 2**20 // 4)  # still allocates and frees as usual
    assert float(block.sum()) == block.numel()
