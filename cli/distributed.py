"""torch.distributed for the CLI: the job's control group (gloo), the ranks agreeing on input
errors, the data group of ``--parallel windows`` and the summary of ``--parallel prompts``."""

from __future__ import annotations

import datetime
import logging

from cli import LOGGER_NAME
from cli.request import RunRequest

logger = logging.getLogger(LOGGER_NAME)

# The job's control collectives (agreeing on errors, the summary at the end) may wait for the
# slowest rank's whole share of the prompt list: hours.
CONTROL_TIMEOUT = datetime.timedelta(days=7)


def start_process_group() -> bool:
    """Under torchrun with several processes, join the job's process group (gloo, for agreeing on
    errors, small objects and the summary; each video's data goes through its own group). Returns
    whether there are several processes. Nothing is computed yet: inputs are checked next, on
    every rank, and the ranks agree on the outcome before any work."""
    from fifo.parallel import LaunchEnv

    launch = LaunchEnv.from_environment()
    if launch is None or launch.world < 2:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=CONTROL_TIMEOUT)
    return True


def end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree_on_errors(error: str | None) -> str | None:
    """Every rank's input check → one outcome: this rank's own error, or the first failed rank's
    (so that a bad input found on one rank stops every rank at once, none waits for it)."""
    import torch.distributed as dist

    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    if error is not None:
        return error
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, first = failed[0]
    return f"error: rank {rank} stopped the job: {first.removeprefix('error: ')}"


def window_group(request: RunRequest):  # noqa: ANN201 -- a fifo.parallel.RankGroup
    """--parallel windows: the ranks' data group (NCCL between GPUs, gloo on CPUs), with timeouts
    so that a rank that died makes the others fail instead of waiting forever."""
    import torch.distributed as dist

    from fifo.parallel import DEFAULT_TIMEOUT, RankGroup
    from infra.cuda_runtime import cuda

    device = request.device
    backend = cuda().data_backend() if device.type == "cuda" else "gloo"
    return RankGroup(
        request.rank, request.world, device, dist.new_group(backend=backend, timeout=DEFAULT_TIMEOUT)
    )


def summarize_ranks(request: RunRequest, results: list) -> None:
    """--parallel prompts: rank 0 logs every rank's videos (a gloo collective with a long timeout:
    ranks that finish early wait here for the slowest one)."""
    import torch.distributed as dist

    gathered: list = [None] * request.world
    dist.all_gather_object(gathered, [(x.prompt, str(x.video_path), x.frames) for x in results])
    if request.rank == 0:
        logger.info("all ranks: %d video(s) written", sum(len(g) for g in gathered))
        for rank, items in enumerate(gathered):
            for prompt, path, frames in items:
                logger.info("  rank %d: %s (%d frames) %s", rank, path, frames, prompt)
