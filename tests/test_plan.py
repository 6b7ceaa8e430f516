"""The CUDA path at full size, proven on a CPU-only machine: dry runs on fake CUDA tensors.

``--dry_run`` builds the model on fake tensors on the target device in the run's dtype and runs
the generator's own run function on them to the device boundary (fifo/dry_run.py). Here: both published
full-size configs on fake CUDA, every main mode with Q-caches and unilatent, fp16/bf16/fp32,
batched and sequential, lookahead on and off; the plan's memory (fp16 below fp32, growing with the
window batch); a tiny dry run against a real tiny run stage by stage, and that it is the run
function's execution; bf16 for real on CPU; the command line's errors and advice.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import maybe_get_fake_mode

import cli.dry_run
import fifo.generator
import fifo.state
import videocrafter_main
from fifo.dry_run import DRY_RUN_ITERATIONS, plan_run
from fifo.generator import FifoGenerator
from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, TrickArguments, parse_mode
from fifo.outputs import OutputLayout
from fifo.perf import CUDA_FREE_FRACTION, CUDA_RESERVE_BYTES, usable_cuda_bytes
from fifo.plan import RunPlan, fake_tensors
from fifo.prompts import PromptJob
from fifo.sampler import FifoSampler
from infra.cuda_runtime import CONTEXT_BYTES, GPUS, emulated
from infra.memory import current_rss_bytes
from lvdm.build import build_model, load_model
from tests.conftest import REPO, write_png

T2V_FULL = REPO / "configs" / "inference_t2v_512_v2.0.yaml"
I2V_FULL = REPO / "configs" / "inference_i2v_512_v1.0.yaml"
GIB = 2**30

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeModels:
    """Full-size models built on fake CUDA tensors, once per (config, dtype)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, torch.dtype], object] = {}

    def get(self, config, dtype: torch.dtype):
        key = (str(config), dtype)
        if key not in self._models:
            with fake_tensors(), torch.device("cuda"):
                model = build_model(config)
                model.set_precision(dtype)
            model.unet.set_attn_processor("efficient")
            self._models[key] = model
        return self._models[key]


@pytest.fixture(scope="module")
def fake_models() -> FakeModels:
    return FakeModels()


def plan(
    fake_models: FakeModels,
    config,
    mode: str,
    job: PromptJob,
    budget: int | None = None,
    tricks: TrickArguments | None = None,
    **settings,
) -> RunPlan:
    options = GenerationSettings(**{"progress": False, **settings})
    model = fake_models.get(config, options.dtype.torch_dtype)
    return plan_run(model, parse_mode(mode, tricks=tricks), options, job, torch.device("cuda"), budget, 0.0)


def image_job(tmp_path) -> PromptJob:
    return PromptJob("a lighthouse at dusk", line=1, image=write_png(tmp_path / "in.png", (160, 96)))


# --------------------------------------------------------------------------- full size, fake CUDA
def test_full_size_dry_run_plans_the_ouroboros_tricks(fake_models) -> None:
    """SACFA's extra keys and SRG's guided pass (forward with its saved activations) are in the
    plan: a planned run takes the largest subject (every position), so it does not under-plan."""
    job = PromptJob("a person swimming in the ocean", line=1)
    common = {"dtype": "fp16", "num_partitions": 1}
    plain = plan(fake_models, T2V_FULL, "t2v", job, **common)
    tricks = plan(
        fake_models,
        T2V_FULL,
        "t2v_tailcoh_sacfa_srg",
        job,
        tricks=TrickArguments(subject="a person"),
        **common,
    )
    assert tricks.stage_shapes == plain.stage_shapes
    assert tricks.tflop_per_frame > plain.tflop_per_frame
    assert tricks.peak_memory_bytes > plain.peak_memory_bytes
    assert tricks.weights_bytes == plain.weights_bytes


