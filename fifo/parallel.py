"""One long video on several processes: the FIFO windows of every iteration split over ranks.

Within one iteration no window reads what another window writes, so the windows can run on
different ranks. Every rank holds the same queue and draws the same random numbers (the same
noise sources, seeded alike); rank r denoises its share of the windows through the same batched
path as a single process, and an ``all_gather`` of a fixed-size buffer (each rank's written-back
frames, padded to the largest share) gives every rank every window's frames: the identical new
queue before the shift. Rank 0 alone samples or loads the base clip, decodes, writes the
outputs and the saved state, and computes image tokens; it broadcasts what the others need.

:class:`RankGroup` wraps the ``torch.distributed`` collectives the run needs; the launcher sets it
up (``videocrafter_main.py`` under torchrun).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.noise import NoiseSource
from fifo.schedule import DDIMSchedule
from fifo.state import FifoState
from fifo.step import denoise_windows, write_back

logger = logging.getLogger(__name__)

# What a rank tells the others at the end of a stretch of work (RankGroup.agree): go on, stop
# cleanly (a signal: state saved), or it failed (its error is its own to report).
GO, STOP, FAILED = 0, 1, 2


class PeerFailed(RuntimeError):
    """Another rank of the job failed: this one stops as well instead of waiting for it."""


# Collectives of a run wait at most this long for the other ranks (one iteration of the full
# model is seconds; a rank that died makes the others fail after this, never hang).
DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun tells each process: its rank, the world size and its rank on this node."""

    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> LaunchEnv | None:
        """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or None outside torchrun."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def split_windows(n_windows: int, ranks: int) -> list[list[int]]:
    """Windows 0..n-1 in ``ranks`` contiguous shares as even as possible (sizes differ by at most
    one, the larger first); ranks beyond the windows get none."""
    base, extra = divmod(n_windows, ranks)
    shares, start = [], 0
    for r in range(ranks):
        size = base + (1 if r < extra else 0)
        shares.append(list(range(start, start + size)))
        start += size
    return shares


class RankGroup:
    """The ranks of one job, as the FIFO run uses them.

    Args:
        rank, world: this process's rank and the number of ranks.
        device: where this rank computes (cuda:LOCAL_RANK or cpu); data collectives move tensors
            on it (NCCL on CUDA, gloo on CPU).
        group: the process group of the data collectives (None: the default group).
    """

    def __init__(
        self, rank: int, world: int, device: torch.device, group: dist.ProcessGroup | None = None
    ) -> None:
        self.rank, self.world, self.device, self.group = rank, world, torch.device(device), group

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the outputs (rank 0)."""
        return self.rank == 0

    def broadcast(
        self, tensor: Tensor | None, like: tuple[tuple[int, ...], torch.dtype] | None = None
    ) -> Tensor:
        """Rank 0's ``tensor`` on every rank. The others pass ``like`` = (shape, dtype) instead."""
        if self.is_writer:
            assert tensor is not None
            buffer = tensor.contiguous().to(self.device)
        else:
            assert like is not None
            buffer = torch.empty(like[0], dtype=like[1], device=self.device)
        dist.broadcast(buffer, src=0, group=self.group)
        return buffer

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` (small, picklable) on every rank."""
        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self.device)
        return box[0]

    def agree(self, status: int) -> int:
        """The largest of every rank's ``status`` (:data:`GO` < :data:`STOP` < :data:`FAILED`)."""
        value = torch.tensor([status], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return int(value.item())

    def settle(self, failure: Exception | None, stop: bool = False) -> bool:
        """Every rank's outcome of the same stretch of work, agreed on at once: raises ``failure``
        (this rank's), or :class:`PeerFailed` when another rank failed, so that no rank waits in
        a collective for one that has stopped. Returns whether any rank asks to stop."""
        status = self.agree(FAILED if failure is not None else (STOP if stop else GO))
        if failure is not None:
            raise failure
        if status == FAILED:
            raise PeerFailed("another rank of this job failed (its error is above); this rank stopped too")
        return status == STOP

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank."""
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def all_gather_padded(self, local: Tensor, rows: int) -> list[Tensor]:
        """Every rank's ``local`` (k_r, ...) with k_r ≤ ``rows``, gathered through one fixed-size
        buffer per rank (``rows`` rows, zero-padded)."""
        buffer = local.new_zeros((rows, *local.shape[1:]))
        buffer[: local.shape[0]] = local
        gathered = [torch.empty_like(buffer) for _ in range(self.world)]
        dist.all_gather(gathered, buffer, group=self.group)
        return gathered


class DistributedWindows:
    """One FIFO iteration with the windows split over the ranks of ``group`` (a FifoSampler part)."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group

    def __call__(
        self,
        denoise: GuidedDenoiser,
        queue: Tensor,
        geometry: FifoGeometry,
        schedule: DDIMSchedule,
        contexts: Tensor,
        uncond: Tensor | None,
        noise: Tensor | None,
        window_batch: int | None,
    ) -> Tensor:
        shares = split_windows(len(geometry.windows()), self.group.world)
        mine = shares[self.group.rank]
        written = denoise_windows(
            denoise, queue, geometry, schedule, contexts, uncond, noise, window_batch, mine
        )
        rows = max(1, math.ceil(len(geometry.windows()) / self.group.world))
        gathered = self.group.all_gather_padded(written, rows)
        every = torch.cat([part[: len(share)] for part, share in zip(gathered, shares)])
        return write_back(queue, geometry, every, [i for share in shares for i in share])


def share_state(group: RankGroup, state: FifoState | None, noise: NoiseSource) -> FifoState:
    """The writer's state (fresh or resumed) on every rank of ``group``.

    The writer passes its ``state`` and gets it back; the others pass None and get its
    :meth:`~fifo.state.FifoState.to_payload`, the same payload a saved state holds (queue, noise
    stream, counters, image tokens and latent, and the tricks' hook state), drawing from
    ``noise`` restored to the writer's point.
    """
    payload = group.broadcast_object(state.to_payload() if group.is_writer else None)
    if group.is_writer:
        assert state is not None
        return state
    return FifoState.from_payload(payload, noise, group.device)


def shares_text(n_windows: int, ranks: int) -> str:
    """How the windows are split, for the log: e.g. '3+3+2'."""
    return "+".join(str(len(s)) for s in split_windows(n_windows, ranks))


__all__: Sequence[str] = (
    "DEFAULT_TIMEOUT",
    "DistributedWindows",
    "LaunchEnv",
    "RankGroup",
    "share_state",
    "shares_text",
    "split_windows",
)
