"""A table written as CSV: the header, then one line per row, in a folder made if missing."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def write_csv_table(
    path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> Path:
    """Write ``rows`` (cells by column name, already formatted) under the header ``columns``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
