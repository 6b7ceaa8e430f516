"""Shared test fixtures: the reference data beside the checkout, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def write_png(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A random-noise RGB image of ``size`` (width, height) at ``path`` (folders created)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist every worker computes on one thread: the workers share the cores, and
    two spinning threads per op wait on each other when one is descheduled."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "tiny_t2v" / "config.yaml").is_file():
        pytest.fail(f"reference data not found at {REFERENCE}: clone the project next to shared/")
    return REFERENCE


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "checkpoint_manifest.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one thread: far faster than two contended ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
