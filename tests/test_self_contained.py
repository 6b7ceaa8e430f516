"""The test suite runs from a bare clone: every file it reads lives in the checkout, and its data
stays small enough to clone."""

from __future__ import annotations

import re

from tests.conftest import REPO

TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures"
# A path that climbs out of the checkout: the folder above the checkout's root (REPO.parent,
# ROOT.parent, parents[1].parent, parents[2] from tests/), or a "shared" folder beside it. (Paths
# such as "../../etc/passwd" that tests hand to the product as bad input are not reads.)
OUTSIDE = re.compile(
    r"\.\./shared\b|\b(?:REPO|ROOT)\.parent\b|parents\[1\]\.parent|parents\[[2-9]\]|[\"']shared[\"']\s*/|shared/reference"
)
MAX_FIXTURE_BYTES = 20_000_000


def test_no_test_reads_outside_the_checkout() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line) and path.name != "test_self_contained.py":
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_paths_out_of_the_checkout() -> None:
    for line in (
        'REFERENCE = REPO.parent / "shared" / "reference"',
        'Path(__file__).resolve().parents[1].parent / "data"',
        'open("../shared/reference/meta.json")',
        'ROOT.parent / "videos"',
    ):
        assert OUTSIDE.search(line), line
    for line in (
        'REPO / "tests" / "fixtures"',
        "path.parent.mkdir()",
        "NOT_CODE = {'shared', 'docs'}",
        '"../../etc/passwd"',
    ):
        assert not OUTSIDE.search(line), line


def test_test_data_is_small() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < MAX_FIXTURE_BYTES, f"tests/fixtures holds {total / 1e6:.1f} MB"
    assert not list(FIXTURES.rglob("state_dict.safetensors")), "fixture weights are recomputed, not stored"