COVERING = [
    # config, mode, dtype, batched, lookahead, n: every main mode, Q-caches, unilatent, each dtype,
    # both paths, lookahead on and off (the sequential cases with one partition: 16 U-Net calls of
    # the full model are many seconds even on fake tensors).
    (T2V_FULL, "t2v_TTqcache_attn1_unilatent", "fp16", True, True, 4),
    (T2V_FULL, "t2v_STqcache_attn2", "bf16", False, False, 1),
    (I2V_FULL, "i2v_TTqcache_STqcache_attn1", "bf16", True, False, 2),
    (I2V_FULL, "t2v_seed_TTqcache_attn1_unilatent", "fp32", False, True, 1),
]
# t2v_seed_ar is planned against a real run on the tiny i2v model below, and on DynamiCrafter with
# its text model in tests/test_seeding.py.


@pytest.mark.parametrize(
    ("config", "mode", "dtype", "batched", "lookahead", "partitions"),
    COVERING,
    ids=[
        f"{c.stem[10:13]}-{m}-{d}-{'batched' if b else 'sequential'}-{'la' if la else 'nola'}"
        for c, m, d, b, la, _ in COVERING
    ],
)
def test_full_size_dry_run_on_fake_cuda(
    fake_models, tmp_path, config, mode, dtype, batched, lookahead, partitions
) -> None:
    job = image_job(tmp_path) if mode.startswith("i2v") else PromptJob("a red panda", line=1)
    p = plan(
        fake_models,
        config,
        mode,
        job,
        dtype=dtype,
        batched=batched,
        lookahead=lookahead,
        num_partitions=partitions,
    )
    f, n = 16, partitions
    queue = f // 2 * lookahead + f * n
    windows = (2 if lookahead else 1) * n
    assert p.stage_shapes["text"] == [1, 77, 1024]
    assert p.stage_shapes["base_step"] == [1, 4, f, 40, 64]
    assert p.stage_shapes["decode"] == [1, 3, 1, 320, 512]
    assert p.stage_shapes["fifo_queue"] == [1, 4, queue, 40, 64]
    assert p.stage_shapes["fifo_latent"] == [1, 4, 1, 40, 64]
    assert ("image_tokens" in p.stage_shapes) == (config == I2V_FULL)
    if config == I2V_FULL:
        assert p.stage_shapes["image_tokens"] == [1, 16, 1024]
    assert p.windows == windows
    assert p.unet_calls_per_frame == (1 if batched else 2 * windows)
    assert p.dtype == dtype and p.device == torch.device("cuda") and p.json()["device"] == "cuda"
    # The U-Net alone is 1.4 B parameters: ~2.7 GiB in half precision, ~5.4 GiB in fp32.
    assert (
        (2.5 * GIB if dtype != "fp32" else 5.0 * GIB)
        < p.weights_bytes
        < (6 * GIB if dtype != "fp32" else 11 * GIB)
    )
    assert p.weights_bytes < p.peak_memory_bytes < 80 * GIB
    assert p.tflop_per_frame > 10 * windows  # ~12 TFLOP per window and branch at fp16 (~25 per window)
    # No budget (no GPU here, no --max_memory): nothing was checked, and the plan says so.
    assert p.fits is None and p.json()["fits"] is None and "not checked" in p.lines()[2]


def test_memory_lower_in_fp16_and_growing_with_the_window_batch(fake_models) -> None:
    job = PromptJob("a red panda", line=1)
    common = {"num_partitions": 2, "lookahead": True}  # 4 windows
    fp32 = plan(fake_models, T2V_FULL, "t2v", job, dtype="fp32", window_batch=2, **common)
    fp16 = {
        w: plan(fake_models, T2V_FULL, "t2v", job, dtype="fp16", window_batch=w, **common) for w in (2, 4)
    }
    assert fp16[2].peak_memory_bytes < fp32.peak_memory_bytes
    assert fp16[2].weights_bytes < 0.6 * fp32.weights_bytes
    peaks = [fp16[w].peak_memory_bytes for w in (2, 4)]
    assert peaks[0] < peaks[1], peaks
    # Given a budget, the plan picks as many windows per call as fit.
    budget = (peaks[0] + peaks[1]) // 2
    auto = plan(fake_models, T2V_FULL, "t2v", job, budget=budget, dtype="fp16", **common)
    assert auto.fits and 2 <= auto.window_batch < 4, auto.window_batch


