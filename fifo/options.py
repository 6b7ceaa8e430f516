"""What a user chooses, parsed once into typed, immutable objects.

- ``--mode`` → :class:`ModeOptions` (:func:`parse_mode`): one :class:`MainMode`, then sub
  options in any order; the tricks' parameters (``--qcache_weight``, the Ouroboros-Diffusion
  flags gathered in :class:`TrickArguments`) become fields of the typed option objects, checked
  here. Nothing below the CLI sees the mode string.
- The sampling and output settings → :class:`GenerationSettings`, validated on creation (the
  one place where each setting's range is checked; messages name the setting by its field, in
  backquotes, and the command line prints its flag).
- A mode string (``"t2v_seed_TTqcache"``) is the library's own value, as the Python API takes
  it too: :func:`parse_mode` is its one grammar, here and not in ``cli/``.
- ``--dtype`` → :class:`Precision`.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum

import torch

from fifo.geometry import FifoGeometry
from fifo.miga_options import AnchorOptions, ReflectOptions, ZigzagOptions
from fifo.noise import NoiseOrder
from fifo.option_errors import ModeError, check_option
from infra.errors import SettingsError
from lvdm.modules.layer_names import AttentionSite, TransformerKind

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


# The longest finite video -l accepts: a million frames is more than a day of video at 10 fps and
# weeks of sampling. A longer number is a typo more often than a plan; -l inf runs until stopped.
MAX_NEW_VIDEO_LENGTH = 1_000_000

MAIN_OPTIONS: dict[str, str] = {
    "t2v": "text-to-video (VideoCrafter2 text-to-video model)",
    "i2v": "image-to-video (VideoCrafter1 image-to-video model, an image per prompt)",
    "t2v_seed": "text-to-video with the image-to-video model, seeded with the base clip's first frame "
    "(DynamiCrafter: the base clip from the `seed_config` text model)",
    "t2v_seed_ar": "as t2v_seed, re-seeded with the newest output frame after every frame",
}
SUB_OPTIONS: dict[str, str] = {
    "TTqcache": "Q-cache on the temporal transformers",
    "STqcache": "Q-cache on the spatial transformers",
    "attn1": "Q-cache on the first (self-)attention",
    "attn2": "Q-cache on the second attention",
    "unilatent": "spread the base clip's frames uniformly over the initial queue",
    "tailcoh": "coherent tail: low frequencies of the previous tail + high frequencies of fresh noise",
    "sacfa": "subject-aware cross-frame attention (needs `subject`)",
    "srg": "self-recurrent guidance of the front frames towards a subject feature bank (needs `subject`)",
    "zigzag": "MIGA two-stage alignment: noise levels change every `zigzag_length` latents, then one level",
    "anchors": "MIGA long-range frame guidance: clean frames from the whole video in front of each window",
    "reflect": "MIGA self-reflection: a noisy frame that breaks consistency is re-drawn from candidates",
}


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
    def kinds(self) -> tuple[TransformerKind, ...]:
        """Transformer kinds that take part (temporal first)."""
        return tuple(k for k, on in zip(TransformerKind, (self.temporal, self.spatial), strict=True) if on)

    @property
    def attentions(self) -> tuple[AttentionSite, ...]:
        """The attentions of each transformer block that take part (self-attention first)."""
        return tuple(a for a, on in zip(AttentionSite, (self.attn1, self.attn2), strict=True) if on)


def check_qcache_weight(weight: float) -> None:
    """The one check of the Q-cache weight's range (also rejects NaN)."""
    if not 0.0 <= weight <= 1.0:
        raise ModeError(
            f"the Q-cache weight (`qcache_weight`) must lie in [0, 1], got {weight}",
        )


class TailFilter(_Choice):
    """The low-pass filter of the coherent tail (``--tail_filter``)."""

    GAUSSIAN = "gaussian"  # exp(-d² / (2·cutoff²)), as the Ouroboros-Diffusion demo (and FreeInit)
    IDEAL = "ideal"  # 1 inside the cut-off radius, 0 outside


