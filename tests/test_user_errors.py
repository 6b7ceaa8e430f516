"""What a new user still hit: tracebacks, silent contradictions, late checks, names that lie,
endless runs, progress in logs. Each bad input ends in exit code 2 (or a logged note), a message
naming the problem and the fix, no traceback, and nothing written; a bug keeps its traceback."""

from __future__ import annotations

import io
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

import cli.run
import videocrafter_main
from cli.parser import build_parser
from cli.request import build_request
from infra.errors import UserError
from infra.progress import PlainProgress, progress
from infra.video_io import read_video
from tests.conftest import REPO
from tests.test_cli_usage import SMALL, T2V, files_under, prompt_file, usage_error
from tests.test_resume import stop_after

pytestmark = pytest.mark.usefixtures("one_thread")


def base(tmp_path: Path, *extra: object) -> tuple[Path, list]:
    """A prompt file and the tiny model's arguments, writing under ``tmp_path/out``."""
    out = tmp_path / "out"
    pfile = prompt_file(tmp_path, "a boat on a lake\n")
    return out, ["--config", T2V, "-p", pfile, "--output_dir", out, *SMALL, *extra]


# --------------------------------------------------------------------------- the error types
def test_every_user_error_is_one_type() -> None:
    from cli.request import UsageError
    from fifo.options import ModeError
    from fifo.outputs import OutputError
    from fifo.prompts import PromptFileError
    from fifo.resume import StateError
    from infra.errors import SettingsError
    from infra.video_io import VideoReadError
    from lvdm.checkpoint import CheckpointError
    from lvdm.utils import ConfigError

    kinds = (UsageError, ModeError, OutputError, PromptFileError, StateError, SettingsError, VideoReadError)
    for kind in (*kinds, CheckpointError, ConfigError):
        assert issubclass(kind, UserError), kind
    # Callers that caught the built-in type they replaced keep working.
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, RuntimeError)


def test_a_bug_inside_the_generator_keeps_its_traceback(tmp_path) -> None:
    """A ValueError from inside the sampling code is a bug, not a usage error: exit 1, traceback."""
    out, args = base(tmp_path, "--random_init", "--window_batch", "2")  # no memory measurement first
    script = (
        "import sys, fifo.generator\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('a bug inside the generator')\n"
        "fifo.generator.sample_ddim = broken\n"
        "import videocrafter_main\n"
        f"sys.exit(videocrafter_main.main({[str(a) for a in args]!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "ValueError: a bug inside the generator" in done.stderr
    assert "error: a bug" not in done.stderr


# --------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("model:\n\ttarget: lvdm.models.ddpm3d.LatentDiffusion\n", ":2:1:", "cannot start any token"),
        ("model:\n  target: x\n  params: {image_size: [40, 64}\n", ":3:", "expected ',' or ']'"),
    ],
    ids=["tab", "unclosed-bracket"],
)
def test_yaml_syntax_error_in_a_config(tmp_path, work, capsys, no_model, text, where, problem) -> None:
    config = tmp_path / "in" / "broken.yaml"
    config.parent.mkdir()
    config.write_text(text)
    out, args = base(tmp_path, "--random_init")
    args[1] = config
    err = usage_error(capsys, work, out, args, f"{config}{where}", "not valid YAML", problem, "spaces")
    assert err.count("\n") == 1  # one line, where the error is and how to fix it