def test_full_size_model_is_built_without_memory(fake_models) -> None:
    before = current_rss_bytes()
    model = fake_models.get(T2V_FULL, torch.float32)
    params = sum(p.numel() for p in model.parameters())
    assert params > 1.5e9  # U-Net, text encoder and autoencoder
    assert current_rss_bytes() - before < 1 * GIB  # 7 GB of fp32 weights were never allocated
    assert next(model.parameters()).device.type == "cuda"


# --------------------------------------------------------------------------- tiny: fake against real
def _spy_on_the_stages(monkeypatch) -> dict[str, list[int]]:
    """Each stage's output shape as the generator's run makes it (the plan's ``stage_shapes``)."""
    shapes: dict[str, list[int]] = {}
    step, keep, conditioning = FifoSampler.step, FifoGenerator.keep_base_clip, FifoGenerator.conditioning

    def spy_conditioning(self, job, image=True):
        texts, tokens = conditioning(self, job, image)
        shapes.setdefault("text", list(texts.texts.shape))
        return texts, tokens

    def spy_keep(self, latents, video, folder):
        shapes["base_step"] = list(latents.shape)
        keep(self, latents, video, folder)

    def spy_step(self, state, conditioning):
        if state.image_tokens is not None:
            shapes.setdefault("image_tokens", list(state.image_tokens.shape))
        output = step(self, state, conditioning)
        if output.video is not None:
            shapes.update(decode=list(output.video.shape), fifo_latent=list(output.latent.shape))
            shapes["fifo_queue"] = list(state.queue.shape)
        return output

    monkeypatch.setattr(FifoGenerator, "conditioning", spy_conditioning)
    monkeypatch.setattr(FifoGenerator, "keep_base_clip", spy_keep)
    monkeypatch.setattr(FifoSampler, "step", spy_step)
    return shapes


@pytest.mark.parametrize(
    ("config", "mode"), [("tiny_t2v.yaml", "t2v_TTqcache_attn1"), ("tiny_i2v.yaml", "t2v_seed_ar")]
)
def test_tiny_dry_run_has_the_shapes_of_a_real_run(tmp_path, monkeypatch, config: str, mode: str) -> None:
    settings = GenerationSettings(
        video_length=4, num_partitions=2, new_video_length=2, height=64, width=64, progress=False
    )
    parsed = parse_mode(mode)
    job = PromptJob("a red panda", line=1)
    real_model = load_model(REPO / "configs" / config, None, random_init=True)
    real = FifoGenerator(real_model, parsed, settings, "real")
    with monkeypatch.context() as patch, torch.inference_mode():
        real_shapes = _spy_on_the_stages(patch)
        result = real.run(job, OutputLayout(tmp_path / "out", "real"))
    assert result.frames == 2 and result.video_path.is_file()
    with fake_tensors():
        fake_model = build_model(REPO / "configs" / config)
    p = plan_run(fake_model, parsed, settings, job, torch.device("cpu"), None, 0.0)
    assert p.stage_shapes == real_shapes
    assert p.device == torch.device("cpu") and p.tflop_per_frame > 0


def test_dry_run_is_the_generators_run_to_the_device_boundary(monkeypatch) -> None:
    """The plan calls FifoGenerator.run itself; its frames come out of the sampler's step as
    fake CUDA tensors and stop there: none is converted for a sink, no file is written."""
    runs, frames = [], []
    run, step = FifoGenerator.run, FifoSampler.step

    def spy_run(self, job, layout, *args, **kwargs):
        runs.append(kwargs.get("sinks"))
        return run(self, job, layout, *args, **kwargs)

    def spy_step(self, state, conditioning):
        output = step(self, state, conditioning)
        if output.video is not None:
            frames.append((maybe_get_fake_mode(output.video) is not None, output.video.device.type))
        return output

    def leaves_the_device(video):
        raise AssertionError("a frame left the device in a dry run")

    monkeypatch.setattr(FifoGenerator, "run", spy_run)
    monkeypatch.setattr(FifoSampler, "step", spy_step)
    monkeypatch.setattr(fifo.state, "to_uint8_frames", leaves_the_device)
    monkeypatch.setattr(fifo.generator, "to_uint8_frames", leaves_the_device)
    with fake_tensors(), torch.device("cuda"):
        model = build_model(REPO / "configs" / "tiny_t2v.yaml")
    settings = GenerationSettings(video_length=4, num_partitions=2, height=64, width=64, progress=False)
    p = plan_run(
        model, parse_mode("t2v"), settings, PromptJob("a red panda", line=1), torch.device("cuda"), None, 0.0
    )
    assert runs == [[]]  # the run function, once, with no sink
    assert frames == [(True, "cuda")] * DRY_RUN_ITERATIONS
    assert p.stage_shapes["decode"] == [1, 3, 1, 64, 64] and p.tflop_per_frame > 0


