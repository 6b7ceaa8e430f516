"""Compare the project's numbers with a reference fixture folder, one line per case.

    python scripts/check_reference.py tests/fixtures/reference/tiny_t2v

Exits 1 if any case's error exceeds 1e-4 (see tools/reference/__init__.py for how errors are scaled),
2 for a folder that is not a fixture (or whose config or weights do not load).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.errors import UserError  # noqa: E402
from tools.reference import TOLERANCE, ReferenceSuite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "fixture_dir", type=Path, help="folder in the format of tests/fixtures/reference/tiny_t2v"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        suite = ReferenceSuite(args.fixture_dir)
    except UserError as err:  # a folder that is not a fixture, a config or weights that do not load
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for case in suite.cases():
        status = "ok  " if case.passed else "FAIL"
        failed += not case.passed
        note = f"  ({case.note})" if case.note else ""
        print(
            f"{status} {case.name:<52} max abs err {case.max_abs_error:.2e}  scaled {case.scaled_error:.2e}{note}"
        )
    print(f"all cases within {TOLERANCE:g}" if not failed else f"{failed} case(s) exceed {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
