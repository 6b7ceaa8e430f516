"""The manual stays true: the generated command-line page matches the parser, CI runs the README's
test command, and the README stays a front page."""

from __future__ import annotations

import re

from tests.conftest import REPO, load_script


def test_cli_reference_page_is_current() -> None:
    module = load_script("scripts/make_cli_reference.py")
    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == module.render(), "docs/cli.md is stale: run python scripts/make_cli_reference.py"
    assert module.main(["--check"]) == 0


def test_cli_reference_lists_every_flag() -> None:
    from cli.parser import build_parser

    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert f"`{flag}`" in page, flag


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    command = next(line for line in readme if line.startswith("python3 -m venv") and "pytest" in line)
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_readme_is_a_front_page() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < 15_000
    for page in ("getting-started", "usage", "cli", "evaluate", "scaling", "performance", "faithfulness"):
        assert f"(docs/{page}.md" in readme, page


def test_every_manual_page_is_in_the_navigation() -> None:
    import yaml

    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    config = yaml.safe_load(nav)
    assert config["theme"]["name"] == "material"
    listed = set(re.findall(r"([\w./-]+\.md)", nav))
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == listed, (sorted(pages - listed), sorted(listed - pages))
