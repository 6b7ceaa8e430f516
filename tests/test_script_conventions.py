"""The scripts keep the main command's conventions: exit code 2 and one ``error:`` line for a
usage error, flags spelled with underscores (the hyphenated spelling accepted as an alias), paths
relative to the folder the user stands in, outputs under ``results/`` unless told otherwise, and
messages about what was asked."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from infra.video_io import read_video, write_video
from tests.conftest import REPO, load_script


def _video(path: Path, frames: int = 4) -> Path:
    write_video(path, np.full((frames, 16, 16, 3), 90, np.uint8), fps=8)
    return path


def _usage_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    return err


# --------------------------------------------------------------------------- compare.py
def test_compare_usage_errors_exit_2_and_write_nothing(tmp_path, work, capsys) -> None:
    compare = load_script("scripts/compare.py")
    _usage_error(capsys, compare.main(["missing.gif", "--quiet"]), "missing.gif")
    (work / "notes.txt").write_text("not a video")
    _usage_error(capsys, compare.main(["notes.txt", "--quiet"]), "notes.txt")
    _usage_error(capsys, compare.main(["--prompt_dir", "nowhere", "--quiet"]), "--prompt_dir nowhere")
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # nothing written


def test_compare_writes_under_results_by_default(work, capsys) -> None:
    compare = load_script("scripts/compare.py")
    _video(work / "a.gif")
    _video(work / "b.gif")
    assert compare.main(["a.gif", "b.gif", "--quiet"]) == 0  # relative to the user's folder
    out = work / "results" / "compare" / "compare.mp4"
    assert capsys.readouterr().out.strip() == str(Path("results") / "compare" / "compare.mp4")
    assert read_video(out).shape[0] == 4
    assert sorted(p.name for p in work.iterdir()) == ["a.gif", "b.gif", "results"]


# --------------------------------------------------------------------------- evaluate.py
def test_evaluate_usage_errors_exit_2(work, capsys) -> None:
    evaluate = load_script("scripts/evaluate.py")
    _usage_error(capsys, evaluate.main(["missing_folder", "--quiet"]), "missing_folder")
    (work / "empty").mkdir()
    _usage_error(capsys, evaluate.main(["empty", "--quiet"]), "no .gif or .mp4 videos found under empty")
    (work / "clip.avi").write_bytes(b"RIFF")
    _usage_error(capsys, evaluate.main(["clip.avi", "--quiet"]), "clip.avi")
    assert sorted(p.name for p in work.iterdir()) == ["clip.avi", "empty"]


# --------------------------------------------------------------------------- benchmark.py
def test_benchmark_flags_use_underscores_with_the_hyphen_alias() -> None:
    bench = load_script("scripts/benchmark.py")
    parser = bench.build_parser()
    assert parser.parse_args(["--allow_cpu_full"]).allow_cpu_full
    assert parser.parse_args(["--allow-cpu-full"]).allow_cpu_full
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    hyphenated = {f for f in flags if "-" in f[2:]}
    assert all("--" + f[2:].replace("-", "_") in flags for f in hyphenated), hyphenated  # an alias only
    assert "--allow_cpu_full" in parser.format_help()
    with pytest.raises(SystemExit) as usage:  # a usage error: exit 2, as the main command
        bench.resolve_args(parser.parse_args(["--device", "cpu", "--iterations", "0"]), parser)
    assert usage.value.code == 2


# --------------------------------------------------------------------------- download_checkpoints.py
def test_download_flags_use_underscores_with_the_hyphen_alias() -> None:
    dl = load_script("scripts/download_checkpoints.py")
    assert dl.parse_args(["--verify_only"]).verify_only
    assert dl.parse_args(["--verify-only"]).verify_only


def test_download_offline_lists_only_what_was_asked(tmp_path, monkeypatch, capsys) -> None:
    dl = load_script("scripts/download_checkpoints.py")

    def offline(*_args, **_kwargs) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(dl, "get_hf_file_metadata", offline)
    assert dl.main(["--which", "t2v", "--root", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "VideoCrafter/VideoCrafter2" in err and "Image2Video" not in err and "DynamiCrafter" not in err
    assert err.count("->") == 1, err
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- sweep.sh
@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """A stand-in interpreter that records its folder and arguments, one line per call."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD|$*" >> {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_sweep_paths_are_relative_to_the_callers_folder(tmp_path, work, fake_python) -> None:
    (work / "prompts.txt").write_text("a boat\n")
    env = {**os.environ, "PYTHON": str(fake_python)}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "sweep.sh"), "-p", "prompts.txt", "-o", "out", "-k", "my.ckpt",
         "-m", "t2v"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    main_call = next(c for c in calls if "videocrafter_main.py" in c)
    folder, args = main_call.split("|", 1)
    assert folder == str(work)  # run where the user stands: relative paths mean the user's files
    assert f"{REPO}/videocrafter_main.py" in args
    assert "--prompt_file prompts.txt" in args and "--ckpt_path my.ckpt" in args
    assert "--output_dir out/videos" in args
    assert (work / "out" / "videos").is_dir() and not (REPO / "out").exists()
    assert any(f"{REPO}/scripts/evaluate.py out/videos --out out/report" in c for c in calls)


def test_sweep_usage_errors_exit_2(work, fake_python) -> None:
    env = {**os.environ, "PYTHON": str(fake_python)}
    sweep = ["bash", str(REPO / "scripts" / "sweep.sh")]
    missing = subprocess.run([*sweep, "-r"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "error: -p PROMPT_FILE is required" in missing.stderr
    absent = subprocess.run(
        [*sweep, "-p", "nothing.txt", "-r"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert absent.returncode == 2 and "prompt file not found: nothing.txt" in absent.stderr
    assert list(work.iterdir()) == []


def test_sweep_defaults_its_output_under_results(tmp_path, work, fake_python) -> None:
    (work / "p.txt").write_text("a boat\n")
    env = {**os.environ, "PYTHON": str(fake_python)}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "sweep.sh"), "-p", "p.txt", "-r", "-m", "t2v"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "results" / "sweep" / "videos").is_dir()
    assert "--output_dir results/sweep/videos" in (tmp_path / "calls.log").read_text()


# --------------------------------------------------------------------------- check_reference.py
def test_check_reference_usage_errors_exit_2(tmp_path, work, capsys) -> None:
    check = load_script("scripts/check_reference.py")
    _usage_error(capsys, check.main(["nowhere"]), "nowhere is not a reference fixture folder")
    (work / "fixture").mkdir()
    (work / "fixture" / "config.yaml").write_text("model: {target: x}\n")
    _usage_error(capsys, check.main(["fixture"]), "has no meta.json")


# --------------------------------------------------------------------------- make_example_images.py
def test_make_example_images_usage_error_exits_2(work, capsys) -> None:
    make = load_script("scripts/make_example_images.py")
    (work / "taken").write_text("a file, not a folder")
    _usage_error(capsys, make.main(["--out", "taken/images"]), "--out taken/images", "choose another --out")
    assert sorted(p.name for p in work.iterdir()) == ["taken"]