@dataclass(frozen=True)
class TailCoherenceOptions:
    """Coherent tail latent sampling (``tailcoh``): the new tail slot takes the low frequencies of
    the previous tail latent and the high frequencies of fresh noise (``fifo.tricks.tailcoh``).

    Attributes:
        cutoff: the filter's cut-off in normalised frequency (1 = Nyquist along each axis);
            0 gives today's Gaussian tail (``--tail_lowpass``).
        filter: the filter's shape (``--tail_filter``).
    """

    cutoff: float = 0.25
    filter: TailFilter = TailFilter.GAUSSIAN

    def __post_init__(self) -> None:
        object.__setattr__(self, "filter", _choice(TailFilter, self.filter, "tail_filter"))
        _check(0.0 <= self.cutoff <= 1.0, f"`tail_lowpass` must lie in [0, 1], got {self.cutoff}")


@dataclass(frozen=True)
class SubjectOptions:
    """Where SACFA and SRG look for the subject (``fifo.tricks.subject``).

    Attributes:
        phrase: the subject's words as they stand in the prompt (``--subject``), in every scene
            of a story.
        levels: the U-Net resolution levels (0 = full latent size, 1 = half, ...) whose spatial
            transformers locate the subject (encoder cross-attention) and use it (decoder
            self-attention) (``--subject_levels``).
        threshold: a position belongs to the subject where its cross-attention to the subject
            words, scaled to [0, 1] over the frame (min-max), reaches this value
            (``--subject_threshold``).
    """

    phrase: str
    levels: tuple[int, ...] = (1, 2)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrase", " ".join(str(self.phrase).split()))
        object.__setattr__(self, "levels", _levels(self.levels))
        _check(bool(self.phrase), "`subject` must name the subject (words of the prompt), got nothing")
        _check(0.0 < self.threshold <= 1.0, f"`subject_threshold` must lie in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class SrgOptions:
    """Self-recurrent guidance (``srg``, ``fifo.tricks.srg``).

    Attributes:
        weight: the guidance weight (``--srg_weight``; 0 computes the term and applies none).
        momentum: the subject feature bank's moving average, ``bank ← m·bank + (1 − m)·new``
            (``--srg_momentum``; 1 keeps the first frame's features, 0 only the latest's).
        windows: how many FIFO windows are guided, counted from the front of the queue
            (``--srg_windows``); None: the front half of them (at least one), see
            :meth:`guided_windows`.
    """

    weight: float = 1.0
    momentum: float = 0.9
    windows: int | None = None

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.weight) and self.weight >= 0.0,
            f"`srg_weight` must be a finite number ≥ 0, got {self.weight}",
        )
        _check(0.0 <= self.momentum <= 1.0, f"`srg_momentum` must lie in [0, 1], got {self.momentum}")
        _check(
            self.windows is None or (isinstance(self.windows, int) and self.windows >= 1),
            f"`srg_windows` must be ≥ 1, got {self.windows}",
            "srg_windows",
        )

    def guided_windows(self, geometry: FifoGeometry) -> int:
        """How many windows of ``geometry`` are guided (front first).

        Raises:
            SettingsError: ``--srg_windows`` beyond the queue's windows.
        """
        total = len(geometry.windows())
        if self.windows is None:
            # The less noisy half: under the paper's schedule (Eq. 6) the term scales with about
            # 1 − ᾱ of the frame's next step, so the front window alone moves little; the noisiest
            # half is left out, where the subject masks are least reliable.
            return max(1, total // 2)
        if self.windows > total:
            raise SettingsError(
                f"`srg_windows` ({self.windows}) exceeds the {total} FIFO windows of these settings",
            )
        return self.windows


_check = check_option  # the tricks' range checks (NaN fails every comparison, so it is rejected too)


def _choice(kind: type[_Choice], value: object, option: str) -> _Choice:
    """``value`` as a ``kind``; a :class:`ModeError` naming ``option`` and the choices if it is none."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(k.value for k in kind)
        raise ModeError(f"`{option}` must be one of {choices}, got {value!r}") from None


def _levels(levels: Sequence[int]) -> tuple[int, ...]:
    """``(2, 1, 2)`` → (1, 2): distinct levels ≥ 0 in increasing order."""
    try:
        values = [int(v) for v in levels]
    except (TypeError, ValueError):
        raise ModeError(f"`subject_levels` must be levels such as (1, 2), got {levels!r}") from None
    _check(
        bool(values) and all(v >= 0 for v in values), f"`subject_levels` must be levels ≥ 0, got {levels!r}"
    )
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class TrickArguments:
    """The command-line values of the Ouroboros-Diffusion tricks' flags; None where not given."""

    tail_lowpass: float | None = None
    tail_filter: str | None = None
    subject: str | None = None
    subject_levels: Sequence[int] | None = None
    subject_threshold: float | None = None
    srg_weight: float | None = None
    srg_momentum: float | None = None
    srg_windows: int | None = None
    anchor_frames: int | None = None
    reflect_threshold: float | None = None
    reflect_candidates: int | None = None
    zigzag_length: int | None = None

    def given(self, *names: str) -> list[str]:
        """The flags among ``names`` that were given, as ``--name``."""
        return [f"--{n}" for n in names if getattr(self, n) is not None]


@dataclass(frozen=True)
class ModeOptions:
    """Everything ``--mode`` selects.

    ``subject`` is set exactly when ``sacfa`` or ``srg`` is on (both need it).
    """

    main: MainMode = MainMode.T2V
    qcache: QCacheOptions | None = None
    unilatent: bool = False
    tail: TailCoherenceOptions | None = None
    sacfa: bool = False
    srg: SrgOptions | None = None
    subject: SubjectOptions | None = None
    anchors: AnchorOptions | None = None
    reflect: ReflectOptions | None = None
    zigzag: ZigzagOptions | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "main", MainMode(self.main))  # accepts "t2v" as well as MainMode.T2V
        for part, on, why in (
            (
                "tailcoh",
                self.tail,
                "its tail follows the previous tail latent, which waits there as pure noise",
            ),
            (
                "srg",
                self.srg,
                "it guides the front windows at FIFO's fixed slots, which move with the zigzag's phase",
            ),
        ):
            if self.zigzag is not None and on:
                raise ModeError(f"zigzag and {part} do not combine: {why}; drop one of them")
        if self.uses_subject and self.subject is None:
            raise ModeError(
                "sacfa and srg need the subject: give `subject` with words of the prompt",
            )
        if self.subject is not None and not self.uses_subject:
            raise ModeError("a subject is only used by sacfa and srg")

    def trick_tokens(self) -> list[str]:
        """Short tokens for the tricks' parameters that differ from their defaults (and the subject,
        which every ``sacfa``/``srg`` run has), for experiment names: two runs that differ only in
        a trick's parameter must not write the same file."""
        tokens: list[str] = []
        if self.tail is not None:
            tokens += _changed(self.tail, TailCoherenceOptions(), {"cutoff": "lp", "filter": "lpf"})
        if self.srg is not None:
            tokens += _changed(
                self.srg, SrgOptions(), {"weight": "srgw", "momentum": "srgm", "windows": "srgn"}
            )
        if self.subject is not None:
            default = SubjectOptions(self.subject.phrase)
            tokens.append("subj-" + "-".join(self.subject.phrase.lower().split()))
            tokens += _changed(self.subject, default, {"levels": "lv", "threshold": "thr"})
        if self.anchors is not None:
            tokens += _changed(self.anchors, AnchorOptions(), {"frames": "anc"})
        if self.reflect is not None:
            tokens += _changed(self.reflect, ReflectOptions(), {"threshold": "rth", "candidates": "rcand"})
        if self.zigzag is not None:
            tokens += _changed(self.zigzag, ZigzagOptions(), {"length": "zz"})
        return tokens

    def trick_parameters(self) -> dict[str, object]:
        """The tricks' parameters as plain values (a saved state's fingerprint)."""

        def plain(options: object) -> dict[str, object] | None:
            if options is None:
                return None
            return {f.name: _plain(getattr(options, f.name)) for f in fields(options)}

        out = {"tail": plain(self.tail), "srg": plain(self.srg), "subject": plain(self.subject)}
        # Only when on: the fingerprints of states saved without them stay the same.
        out |= {
            k: plain(v)
            for k, v in (("anchors", self.anchors), ("reflect", self.reflect), ("zigzag", self.zigzag))
            if v is not None
        }
        return out

    def queue_geometry(self, base: FifoGeometry) -> FifoGeometry:
        """The queue layout of this mode over ``base`` (the settings'): zigzag's, or ``base``."""
        return base if self.zigzag is None else self.zigzag.geometry(base)

    @property
    def uses_subject(self) -> bool:
        """Whether a trick that needs the subject (SACFA, SRG) is on."""
        return self.sacfa or self.srg is not None

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
        parts += [p for p, on in (("unilatent", self.unilatent), ("tailcoh", self.tail is not None)) if on]
        parts += [p for p, on in (("sacfa", self.sacfa), ("srg", self.srg is not None)) if on]
        parts += [p for p, on in (("zigzag", self.zigzag), ("anchors", self.anchors)) if on is not None]
        parts += ["reflect"] if self.reflect is not None else []
        return "_".join(parts)


