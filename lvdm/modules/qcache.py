"""Weighted Q-caches: decoder attention queries blended with the matching encoder queries.

In one U-Net pass, the chosen attentions of the encoder's transformers record their query;
the same attentions in the decoder replace theirs with ``(1 - w)·q_decoder + w·q_encoder``.
Both sides are attention processors (see ``lvdm.modules.attention``), installed by
``UNetModel.set_qcache``; the U-Net itself knows nothing of the trick beyond which encoder
block feeds which decoder block.

Everything is elementwise per sample, so batched passes (several windows, cond and uncond
in one call) give each sample its own cache. Two execution details of the fast path are
handled by the store rather than the U-Net:

- A transformer may run its sequences in chunks (``UNetExecution.transformer_chunk``), so a
  processor is called once per chunk. The encoder records one query per chunk, in order, and
  each decoder reader takes them back in the same order; the encoder and decoder sites of a
  slot see the same shapes, hence the same chunks (checked on every read).
- Slices of one batch may run concurrently in threads (``lvdm.perf.ShardedDenoiser``), so the
  recorded queries are per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from torch import Tensor

from lvdm.modules.attention import AttnProcessor, CrossAttention

SlotKey = tuple


class QCacheStore:
    """Queries recorded by the encoder during the current U-Net pass of this thread, by slot."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _state(self) -> tuple[dict[SlotKey, list[Tensor]], dict[tuple[SlotKey, Hashable], int]]:
        local = self._local
        if not hasattr(local, "queries"):
            local.queries, local.cursors = {}, {}
        return local.queries, local.cursors

    def record(self, slot: SlotKey, q: Tensor) -> None:
        """Keep the query of the next chunk recorded under ``slot``."""
        queries, _ = self._state()
        queries.setdefault(slot, []).append(q)

    def read(self, slot: SlotKey, reader: Hashable) -> Tensor:
        """The next recorded query of ``slot`` that ``reader`` has not read yet in this pass."""
        queries, cursors = self._state()
        recorded = queries.get(slot, [])
        position = cursors.get((slot, reader), 0)
        if position >= len(recorded):
            raise RuntimeError(f"Q-cache slot {slot} was not recorded before the decoder read it")
        cursors[(slot, reader)] = position + 1
        return recorded[position]

    def clear(self) -> None:
        """Forget this thread's queries (between U-Net passes)."""
        queries, cursors = self._state()
        queries.clear()
        cursors.clear()


class QCacheRecordProcessor(AttnProcessor):
    """Encoder side: keeps the query in ``store`` under ``slot``, attention unchanged."""

    def __init__(self, store: QCacheStore, slot: SlotKey, backend: str = "sdpa") -> None:
        super().__init__(backend)
        self.store, self.slot = store, slot

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        self.store.record(self.slot, q)
        return q


class QCacheBlendProcessor(AttnProcessor):
    """Decoder side: blends its query with the encoder query recorded under ``slot``."""

    def __init__(self, store: QCacheStore, slot: SlotKey, weight: float, backend: str = "sdpa") -> None:
        super().__init__(backend)
        self.store, self.slot, self.weight = store, slot, weight

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        cached = self.store.read(self.slot, id(self))
        if cached.shape != q.shape:
            # Broadcasting would silently mix samples; the sites must match exactly.
            raise RuntimeError(
                f"Q-cache slot {self.slot}: the decoder query {tuple(q.shape)} does not match the "
                f"recorded encoder query {tuple(cached.shape)}"
            )
        return (1.0 - self.weight) * q + self.weight * cached
