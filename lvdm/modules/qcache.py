"""Weighted Q-caches: decoder attention queries blended with the matching encoder queries.

In one U-Net pass, the chosen attentions of the encoder's transformers record their query;
the same attentions in the decoder replace theirs with ``(1 - w)·q_decoder + w·q_encoder``.
Both sides are attention processors (see ``lvdm.modules.attention``), installed by
``UNetModel.set_qcache``; the U-Net itself knows nothing of the trick beyond which encoder
block feeds which decoder block.

Everything is elementwise per sample, so batched passes (several windows, cond and uncond
in one call) give each sample its own cache.
"""

from __future__ import annotations

from torch import Tensor

from lvdm.modules.attention import AttnProcessor, CrossAttention

SlotKey = tuple


class QCacheStore:
    """Queries recorded by the encoder during the current U-Net pass, by slot."""

    def __init__(self) -> None:
        self.queries: dict[SlotKey, Tensor] = {}

    def clear(self) -> None:
        self.queries.clear()


class QCacheRecordProcessor(AttnProcessor):
    """Encoder side: keeps the query in ``store`` under ``slot``, attention unchanged."""

    def __init__(self, store: QCacheStore, slot: SlotKey, backend: str = "sdpa") -> None:
        super().__init__(backend)
        self.store, self.slot = store, slot

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        self.store.queries[self.slot] = q
        return q


class QCacheBlendProcessor(AttnProcessor):
    """Decoder side: blends its query with the encoder query recorded under ``slot``."""

    def __init__(self, store: QCacheStore, slot: SlotKey, weight: float, backend: str = "sdpa") -> None:
        super().__init__(backend)
        self.store, self.slot, self.weight = store, slot, weight

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        cached = self.store.queries.get(self.slot)
        if cached is None:
            raise RuntimeError(f"Q-cache slot {self.slot} was not recorded before the decoder read it")
        return (1.0 - self.weight) * q + self.weight * cached
