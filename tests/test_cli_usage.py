"""What a new user hits on the command line: each mistake is caught before any model is loaded,
with a clear ``error:`` line naming the problem and the fix, exit code 2 and nothing written.

One test (or a few) per item of the usability review: stories, overwrites, the output folder,
byte-order marks, devices and full-size models, i2v lines in text modes, help, published flags,
logs and labels. (Checkpoint errors are in test_checkpoint.py.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import videocrafter_main
from cli.parser import Parallelism, build_parser, flag_defaults
from fifo.options import GenerationSettings, TrickArguments, parse_mode
from fifo.outputs import experiment_name
from fifo.prompts import safe_name
from infra.video_io import read_video
from lvdm.modules.attention_kernels import AttentionBackend, cpu_has_native_bf16
from tests.conftest import REPO, write_png
from tools.comparison import render_label

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
SMALL = ["--video_length", "2", "-n", "1", "-l", "2", "--no_progress"]
PROMPT = "a boat on a lake"

pytestmark = pytest.mark.usefixtures("one_thread")


def prompt_file(tmp_path: Path, text: str | bytes, name: str = "prompts.txt") -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def usage_error(capsys, work: Path, out: Path, args: list, *words: str) -> str:
    """Run the CLI, expect exit 2 with every word in the error, and nothing written anywhere."""
    rc = videocrafter_main.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert files_under(out) == []
    assert list(work.iterdir()) == []
    return err


# --------------------------------------------------------------------------- 1. stories
@pytest.mark.parametrize("line", ["ten|a boat", "8.5|a boat", "-4|a boat", "|a boat"])
def test_story_lines_must_start_with_a_frame_count(tmp_path, work, capsys, no_model, line: str) -> None:
    pfile = prompt_file(tmp_path, f"40|a boat at dawn\n{line}\n")
    out = tmp_path / "out"
    usage_error(
        capsys, work, out, ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, *SMALL],
        f"{pfile}:2", "positive whole number of output frames", "'frames|prompt'",
    )  # fmt: skip


def test_length_flag_with_a_story_is_reported(tmp_path, work, caplog) -> None:
    caplog.set_level(logging.WARNING)
    pfile = prompt_file(tmp_path, "1|a cat sleeps\n2|the cat wakes up\n")
    out = tmp_path / "out"
    rc = videocrafter_main.main(
        ["--config", T2V, "--random_init", "-p", str(pfile), "--output_dir", str(out), *SMALL]
    )
    assert rc == 0
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "does not apply to the story" in warning and "sum of its scenes' frames (3)" in warning
    (video,) = (out / safe_name("a cat sleeps")).glob("*.gif")
    assert read_video(video).shape[0] == 3


# --------------------------------------------------------------------------- 2. overwrites
def test_default_name_holds_every_setting_that_changes_the_video() -> None:
    mode = parse_mode("t2v_TTqcache_attn1", 0.5)
    defaults = GenerationSettings()
    assert experiment_name(mode, defaults, defaults) == "t2v_TTqcache_attn1_w0.5"
    changed = GenerationSettings(
        seed=7, new_video_length=24, eta=0.5, guidance=7.5, num_partitions=2, video_length=8, height=256
    )
    name = experiment_name(mode, changed, defaults)
    assert name == "t2v_TTqcache_attn1_w0.5_f8_n2_l24_512x256_cfg7.5_eta0.5_seed7"
    changed = GenerationSettings(
        lookahead=False, fps=4, output_fps=12, batched=False, dtype="bf16", rng="published"
    )
    name = experiment_name(mode, changed, defaults)
    assert name == "t2v_TTqcache_attn1_w0.5_fps4_nolookahead_ofps12_sequential_bf16_rngpublished"
    # Speed settings change no more than rounding: not in the name.
    assert experiment_name(mode, GenerationSettings(window_batch=3), defaults) == "t2v_TTqcache_attn1_w0.5"


def test_default_name_holds_the_tricks_changed_parameters_and_the_subject() -> None:
    defaults = GenerationSettings()
    plain = parse_mode("t2v_tailcoh_sacfa_srg", tricks=TrickArguments(subject="A  Person"))
    assert experiment_name(plain, defaults, defaults) == "t2v_tailcoh_sacfa_srg_subj-a-person"
    changed = parse_mode(
        "t2v_tailcoh_srg",
        tricks=TrickArguments(subject="a fox", tail_lowpass=0.1, srg_weight=2.0, subject_levels=(1,)),
    )
    assert experiment_name(changed, defaults, defaults) == "t2v_tailcoh_srg_lp0.1_srgw2_subj-a-fox_lv1"


def test_outputs_are_never_silently_overwritten(tmp_path, work, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    base = ["--config", T2V, "--random_init", "-p", str(pfile), "--output_dir", str(out), *SMALL]
    assert videocrafter_main.main(base) == 0
    assert videocrafter_main.main([*base, "--seed", "7"]) == 0  # a sweep over seeds keeps both
    folder = out / safe_name(PROMPT)
    first, seeded = folder / "t2v_f2_n1_l2.gif", folder / "t2v_f2_n1_l2_seed7.gif"
    assert first.is_file() and seeded.is_file() and first.read_bytes() != seeded.read_bytes()
    before = {p: p.read_bytes() for p in files_under(out)}
    capsys.readouterr()
    rc = videocrafter_main.main(base)
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "exist already" in err
        and str(first) in err
        and "--overwrite" in err
        and "--experiment" in err
    )
    assert {p: p.read_bytes() for p in files_under(out)} == before  # nothing touched
    assert videocrafter_main.main([*base, "--overwrite"]) == 0
    assert first.read_bytes() == before[first]  # same settings, same video


# --------------------------------------------------------------------------- 3. output folder
def test_output_dir_that_is_a_file(tmp_path, work, capsys, no_model) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub"):
        usage_error(
            capsys, work, tmp_path / "nowhere", ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, *SMALL],
            "is a file, not a folder", "choose another --output_dir",
        )  # fmt: skip
    assert a_file.read_text() == "not a folder"


def test_output_dir_on_a_read_only_file_system(tmp_path, work, capsys, no_model, monkeypatch) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    usage_error(
        capsys, work, locked / "out", ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", locked / "out", *SMALL],
        "cannot write in", "read-only file system or no permission", "writable --output_dir",
    )  # fmt: skip


# --------------------------------------------------------------------------- 4. byte-order mark
def test_utf8_bom_and_crlf(tmp_path, work) -> None:
    pfile = prompt_file(tmp_path, "\ufeffa red fox\r\na blue cube\r\n".encode())
    out = tmp_path / "out"
    assert (
        videocrafter_main.main(
            ["--config", T2V, "--random_init", "-p", str(pfile), "--output_dir", str(out), *SMALL]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir() if p.name != "latents") == ["a_blue_cube", "a_red_fox"]


def test_utf8_bom_before_an_i2v_image_path(tmp_path, work) -> None:
    write_png(tmp_path / "in" / "fox.png", (80, 48), seed=1)
    pfile = prompt_file(tmp_path, "\ufefffox.png;a red fox\r\n".encode())
    out = tmp_path / "out"
    rc = videocrafter_main.main(
        [
            "--config",
            I2V,
            "--random_init",
            "--mode",
            "i2v",
            "-p",
            str(pfile),
            "--output_dir",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    assert (out / "fox_a_red_fox").is_dir()


# --------------------------------------------------------------------------- 5. device and size
def test_cuda_asked_for_without_a_gpu(tmp_path, work, capsys, no_model, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    for device in ("cuda", "cuda:1"):
        usage_error(
            capsys, work, out, ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, "--device", device, *SMALL],
            f"--device {device}", "no CUDA GPU", "--device cpu",
        )  # fmt: skip
    usage_error(
        capsys, work, out, ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, "--device", "tpu", *SMALL],
        "--device tpu", "cuda",
    )  # fmt: skip


def test_random_full_size_model_on_cpu_is_refused(tmp_path, work, capsys, no_model) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    usage_error(
        capsys, work, out, ["--random_init", "-p", pfile, "--output_dir", out, "--device", "cpu", *SMALL],
        "full-size model", "B parameters", "configs/tiny_t2v.yaml", "--allow_full_on_cpu",
    )  # fmt: skip


# --------------------------------------------------------------------------- 7. i2v lines in text modes
@pytest.mark.parametrize("line", ["images/fox.png;a red fox", "fox.jpg ; a red fox"])
def test_i2v_line_in_a_text_mode(tmp_path, work, capsys, no_model, line: str) -> None:
    pfile = prompt_file(tmp_path, f"{line}\n")
    out = tmp_path / "out"
    usage_error(
        capsys, work, out, ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, *SMALL],
        f"{pfile}:1", "looks like an image path", "--mode i2v",
    )  # fmt: skip


def test_semicolons_in_text_prompts_are_fine(tmp_path) -> None:
    from fifo.prompts import parse_prompt_file

    (job,) = parse_prompt_file(prompt_file(tmp_path, "a cat; photorealistic, 4K\n"), image_mode=False)
    assert job.prompt == "a cat; photorealistic, 4K"


# --------------------------------------------------------------------------- 8. help
def test_help_shows_defaults_and_mode_parts(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        videocrafter_main.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks
    for default in (
        "random seed of the whole run (default: 321)",
        "partitions n (DDIM steps = f·n) (default: 4)",
        "output frames (default: 100",
        "frame-rate conditioning of the model (default: 8)",
        "classifier-free guidance (default: 12.0)",
        "(default: 1.0)",
        "frames per second of the written video (default: 10)",
        "Q-cache weight w in [0, 1] (default: 0.9)",
        "(default: t2v)",
        "(default: configs/inference_t2v_512_v2.0.yaml)",
        "attention kernel (default: sdpa)",
        "(default: results/videocraft_v2_fifo/random_noise, cache in results/videocraft_v2_fifo/latents)",
    ):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text
    for part in ("t2v_seed_ar", "TTqcache", "STqcache", "attn1", "attn2", "unilatent"):
        assert f" {part} " in text


# --------------------------------------------------------------------------- 9. published flags
def test_num_inference_steps_is_accepted_and_explained(tmp_path, work, caplog) -> None:
    caplog.set_level(logging.INFO)
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    args = ["--config", T2V, "--random_init", "-p", str(pfile), "--output_dir", str(out), *SMALL]
    assert videocrafter_main.main([*args, "--num_inference_steps", "16"]) == 0
    assert any(
        "--num_inference_steps 16 is ignored" in r.getMessage() and "= 2" in r.getMessage()
        for r in caplog.records
    )


# --------------------------------------------------------------------------- 10. logs and labels
def test_a_normal_run_logs_for_people(tmp_path) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "videocrafter_main.py", "--config", T2V, "--random_init", "-p", str(pfile),
         "--output_dir", str(tmp_path / "out"), *SMALL],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    assert "No potential checkpoint path found" not in log and "INFO root:" not in log  # open_clip's chatter
    assert "FastPathPlan(" not in log and "UNetExecution(" not in log  # no internal reprs
    assert "fast path: all of 2 windows and both guidance branches per U-Net call" in log
    # fp32 by default on a CPU; where the CPU has native bf16 the log says that --dtype bf16 is faster.
    assert ("--dtype bf16 runs larger models faster" in log) is cpu_has_native_bf16()


def test_mode_typo_gets_a_suggestion(tmp_path, work, capsys, no_model) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    usage_error(
        capsys, work, out, ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, "--mode", "t2v_TTqcach_atn1", *SMALL],
        "did you mean 'TTqcache', 'attn1'?",
    )  # fmt: skip


def test_labels_that_differ_at_their_end_stay_apart() -> None:
    a, b = "t2v_TTqcache_attn1_unilatent_w0.5_f4_n1_l16", "t2v_TTqcache_attn1_unilatent_w0.9_f4_n1_l16"
    # One line at 120 px: the start is cut, the end (with the weight) shows.
    assert not np.array_equal(render_label(a, 120), render_label(b, 120))
    # Room for three lines: the label wraps after '_' and shows whole (no "..." cut).
    tall_a, tall_b = render_label(a, 150, height=70), render_label(b, 150, height=70)
    assert not np.array_equal(tall_a, tall_b)
    inked = tall_a.max(axis=(1, 2)) > 200
    lines_of_text = int(inked[0]) + int(np.sum(inked[1:] & ~inked[:-1]))
    assert lines_of_text >= 2


# --------------------------------------------------------------------------- flag text → typed values
def test_flag_text_becomes_typed_values_at_parsing() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["-p", "x", "--attention", "math", "--parallel", "windows", "--subject_levels", "2,1"]
    )
    assert args.attention is AttentionBackend.MATH and args.parallel is Parallelism.WINDOWS
    assert args.subject_levels == (2, 1)
    plain = parser.parse_args(["-p", "x"])
    assert plain.attention is AttentionBackend.SDPA and plain.parallel is Parallelism.PROMPTS
    # Every flag at its default, from the parser's defaults (the command line is not parsed again).
    assert vars(flag_defaults(args)) == {**vars(plain), "prompt_file": None}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subject_levels", "1,x"], "'1,x' is not a list of levels: use e.g. 1,2"),
        (
            ["--attention", "efficient"],
            "invalid choice: 'efficient' (choose from 'sdpa', 'xformers', 'math')",
        ),
        (["--parallel", "ranks"], "invalid choice: 'ranks' (choose from 'prompts', 'windows')"),
    ],
)
def test_flag_text_that_names_no_value_is_refused_by_the_parser(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["-p", "x", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
