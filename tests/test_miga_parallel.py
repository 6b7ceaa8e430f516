"""MIGA's mechanisms with the windows split over two ranks (--parallel windows): every rank keeps
the same mechanism state and dequeues what one process dequeues (tests/test_parallel.py's method:
equal up to the rounding of a different batch order)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, TrickArguments, parse_mode
from fifo.outputs import OutputLayout
from fifo.parallel import RankGroup, share_state
from fifo.prompts import PromptJob
from fifo.state import FifoState
from fifo.wan_generator import generator_class
from tests.test_parallel import T2V, LatentRecorder, _scaled, model_of

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"video_length": 4, "num_partitions": 1, "new_video_length": 4, "height": 128, "width": 128}
SMALL |= {"progress": False, "window_batch": 4}
WAN = {"video_length": 4, "num_partitions": 2, "new_video_length": 5, "height": 64, "width": 64}
WAN |= {"progress": False, "window_batch": 2}
# name: config, mode, trick arguments, settings
CASES = {
    "reflect_anchors": (
        T2V,
        "t2v_reflect_anchors",
        TrickArguments(anchor_frames=2, reflect_threshold=0.0, reflect_candidates=2),
        SMALL,
    ),
    # Wan2.1: the queue unit is a latent frame (4 video frames), an anchor a clean latent frame.
    "wan_reflect_anchors": (
        "configs/tiny_wan_t2v.yaml",
        "t2v_reflect_anchors",
        TrickArguments(anchor_frames=1, reflect_threshold=0.0, reflect_candidates=2),
        WAN,
    ),
    "wan_zigzag_anchors": (
        "configs/tiny_wan_t2v.yaml",
        "t2v_zigzag_anchors",
        TrickArguments(zigzag_length=2),
        WAN,
    ),
    # the zigzag queue (5 windows: 3 + 2 over the ranks) needs a stage 1: two partitions
    "zigzag_anchors": (
        T2V,
        "t2v_zigzag_anchors",
        TrickArguments(zigzag_length=2),
        SMALL | {"num_partitions": 2},
    ),
}
JOB = PromptJob("a red fox", line=1)
HOOK_STATE = {
    "anchors": {"frames": torch.arange(48.0).reshape(3, 4, 2, 2), "stride": 2, "seen": 5},
    "reflect": {"scores": [0.5, 0.25], "evaluated": 9, "fired": 2, "replaced": 1},
}


class Fired(LatentRecorder):
    """Also keeps how many times self-reflection re-drew a frame."""

    def after_dequeue(self, sampler, state, latent) -> None:
        super().after_dequeue(sampler, state, latent)
        self.fired = state.hook_state.get("reflect", {}).get("fired", -1)


def run_case(name: str, out: Path, group: RankGroup | None) -> torch.Tensor:
    config, mode, tricks, settings = CASES[name]
    model = model_of(config)
    generator = generator_class(model)(
        model, parse_mode(mode, tricks=tricks), GenerationSettings(**settings), "m", group=group
    )
    recorder = Fired()
    generator.sampler.hooks += (recorder,)
    with torch.inference_mode():
        generator.run(JOB, OutputLayout(out / name, "exp", out / "cache"))
    return torch.cat([*recorder.latents, torch.full_like(recorder.latents[0], recorder.fired)], dim=2)


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(minutes=5),
    )  # fmt: skip
    group = RankGroup(rank, world, torch.device("cpu"), dist.new_group(backend="gloo"))
    latents = {name: run_case(name, Path(out) / f"world{world}", group) for name in CASES}
    if rank == 0:
        torch.save(latents, Path(out) / f"latents{world}.pt")
    # A resumed state on rank 0 (its hook state restored from disk) reaches every rank whole.
    resumed = FifoState(torch.zeros(1, 4, 6, 2, 2), NoiseSource.seeded(3, "cpu"), 7, hook_state=HOOK_STATE)
    shared = share_state(group, resumed if rank == 0 else None, NoiseSource.seeded(3, "cpu"))
    torch.save(shared.hook_state, Path(out) / f"hook_state{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_dequeue_what_one_process_dequeues(tmp_path) -> None:
    torch.set_num_threads(1)
    expected = {name: run_case(name, tmp_path / "world1", None) for name in CASES}
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    latents = torch.load(tmp_path / "latents2.pt", weights_only=True)
    for name, reference in expected.items():
        if "reflect" in name:
            assert reference[0, 0, -1, 0, 0] > 0  # self-reflection fired (the last slot holds the count)
        assert latents[name].shape == reference.shape, name
        assert _scaled(latents[name], reference) <= 1e-5, (name, _scaled(latents[name], reference))
    other = torch.load(tmp_path / "hook_state1.pt", weights_only=True)
    assert other["reflect"] == HOOK_STATE["reflect"] and other["anchors"]["seen"] == 5
    assert torch.equal(other["anchors"]["frames"], HOOK_STATE["anchors"]["frames"])
