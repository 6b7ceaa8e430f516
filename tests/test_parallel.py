"""One video on several processes (fifo/parallel.py, --parallel windows): 3 CPU ranks (gloo)
dequeue the latents one process dequeues, for every kind of run; uneven splits and more ranks
than windows; torchrun end to end; a failing rank stops the job; the GPU set-up, mocked."""

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

import cli.distributed
import cli.request
import cli.run
import videocrafter_main
from cli.parser import Parallelism
from fifo.generator import FifoGenerator
from fifo.hooks import StepHook
from fifo.options import GenerationSettings, parse_mode
from fifo.outputs import OutputLayout
from fifo.parallel import LaunchEnv, RankGroup, split_windows
from fifo.prompts import PromptJob, Scene
from infra.cuda_runtime import emulated
from lvdm.build import load_model
from lvdm.modules.attention_kernels import AttentionBackend
from tests.conftest import REPO, torchrun, write_png

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
STORY = PromptJob("a cat sleeps", line=1, scenes=(Scene(2, "a cat sleeps"), Scene(3, "the cat wakes up")))
FOX = PromptJob("a red fox", line=1)
# 16x16 latents (at 8x8 the tiny U-Net's 1x1 bottom level turns batch-order rounding into 1e-3);
# windows of 2 frames keep it quick.
SMALL = {"video_length": 2, "num_partitions": 2, "new_video_length": 3, "height": 128, "width": 128}
SMALL |= {"progress": False, "save_frames": True, "window_batch": 4}  # PNG frames: lossless
# name: config, mode, settings, job. 4 windows with lookahead (3 ranks: 2+1+1), 2 without, and
# 1 window on 2 or 3 ranks.
CASES = {
    "t2v": (T2V, "t2v", SMALL, FOX),
    "qcache_unilatent": (T2V, "t2v_TTqcache_attn1_unilatent", SMALL, FOX),
    "no_lookahead": (T2V, "t2v", {**SMALL, "lookahead": False}, FOX),
    "story": (T2V, "t2v", SMALL, STORY),
    "seed_ar": (I2V, "t2v_seed_ar", SMALL, FOX),
    "more_ranks_than_windows": (T2V, "t2v", {**SMALL, "num_partitions": 1, "lookahead": False}, FOX),
}


class LatentRecorder(StepHook):
    """Keeps every iteration's dequeued latent."""

    name = "recorder"

    def __init__(self) -> None:
        self.latents: list[torch.Tensor] = []

    def after_dequeue(self, sampler, state, latent) -> None:
        self.latents.append(latent.detach().clone())


@functools.cache
def model_of(config: str):
    return load_model(config, None, random_init=True)  # seeded: the same weights on every rank


