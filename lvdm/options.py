"""The `--mode` string, parsed once into a typed, immutable options object.

A mode is ``{main}[_{sub}]...``: one main option, then any of the sub options in any order.
Everything downstream (sampler, U-Net attention processors) receives :class:`ModeOptions`,
never the raw string.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAIN_OPTIONS: dict[str, str] = {
    "t2v": "text-to-video (VideoCrafter2 text-to-video model)",
    "i2v": "image-to-video (VideoCrafter1 image-to-video model, an image per prompt)",
    "t2v_seed": "text-to-video with the image-to-video model, seeded with the base clip's first frame",
    "t2v_seed_ar": "as t2v_seed, re-seeded with the newest output frame after every frame",
}
SUB_OPTIONS: dict[str, str] = {
    "TTqcache": "Q-cache on the temporal transformers",
    "STqcache": "Q-cache on the spatial transformers",
    "attn1": "Q-cache on the first (self-)attention",
    "attn2": "Q-cache on the second attention",
    "unilatent": "spread the base clip's frames uniformly over the initial queue",
}


class ModeError(ValueError):
    """An invalid ``--mode`` string. The message lists the valid parts."""


@dataclass(frozen=True)
class QCacheOptions:
    """Which decoder queries are blended with the matching encoder queries, and by how much.

    The decoder query becomes ``(1 - weight) * q_decoder + weight * q_encoder``.
    """

    temporal: bool = True
    spatial: bool = False
    attn1: bool = True
    attn2: bool = False
    weight: float = 0.9

    def __post_init__(self) -> None:
        if not (self.temporal or self.spatial):
            raise ModeError("a Q-cache needs a transformer kind: TTqcache and/or STqcache")
        if not (self.attn1 or self.attn2):
            raise ModeError("a Q-cache needs an attention: attn1 and/or attn2")
        if not 0.0 <= self.weight <= 1.0:
            raise ModeError(f"the Q-cache weight must lie in [0, 1], got {self.weight}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Transformer kinds that take part: ``"temporal"`` and/or ``"spatial"``."""
        return tuple(k for k, on in (("temporal", self.temporal), ("spatial", self.spatial)) if on)

    @property
    def attentions(self) -> tuple[str, ...]:
        """Attention layer names that take part: ``"attn1"`` and/or ``"attn2"``."""
        return tuple(a for a, on in (("attn1", self.attn1), ("attn2", self.attn2)) if on)


@dataclass(frozen=True)
class ModeOptions:
    """Everything ``--mode`` selects."""

    main: str = "t2v"
    qcache: QCacheOptions | None = None
    unilatent: bool = False

    @property
    def uses_image_model(self) -> bool:
        """Whether the mode needs the image-to-video model (an image embedder)."""
        return self.main != "t2v"

    @property
    def seeds_image(self) -> bool:
        """Whether the base clip's first frame seeds the image tokens (t2v_seed, t2v_seed_ar)."""
        return self.main in ("t2v_seed", "t2v_seed_ar")

    @property
    def reseeds_each_frame(self) -> bool:
        """Whether the image tokens are replaced by the newest output frame's (t2v_seed_ar)."""
        return self.main == "t2v_seed_ar"

    @property
    def name(self) -> str:
        """The canonical mode string (sub options in a fixed order)."""
        parts = [self.main]
        if self.qcache is not None:
            parts += [
                p for p, on in (("TTqcache", self.qcache.temporal), ("STqcache", self.qcache.spatial)) if on
            ]
            parts += list(self.qcache.attentions)
        if self.unilatent:
            parts.append("unilatent")
        return "_".join(parts)


def _valid_parts_message() -> str:
    mains = "\n".join(f"  {k:<12} {v}" for k, v in MAIN_OPTIONS.items())
    subs = "\n".join(f"  {k:<12} {v}" for k, v in SUB_OPTIONS.items())
    return f"A mode is {{main}}[_{{sub}}]...\nmain options:\n{mains}\nsub options:\n{subs}"


def parse_mode(mode: str, qcache_weight: float = 0.9) -> ModeOptions:
    """Parse a ``--mode`` string such as ``"t2v_seed_TTqcache_attn1_unilatent"``.

    A Q-cache without ``attn1``/``attn2`` means ``attn1`` (the published trick, temporal
    self-attention); ``attn1``/``attn2`` without a Q-cache is an error.

    Raises:
        ModeError: unknown or repeated parts (with the list of valid ones), ``attn1``/``attn2``
            without a Q-cache, or a weight outside [0, 1].
    """
    if not 0.0 <= qcache_weight <= 1.0:  # also rejects NaN; checked even when no Q-cache is on
        raise ModeError(f"the Q-cache weight (--qcache_weight) must lie in [0, 1], got {qcache_weight}")
    text = mode.strip()
    # Longest main option first: "t2v_seed_ar" must not parse as "t2v" + "seed" + "ar".
    main = next(
        (m for m in sorted(MAIN_OPTIONS, key=len, reverse=True) if text == m or text.startswith(m + "_")),
        None,
    )
    if main is None:
        raise ModeError(f"unknown main option in mode {mode!r}.\n{_valid_parts_message()}")
    subs = [s for s in text[len(main) :].split("_") if s]
    unknown = [s for s in subs if s not in SUB_OPTIONS]
    if unknown:
        raise ModeError(f"unknown part(s) {unknown} in mode {mode!r}.\n{_valid_parts_message()}")
    repeated = sorted({s for s in subs if subs.count(s) > 1})
    if repeated:
        raise ModeError(f"repeated part(s) {repeated} in mode {mode!r}")

    kinds = {"TTqcache", "STqcache"} & set(subs)
    attns = {"attn1", "attn2"} & set(subs)
    qcache = None
    if kinds:
        if not attns:
            logger.info("mode %r: a Q-cache without attn1/attn2 applies to attn1 (self-attention)", mode)
            attns = {"attn1"}
        qcache = QCacheOptions(
            temporal="TTqcache" in kinds,
            spatial="STqcache" in kinds,
            attn1="attn1" in attns,
            attn2="attn2" in attns,
            weight=float(qcache_weight),
        )
    elif attns:
        raise ModeError(
            f"mode {mode!r}: {sorted(attns)} select which attention a Q-cache applies to, "
            "but no Q-cache is on: add TTqcache or STqcache"
        )
    return ModeOptions(main=main, qcache=qcache, unilatent="unilatent" in subs)