def _did_you_mean(words: list[str], choices: list[str]) -> str:
    """ " (did you mean 'x'?)" for the closest valid part of each unknown word, or ""."""
    guesses = [m[0] for w in words if (m := difflib.get_close_matches(w, choices, n=1, cutoff=0.6))]
    return f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _changed(options: object, defaults: object, prefixes: dict[str, str]) -> list[str]:
    """``prefix + value`` for each field in ``prefixes`` whose value differs from ``defaults``."""
    tokens = []
    for name, prefix in prefixes.items():
        value = getattr(options, name)
        if value != getattr(defaults, name):
            value = _plain(value)
            text = (
                ",".join(map(str, value))
                if isinstance(value, list)
                else f"{value:g}"
                if isinstance(value, float)
                else str(value)
            )
            tokens.append(prefix + text)
    return tokens


def mode_parts_help(lead: str = "A mode is {main}[_{sub}]...") -> str:
    """``lead``, then the parts of a mode with what each does: the text of ``--help`` and of :func:`parse_mode`'s errors."""
    mains = "\n".join(f"  {k:<12} {v}" for k, v in MAIN_OPTIONS.items())
    subs = "\n".join(f"  {k:<12} {v}" for k, v in SUB_OPTIONS.items())
    return f"{lead}\nmain:\n{mains}\nsub:\n{subs}"


