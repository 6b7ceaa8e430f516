"""DynamiCrafter and VideoCrafter1 text-to-video behind the model-family seam.

Unit checks of what differs (the family read from each config, the zero-terminal-SNR schedule
and the v-prediction DDIM step at ᾱ = 0, per-frame image tokens, the hybrid concatenation,
relative positions), the refusals made before a model is loaded, and every allowed mode of the
tiny DynamiCrafter config run end to end through the CLI (one short run each), resumed, and on
two ranks with ``--parallel windows``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import videocrafter_main
from fifo.ddim import ddim_step
from fifo.schedule import DDIMSchedule
from lvdm.build import build_model, config_facts, load_config
from lvdm.family import Conditioning, FrameConditioning, Prediction
from lvdm.models.utils_diffusion import linear_betas, rescale_zero_terminal_snr, scale_array
from lvdm.modules.attention import CrossAttention, attend_relative
from tests.conftest import REPO, torchrun
from tests.test_parallel import frames_of
from tests.test_resume import outputs, stop_after

DC = str(REPO / "configs" / "tiny_dynamicrafter.yaml")
VC1_T2V = str(REPO / "configs" / "tiny_videocrafter1_t2v.yaml")
T2V = str(REPO / "configs" / "tiny_t2v.yaml")
IMAGE = REPO / "prompts" / "images" / "red_ball_grass.png"
# The tiny DynamiCrafter takes 8-frame windows (16 image tokens per frame of an 8-frame clip);
# one partition, 64x64 and 3 frames keep each run to seconds.
SMALL = ["--random_init", "--video_length", "8", "-n", "1", "-l", "3", "--height", "64", "--width", "64"]
SMALL += ["--no_progress", "-ex", "run", "--save_frames", "--window_batch", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the family of a config
@pytest.mark.parametrize(
    ("config", "prediction", "zero_snr", "conditioning", "frame", "tokens"),
    [
        ("dynamicrafter_512_v1.0.yaml", Prediction.V, True, Conditioning.HYBRID, FrameConditioning.FRAME_STRIDE, 256),
        ("dynamicrafter_256_v1.0.yaml", Prediction.EPS, False, Conditioning.HYBRID, FrameConditioning.FRAME_STRIDE, 256),
        ("tiny_dynamicrafter.yaml", Prediction.V, True, Conditioning.HYBRID, FrameConditioning.FRAME_STRIDE, 128),
        ("inference_t2v_512_v2.0.yaml", Prediction.EPS, False, Conditioning.CROSSATTN, FrameConditioning.FPS, 0),
        ("inference_i2v_512_v1.0.yaml", Prediction.EPS, False, Conditioning.CROSSATTN, FrameConditioning.FPS, 16),
        ("inference_t2v_1024_v1.0.yaml", Prediction.EPS, False, Conditioning.CROSSATTN, FrameConditioning.FPS, 0),
        ("inference_t2v_512_v1.0.yaml", Prediction.EPS, False, Conditioning.CROSSATTN, FrameConditioning.NONE, 0),
    ],
)  # fmt: skip
def test_family_is_read_from_the_config(config, prediction, zero_snr, conditioning, frame, tokens) -> None:
    family = config_facts(load_config(REPO / "configs" / config)).family
    assert (family.prediction, family.zero_terminal_snr, family.conditioning) == (
        prediction,
        zero_snr,
        conditioning,
    )
    assert (family.frame_conditioning, family.image_tokens) == (frame, tokens)
    assert family.per_frame_image_tokens == (conditioning is Conditioning.HYBRID)
    if frame is FrameConditioning.FRAME_STRIDE:
        assert family.frame_value(fps=8, frame_stride=None) == family.default_frame_value
        assert family.frame_value(fps=8, frame_stride=5) == 5
    else:
        assert family.frame_value(fps=8, frame_stride=None) == 8


@functools.cache
def tiny_dynamicrafter():
    torch.manual_seed(0)
    return build_model(DC).eval()


def test_the_built_model_carries_the_family_of_its_config() -> None:
    model = tiny_dynamicrafter()
    assert model.family == config_facts(load_config(DC)).family
    assert float(model.alphas_cumprod[-1]) == 0.0  # zero terminal SNR
    # v-prediction: the ε → x0 coefficients are registered as zeros, as published (no infinities).
    assert (
        not model.sqrt_recip_alphas_cumprod.any() and torch.isfinite(model.log_one_minus_alphas_cumprod).all()
    )
    expected = scale_array(1000, 1.0, 0.7)  # dynamic rescale: 400-step ramp 1 → base_scale, then flat
    assert torch.allclose(model.scale_arr, torch.tensor(expected, dtype=torch.float32))
    assert model.image_proj_model.latents.shape == (1, 128, 64)  # 16 queries x video_length 8


# --------------------------------------------------------------------------- schedule and step
def zero_snr_schedule(steps: int = 16, eta: float = 1.0) -> DDIMSchedule:
    betas = rescale_zero_terminal_snr(linear_betas(1000, 0.00085, 0.012))
    alphas_cumprod = np.cumprod(1.0 - betas)
    return DDIMSchedule.create(alphas_cumprod, steps, eta, scale_array(1000, 1.0, 0.7), Prediction.V, True)


def test_zero_snr_schedule_keeps_the_first_step_and_ends_at_zero_signal() -> None:
    plain = np.cumprod(1.0 - linear_betas(1000, 0.00085, 0.012))
    rescaled = np.cumprod(1.0 - rescale_zero_terminal_snr(linear_betas(1000, 0.00085, 0.012)))
    assert rescaled[-1] == 0.0 and rescaled[0] == pytest.approx(plain[0], rel=1e-12)
    assert np.all(np.diff(rescaled) < 0)
    schedule = zero_snr_schedule()
    assert schedule.alpha_values[-1] == 0.0 and np.isfinite(schedule.sigmas.numpy()).all()


def test_v_step_at_zero_signal_is_finite_and_per_frame() -> None:
    schedule = zero_snr_schedule()
    gen = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(2, 4, 5, 3, 3, generator=gen) for _ in range(3))
    # The noisiest slot (ᾱ = 0) next to the cleanest (the queue's two ends) and three between.
    index = torch.tensor([15, 0, 7, 15, 3])
    x_prev, x0 = ddim_step(x, v, schedule, index, noise)
    assert torch.isfinite(x_prev).all() and torch.isfinite(x0).all()
    rescale = schedule.scale_arr_prev / schedule.scale_arr
    # At ᾱ = 0: x0 = −v (then rescaled), the step divides by nothing.
    assert torch.allclose(x0[:, :, 0], -v[:, :, 0] * float(rescale[15]), atol=1e-6)
    # Each frame is the step at its own index.
    for k, i in enumerate(index.tolist()):
        alone_prev, alone_x0 = ddim_step(
            x[:, :, k : k + 1], v[:, :, k : k + 1], schedule, i, noise[:, :, k : k + 1]
        )
        assert torch.allclose(x_prev[:, :, k : k + 1], alone_prev, atol=1e-6)
        assert torch.allclose(x0[:, :, k : k + 1], alone_x0, atol=1e-6)
    # v ↔ (ε, x0): x = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε with the un-rescaled x0, at an inner index.
    a = float(schedule.alpha_values[7])
    plain = DDIMSchedule.create(
        np.cumprod(1.0 - rescale_zero_terminal_snr(linear_betas(1000, 0.00085, 0.012))),
        16,
        0.0,
        None,
        Prediction.V,
    )
    _, x0_plain = ddim_step(x, v, plain, 7)
    eps = a**0.5 * v + (1 - a) ** 0.5 * x
    assert torch.allclose(a**0.5 * x0_plain + (1 - a) ** 0.5 * eps, x, atol=1e-5)


# --------------------------------------------------------------------------- U-Net parts
def test_per_frame_image_tokens_reach_only_their_frame() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, 24, heads=2, dim_head=16, image_cross_attention=True)
    frames, b = 3, 2
    x = torch.randn(b * frames, 10, 32)
    context = torch.randn(b, 77 + 16 * frames, 24)
    out = attn(x, context, context_repeats=frames)
    for clip in range(b):
        for k in range(frames):
            own = torch.cat([context[clip, :77], context[clip, 77 + 16 * k : 77 + 16 * (k + 1)]])
            row = clip * frames + k
            expected = attn(x[row : row + 1], own[None], context_repeats=1)
            assert torch.allclose(out[row : row + 1], expected, atol=1e-5)


def test_relative_positions_reduce_to_plain_attention_with_zero_tables() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, None, heads=2, dim_head=16, relative_position=4)
    q, k, v = (torch.randn(3, 2, 6, 16) for _ in range(3))
    for table in (attn.relative_position_k, attn.relative_position_v):
        torch.nn.init.zeros_(table.embeddings_table)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(attend_relative(attn, q, k, v), plain, atol=1e-5)
    # Distances beyond 4 frames share the last embedding: the table has 2·4 + 1 rows.
    assert (
        attn.relative_position_k(6, 6).shape == (6, 6, 16)
        and attn.relative_position_k.embeddings_table.shape[0] == 9
    )


def test_hybrid_model_concatenates_the_image_latent_to_every_frame() -> None:
    model = tiny_dynamicrafter()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, 8, generator=gen)
    latent = torch.randn(1, 4, 1, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (1, 8), generator=gen)
    context = torch.randn(1, 77 + 128, 32, generator=gen)
    with torch.no_grad():
        out = model.apply_model(x, t, context, fps=24, concat=latent)
        by_hand = model.unet(torch.cat([x, latent.expand(1, -1, 8, -1, -1)], dim=1), t, context, fps=24)
    assert torch.equal(out, by_hand)
    with pytest.raises(ValueError, match="image latent"):
        model.apply_model(x, t, context, fps=24)


# --------------------------------------------------------------------------- refusals (exit 2)
def i2v_prompts(folder: Path, text: str | None = None) -> str:
    path = folder / "prompts.txt"
    path.write_text(text or f"{IMAGE};a red ball on grass\n")
    return str(path)


@pytest.mark.parametrize(
    ("config", "mode", "extra", "words"),
    [
        (DC, "t2v", [], ["mode 't2v' cannot run", "DynamiCrafter", "--mode i2v"]),
        (DC, "i2v", ["--video_length", "4"], ["--video_length must be 8", "16 per frame"]),
        (DC, "i2v_tailcoh", [], ["'tailcoh' cannot apply", "zero terminal SNR"]),
        (T2V, "t2v", ["--frame_stride", "10"], ["--frame_stride conditions frame-stride models", "--fps"]),
    ],
)
def test_a_mode_the_model_cannot_run_is_refused_before_loading(
    tmp_path, capsys, no_model, config, mode, extra, words
) -> None:
    text = None if mode.startswith("i2v") else "a red ball on grass\n"
    args = ["--config", config, "--random_init", "-p", i2v_prompts(tmp_path, text), "--mode", mode]
    rc = videocrafter_main.main([*args, "--output_dir", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


# --------------------------------------------------------------------------- every allowed mode runs
RUNS = {  # plain i2v: the two-rank test below
    "qcache_unilatent": ["--mode", "i2v_TTqcache_attn1_unilatent", "--frame_stride", "10"],
    "stqcache_attn2_no_lookahead": ["--mode", "i2v_STqcache_attn2", "-ld", "--sequential"],
    "ouroboros": ["--mode", "i2v_sacfa_srg", "--subject", "a red ball", "--srg_windows", "1"],
    "story": ["--mode", "i2v_TTqcache_attn1"],
}


@pytest.mark.parametrize("case", sorted(RUNS))
def test_every_allowed_mode_runs_on_the_tiny_dynamicrafter(tmp_path, case: str) -> None:
    story = f"2|{IMAGE};a red ball on grass\n2|the red ball rolls away\n"
    prompts = i2v_prompts(tmp_path, story if case == "story" else None)
    small = SMALL[:-2] if "--sequential" in RUNS[case] else SMALL  # --window_batch is the fast path's
    args = ["--config", DC, "-p", prompts, *small, *RUNS[case], "--output_dir", str(tmp_path / "out")]
    assert videocrafter_main.main(args) == 0
    frames = frames_of(tmp_path / "out")
    assert frames.shape == ((4 if case == "story" else 3), 64, 64, 3)
    assert frames.std() > 0  # random weights: noise-like, but not a constant image
    assert len(list((tmp_path / "out").rglob("run.gif"))) == 1


def test_stopped_then_resumed_dynamicrafter_is_byte_identical(tmp_path, monkeypatch) -> None:
    prompts = i2v_prompts(tmp_path)
    args = ["--config", DC, "-p", prompts, *SMALL, "--mode", "i2v_TTqcache_attn1", "--save_state_every", "1"]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        stop_after(2, patch)  # 3 iterations (f·n = f: no warm-up): stop after the second
        assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 130
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert outputs(out) == outputs(tmp_path / "whole")


def test_two_ranks_with_parallel_windows_write_the_one_process_frames(tmp_path) -> None:
    prompts = i2v_prompts(tmp_path)
    args = ["--config", DC, "-p", prompts, *SMALL, "--mode", "i2v", "-n", "2", "-l", "2"]
    proc = torchrun(
        2, "videocrafter_main.py", *args, "--parallel", "windows", "--output_dir", str(tmp_path / "A")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks share every video's 4 windows" in proc.stderr
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "B")]) == 0
    one, two = frames_of(tmp_path / "B"), frames_of(tmp_path / "A")
    assert one.shape == two.shape == (2, 64, 64, 3)
    differ = np.abs(one - two)
    assert differ.max() <= 4 and (differ > 0).mean() < 0.01, (differ.max(), (differ > 0).mean())


def test_videocrafter1_text_to_video_runs_with_relative_positions(tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\n")
    args = ["--config", VC1_T2V, "-p", str(prompts), *SMALL, "--mode", "t2v_TTqcache_attn1"]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "out")]) == 0
    frames = frames_of(tmp_path / "out")
    assert frames.shape == (3, 64, 64, 3) and frames.std() > 0


def test_i2v_story_names_its_image_on_the_first_scene(tmp_path) -> None:
    from fifo.prompts import PromptFileError, parse_prompt_file

    path = tmp_path / "story.txt"
    path.write_text(f"2|{IMAGE};a red ball on grass\n3|the red ball rolls away\n\n{IMAGE};a plain i2v line\n")
    story, plain = parse_prompt_file(path, image_mode=True)
    assert story.image == IMAGE and [(s.frames, s.prompt) for s in story.scenes] == [
        (2, "a red ball on grass"),
        (3, "the red ball rolls away"),
    ]
    assert plain.image == IMAGE and not plain.is_story
    path.write_text("2|a story without its image\n")
    with pytest.raises(PromptFileError, match="an i2v story starts with 'frames\\|image_path;prompt'"):
        parse_prompt_file(path, image_mode=True)
