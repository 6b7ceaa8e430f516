"""What `pip install` gives: the core for generation, the eval and dev extras, exact pins, the
console command, and a one-line hint when evaluation runs without its extra."""

from __future__ import annotations

import re

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as pip vendors it
    from pip._vendor import tomli as tomllib

from tests.conftest import REPO, load_script

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==\S+$")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert PIN.match(line), f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(line)] = line
    return pins


def test_every_dependency_and_extra_is_pinned_exactly() -> None:
    project = PYPROJECT["project"]
    wanted = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    missing = sorted({_name(r) for r in wanted} - set(_pins()))
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_generation_needs_no_evaluation_or_test_package() -> None:
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"timm", "pyiqa", "scenedetect", "matplotlib"} <= {_name(r) for r in extras["eval"]}
    assert {"pytest", "pytest-xdist", "ruff", "mkdocs-material"} <= {_name(r) for r in extras["dev"]}
    assert not core & {_name(r) for r in [*extras["eval"], *extras["dev"]]}


def test_console_command_is_the_main_entry_point() -> None:
    import videocrafter_main
    from cli.main import main

    module, _, attr = PYPROJECT["project"]["scripts"]["fifo-videocrafter"].partition(":")
    target = __import__(module, fromlist=[attr])
    assert getattr(target, attr) is main is videocrafter_main.main
    assert "videocrafter_main" in PYPROJECT["tool"]["setuptools"]["py-modules"]


def test_evaluation_without_its_extra_says_what_to_install(monkeypatch, capsys, tmp_path) -> None:
    import tools.extras

    real = tools.extras.find_spec
    monkeypatch.setattr(
        tools.extras, "find_spec", lambda name: None if name in ("pyiqa", "timm") else real(name)
    )
    evaluate = load_script("scripts/evaluate.py")
    assert evaluate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "timm, pyiqa not installed" in err and "pip install -c constraints.txt -e '.[eval]'" in err


def test_the_eval_extra_is_installed_here() -> None:
    """The test environment is the dev + eval one that CI installs."""
    from tools.extras import eval_extra_problem

    assert eval_extra_problem() is None


@pytest.mark.parametrize("command", ["python -m pytest", "python videocrafter_main.py"])
def test_readme_commands_install_what_they_run(command: str) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and command in line
    )
    target = '".[eval,wan,dev]"' if "pytest" in command else "."
    assert f"pip install -c constraints.txt -e {target} && {command}" in line


def test_requirements_txt_installs_the_package_at_its_pins() -> None:
    """`pip install -r requirements.txt`, the usual install of a fork, is the core install."""
    lines = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == ["-c constraints.txt", "-e ."]
