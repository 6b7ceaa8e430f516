"""Defects on the CUDA path, tested on CPU: attention batches past CUDA's grid limit, NaN/inf
stopping the run, xformers checked up front, the published path in fp32, the cache key's device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cli.parser
import cli.request
import lvdm.modules.attention as attention
import videocrafter_main
from fifo.generator import FifoGenerator
from fifo.options import GenerationSettings, parse_mode
from fifo.outputs import OutputLayout
from fifo.prompts import PromptJob
from fifo.state import NonFiniteError
from lvdm.build import load_model
from tests.conftest import REPO

T2V = str(REPO / "configs" / "tiny_t2v.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- attention grid limit
def test_attention_batch_beyond_the_kernel_limit_runs_in_slices(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(11, 2, 16, 8, generator=g) for _ in range(3))
    whole = attention.run_attention("sdpa", q, k, v)
    launches: list[int] = []
    real = attention._KERNELS["sdpa"]

    def counting(q, k, v):
        launches.append(q.shape[0])
        return real(q, k, v)

    monkeypatch.setitem(attention._KERNELS, "sdpa", counting)
    monkeypatch.setattr(attention, "max_attention_batch", lambda device: 4)
    sliced = attention.run_attention("sdpa", q, k, v)
    assert launches == [4, 4, 3]
    torch.testing.assert_close(sliced, whole)


def test_the_limit_is_cuda_s_grid() -> None:
    assert attention.max_attention_batch(torch.device("cuda", 0)) < 65535
    assert attention.max_attention_batch(torch.device("cpu")) is None
    # The temporal attention of 16 samples at 512x512 (64x64 latents) is past it.
    assert attention.max_attention_batch(torch.device("cuda")) < 16 * 64 * 64


# --------------------------------------------------------------------------- NaN and inf
def _nan_unet(model, monkeypatch, after_calls: int = 0) -> None:
    real = model.unet.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > after_calls else out

    monkeypatch.setattr(model.unet, "forward", forward)


def test_nan_in_the_queue_stops_the_run_with_stage_and_iteration(tmp_path, monkeypatch) -> None:
    model = load_model(T2V, None, random_init=True)
    settings = GenerationSettings(
        video_length=2, num_partitions=1, new_video_length=2, height=64, width=64, progress=False
    )
    generator = FifoGenerator(model, parse_mode("t2v"), settings, "m")
    _nan_unet(model, monkeypatch, after_calls=2)  # the base clip's two DDIM steps are fine
    with torch.inference_mode(), pytest.raises(NonFiniteError, match="the queue at FIFO iteration 0"):
        generator.run(PromptJob("a fox", line=1), OutputLayout(tmp_path / "out", "exp", tmp_path / "cache"))
    # The video was never written (its temporary file is gone too).
    assert not [p for p in (tmp_path / "out").rglob("*") if p.suffix == ".gif" and p.name != "origin.gif"]


def test_nan_through_the_command_line(tmp_path, monkeypatch, capsys) -> None:
    import lvdm.build

    real_load = lvdm.build.load_model

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        _nan_unet(model, monkeypatch)
        return model

    monkeypatch.setattr(lvdm.build, "load_model", load)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    rc = videocrafter_main.main(
        ["--config", T2V, "--random_init", "-p", str(prompts), "--video_length", "2", "-n", "1", "-l", "1",
         "--output_dir", str(tmp_path / "out"), "--no_progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite values (NaN or inf) in the base clip's latents" in err and "'a fox'" in err
    assert "try --dtype bf16 or --dtype fp32" in err and "`" not in err  # the library's option names as flags
    assert not list((tmp_path / "out").rglob("*.gif"))


# --------------------------------------------------------------------------- xformers up front
def test_xformers_on_cpu_or_not_installed_is_a_usage_error(tmp_path, capsys, monkeypatch) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    base = [
        "--config",
        T2V,
        "--random_init",
        "-p",
        str(prompts),
        "--output_dir",
        str(tmp_path / "o"),
        "--attention",
        "xformers",
    ]
    assert videocrafter_main.main([*base, "--device", "cpu"]) == 2
    assert "--attention xformers runs on CUDA only" in capsys.readouterr().err
    monkeypatch.setattr(attention, "xformers_available", lambda: False)
    assert videocrafter_main.main([*base, "--device", "cuda", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "xformers package is not installed" in err and "--attention sdpa" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the published path, the cache key
def test_sequential_is_fp32_unless_asked(monkeypatch) -> None:
    parser = cli.parser.build_parser()
    from lvdm.family import ModelFamily

    facts = type(
        "Facts", (), {"temporal_length": 16, "default_size": (320, 512), "family": ModelFamily("x")}
    )()
    for argv, expected in (
        ([], "fp16"),
        (["--sequential"], "fp32"),
        (["--sequential", "--dtype", "bf16"], "bf16"),
    ):
        args = parser.parse_args(["-p", "x", *argv])
        assert cli.request.settings_from_args(args, facts, "cuda").dtype.value == expected


def test_base_clip_cache_key_holds_the_device(tmp_path: Path) -> None:
    model = load_model(T2V, None, random_init=True)
    settings = GenerationSettings(video_length=2, num_partitions=1, height=64, width=64, progress=False)
    key = FifoGenerator(model, parse_mode("t2v"), settings, "m").cache_key(PromptJob("a fox", line=1))
    assert key["device"] == "cpu"


# --------------------------------------------------------------------------- half-precision scores
def _large_logits(dtype: torch.dtype, d: int = 64):
    """q, k, v of one head whose q·kᵀ (~1e5) is past fp16's 65504 while q·kᵀ/sqrt(d) is not."""
    g = torch.Generator().manual_seed(0)
    q = (40 + torch.rand(1, 2, 5, d, generator=g)).to(dtype)
    k = (40 + torch.rand(1, 2, 7, d, generator=g)).to(dtype)
    v = torch.randn(1, 2, 7, d, generator=g).to(dtype)
    return q, k, v


