"""The manual stays true: the generated command-line page matches the parser, CI runs the README's
test command, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

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


# Words about how and where the project was built, which mean nothing to its users.
BUILDING_WORDS = re.compile(
    r"\bthis machine\b|\bthese machines\b|\blent\b|\bshared 2-core\b|this project's shared"
    r"|\b(?:earlier|previous|this|these|other) sessions?\b|\bissue[ -]#?\d+|\bdevice tool\b|KINDS\.md"
    r"|\brounds? of work\b|\bhelpers? session",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".sh", ".cfg", ".ini", ".json"}
SKIP_DIRS = {".git", ".venv", "venv", "site", "results", "videocrafter_models", "__pycache__", ".whl"}


def _product_files() -> list:
    files = [REPO / ".ci" / "run"]
    for path in REPO.rglob("*"):
        if (
            path.is_file()
            and path.suffix in TEXT_SUFFIXES
            and not SKIP_DIRS & set(path.relative_to(REPO).parts)
        ):
            files.append(path)
    return sorted(files)


def test_the_product_speaks_to_its_users() -> None:
    """Code, comments, docs and tests say nothing of how or where the project was built."""
    found = []
    for path in _product_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if BUILDING_WORDS.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_the_building_words_pattern() -> None:
    for line in (
        "measured on this machine",
        "no GPU was lent to this work",
        "this project's shared 2-core machine",
        "an earlier session measured",
        "see issue 23",
        "the device tool's KINDS.md",
    ):
        assert BUILDING_WORDS.search(line), line
    for line in ('@pytest.fixture(scope="session")', "a silent fallback", "the issue tracker", "excellent"):
        assert not BUILDING_WORDS.search(line), line