# --------------------------------------------------------------------------- bf16 for real on CPU
def test_bf16_on_cpu_end_to_end_is_close_to_fp32() -> None:
    job = PromptJob("a red panda", line=1)
    latents = {}
    for dtype in ("fp32", "bf16"):
        model = load_model(REPO / "configs" / "tiny_t2v.yaml", None, random_init=True)
        settings = GenerationSettings(
            video_length=4,
            num_partitions=1,
            new_video_length=2,
            height=128,
            width=128,
            progress=False,
            dtype=dtype,
        )
        generator = FifoGenerator(model, parse_mode("t2v"), settings, "m")
        assert model.unet.dtype == settings.dtype.torch_dtype
        assert model.first_stage_model.decoder.conv_out.weight.dtype == torch.float32  # decoded in fp32
        with torch.inference_mode():
            conditioning, _ = generator.conditioning(job)
            _, base = generator.sample_base_clip(conditioning.first_text, NoiseSource.seeded(1, "cpu"))
            state = generator.sampler.initial_state(base, NoiseSource.seeded(2, "cpu"))
            outputs = list(generator.sampler.steps(state, conditioning))
        frames = [o.frame for o in outputs if o.frame is not None]
        assert len(frames) == 2
        stacked = torch.cat([o.latent for o in outputs])
        assert torch.isfinite(stacked).all() and stacked.dtype == torch.float32
        latents[dtype] = stacked
    error = (latents["bf16"] - latents["fp32"]).abs().mean() / latents["fp32"].abs().mean()
    assert error < 0.1, error  # bf16 keeps 8 bits of mantissa; a different seed differs by ~1


