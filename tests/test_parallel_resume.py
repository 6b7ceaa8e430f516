"""``--parallel windows`` with a trick that keeps state between iterations (self-recurrent
guidance's feature bank), interrupted and resumed: two CPU ranks (gloo) dequeue the latents and
write the frames of one uninterrupted process. Every rank must resume with the whole state, the
tricks' part included, not only the queue."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from fifo.generator import FifoGenerator
from fifo.hooks import StepHook
from fifo.options import GenerationSettings, TrickArguments, parse_mode
from fifo.outputs import OutputLayout
from fifo.parallel import RankGroup
from fifo.prompts import PromptJob
from fifo.resume import ResumeOptions, RunInterrupted
from lvdm.build import load_model
from tests.conftest import REPO

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
JOB = PromptJob("a person swimming in the ocean", line=1)
# 4 windows of 2 frames (2 per rank), 5 output frames after 2 iterations of warm-up: 7 iterations.
SETTINGS = {"video_length": 2, "num_partitions": 2, "new_video_length": 5, "height": 128, "width": 128}
SETTINGS |= {"progress": False, "save_frames": True, "window_batch": 4}
STOP_AFTER = 4  # iterations: the bank holds two frames' features by then


class LatentRecorder(StepHook):
    """Keeps every iteration's dequeued latent, by iteration."""

    name = "recorder"

    def __init__(self) -> None:
        self.latents: dict[int, torch.Tensor] = {}

    def after_dequeue(self, loop, state, latent) -> None:
        self.latents[state.iteration] = latent.detach().clone()


@functools.cache
def model_of():
    return load_model(T2V, None, random_init=True)  # seeded: the same weights on every rank


def generator_of(group: RankGroup | None) -> tuple[FifoGenerator, LatentRecorder]:
    # Every window guided: rank 1 computes guided windows too, from its own copy of the queue.
    tricks = TrickArguments(subject="a person", srg_windows=4, srg_weight=20.0)
    mode = parse_mode("t2v_srg", tricks=tricks)
    generator = FifoGenerator(model_of(), mode, GenerationSettings(**SETTINGS), "m", group=group)
    recorder = LatentRecorder()
    generator.sampler.hooks = (*generator.sampler.hooks, recorder)
    return generator, recorder


def stop_after(iterations: int):
    calls = iter(range(10**6))
    return lambda: next(calls) + 1 >= iterations


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(minutes=5),
    )  # fmt: skip
    group = RankGroup(rank, world, torch.device("cpu"), dist.new_group(backend="gloo"))
    out = Path(out)
    generator, _ = generator_of(group)  # set up outside inference mode, as the command line does
    stopping = ResumeOptions(save_every_frames=1, stop_requested=stop_after(STOP_AFTER))
    with torch.inference_mode(), pytest.raises(RunInterrupted):
        generator.run(JOB, OutputLayout(out, "exp", out / "cache"), stopping)
    generator.close()
    generator, recorder = generator_of(group)  # a new process would start from nothing
    with torch.inference_mode():
        generator.run(
            JOB, OutputLayout(out, "exp", out / "cache"), ResumeOptions(resume=True, save_every_frames=1)
        )
    generator.close()
    torch.save(recorder.latents, out / f"latents_rank{rank}.pt")
    dist.destroy_process_group()


def frames_of(folder: Path) -> np.ndarray:
    paths = sorted(folder.rglob("fifo/*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=int) for p in paths])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[int, torch.Tensor]]:
    out = tmp_path_factory.mktemp("one")
    torch.set_num_threads(1)
    generator, recorder = generator_of(None)
    with torch.inference_mode():
        generator.run(JOB, OutputLayout(out, "exp", out / "cache"))
    generator.close()
    return out, recorder.latents


def test_two_ranks_with_srg_interrupted_and_resumed_give_the_one_process_video(
    tmp_path, uninterrupted
) -> None:
    one, expected = uninterrupted
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        resumed = torch.load(tmp_path / f"latents_rank{rank}.pt", weights_only=True)
        assert sorted(resumed) == list(range(STOP_AFTER, max(expected) + 1)), rank
        for iteration, latent in resumed.items():
            reference = expected[iteration]
            scaled = float((latent - reference).abs().max() / max(1.0, float(reference.abs().max())))
            assert scaled <= 1e-5, (rank, iteration, scaled)
    a, b = frames_of(one), frames_of(tmp_path)
    assert a.shape == b.shape == (5, 128, 128, 3)
    differ = np.abs(a - b)
    assert differ.max() <= 4 and (differ > 0).mean() < 0.01
    assert not any(tmp_path.rglob("*.state"))  # complete: the saved state is gone
