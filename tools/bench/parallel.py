"""``scripts/benchmark.py --parallel windows`` under torchrun: one rank against all ranks."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import replace

import torch

from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.parallel import LaunchEnv
from fifo.perf import ShardedDenoiser, apply_execution, plan_fast_path
from fifo.step import fifo_step, iteration_noise, shift_queue
from infra.cuda_runtime import bind_device, cuda
from tools.bench.core import setup, sync
from tools.bench.options import BenchOptions


def parallel_windows_benchmark(opts: BenchOptions) -> int:
    """``--parallel windows`` under torchrun: rank 0 alone against all ranks, in one run.

    One rank: rank 0 runs every window of an iteration with K intra-op threads on CPU (K = the
    world size; its own GPU on CUDA) while the others wait. K ranks: every rank runs its share of
    the windows with one thread (its GPU) and the written-back frames are exchanged. Both on the
    same queue and noise; each timed iteration runs both, in alternating order.
    """
    import torch.distributed as dist

    from fifo.parallel import DistributedWindows, RankGroup, shares_text

    launch = LaunchEnv.from_environment()
    if launch is None:
        raise SystemExit(
            "--parallel windows needs torchrun, e.g. torchrun --nproc_per_node=2 scripts/benchmark.py ..."
        )
    device = torch.device(opts.device)
    if device.type == "cuda":
        device = bind_device(torch.device("cuda", launch.local_rank))
    opts = replace(opts, device=str(device), threads=1)
    dist.init_process_group(cuda().data_backend() if device.type == "cuda" else "gloo")
    group = RankGroup(launch.rank, launch.world, device)
    if launch.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    with torch.inference_mode():
        bench = setup(opts)
        # Both sides run the fast path's plan: on CPU the one rank splits its calls into K parallel
        # slices of K threads (the best a single process does with K cores), the K ranks one each.
        plan = plan_fast_path(device, threads=launch.world)
        apply_execution(bench.fast_model.unet, plan.unet)
        denoise = CFGDenoiser(ModelDenoiser(bench.fast_model, opts.fps), opts.guidance)
        alone = ShardedDenoiser(denoise, plan.shards)
        split = DistributedWindows(group)
        common = (bench.geometry, bench.schedule, bench.contexts, bench.uncond)
        times: dict[str, list[float]] = {"one rank": [], f"{launch.world} ranks": []}
        diffs: list[float] = []
        queue = bench.queue
        for it in range(opts.warmup + opts.iterations):
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
                        outputs[path] = fifo_step(alone, queue, *common, noise, bench.window_batch)
                        torch.set_num_threads(1)
                else:
                    outputs[path] = split(denoise, queue, *common, noise, bench.window_batch)
                sync(device)
                dist.barrier()
                if it >= opts.warmup:
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
            f"FIFO windows over ranks: preset {opts.preset}, {windows} windows ({shares_text(windows, launch.world)} "
            f"per rank), device {device.type}, {opts.iterations} timed iteration(s)\n"
            f"one rank ({plan.shards} parallel slice(s) of one thread each on CPU): {one:.3f} s/frame\n"
            f"{launch.world} ranks (1 thread each on CPU): {many:.3f} s/frame\n"
            f"speed-up (one rank / {launch.world} ranks): {one / many:.2f}x    max |difference| = {max(diffs):.2e}"
        )
    dist.destroy_process_group()
    return 0
