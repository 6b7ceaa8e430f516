"""The order the test suite's tests start in under pytest-xdist (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests import conftest


def _items(counts: dict[str, int]) -> list[SimpleNamespace]:
    return [SimpleNamespace(path=Path("tests") / name, i=i) for name, n in counts.items() for i in range(n)]


def test_every_test_runs_and_heavy_modules_start_first_balanced_over_the_workers() -> None:
    heavy = sorted(conftest.HEAVY_MODULES, key=conftest.HEAVY_MODULES.get, reverse=True)
    counts = {"test_a.py": 40, heavy[0]: 10, "test_b.py": 30, heavy[1]: 10, heavy[2]: 5, "test_c.py": 25}
    items = _items(counts)
    before = list(items)
    config = SimpleNamespace(workerinput={"workercount": 2})
    conftest.pytest_collection_modifyitems(config, items)
    assert sorted(map(id, items)) == sorted(map(id, before))  # every test, once
    first, second = conftest._chunk_sizes(len(items), 2)
    assert (first, second) == (60, 60)
    shares = [items[:first], items[first:]]
    names = [[i.path.name for i in share] for share in shares]
    # the two heaviest on different workers, each whole, at the start of its share
    assert names[0][:10] == [heavy[0]] * 10 and names[1][:10] == [heavy[1]] * 10
    assert all(sum(n.count(h) for n in names) == max(n.count(h) for n in names) for h in heavy[:3])
    # the light tests keep their order and end each share
    light = [i for i in before if i.path.name not in conftest.HEAVY_MODULES]
    assert [i for i in items if i.path.name not in conftest.HEAVY_MODULES] == light
    assert names[0][-1] not in conftest.HEAVY_MODULES and names[1][-1] not in conftest.HEAVY_MODULES


def test_without_workers_the_order_is_the_files_order() -> None:
    items = _items({"test_z.py": 3, next(iter(conftest.HEAVY_MODULES)): 2})
    before = list(items)
    conftest.pytest_collection_modifyitems(SimpleNamespace(), items)
    assert items == before
