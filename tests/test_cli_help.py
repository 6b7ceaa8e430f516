"""infra.cli_help: every command line's --help says each default once, and never "None"."""

from __future__ import annotations

import argparse
import re

import pytest

from infra.cli_help import DefaultsHelpFormatter
from tests.conftest import load_script

SCRIPTS = [
    "videocrafter_main.py",
    "scripts/benchmark.py",
    "scripts/compare.py",
    "scripts/download_checkpoints.py",
    "scripts/evaluate.py",
]


def _help_of(script: str, capsys: pytest.CaptureFixture[str]) -> str:
    module = load_script(script)
    entry = getattr(module, "build_parser", None)
    with pytest.raises(SystemExit) as exit_info:
        if entry is not None:
            entry().parse_args(["--help"])
        else:
            module.parse_args(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_says_no_default_twice_and_no_none(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help_of(script, capsys).split())
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    # One option's help (up to the next option, "-x" or "--x") holds at most one "(default".
    for option_help in re.split(r" (?=--?[a-z])", text):
        assert option_help.count("(default") <= 1, option_help


def test_formatter_rules() -> None:
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=64, help="denoising steps")
    parser.add_argument("--fps", type=int, default=None, help="frame rate (default: the video's)")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    parser.add_argument("--dims", nargs="+", choices=["a", "b"], default=["a", "b"], help="dimensions")
    parser.add_argument("--some", nargs="+", default=["a"], help="some")
    parser.add_argument("--ratio", default="50%", help="share")
    text = " ".join(parser.format_help().split())
    assert "denoising steps (default: 64)" in text
    assert "frame rate (default: the video's)" in text and "default: None" not in text
    assert "no progress" in text and "default: False" not in text
    assert "dimensions (default: all)" in text
    assert "some (default: a)" in text
    assert "share (default: 50%)" in text