def test_fp16_on_cpu_is_refused(tmp_path, capsys) -> None:
    pfile = tmp_path / "p.txt"
    pfile.write_text("a red panda\n")
    rc = videocrafter_main.main(
        ["--config", str(REPO / "configs" / "tiny_t2v.yaml"), "--random_init", "-p", str(pfile), "--device", "cpu",
         "--dtype", "fp16", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--dtype fp16" in err and "bf16" in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the command line
def test_dry_run_that_does_not_fit(tmp_path, capsys) -> None:
    rc = videocrafter_main.main(
        ["--config", str(T2V_FULL), "--random_init", "--dry_run", "--device", "cuda", "--dtype", "fp16",
         "-p", str(REPO / "prompts" / "demo.txt"), "--max_memory", "2GiB", "-n", "1", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: the run needs" in err and "of the 2.00 GiB free" in err and "weights alone" in err


def test_dry_run_that_fits_with_fewer_windows_says_which(fake_models) -> None:
    job = PromptJob("a red panda", line=1)
    full = plan(fake_models, T2V_FULL, "t2v", job, dtype="fp16", num_partitions=2)
    # A budget whose usable part (what a real run's automatic window batch fills) is one window short.
    short = full.peak_memory_bytes - full.weights_bytes - full.per_window_bytes + CUDA_RESERVE_BYTES
    tight = replace(full, budget_bytes=full.weights_bytes + math.ceil(short / CUDA_FREE_FRACTION) + 64)
    assert tight.fits is False
    advice = cli.dry_run.memory_advice(tight, GenerationSettings(dtype="fp16", num_partitions=2))
    assert f"--window_batch {full.window_batch - 1}" in advice


def test_dry_run_bad_input_is_the_real_runs_error_before_anything_is_built(
    tmp_path, capsys, monkeypatch
) -> None:
    import lvdm.build

    def refuse(*_args, **_kwargs):
        raise AssertionError("built a model before the usage error")

    monkeypatch.setattr(lvdm.build, "build_model", refuse)
    pfile = tmp_path / "p.txt"
    pfile.write_text("ten|a boat\n")
    for extra in ([], ["--dry_run", "--device", "cuda"]):
        rc = videocrafter_main.main(
            [
                "--config",
                str(T2V_FULL),
                "--random_init",
                "-p",
                str(pfile),
                "--output_dir",
                str(tmp_path / "o"),
                *extra,
            ]
        )
        assert rc == 2
        assert "positive whole number of output frames" in capsys.readouterr().err
    rc = videocrafter_main.main(
        ["--config", str(T2V_FULL), "--random_init", "-p", "prompts/demo.txt", "--dry_run", "--device", "cuda",
         "--mode", "t2v_seed", "--output_dir", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2 and "image-to-video model" in capsys.readouterr().err


# --------------------------------------------------------------------------- --plan_for GPU
T2V_1024 = REPO / "configs" / "inference_t2v_1024_v1.0.yaml"


def test_plan_for_a_4090_keeps_the_headroom_of_a_real_run(tmp_path, capsys, caplog) -> None:
    """VideoCrafter1 t2v at 576x1024 in fp16: 4 windows per call take 22.9 of the card's 24 GiB,
    which a real run's automatic batch (15 % of the free memory and 512 MiB kept) would never
    choose; the plan picks what the real run would, and says that it fits."""
    with caplog.at_level(logging.INFO, logger="videocrafter_main"):
        rc = videocrafter_main.main(
            ["--config", str(T2V_1024), "--random_init", "--dry_run", "--plan_for", "RTX4090", "-p",
             str(REPO / "prompts" / "demo.txt"), "--output_dir", str(tmp_path / "out")]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    plan = json.loads(out.strip().splitlines()[-1])
    free = GPUS["rtx4090"].total_memory - CONTEXT_BYTES
    assert plan["device"] == "cuda" and plan["dtype"] == "fp16" and plan["budget_bytes"] == free
    usable = usable_cuda_bytes(free - plan["weights_bytes"])
    activations = plan["peak_memory_bytes"] - plan["weights_bytes"]
    assert plan["usable_bytes"] == usable and activations <= usable and plan["fits"] is True
    assert activations + plan["per_window_bytes"] > usable  # one window more would not fit
    assert plan["window_batch"] == 3 and plan["windows"] == 8
    assert "for NVIDIA GeForce RTX 4090 (24 GiB, sm_89)" in caplog.text and "GiB free: fits" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gpu", ["t4", "v100"])
def test_bf16_below_sm80_is_refused_before_anything_loads(gpu, tmp_path, capsys, no_model) -> None:
    args = ["--config", str(REPO / "configs" / "tiny_t2v.yaml"), "--random_init", "--dtype", "bf16",
            "-p", str(REPO / "prompts" / "demo.txt"), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert videocrafter_main.main([*args, "--dry_run", "--plan_for", gpu]) == 2
    err = capsys.readouterr().err
    assert f"--dtype bf16 on {GPUS[gpu].name}" in err and "below sm_80" in err and "--dtype fp16" in err
    with emulated(gpu):  # a real run on that GPU: refused the same way
        assert videocrafter_main.main(args) == 2
    assert "below sm_80" in capsys.readouterr().err
    with emulated("a100-40gb"), pytest.raises(AssertionError, match="a model was loaded"):
        videocrafter_main.main(args)  # from sm_80 on bf16 runs (here: up to the model load)


def test_plan_for_needs_a_dry_run_on_a_gpu(tmp_path, capsys, no_model) -> None:
    args = ["--config", str(REPO / "configs" / "tiny_t2v.yaml"), "--random_init",
            "-p", str(REPO / "prompts" / "demo.txt"), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert videocrafter_main.main([*args, "--plan_for", "l4"]) == 2
    assert "--plan_for l4 plans a dry run: add --dry_run" in capsys.readouterr().err
    assert videocrafter_main.main([*args, "--plan_for", "l4", "--dry_run", "--device", "cpu"]) == 2
    assert "drop --device cpu" in capsys.readouterr().err
