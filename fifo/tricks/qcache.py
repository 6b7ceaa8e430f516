"""Weighted Q-caches: decoder attention queries blended with the matching encoder queries.

In one U-Net pass, the chosen attentions of the encoder's transformers record their query;
the same attentions in the decoder replace theirs with ``(1 - w)·q_decoder + w·q_encoder``.
Both sides are attention processors (see ``lvdm.modules.attention``), installed by
:func:`set_qcache`; the U-Net itself knows nothing of the trick. It only says where its
transformers are (``UNetModel.encoder_attention_blocks`` / ``decoder_attention_blocks``), and
:func:`set_qcache` pairs them with the published block map: decoder block j of a level takes
the queries of encoder block ``max(0, num_res_blocks - 1 - j)`` of the same level (2 res
blocks: second, first, first). The middle block and ``init_attn`` take no part. The store is
emptied before and after every U-Net pass (forward hooks on the U-Net).

Everything is elementwise per sample, so batched passes (several windows, cond and uncond
in one call) give each sample its own cache. Two execution details of the fast path are
handled by the store rather than the U-Net:

- A transformer may run its sequences in chunks (``fifo.perf.UNetExecution.transformer_chunk``), so a
  processor is called once per chunk. The encoder records one query per chunk, in order, and
  each decoder reader takes them back in the same order; the encoder and decoder sites of a
  slot see the same shapes, hence the same chunks (checked on every read).
- Slices of one batch may run concurrently in threads (``fifo.perf.ShardedDenoiser``), so the
  recorded queries are per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fifo.options import QCacheOptions
from lvdm.modules.attention import (
    AttentionBackend,
    AttnProcessor,
    CrossAttention,
    SpatialTransformer,
    TemporalTransformer,
    add_processor,
    processor_parts,
    remove_processors,
)
from lvdm.modules.layer_names import TransformerKind

# (encoder block index, TransformerKind, depth in the transformer, AttentionSite)
SlotKey = tuple


class QCacheStore:
    """Queries recorded by the encoder during the current U-Net pass of this thread, by slot."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.hooks: list[RemovableHandle] = []  # the U-Net's hooks that empty the store per pass

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

    def __init__(
        self, store: QCacheStore, slot: SlotKey, backend: AttentionBackend = AttentionBackend.SDPA
    ) -> None:
        super().__init__(backend)
        self.store, self.slot = store, slot

    def process_query(self, attn: CrossAttention, q: Tensor) -> Tensor:
        self.store.record(self.slot, q)
        return q


class QCacheBlendProcessor(AttnProcessor):
    """Decoder side: blends its query with the encoder query recorded under ``slot``."""

    def __init__(
        self,
        store: QCacheStore,
        slot: SlotKey,
        weight: float,
        backend: AttentionBackend = AttentionBackend.SDPA,
    ) -> None:
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


_TRANSFORMER_KINDS = {
    TransformerKind.SPATIAL: SpatialTransformer,
    TransformerKind.TEMPORAL: TemporalTransformer,
}


_QCACHE_PROCESSORS = (QCacheRecordProcessor, QCacheBlendProcessor)


def _installed_stores(unet: nn.Module) -> list[QCacheStore]:
    stores: dict[int, QCacheStore] = {}
    for layer in unet.attention_layers().values():
        for part in processor_parts(layer):
            if isinstance(part, _QCACHE_PROCESSORS):
                stores[id(part.store)] = part.store
    return list(stores.values())


def remove_qcache(unet: nn.Module) -> None:
    """Take the Q-cache processors off every layer (other tricks' stay); remove the store's hooks."""
    for store in _installed_stores(unet):
        for handle in store.hooks:
            handle.remove()
        store.hooks.clear()
    for layer in unet.attention_layers().values():
        remove_processors(layer, _QCACHE_PROCESSORS, unet.attention_backend)


def set_qcache(unet: nn.Module, options: QCacheOptions | None) -> QCacheStore | None:
    """Install Q-cache processors on a ``UNetModel`` for ``options``; None removes them.

    They go next to other tricks' processors on the same layers (``add_processor``). Processors
    use the U-Net's attention backend (``UNetModel.set_attn_processor``: set the backend first).
    Returns the store the processors share, or None.
    """
    remove_qcache(unet)
    if options is None:
        return None
    backend = unet.attention_backend
    store = QCacheStore()
    recorded: set[SlotKey] = set()  # two decoder blocks may read one encoder slot: one recorder
    for (level, j), dec_index in unet.decoder_attention_blocks.items():
        enc_index = unet.encoder_attention_blocks[(level, max(0, unet.num_res_blocks - 1 - j))]
        for kind in options.kinds:
            kind_cls = _TRANSFORMER_KINDS[kind]
            enc = next(m for m in unet.input_blocks[enc_index] if isinstance(m, kind_cls))
            dec = next(m for m in unet.output_blocks[dec_index] if isinstance(m, kind_cls))
            for depth, (enc_block, dec_block) in enumerate(
                zip(enc.transformer_blocks, dec.transformer_blocks, strict=True)
            ):
                for attn_name in options.attentions:
                    slot = (enc_index, kind, depth, attn_name)
                    if slot not in recorded:
                        recorded.add(slot)
                        record = QCacheRecordProcessor(store, slot, backend)
                        add_processor(getattr(enc_block, attn_name), record, backend)
                    blend = QCacheBlendProcessor(store, slot, options.weight, backend)
                    add_processor(getattr(dec_block, attn_name), blend, backend)
    # Nothing left over from a pass that raised; the recorded queries freed between passes.
    store.hooks.append(unet.register_forward_pre_hook(lambda _module, _args: store.clear()))
    store.hooks.append(unet.register_forward_hook(lambda _module, _args, _out: store.clear()))
    return store