def parse_mode(mode: str, qcache_weight: float = 0.9, tricks: TrickArguments | None = None) -> ModeOptions:
    """Parse a ``--mode`` string such as ``"t2v_seed_TTqcache_attn1_unilatent"``.

    A Q-cache without ``attn1``/``attn2`` means ``attn1`` (the published trick, temporal
    self-attention); ``attn1``/``attn2`` without a Q-cache is an error. ``tricks`` holds the
    values of the Ouroboros-Diffusion flags (defaults where not given); a flag whose trick is
    not in the mode is logged and ignored (a sweep passes the same flags to every mode).

    Raises:
        ModeError: unknown or repeated parts (with the list of valid ones), ``attn1``/``attn2``
            without a Q-cache, ``sacfa``/``srg`` without ``--subject``, or a parameter out of
            its range (the message names the parameter by its field of :class:`TrickArguments`).
    """
    check_qcache_weight(qcache_weight)  # checked even when no Q-cache is on
    tricks = tricks or TrickArguments()
    text = mode.strip()
    # Longest main option first: "t2v_seed_ar" must not parse as "t2v" + "seed" + "ar".
    main = next(
        (m for m in sorted(MAIN_OPTIONS, key=len, reverse=True) if text == m or text.startswith(m + "_")),
        None,
    )
    if main is None:
        head = text.split("_")[0]
        hint = _did_you_mean([text], list(MAIN_OPTIONS)) or _did_you_mean([head], list(MAIN_OPTIONS))
        raise ModeError(f"unknown main option in mode {mode!r}{hint}.\n{mode_parts_help()}")
    subs = text[len(main) :].split("_")[1:]
    if "" in subs:
        raise ModeError(f"empty part in mode {mode!r} (two '_' in a row, or a trailing '_')")
    unknown = [s for s in subs if s not in SUB_OPTIONS]
    if unknown:
        hint = _did_you_mean(unknown, list(SUB_OPTIONS))
        raise ModeError(f"unknown part(s) {unknown} in mode {mode!r}{hint}.\n{mode_parts_help()}")
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
    return ModeOptions(
        main=MainMode(main),
        qcache=qcache,
        unilatent="unilatent" in subs,
        **_trick_options(mode, subs, tricks),
    )


