"""Shared test fixtures: the reference data beside the checkout, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "tiny_t2v" / "config.yaml").is_file():
        pytest.fail(f"reference data not found at {REFERENCE}: clone the project next to shared/")
    return REFERENCE


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "checkpoint_manifest.json").read_text())
