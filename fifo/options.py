"""What a user chooses, parsed once into typed, immutable objects.

- ``--mode`` → :class:`ModeOptions` (:func:`parse_mode`): one :class:`MainMode`, then sub
  options in any order. Nothing below the CLI sees the mode string.
- The sampling and output settings → :class:`GenerationSettings`, validated on creation (the
  one place where each setting's range is checked; messages name the command-line flag).
- ``--dtype`` → :class:`Precision`.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from enum import Enum

import torch

from fifo.geometry import FifoGeometry
from fifo.noise import NoiseOrder

logger = logging.getLogger(__name__)


class _Choice(str, Enum):
    """A command-line choice: compares equal to its string and prints as it."""

    def __str__(self) -> str:
        return self.value


class MainMode(_Choice):
    """The main option of ``--mode``: which model and what conditions the FIFO windows."""

    T2V = "t2v"
    I2V = "i2v"
    T2V_SEED = "t2v_seed"
    T2V_SEED_AR = "t2v_seed_ar"

    @property
    def description(self) -> str:
        return MAIN_OPTIONS[self.value]

    @property
    def uses_image_model(self) -> bool:
        """Whether the mode needs the image-to-video model (an image embedder)."""
        return self is not MainMode.T2V

    @property
    def takes_input_image(self) -> bool:
        """Whether every prompt comes with an image (``image_path;prompt`` lines)."""
        return self is MainMode.I2V

    @property
    def seeds_image(self) -> bool:
        """Whether the base clip's first frame seeds the image tokens (t2v_seed, t2v_seed_ar)."""
        return self in (MainMode.T2V_SEED, MainMode.T2V_SEED_AR)

    @property
    def reseeds_each_frame(self) -> bool:
        """Whether the image tokens are replaced by the newest output frame's (t2v_seed_ar)."""
        return self is MainMode.T2V_SEED_AR


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
        check_qcache_weight(self.weight)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Transformer kinds that take part: ``"temporal"`` and/or ``"spatial"``."""
        return tuple(k for k, on in (("temporal", self.temporal), ("spatial", self.spatial)) if on)

    @property
    def attentions(self) -> tuple[str, ...]:
        """Attention layer names that take part: ``"attn1"`` and/or ``"attn2"``."""
        return tuple(a for a, on in (("attn1", self.attn1), ("attn2", self.attn2)) if on)


def check_qcache_weight(weight: float) -> None:
    """The one check of the Q-cache weight's range (also rejects NaN)."""
    if not 0.0 <= weight <= 1.0:
        raise ModeError(f"the Q-cache weight (--qcache_weight) must lie in [0, 1], got {weight}")


@dataclass(frozen=True)
class ModeOptions:
    """Everything ``--mode`` selects."""

    main: MainMode = MainMode.T2V
    qcache: QCacheOptions | None = None
    unilatent: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "main", MainMode(self.main))  # accepts "t2v" as well as MainMode.T2V

    @property
    def uses_image_model(self) -> bool:
        return self.main.uses_image_model

    @property
    def seeds_image(self) -> bool:
        return self.main.seeds_image

    @property
    def reseeds_each_frame(self) -> bool:
        return self.main.reseeds_each_frame

    @property
    def name(self) -> str:
        """The canonical mode string (sub options in a fixed order)."""
        parts = [self.main.value]
        if self.qcache is not None:
            parts += [
                p for p, on in (("TTqcache", self.qcache.temporal), ("STqcache", self.qcache.spatial)) if on
            ]
            parts += list(self.qcache.attentions)
        if self.unilatent:
            parts.append("unilatent")
        return "_".join(parts)


def _did_you_mean(words: list[str], choices: list[str]) -> str:
    """ " (did you mean 'x'?)" for the closest valid part of each unknown word, or ""."""
    guesses = [m[0] for w in words if (m := difflib.get_close_matches(w, choices, n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""


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
    check_qcache_weight(qcache_weight)  # checked even when no Q-cache is on
    text = mode.strip()
    # Longest main option first: "t2v_seed_ar" must not parse as "t2v" + "seed" + "ar".
    main = next(
        (m for m in sorted(MAIN_OPTIONS, key=len, reverse=True) if text == m or text.startswith(m + "_")),
        None,
    )
    if main is None:
        head = text.split("_")[0]
        hint = _did_you_mean([text], list(MAIN_OPTIONS)) or _did_you_mean([head], list(MAIN_OPTIONS))
        raise ModeError(f"unknown main option in mode {mode!r}{hint}.\n{_valid_parts_message()}")
    subs = text[len(main) :].split("_")[1:]
    if "" in subs:
        raise ModeError(f"empty part in mode {mode!r} (two '_' in a row, or a trailing '_')")
    unknown = [s for s in subs if s not in SUB_OPTIONS]
    if unknown:
        hint = _did_you_mean(unknown, list(SUB_OPTIONS))
        raise ModeError(f"unknown part(s) {unknown} in mode {mode!r}{hint}.\n{_valid_parts_message()}")
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
    return ModeOptions(main=MainMode(main), qcache=qcache, unilatent="unilatent" in subs)


class Precision(_Choice):
    """The floating-point type the U-Net and the autoencoder compute in (``--dtype``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.torch_dtype.itemsize

    @classmethod
    def default_for(cls, device: str | torch.device) -> Precision:
        """fp16 on CUDA, fp32 elsewhere."""
        return cls.FP16 if torch.device(device).type == "cuda" else cls.FP32


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and output settings shared by all prompts of a run, checked on creation.

    ``rng``: ``DEFAULT`` draws the base clip and the FIFO queue from two streams seeded from
    ``seed`` (a cached base clip then gives the same video as a fresh one, whatever came
    before); ``PUBLISHED`` draws everything from one stream seeded once with ``seed`` and
    continued over the prompts of the process, in the published code's order and shapes.

    Raises:
        ValueError: a setting out of range; the message names its command-line flag.
    """

    video_length: int = 16
    num_partitions: int = 4
    new_video_length: int = 100
    height: int = 320
    width: int = 512
    fps: int = 8
    guidance: float = 12.0
    eta: float = 1.0
    lookahead: bool = True
    seed: int = 321
    save_frames: bool = False
    use_mp4: bool = False
    output_fps: int = 10
    batched: bool = True
    window_batch: int | None = None
    dtype: Precision = Precision.FP32
    progress: bool = True
    rng: NoiseOrder = NoiseOrder.DEFAULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", Precision(self.dtype))  # accepts "fp16" as well
        object.__setattr__(self, "rng", NoiseOrder(self.rng))
        self.geometry  # noqa: B018 -- checks --video_length and --num_partitions
        checks = [
            (self.new_video_length >= 1, "--new_video_length must be ≥ 1"),
            (self.height > 0 and self.width > 0, "--height and --width must be positive"),
            (0 <= self.guidance < math.inf, "--unconditional_guidance_scale must be a finite number ≥ 0"),
            (0 <= self.seed < 2**63, "--seed must be a whole number in [0, 2**63)"),
            (0.0 <= self.eta <= 1.0, "--eta must lie in [0, 1]"),
            (self.output_fps >= 1 and self.fps >= 1, "--fps and --output_fps must be ≥ 1"),
            (self.window_batch is None or self.window_batch >= 1, "--window_batch must be ≥ 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def geometry(self) -> FifoGeometry:
        """The queue layout of these settings."""
        return FifoGeometry(self.video_length, self.num_partitions, self.lookahead)