def test_math_attention_in_fp16_scores_in_fp32_scaled_first() -> None:
    from lvdm.modules.attention_kernels import _attend_math

    q, k, v = _large_logits(torch.float16)
    out = _attend_math(q, k, v)
    reference = _attend_math(q.float(), k.float(), v.float())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=2e-3, rtol=2e-3)


def test_relative_position_attention_in_fp16_scores_in_fp32_scaled_first() -> None:
    from lvdm.modules.attention_variants import RelativePosition, attend_relative

    class Layer:  # what attend_relative reads of a CrossAttention
        relative_position_k = RelativePosition(64, 4)
        relative_position_v = RelativePosition(64, 4)

    q, k, v = _large_logits(torch.float16)
    out = attend_relative(Layer(), q, k, v)
    reference = attend_relative(Layer(), q.float(), k.float(), v.float())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=2e-3, rtol=2e-3)


def test_clip_normalisation_constants_stay_fp32_in_a_half_precision_model() -> None:
    from lvdm.modules.encoders.condition import CLIP_MEAN, CLIP_STD

    model = load_model(str(REPO / "configs" / "tiny_i2v.yaml"), None, random_init=True, dtype=torch.float16)
    embedder = model.embedder
    assert next(embedder.parameters()).dtype == torch.float16  # the tower is in half precision
    assert embedder.mean.dtype == torch.float32 and embedder.std.dtype == torch.float32
    assert embedder.mean.tolist() == list(torch.tensor(CLIP_MEAN).tolist())
    assert embedder.std.tolist() == list(torch.tensor(CLIP_STD).tolist())


def test_xformers_that_fails_its_first_call_is_a_usage_error_before_loading(
    tmp_path, capsys, monkeypatch, no_model
) -> None:
    """An importable xformers whose build does not match this torch/CUDA used to pass the input
    checks and fail after the checkpoint loaded; one tiny call now finds it first."""
    import sys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine (the real runtime)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(attention, "xformers_available", lambda: True)
    monkeypatch.setitem(sys.modules, "xformers", type(sys)("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", None)  # its kernels' module cannot load
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    argv = ["--config", T2V, "--random_init", "-p", str(prompts), "--output_dir", str(tmp_path / "o"),
            "--attention", "xformers", "--device", "cuda:0"]  # fmt: skip
    assert videocrafter_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "--attention xformers: its kernel fails on cuda:0" in err and "--attention sdpa" in err


def test_subject_maps_in_fp16_score_in_fp32_scaled_first() -> None:
    from fifo.options import SubjectOptions
    from fifo.tricks.subject import SubjectScene, SubjectStore

    def maps(dtype: torch.dtype) -> torch.Tensor:
        store = SubjectStore(SubjectOptions("a fox", levels=(1,)))
        text = torch.zeros(5, 64)
        store.set_scenes([SubjectScene(text, torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))])
        store.begin_pass(torch.zeros(1, 4, 2, 8, 8), text[None])  # one clip of two frames
        g = torch.Generator().manual_seed(0)
        q = 40 + torch.rand(2, 2, 3, 64, generator=g)  # (clips·frames, heads, n, d): q·kᵀ ~1e5
        k = 40 + torch.rand(1, 2, 5, 64, generator=g)  # (clips, heads, m, d)
        store.record_map(1, q.to(dtype), k.to(dtype), frames=2)
        return store._local.current.maps[1][0]

    half, full = maps(torch.float16), maps(torch.float32)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, full, atol=2e-3, rtol=2e-3)