def _trick_options(mode: str, subs: list[str], tricks: TrickArguments) -> dict[str, object]:
    """The Ouroboros-Diffusion tricks' fields of :class:`ModeOptions` (every given value checked)."""

    def given(**values: object) -> dict[str, object]:
        return {k: v for k, v in values.items() if v is not None}

    tail = TailCoherenceOptions(**given(cutoff=tricks.tail_lowpass, filter=tricks.tail_filter))
    srg = SrgOptions(
        **given(weight=tricks.srg_weight, momentum=tricks.srg_momentum, windows=tricks.srg_windows)
    )
    anchors = AnchorOptions(**given(frames=tricks.anchor_frames))
    reflect = ReflectOptions(
        **given(threshold=tricks.reflect_threshold, candidates=tricks.reflect_candidates)
    )
    zigzag = ZigzagOptions(**given(length=tricks.zigzag_length))
    uses_subject = "sacfa" in subs or "srg" in subs
    if uses_subject and tricks.subject is None:
        raise ModeError(
            f"mode {mode!r}: sacfa and srg need the subject: add `subject` with words of the prompt",
        )
    # A placeholder phrase where none is given, so that bad levels or thresholds are errors anyway.
    subject = SubjectOptions(
        "subject" if tricks.subject is None else tricks.subject,
        **given(levels=tricks.subject_levels, threshold=tricks.subject_threshold),
    )
    for part, flags in (
        ("tailcoh", tricks.given("tail_lowpass", "tail_filter")),
        ("srg", tricks.given("srg_weight", "srg_momentum", "srg_windows")),
        ("anchors", tricks.given("anchor_frames")),
        ("reflect", tricks.given("reflect_threshold", "reflect_candidates")),
        ("zigzag", tricks.given("zigzag_length")),
        (
            "sacfa or srg",
            [] if uses_subject else tricks.given("subject", "subject_levels", "subject_threshold"),
        ),
    ):
        if flags and not set(part.split(" or ")) & set(subs):
            logger.info("mode %r: %s ignored (%s is not in the mode)", mode, ", ".join(flags), part)
    return {
        "tail": tail if "tailcoh" in subs else None,
        "sacfa": "sacfa" in subs,
        "srg": srg if "srg" in subs else None,
        "subject": subject if uses_subject else None,
        "anchors": anchors if "anchors" in subs else None,
        "reflect": reflect if "reflect" in subs else None,
        "zigzag": zigzag if "zigzag" in subs else None,
    }


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
        SettingsError: a setting out of range; the message names it by its field, in backquotes.
    """

    video_length: int = 16
    num_partitions: int = 4
    # Output frames; ``math.inf``: until the run is stopped (``-l inf``).
    new_video_length: int | float = 100
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
    # Frame-stride models (DynamiCrafter): the value of the frame-stride embedding; None: the
    # config's default_fs (lvdm.family.ModelFamily.frame_value).
    frame_stride: int | None = None
    # Guidance rescale weight in [0, 1] (0: plain classifier-free guidance, as before).
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", Precision(self.dtype))  # accepts "fp16" as well
        object.__setattr__(self, "rng", NoiseOrder(self.rng))
        self.geometry  # noqa: B018 -- checks --video_length and --num_partitions
        checks = [
            (
                self.new_video_length == math.inf or 1 <= self.new_video_length <= MAX_NEW_VIDEO_LENGTH,
                f"`new_video_length` must be a number of frames in [1, {MAX_NEW_VIDEO_LENGTH}] "
                "(the largest accepted), or inf for a video that runs until it is stopped",
            ),
            (self.height > 0 and self.width > 0, "`height` and `width` must be positive"),
            (0 <= self.guidance < math.inf, "`guidance` must be a finite number ≥ 0"),
            (0 <= self.seed < 2**63, "`seed` must be a whole number in [0, 2**63)"),
            (0.0 <= self.eta <= 1.0, "`eta` must lie in [0, 1]"),
            (self.output_fps >= 1 and self.fps >= 1, "`fps` and `output_fps` must be ≥ 1"),
            (self.window_batch is None or self.window_batch >= 1, "`window_batch` must be ≥ 1"),
            (self.frame_stride is None or self.frame_stride >= 1, "`frame_stride` must be ≥ 1"),
            (0.0 <= self.guidance_rescale <= 1.0, "`guidance_rescale` must lie in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    @property
    def geometry(self) -> FifoGeometry:
        """The queue layout of these settings."""
        return FifoGeometry(self.video_length, self.num_partitions, self.lookahead)
