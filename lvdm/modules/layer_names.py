"""Names of the U-Net's parts that tricks choose layers by: which half of the U-Net, which kind
of transformer, which attention of a transformer block. Each value is the name the module tree
uses (an attribute of ``BasicTransformerBlock`` for :class:`AttentionSite`)."""

from __future__ import annotations

from enum import StrEnum


class UNetSide(StrEnum):
    """A half of the U-Net: the encoder (``input_blocks``) or the decoder (``output_blocks``)."""

    ENCODER = "encoder"
    DECODER = "decoder"

    @property
    def blocks(self) -> str:
        """The ``UNetModel`` attribute (and checkpoint-key prefix) holding this side's blocks."""
        return "input_blocks" if self is UNetSide.ENCODER else "output_blocks"


class TransformerKind(StrEnum):
    """A kind of transformer of the 3D U-Net: over the pixels of a frame, or over the frames."""

    TEMPORAL = "temporal"
    SPATIAL = "spatial"


class AttentionSite(StrEnum):
    """An attention of a transformer block, by its attribute name."""

    SELF = "attn1"  # self-attention
    SECOND = "attn2"  # cross-attention to the context (self-attention in temporal-only blocks)
