"""lvdm/modules/qcache.py: the store behind the Q-cache processors."""

from __future__ import annotations

import threading

import pytest
import torch

from fifo.tricks.qcache import QCacheBlendProcessor, QCacheRecordProcessor, QCacheStore
from lvdm.modules.attention import CrossAttention


def test_each_reader_takes_the_chunks_in_recorded_order() -> None:
    store = QCacheStore()
    chunks = [torch.full((2, 3), float(i)) for i in range(3)]
    for q in chunks:
        store.record(("site",), q)
    # Two decoder blocks read the same encoder slot: each walks through all chunks.
    for reader in ("first", "second"):
        assert [float(store.read(("site",), reader)[0, 0]) for _ in chunks] == [0.0, 1.0, 2.0]
    with pytest.raises(RuntimeError, match="not recorded"):
        store.read(("site",), "first")
    store.clear()
    with pytest.raises(RuntimeError, match="not recorded"):
        store.read(("site",), "second")


def test_queries_are_per_thread() -> None:
    store = QCacheStore()
    store.record(("site",), torch.zeros(1))
    seen: list[str] = []

    def other_thread() -> None:
        try:
            store.read(("site",), "reader")
            seen.append("read")
        except RuntimeError:
            seen.append("missing")
        store.record(("site",), torch.ones(1))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen == ["missing"]
    # The other thread's record did not land here.
    assert float(store.read(("site",), "reader")) == 0.0
    with pytest.raises(RuntimeError):
        store.read(("site",), "reader")


def test_blend_checks_the_shapes_match() -> None:
    store = QCacheStore()
    attn = CrossAttention(8, heads=2, dim_head=4)
    record = QCacheRecordProcessor(store, ("s",))
    blend = QCacheBlendProcessor(store, ("s",), weight=0.25)
    q = torch.randn(3, 5, 8)
    assert record.process_query(attn, q) is q
    out = blend.process_query(attn, torch.zeros(3, 5, 8))
    torch.testing.assert_close(out, 0.25 * q)
    record.process_query(attn, torch.randn(1, 5, 8))  # would broadcast against (3, 5, 8)
    with pytest.raises(RuntimeError, match="does not match"):
        blend.process_query(attn, torch.zeros(3, 5, 8))
