"""The command line's main job on emulated GPUs (``infra.cuda_runtime``) and fake CUDA tensors:
each family and kind of mode, one process and two torchrun ranks, and the full-size VideoCrafter2
config, through ``main`` as a user runs it with ``--dry_run --plan_for``."""

from __future__ import annotations

import json
import logging

import pytest

import videocrafter_main
from infra.cuda_runtime import GPUS, emulated
from tests.conftest import REPO, torchrun, write_png

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
DC = str(REPO / "configs" / "tiny_dynamicrafter.yaml")
SMALL = ["--random_init", "--video_length", "4", "-n", "2", "-l", "3", "--height", "64", "--width", "64"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(tmp_path, image: bool) -> str:
    path = tmp_path / "p.txt"
    if image:
        picture = write_png(tmp_path / "in.png", (64, 64))
        path.write_text(f"{picture};a lighthouse at dusk\n")
    else:
        path.write_text("a red panda\n")
    return str(path)


@pytest.mark.parametrize(
    ("config", "mode", "gpu", "extra"),
    [
        (T2V, "t2v", "rtx4090", []),
        (I2V, "i2v", "t4", []),
        (I2V, "t2v_seed", "l4", ["--dtype", "fp32"]),
        (DC, "i2v", "h100", ["--video_length", "8", "--dtype", "bf16"]),
        (DC, "t2v_seed", "a100-40gb", ["--video_length", "8", "--seed_config", T2V]),
    ],
    ids=[
        "t2v-4090",
        "i2v-t4",
        "t2v_seed-l4-fp32",
        "dynamicrafter-i2v-h100-bf16",
        "dynamicrafter-t2v_seed-a100",
    ],
)
def test_main_job_on_an_emulated_gpu(tmp_path, capsys, caplog, config, mode, gpu, extra) -> None:
    prompts = _prompts(tmp_path, image=mode.startswith("i2v"))
    args = [
        "--config",
        config,
        "--mode",
        mode,
        "-p",
        prompts,
        *SMALL,
        *extra,
        "--output_dir",
        str(tmp_path / "out"),
    ]
    with caplog.at_level(logging.INFO, logger="videocrafter_main"):
        rc = videocrafter_main.main([*args, "--dry_run", "--plan_for", gpu])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    plan = json.loads(out.strip().splitlines()[-1])
    dtype = extra[extra.index("--dtype") + 1] if "--dtype" in extra else "fp16"  # fp16: CUDA's default
    assert plan["device"] == "cuda" and plan["dtype"] == dtype and plan["fits"] is True
    assert plan["stage_shapes"]["decode"] == [1, 3, 1, 64, 64]
    f = 8 if config == DC else 4
    assert plan["stage_shapes"]["fifo_queue"][2] == 2 * f + f // 2  # n·f frames + the lookahead's f/2
    assert f"plan: for {GPUS[gpu].name}" in caplog.text
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_main_job_binds_the_gpu_and_sizes_the_plan_for_it(tmp_path, capsys) -> None:
    prompts = _prompts(tmp_path, image=False)
    args = ["--config", T2V, "-p", prompts, *SMALL, "--output_dir", str(tmp_path / "out"), "--dry_run"]
    with emulated("v100") as gpu:  # a V100 here: --device cuda, no --plan_for
        assert videocrafter_main.main([*args, "--device", "cuda"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c.name, c.device) for c in gpu.calls if c.name in ("set_device", "mem_get_info")] == [
        ("set_device", 0),
        ("mem_get_info", 0),
    ]
    assert plan["budget_bytes"] == GPUS["v100"].total_memory - 512 * 2**20


@pytest.mark.parametrize("parallel", ["prompts", "windows"])
def test_main_job_on_two_emulated_gpus_under_torchrun(tmp_path, parallel) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red panda\na fox in the snow\n")
    proc = torchrun(
        2, "videocrafter_main.py", "--config", T2V, "-p", str(prompts), *SMALL, "--parallel", parallel,
        "--output_dir", str(tmp_path / "out"), "--dry_run", "--plan_for", "a100-80gb", timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(p["device"] for p in plans) == ["cuda:0", "cuda:1"]  # each rank on its own GPU
    assert all(p["fits"] is True for p in plans)
    assert not (tmp_path / "out").exists()


def test_main_job_on_the_full_videocrafter2_config_for_two_iterations(
    tmp_path, capsys, caplog, monkeypatch
) -> None:
    """The published 320×512 text-to-video model (random weights on fake CUDA tensors): the run
    function goes through two FIFO iterations, each frame stopping at the device boundary."""
    import fifo.dry_run
    from fifo.sampler import FifoSampler

    frames = []
    step = FifoSampler.step

    def spy_step(self, state, conditioning):
        output = step(self, state, conditioning)
        if output.video is not None:
            frames.append((output.video.device.type, list(output.video.shape)))
        return output

    monkeypatch.setattr(FifoSampler, "step", spy_step)
    monkeypatch.setattr(fifo.dry_run, "DRY_RUN_ITERATIONS", 2)
    args = ["--config", str(REPO / "configs" / "inference_t2v_512_v2.0.yaml"), "--random_init", "--mode",
            "t2v_TTqcache_attn1_unilatent", "-p", _prompts(tmp_path, image=False), "--output_dir",
            str(tmp_path / "out"), "--dry_run", "--plan_for", "a100-80gb"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="videocrafter_main"):
        rc = videocrafter_main.main(args)
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert frames == [("cuda", [1, 3, 1, 320, 512])] * 2
    plan = json.loads(out.strip().splitlines()[-1])
    assert {"device", "dtype", "window_batch", "peak_memory_bytes", "weights_bytes", "unet_calls_per_frame",
            "tflop_per_frame", "usable_bytes", "fits", "stage_shapes"} <= set(plan)  # fmt: skip
    assert plan["device"] == "cuda" and plan["dtype"] == "fp16" and plan["unet_calls_per_frame"] == 1
    assert plan["fits"] is True and plan["window_batch"] == plan["windows"]  # an 80 GB card takes all
    assert plan["stage_shapes"]["decode"] == [1, 3, 1, 320, 512]
    assert plan["tflop_per_frame"] > 10 * plan["windows"]  # ~12 TFLOP per window and guidance branch
    assert "plan: peak device memory" in caplog.text
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