def run_case(name: str, out: Path, group: RankGroup | None) -> torch.Tensor:
    config, mode, settings, job = CASES[name]
    model = model_of(config)
    generator = FifoGenerator(model, parse_mode(mode), GenerationSettings(**settings), "m", group=group)
    recorder = LatentRecorder()
    generator.sampler.hooks = (recorder,)
    with torch.inference_mode():
        generator.run(job, OutputLayout(out / name, "exp", out / "cache"))
    return torch.cat(recorder.latents, dim=2)


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=5),
    )
    group = RankGroup(rank, world, torch.device("cpu"), dist.new_group(backend="gloo"))
    latents = {name: run_case(name, Path(out) / f"world{world}", group) for name in CASES}
    if rank == 0:
        torch.save(latents, Path(out) / f"latents{world}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    return out, {name: run_case(name, out / "world1", None) for name in CASES}


def _scaled(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


# Three ranks: uneven shares (2+1+1) and a rank without a window; two ranks run end to end under
# torchrun below (and in the benchmark command of docs/scaling.md), so a second world size here would only cost time.
@pytest.mark.parametrize("world", [3])
def test_ranks_dequeue_what_one_process_dequeues(tmp_path, single, world: int) -> None:
    out, expected = single
    mp.spawn(_rank, args=(world, str(tmp_path / "init"), str(out)), nprocs=world, join=True)
    latents = torch.load(out / f"latents{world}.pt", weights_only=True)
    for name, reference in expected.items():
        assert latents[name].shape == reference.shape, name
        assert _scaled(latents[name], reference) <= 1e-5, (name, _scaled(latents[name], reference))
        one, many = frames_of(out / "world1" / name), frames_of(out / f"world{world}" / name)
        assert one.shape == many.shape and len(one) == (CASES[name][3].story_length or 3)
        differ = np.abs(one - many)
        assert differ.max() <= 4 and (differ > 0).mean() < 0.01, (name, differ.max(), (differ > 0).mean())
    # Rank 0 alone wrote: one video per case, no stray files of other ranks.
    assert sorted(p.name for p in (out / f"world{world}").rglob("*.gif") if p.name == "exp.gif") == [
        "exp.gif"
    ] * len(CASES)


def frames_of(folder: Path) -> np.ndarray:
    """The PNG frames (--save_frames) of the one video under ``folder``, (t, H, W, 3) as int."""
    paths = sorted(folder.rglob("fifo/*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=int) for p in paths])


def test_windows_split_evenly_over_any_number_of_ranks() -> None:
    assert split_windows(8, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_windows(4, 3) == [[0, 1], [2], [3]]
    assert split_windows(2, 3) == [[0], [1], []]
    for windows in range(1, 17):
        for ranks in range(1, 9):
            shares = split_windows(windows, ranks)
            assert sum(shares, []) == list(range(windows))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


# --------------------------------------------------------------------------- torchrun end to end
def test_torchrun_windows_writes_the_one_process_video(tmp_path) -> None:
    args = ["--config", T2V, "--random_init", "-p", "prompts/demo.txt", "-l", "4", "--video_length", "4"]
    args += ["-n", "2", "--height", "128", "--width", "128", "--no_progress", "-ex", "run", "--save_frames"]
    args += ["--window_batch", "4"]  # spares each process the memory measurement that picks one
    parallel = ["--parallel", "windows", "--output_dir", str(tmp_path / "A")]
    proc = torchrun(2, "videocrafter_main.py", *args, *parallel)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks share every video's 4 windows (2+2 per rank)" in proc.stderr
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "B")]) == 0
    one, two = frames_of(tmp_path / "B"), frames_of(tmp_path / "A")
    assert one.shape == two.shape == (4, 128, 128, 3)
    differ = np.abs(one - two)
    assert (differ > 0).mean() < 0.01 and differ.max() <= 4
    assert (tmp_path / "A" / "a_person_swimming_in_ocean_high_quality_4K_resolution" / "run.gif").is_file()


def test_a_failing_rank_stops_every_rank(tmp_path) -> None:
    """Rank 1 cannot read the image (say, another node's file system): both ranks exit with the
    error at once; no rank waits in a collective."""
    image = write_png(tmp_path / "fox.png", (80, 48))
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{image};a red fox\n")
    wrapper = tmp_path / "one_rank_fails.py"
    wrapper.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import fifo.prompts, videocrafter_main\n"
        "if os.environ['RANK'] == '1':\n"
        "    def broken(path, where):\n"
        "        raise fifo.prompts.PromptFileError(f'{where}: cannot read image {path}: on this rank')\n"
        "    fifo.prompts._check_image = broken\n"
        "sys.exit(videocrafter_main.main())\n"
    )
    proc = torchrun(
        2, str(wrapper), "--config", I2V, "--random_init", "--mode", "i2v", "-p", str(prompts),
        "--parallel", "windows", "--output_dir", str(tmp_path / "out"), timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot read image" in proc.stderr and "rank 1 stopped the job" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_rank_failing_mid_run_stops_every_rank_at_once(tmp_path) -> None:
    """--parallel windows: rank 0 fails after the input checks (its disk is full when it decodes a
    frame): rank 1, which waits for it in the next collective, stops at once with a message instead
    of waiting out the collectives' timeout (minutes), and both leave the process group."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    wrapper = tmp_path / "rank0_fails.py"
    wrapper.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import fifo.sampler, videocrafter_main\n"
        "if os.environ['RANK'] == '0':\n"
        "    real, calls = fifo.sampler.FifoSampler.decode, []\n"
        "    def decode(self, z):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 2:  # the base clip decoded, then the first output frame\n"
        "            raise OSError(28, 'No space left on device')\n"
        "        return real(self, z)\n"
        "    fifo.sampler.FifoSampler.decode = decode\n"
        "sys.exit(videocrafter_main.main())\n"
    )
    proc = torchrun(
        2, str(wrapper), "--config", T2V, "--random_init", "-p", str(prompts), "--video_length", "2",
        "-n", "1", "-l", "2", "--height", "64", "--width", "64", "--parallel", "windows",
        "--output_dir", str(tmp_path / "out"), "--no_progress",
        "--window_batch", "2",  # spares each rank the memory measurement that picks one
        timeout=150,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "No space left on device" in proc.stderr
    assert "error: rank 1: another rank of this job failed" in proc.stderr


# --------------------------------------------------------------------------- GPU set-up, mocked
def test_each_rank_takes_its_own_gpu(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert LaunchEnv.from_environment() == LaunchEnv(rank=3, world=4, local_rank=1)
    assert cli.request.resolve_device("cuda", torchrun=True) == torch.device("cuda", 1)
    assert cli.request.resolve_device(None, torchrun=True) == torch.device("cuda", 1)
    with pytest.raises(cli.request.UsageError, match="all 2 processes of this node on one GPU"):
        cli.request.resolve_device("cuda:0", torchrun=True)
    assert cli.request.resolve_device("cpu", torchrun=True) == torch.device("cpu")


def test_window_group_backend_follows_the_device(monkeypatch) -> None:
    made = []
    monkeypatch.setattr(
        dist, "new_group", lambda backend, timeout: made.append((backend, timeout)) or "group"
    )
    request = cli.request.RunRequest(
        mode=parse_mode("t2v"), settings=GenerationSettings(), jobs=[], config="", ckpt_path=None,
        random_init=True, device=torch.device("cuda", 1), attention=AttentionBackend.SDPA, layout=None,
        overwrite=False, rank=1, world=2, torchrun=True, parallel=Parallelism.WINDOWS,
    )  # fmt: skip
    group = cli.distributed.window_group(request)
    assert made[0][0] == "nccl" and group.device == torch.device("cuda", 1)
    assert made[0][1] <= datetime.timedelta(minutes=10)  # a dead rank fails the others, never hangs
    cli.distributed.window_group(
        cli.request.RunRequest(
            **{**request.__dict__, "device": torch.device("cpu")}
        )  # --device cpu under torchrun
    )
    assert made[1][0] == "gloo"


def test_run_sets_this_rank_s_gpu_before_anything_else(monkeypatch) -> None:
    class Stop(Exception):
        pass

    def stop(*_args, **_kwargs):
        raise Stop

    import fifo.perf

    monkeypatch.setattr(fifo.perf, "tune_cpu_allocator", stop)
    monkeypatch.setattr(cli.run, "window_group", stop)
    request = cli.request.RunRequest(
        mode=parse_mode("t2v"), settings=GenerationSettings(), jobs=[], config="", ckpt_path=None,
        random_init=True, device=torch.device("cuda", 1), attention=AttentionBackend.SDPA, layout=None,
        overwrite=False, rank=1, world=2, torchrun=True, parallel=Parallelism.WINDOWS,
    )  # fmt: skip
    with emulated("a100-80gb", count=2) as gpu, pytest.raises(Stop):
        cli.run._run(request, cli.run.StopRequest())
    assert [(c.name, c.device) for c in gpu.calls] == [("set_device", 1), ("set_cudnn_benchmark", None)]
