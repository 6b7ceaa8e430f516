"""The library's error messages name options by their Python names; the command line prints
them as its flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cli.messages import cli_message, flag_of, option_flags
from cli.parser import FLAG_DESTINATIONS
from fifo.miga_options import ZigzagOptions
from fifo.option_errors import ModeError
from fifo.options import GenerationSettings
from infra.errors import SettingsError

FIFO = Path(__file__).resolve().parents[1] / "fifo"
FLAG = re.compile(r"(?<![\w`-])--[a-z]")
# Modules whose messages still name flags (to be reworded like the rest).
NOT_YET: set[str] = set()


def _is_message(node: ast.AST) -> bool:
    """A ``raise`` statement, or a call of an error type or of a check that raises one."""
    if isinstance(node, ast.Raise):
        return node.exc is not None
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name.endswith(("Error", "Unavailable")) or name in {"check_option", "_check"}
    return False


def _raised_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """The string constants (and f-string parts) of error messages: inside ``raise`` statements,
    error constructors and the checks that raise them."""
    found = []
    for node in ast.walk(tree):
        if _is_message(node):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    found.append((inner.lineno, inner.value))
    return found


@pytest.mark.parametrize(
    "path", sorted(p for p in FIFO.rglob("*.py") if p.name not in NOT_YET), ids=lambda p: p.name
)
def test_no_error_message_of_fifo_names_a_command_line_flag(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    flags = [(line, text) for line, text in _raised_strings(tree) if FLAG.search(text)]
    assert not flags, f"{path.name}: messages naming a flag (name the option by its Python name): {flags}"


def test_the_scan_sees_a_flag_in_a_raised_message() -> None:
    for source in (
        'def f(x):\n    raise ValueError(f"--zigzag_length must be ≥ 1, got {x}")\n',
        'def f(x):\n    check_option(x > 0, "--zigzag_length must be ≥ 1")\n',
        'def f(x):\n    err = SettingsError("--zigzag_length must be ≥ 1")\n',
    ):
        assert any(FLAG.search(text) for _, text in _raised_strings(ast.parse(source)))
    assert not _raised_strings(ast.parse('def f():\n    """Set by ``--zigzag_length``."""\n'))


def test_a_library_error_names_the_option_and_the_command_line_its_flag() -> None:
    with pytest.raises(ModeError) as err:
        ZigzagOptions(length=0)
    assert str(err.value) == "`zigzag_length` must be ≥ 1, got 0" and err.value.options == ("zigzag_length",)
    assert cli_message(err.value) == "--zigzag_length must be ≥ 1, got 0"
    with pytest.raises(SettingsError) as err:
        GenerationSettings(guidance=-1.0)
    assert "`guidance`" in str(err.value)
    assert cli_message(err.value) == "--unconditional_guidance_scale must be a finite number ≥ 0"


def test_every_renamed_option_is_a_flag_of_the_parser() -> None:
    flags = option_flags()
    assert all(dest in flags for dest in FLAG_DESTINATIONS.values())
    assert (
        flag_of("new_video_length") == "--new_video_length"
        and flag_of("lookahead") == "--lookahead_denoising"
    )
    assert flag_of("not_a_flag") == "not_a_flag"


def test_an_error_names_the_options_it_quotes_unless_told() -> None:
    err = SettingsError("`height` and `width` must be positive, `height` first")
    assert err.options == ("height", "width")
    assert SettingsError("a message without options").options == ()
    assert SettingsError("`seed` is wrong", options=("rng",)).options == ("rng",)


def test_the_command_line_names_the_flag_of_a_library_check(tmp_path, capsys) -> None:
    import videocrafter_main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n", encoding="utf-8")
    argv = ["--config", str(FIFO.parent / "configs" / "tiny_t2v.yaml"), "--random_init", "-p", str(prompts)]
    argv += ["--output_dir", str(tmp_path / "out"), "--mode", "t2v_zigzag", "--zigzag_length", "0"]
    assert videocrafter_main.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --zigzag_length must be ≥ 1, got 0" in err and "`" not in err
    assert not (tmp_path / "out").exists()


def test_the_mode_parts_name_options_and_the_help_their_flags(tmp_path, capsys) -> None:
    from cli.parser import build_parser
    from fifo.options import mode_parts_help, parse_mode

    assert "(needs `subject`)" in mode_parts_help("parts")
    assert "(needs --subject)" in build_parser().format_help()
    with pytest.raises(ModeError) as err:
        parse_mode("t2v_sacfa_nope")
    assert "`zigzag_length`" in str(err.value) and "every --zigzag_length latents" in cli_message(err.value)


def test_compile_unavailable_is_a_user_error_that_names_the_flag_on_the_command_line(monkeypatch):
    """Where Dynamo cannot run, ``compile_unet`` raises the project's user error (the CLI prints
    it and exits 2) and the CLI's message says to run without ``--compile``."""
    from torch import nn

    from cli.messages import cli_message
    from fifo.compile import CompileUnavailable, compile_unet
    from infra.errors import UserError

    def unsupported(self, *args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(nn.Module, "compile", unsupported)
    with pytest.raises(CompileUnavailable) as caught:
        compile_unet(nn.Linear(2, 2))
    assert isinstance(caught.value, UserError)
    assert "--" not in str(caught.value)
    assert cli_message(caught.value).endswith("run without --compile")
