"""--dry_run on Wan2.1: the tiny model's plan is WanGenerator.run on fake CUDA tensors; the full
1.3B model on a fake 24 GB GPU."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

import videocrafter_main  # noqa: E402


def _plan(capsys, *args: str) -> tuple[int, dict, str]:
    code = videocrafter_main.main(["--random_init", "-p", "prompts/demo.txt", "--dry_run", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_full_1_3b_on_a_24gb_gpu(tmp_path, capsys) -> None:
    """Wan2.1 1.3B at 480x832 in bf16: the text encoder offloaded, two windows per call fit."""
    args = ["--config", "configs/wan2.1_t2v_1.3b.yaml", "--plan_for", "rtx4090", "--dtype", "bf16"]
    code, plan, err = _plan(capsys, *args, "-n", "2", "-l", "81", "--output_dir", str(tmp_path))
    assert code == 0, err
    assert plan["device"].startswith("cuda") and plan["fits"] is True
    assert plan["stage_shapes"]["base_step"] == [1, 16, 20, 60, 104]
    assert 2.5 * 2**30 < plan["weights_bytes"] < 4 * 2**30  # the transformer and autoencoder, no UMT5
    assert plan["tflop_per_frame"] > 100 and plan["window_batch"] >= 1
    assert not any(tmp_path.iterdir())  # a plan writes nothing


def test_wan_dry_run_is_the_generators_run_to_the_device_boundary(monkeypatch) -> None:
    """The Wan plan calls WanGenerator.run itself (the U-Nets' planned run over Wan's class); its
    frames come out of the sampler's step as fake CUDA tensors and stop there: the stream's first
    latent frame (1 video frame), then the next (4). reflect's extra transformer passes are in
    its FLOPs, and MIGA's costs in the plan."""
    import torch
    from torch._subclasses.fake_tensor import maybe_get_fake_mode

    import fifo.generator
    import fifo.state
    from fifo.generator import FifoGenerator
    from fifo.options import GenerationSettings, TrickArguments, parse_mode
    from fifo.plan import fake_tensors
    from fifo.prompts import PromptJob
    from fifo.sampler import FifoSampler
    from fifo.wan_generator import WanGenerator
    from fifo.wan_plan import plan_wan_run
    from lvdm.build import build_model

    runs, frames = [], []
    run, step = FifoGenerator.run, FifoSampler.step

    def spy_run(self, job, layout, *args, **kwargs):
        runs.append((isinstance(self, WanGenerator), kwargs.get("sinks")))
        return run(self, job, layout, *args, **kwargs)

    def spy_step(self, state, conditioning):
        output = step(self, state, conditioning)
        if output.video is not None:
            fake = maybe_get_fake_mode(output.video) is not None
            frames.append((fake, output.video.device.type, output.video.shape[2]))
        return output

    def leaves_the_device(video):
        raise AssertionError("a frame left the device in a dry run")

    monkeypatch.setattr(FifoGenerator, "run", spy_run)
    monkeypatch.setattr(FifoSampler, "step", spy_step)
    monkeypatch.setattr(fifo.state, "to_uint8_frames", leaves_the_device)
    monkeypatch.setattr(fifo.generator, "to_uint8_frames", leaves_the_device)
    cuda = torch.device("cuda")
    with fake_tensors(), cuda:
        model = build_model("configs/tiny_wan_t2v.yaml")
    settings = GenerationSettings(
        video_length=4, num_partitions=2, new_video_length=24, height=64, width=64, progress=False
    )
    job = PromptJob("a red fox", line=1)
    plain = plan_wan_run(model, parse_mode("t2v"), settings, job, cuda, None, 0.0)
    assert runs == [(True, [])]  # the run function, once, with no sink
    assert frames == [(True, "cuda", 1), (True, "cuda", 4)]
    assert plain.windows == 4 and plain.window_frames == 4 and plain.video_frames_per_latent == 4
    shapes = plain.stage_shapes
    assert shapes["decode_first"] == [1, 3, 1, 64, 64] and shapes["decode"] == [1, 3, 4, 64, 64]
    assert shapes["fifo_queue"] == [1, 4, 10, 8, 8]  # 8 levels + 2 lookahead slots
    assert plain.tflop_per_frame > 0 and plain.peak_memory_bytes > plain.weights_bytes > 0
    assert plain.fits is None and plain.miga == {}  # no budget given
    reflect = parse_mode("t2v_reflect", tricks=TrickArguments(reflect_threshold=0.0, reflect_candidates=2))
    planned = plan_wan_run(model, reflect, settings, job, cuda, None, 0.0)
    assert planned.tflop_per_frame > plain.tflop_per_frame and set(planned.miga) == {"reflect"}
    assert any(line.startswith("reflect: ") and "transformer frames" in line for line in planned.lines())
