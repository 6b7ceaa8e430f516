"""Shared test fixtures: the reference data in tests/fixtures/reference, tiny models."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "reference"


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


# The heaviest modules' rough CPU cost, in seconds on one thread (tiny models; torchrun and
# subprocess start-ups included): the order the pytest-xdist workers start them in, below.
HEAVY_MODULES = {
    "test_miga_cli.py": 150,
    "test_cli_on_gpus.py": 150,
    "test_parallel.py": 160,
    "test_bench.py": 110,
    "test_ouroboros_cli.py": 130,
    "test_plan.py": 100,
    "test_parallel_resume.py": 40,
    "test_user_errors.py": 25,
    "test_wan_fifo.py": 40,
    "test_wan_model.py": 30,
    "test_wan_plan.py": 30,
}


def _chunk_sizes(items: int, workers: int) -> list[int]:
    """How pytest-xdist's ``worksteal`` scheduler first splits ``items`` tests over ``workers``
    idle workers: consecutive chunks, each of the remaining tests divided by the workers left."""
    sizes = []
    for left in range(workers, 0, -1):
        sizes.append((items - sum(sizes)) // left)
    return sizes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: each worker's first share starts with heavy modules, balanced over
    the workers by their cost, and ends with the light tests, which the scheduler moves from a
    busy worker's tail to an idle one; a module's heavy tests stay on one worker (its
    module-scoped fixtures are built once). Every test runs; only their order changes."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path.name, []).append(item)
    heavy = sorted((m for m in modules if m in HEAVY_MODULES), key=lambda m: -HEAVY_MODULES[m])
    light = [item for name, group in modules.items() if name not in HEAVY_MODULES for item in group]
    sizes = _chunk_sizes(len(items), workers)
    bins: list[list[pytest.Item]] = [[] for _ in sizes]
    cost = [0.0] * workers
    for name in heavy:  # the costliest first, each to the cheapest worker with room for it
        fits = [w for w in range(workers) if len(bins[w]) + len(modules[name]) <= sizes[w]]
        w = min(fits or range(workers), key=lambda w: cost[w])
        bins[w].extend(modules[name])
        cost[w] += HEAVY_MODULES[name]
    order: list[pytest.Item] = []
    for w, size in enumerate(sizes):
        take = max(0, size - len(bins[w])) if w < workers - 1 else len(light)
        order += bins[w] + light[:take]
        light = light[take:]
    items[:] = order


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "tiny_t2v" / "config.yaml").is_file():
        pytest.fail(f"reference data not found at {REFERENCE}: the checkout is incomplete")
    return REFERENCE


@functools.cache
def tiny_t2v_weights() -> dict:
    """The whole state_dict of the reference tiny_t2v model: each key's value from the fixture
    scheme (tools/reference/fixture_weights.py), buffers as our model computes them."""
    from lvdm.build import build_model
    from tools.reference.fixture_weights import module_fixture_weights

    return module_fixture_weights(build_model(REFERENCE / "tiny_t2v" / "config.yaml"))


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


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: nothing may appear in it unless asked for (no default results/)."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def free_port() -> int:
    """A TCP port nobody listens on now (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``script args`` under torchrun with ``nproc`` CPU ranks of one thread each, from the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        script,
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def load_script(relative: str) -> ModuleType:
    """``scripts/NAME.py`` (or any file of the checkout) imported as a module, executed afresh.

    It is registered in ``sys.modules`` (as ``script_NAME``) while it runs: dataclasses look their
    module up there."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: usage errors must come before it."""
    import lvdm.build

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the usage error")

    monkeypatch.setattr(lvdm.build, "load_model", refuse)