def test_ctrl_c_while_starting_ends_without_a_traceback(tmp_path) -> None:
    """A KeyboardInterrupt while the libraries load (here: when torch is imported)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
    )
    done = subprocess.run(
        [sys.executable, "videocrafter_main.py", "-p", "nothing.txt"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "nothing was written" in done.stderr, done.stderr


def test_ctrl_c_while_checking_the_inputs(tmp_path, work, capsys, monkeypatch) -> None:
    import cli.main

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.main, "build_request", interrupted)
    out, args = base(tmp_path, "--random_init")
    assert videocrafter_main.main([str(a) for a in args]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nothing was written" in err
    assert files_under(out) == [] and list(work.iterdir()) == []


# --------------------------------------------------------------------------- silent defaults
def test_video_length_zero_is_refused(tmp_path, work, capsys, no_model) -> None:
    out, args = base(tmp_path, "--random_init")
    usage_error(capsys, work, out, [*args, "--video_length", "0"], "--video_length", "got 0")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--random_init", "--ckpt_path", "model.ckpt"],
            ["--random_init and --ckpt_path model.ckpt", "drop"],
        ),
        (["--random_init", "--resume", "--overwrite"], ["--resume and --overwrite", "pass one of them"]),
        (["--random_init", "--sequential", "--window_batch", "2"], ["--sequential and --window_batch 2"]),
        (
            ["--random_init", "--mode", "t2v_seed", "--seed_config", T2V, "--seed_ckpt", "s.ckpt"],
            ["--random_init and --seed_ckpt s.ckpt", "drop one"],
        ),
    ],
    ids=["random_init-ckpt_path", "resume-overwrite", "sequential-window_batch", "random_init-seed_ckpt"],
)
def test_flags_that_contradict_each_other(tmp_path, work, capsys, no_model, extra, words) -> None:
    out, args = base(tmp_path, *extra)
    usage_error(capsys, work, out, args, "contradict each other", *words)


def test_dry_run_flags_that_do_not_apply_are_said(tmp_path, work, caplog) -> None:
    caplog.set_level(logging.INFO)
    extra = [
        "--dry_run",
        "--compile",
        "--save_state_every",
        "3",
        "--parallel",
        "windows",
        "--num_processes",
        "2",
    ]
    _, args = base(tmp_path, "--random_init", *extra)
    build_request(build_parser().parse_args([str(a) for a in args]))
    said = " | ".join(r.getMessage() for r in caplog.records)
    for words in ("--compile does not apply to --dry_run", "--save_state_every does not apply to --dry_run",
                  "--rank and --num_processes are ignored (every prompt runs here)"):  # fmt: skip
        assert words in said, said


def test_flags_that_do_not_apply_are_said_in_one_line(tmp_path, work, caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    extra = ["--allow_full_on_cpu", "--num_processes", "3", "--qcache_weight", "0.5", "--max_memory", "1GiB"]
    _, args = base(tmp_path, "--random_init", *extra)
    args = [a for a in args if a != "--random_init"] + ["--ckpt_path", str(REPO / "README.md")]
    build_request(build_parser().parse_args([str(a) for a in args]))
    said = [r.getMessage() for r in caplog.records]
    assert any("--allow_full_on_cpu applies to --random_init only" in m for m in said), said
    assert any("--rank and --num_processes are ignored" in m for m in said), said
    assert any("--qcache_weight 0.5 is ignored: no Q-cache" in m for m in said), said
    assert any("--max_memory is read by --dry_run" in m for m in said), said


# --------------------------------------------------------------------------- checks that come late
def test_subject_levels_are_checked_against_the_config(tmp_path, work, capsys, no_model) -> None:
    out, args = base(tmp_path, "--random_init", "--mode", "t2v_sacfa", "--subject", "a boat")
    usage_error(
        capsys, work, out, [*args, "--subject_levels", "1,3"],
        "--subject_levels: level(s) [3] have no spatial transformers", "levels with attention: 0, 1, 2",
    )  # fmt: skip


# --------------------------------------------------------------------------- the experiment name
def test_a_story_is_not_named_after_the_length_it_ignores(tmp_path, work, caplog) -> None:
    story = prompt_file(tmp_path, "3|a cat sleeps\n3|the cat wakes up\n", name="story.txt")
    args = ["--config", T2V, "--random_init", "-p", str(story), "--video_length", "2", "-n", "1"]
    request = build_request(build_parser().parse_args([*args, "-l", "7"]))
    assert "_l7" not in request.layout.experiment
    assert request.layout.experiment == build_request(build_parser().parse_args(args)).layout.experiment
    assert any("does not apply to the story" in r.getMessage() for r in caplog.records)
    plain = build_request(
        build_parser().parse_args([*args, "-l", "7", "-p", str(prompt_file(tmp_path, "a"))])
    )
    assert plain.layout.experiment.endswith("_l7")  # a plain prompt's length does shape its video


# --------------------------------------------------------------------------- endless runs
@pytest.mark.parametrize("length", ["99999999999", "1000001", "0", "ten"])
def test_lengths_out_of_range_are_refused(tmp_path, work, capsys, no_model, length: str) -> None:
    out, args = base(tmp_path, "--random_init")
    err = usage_error(capsys, work, out, [*args, "-l", length], f"-l/--new_video_length {length}", "-l inf")
    if length.isdigit():
        assert "[1, 1000000] (the largest accepted)" in err


def test_endless_video_runs_until_stopped_and_resumes(tmp_path, work, monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING)
    pfile = prompt_file(tmp_path, "a boat on a lake\n")
    out = tmp_path / "out"
    args = ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, "--video_length", "2",
            "-n", "1", "--no_progress", "--save_state_every", "1", "-l", "inf", "-l", "inf"]  # fmt: skip
    args = [str(a) for a in args]
    with monkeypatch.context() as patch:
        stop_after(5, patch)
        monkeypatch.setattr(sys, "argv", ["videocrafter_main.py", *args])
        assert videocrafter_main.main(args) == 130
    (partial,) = out.rglob("*.partial.gif")
    assert "linf" in partial.name
    first = read_video(partial)
    assert len(first) == 5
    (stopped,) = [r.getMessage() for r in caplog.records if "To continue:" in r.getMessage()]
    command = stopped.split("To continue: ", 1)[1]
    assert command.count("-l inf") == 1 and command.endswith("--resume"), command
    with monkeypatch.context() as patch:
        stop_after(3, patch)
        assert videocrafter_main.main([*args, "--resume"]) == 130
    more = read_video(partial)
    assert len(more) == 8 and (more[:5] == first).all()  # continued, the first frames unchanged


def test_resume_command_names_each_flag_once() -> None:
    argv = ["videocrafter_main.py", "-p", "my prompts.txt", "-l", "7", "--new_video_length=inf",
            "--overwrite", "--seed", "3", "--seed", "4", "--no_progress", "--no_progress"]  # fmt: skip
    command = cli.run.resume_command(argv)
    assert command.endswith(
        "videocrafter_main.py -p 'my prompts.txt' --new_video_length=inf --seed 4 --no_progress --resume"
    ), command
    assert cli.run.resume_command([*argv, "--resume"]).count("--resume") == 1


def test_settings_refuse_a_length_beyond_the_largest() -> None:
    from fifo.options import MAX_NEW_VIDEO_LENGTH, GenerationSettings
    from infra.errors import SettingsError

    assert GenerationSettings(new_video_length=math.inf).new_video_length == math.inf
    with pytest.raises(SettingsError, match="the largest accepted"):
        GenerationSettings(new_video_length=MAX_NEW_VIDEO_LENGTH + 1)


# --------------------------------------------------------------------------- progress in logs
def test_progress_off_a_terminal_is_plain_lines(caplog) -> None:
    caplog.set_level(logging.INFO, logger="infra.progress")
    bar = progress(total=4, desc="FIFO", unit="it", stream=io.StringIO())
    assert isinstance(bar, PlainProgress)
    bar.every = 0.0  # a line at every update
    with bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix_str("frames 1/2")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("FIFO: 4/4 it (100%)") and "frames 1/2" in lines[-1]
    assert not any("\x1b" in line or "\r" in line for line in lines)
    caplog.clear()
    assert list(progress(range(3), desc="x", stream=io.StringIO())) == [0, 1, 2]
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["x: 3/3 it (100%)"]  # the end


def test_more_ddim_steps_than_the_model_has_timesteps(tmp_path, work, capsys, no_model) -> None:
    out, args = base(tmp_path, "--random_init")
    args = [*args[: args.index("-n")], *args[args.index("-n") + 2 :]]
    usage_error(
        capsys, work, out, [*args, "-n", "501"],
        "--video_length 2 × --num_partitions 501 = 1002 DDIM steps", "1000 timesteps", "lower --num_partitions",
    )  # fmt: skip


def test_a_run_logged_to_a_file_has_no_escape_sequences(tmp_path, work, capsys, caplog, monkeypatch) -> None:
    import infra.progress

    monkeypatch.setattr(infra.progress, "PLAIN_EVERY_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    out, args = base(tmp_path, "--random_init")
    args = [a for a in args if a != "--no_progress"]
    assert videocrafter_main.main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err
    said = [r.getMessage() for r in caplog.records if r.name == "infra.progress"]
    assert any(m.startswith("base clip (DDIM): ") for m in said), said
    assert any(m.startswith("FIFO: ") and "frames 2/2" in m for m in said), said


def test_an_endless_video_before_other_prompts_is_refused(tmp_path, work, capsys, no_model) -> None:
    out = tmp_path / "out"
    pfile = prompt_file(tmp_path, "a boat on a lake\na cat on a wall\n")
    args = ["--config", T2V, "--random_init", "-p", pfile, "--output_dir", out, *SMALL, "-l", "inf"]
    usage_error(capsys, work, out, args, "line 1 endless", "1 video(s) after it would never be made")
