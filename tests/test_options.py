"""`--mode` parsing: fifo.options.parse_mode and the frozen option objects."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest

from cli.messages import cli_message
from fifo.options import (
    MAIN_OPTIONS,
    SUB_OPTIONS,
    ModeError,
    ModeOptions,
    QCacheOptions,
    SrgOptions,
    SubjectOptions,
    TailCoherenceOptions,
    TrickArguments,
    parse_mode,
)
from lvdm.modules.layer_names import AttentionSite, TransformerKind

MAINS = ["t2v", "i2v", "t2v_seed", "t2v_seed_ar"]
SUB_SETS = [
    "",
    "TTqcache",
    "STqcache",
    "TTqcache_attn1",
    "TTqcache_attn2",
    "STqcache_attn1",
    "STqcache_attn2",
    "TTqcache_STqcache_attn1_attn2",
    "unilatent",
    "TTqcache_attn1_unilatent",
    "tailcoh",
    "sacfa",
    "srg",
    "STqcache_attn1_sacfa",
    "TTqcache_attn1_unilatent_tailcoh_sacfa_srg",
]
SUBJECT = TrickArguments(subject="a fox")


def test_option_tables_are_the_documented_ones() -> None:
    assert list(MAIN_OPTIONS) == MAINS
    assert set(SUB_OPTIONS) == {
        "TTqcache",
        "STqcache",
        "attn1",
        "attn2",
        "unilatent",
        "tailcoh",
        "sacfa",
        "srg",
        "anchors",
        "reflect",
        "zigzag",
    }


@pytest.mark.parametrize("main", MAINS)
@pytest.mark.parametrize("subs", SUB_SETS)
def test_every_main_with_every_sub_parses(main: str, subs: str) -> None:
    text = f"{main}_{subs}" if subs else main
    mode = parse_mode(text, 0.9, SUBJECT)
    parts = set(subs.split("_")) if subs else set()
    assert (mode.tail is not None) == ("tailcoh" in parts)
    assert mode.sacfa == ("sacfa" in parts)
    assert (mode.srg is not None) == ("srg" in parts)
    assert (mode.subject is not None) == bool({"sacfa", "srg"} & parts)
    assert mode.main == main
    assert mode.unilatent == ("unilatent" in parts)
    assert mode.uses_image_model == (main != "t2v")
    assert mode.seeds_image == (main in ("t2v_seed", "t2v_seed_ar"))
    assert mode.reseeds_each_frame == (main == "t2v_seed_ar")
    if {"TTqcache", "STqcache"} & parts:
        q = mode.qcache
        assert q is not None
        assert q.temporal == ("TTqcache" in parts)
        assert q.spatial == ("STqcache" in parts)
        # No attention named → attn1.
        assert q.attn1 == ("attn1" in parts or not {"attn1", "attn2"} & parts)
        assert q.attn2 == ("attn2" in parts)
        assert q.weight == 0.9
    else:
        assert mode.qcache is None
    # The canonical name parses back to the same options.
    assert parse_mode(mode.name, 0.9, SUBJECT) == mode


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("t2v", "t2v"),
        ("t2v_seed_ar", "t2v_seed_ar"),
        ("t2v_unilatent_attn1_TTqcache", "t2v_TTqcache_attn1_unilatent"),
        ("i2v_attn2_STqcache_TTqcache", "i2v_TTqcache_STqcache_attn2"),
        ("t2v_seed_TTqcache", "t2v_seed_TTqcache_attn1"),
        ("t2v_seed_ar_attn2_attn1_STqcache", "t2v_seed_ar_STqcache_attn1_attn2"),
        ("  t2v_TTqcache  ", "t2v_TTqcache_attn1"),
    ],
)
def test_canonical_name(text: str, canonical: str) -> None:
    assert parse_mode(text).name == canonical


def test_longest_main_option_wins() -> None:
    assert parse_mode("t2v_seed_ar_unilatent").main == "t2v_seed_ar"
    assert parse_mode("t2v_seed_unilatent").main == "t2v_seed"


@pytest.mark.parametrize("text", ["t2v_TTqcache", "t2v_seed_STqcache_unilatent"])
def test_qcache_without_attention_means_attn1_and_says_so(text: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fifo.options"):
        mode = parse_mode(text)
    assert mode.qcache is not None and mode.qcache.attentions == (AttentionSite.SELF,)
    messages = [r.getMessage() for r in caplog.records if r.name == "fifo.options"]
    assert any("attn1" in m and text in m for m in messages), messages


def test_explicit_attention_logs_nothing(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fifo.options"):
        parse_mode("t2v_TTqcache_attn2")
    assert not [r for r in caplog.records if r.name == "fifo.options"]


@pytest.mark.parametrize("text", ["t2v_attn1", "i2v_attn2", "t2v_seed_attn1_attn2_unilatent"])
def test_attention_without_qcache_is_an_error(text: str) -> None:
    with pytest.raises(ModeError, match="TTqcache or STqcache"):
        parse_mode(text)


def _assert_lists_everything(message: str) -> None:
    for name in [*MAIN_OPTIONS, *SUB_OPTIONS]:
        assert name in message, f"{name!r} missing from the error message:\n{message}"


@pytest.mark.parametrize(
    "text", ["", "v2v", "T2V", "t2vx", "t2v_foo", "t2v_seed_TTqcache_ar", "i2v_qcache", "t2v_t2v"]
)
def test_unknown_part_lists_every_valid_option(text: str) -> None:
    with pytest.raises(ModeError) as info:
        parse_mode(text)
    assert "unknown" in str(info.value)
    _assert_lists_everything(str(info.value))


@pytest.mark.parametrize(
    "text", ["t2v_unilatent_unilatent", "i2v_TTqcache_TTqcache", "t2v_TTqcache_attn1_attn1"]
)
def test_repeated_part_is_an_error(text: str) -> None:
    with pytest.raises(ModeError, match="repeated"):
        parse_mode(text)


@pytest.mark.parametrize("weight", [-0.1, 1.01, 2.0, float("nan"), float("inf")])
def test_weight_outside_unit_interval_is_an_error(weight: float) -> None:
    with pytest.raises(ModeError, match=r"\[0, 1\]"):
        parse_mode("t2v_TTqcache_attn1", weight)
    with pytest.raises(ModeError, match=r"\[0, 1\]"):
        parse_mode("t2v", weight)  # a bad --qcache_weight is an error even without a Q-cache
    with pytest.raises(ModeError, match=r"\[0, 1\]"):
        QCacheOptions(weight=weight)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_weight_in_unit_interval_is_kept(weight: float) -> None:
    assert parse_mode("i2v_STqcache_attn2", weight).qcache.weight == weight


def test_qcache_options_need_a_kind_and_an_attention() -> None:
    with pytest.raises(ModeError):
        QCacheOptions(temporal=False, spatial=False)
    with pytest.raises(ModeError):
        QCacheOptions(attn1=False, attn2=False)
    q = QCacheOptions(temporal=True, spatial=True, attn1=True, attn2=True)
    assert q.kinds == (TransformerKind.TEMPORAL, TransformerKind.SPATIAL)
    assert q.attentions == (AttentionSite.SELF, AttentionSite.SECOND)


def test_options_are_frozen() -> None:
    mode = parse_mode("t2v_seed_TTqcache_attn1_unilatent")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mode.main = "i2v"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        mode.qcache.weight = 0.1  # type: ignore[union-attr,misc]
    # Frozen dataclasses are hashable and compare by value.
    assert hash(mode) == hash(parse_mode("t2v_seed_unilatent_attn1_TTqcache"))
    assert ModeOptions() == parse_mode("t2v")


def test_all_sub_permutations_give_one_canonical_name() -> None:
    parts = ["TTqcache", "attn2", "unilatent"]
    names = {parse_mode("_".join(["i2v", *p])).name for p in itertools.permutations(parts)}
    assert names == {"i2v_TTqcache_attn2_unilatent"}


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("t2v_srg_sacfa_tailcoh", "t2v_tailcoh_sacfa_srg"),
        ("i2v_sacfa_STqcache_unilatent", "i2v_STqcache_attn1_unilatent_sacfa"),
        ("t2v_seed_ar_srg_tailcoh", "t2v_seed_ar_tailcoh_srg"),
    ],
)
def test_canonical_name_with_the_ouroboros_tricks(text: str, canonical: str) -> None:
    assert parse_mode(text, tricks=SUBJECT).name == canonical


def test_ouroboros_parameters_become_typed_options() -> None:
    mode = parse_mode(
        "t2v_tailcoh_sacfa_srg",
        tricks=TrickArguments(
            tail_lowpass=0.5,
            tail_filter="ideal",
            subject="  a   fox ",
            subject_levels=(2, 1, 2),
            subject_threshold=0.3,
            srg_weight=2.0,
            srg_momentum=0.5,
            srg_windows=2,
        ),
    )
    assert mode.tail == TailCoherenceOptions(cutoff=0.5, filter="ideal")
    assert mode.subject == SubjectOptions("a fox", levels=(1, 2), threshold=0.3)
    assert mode.srg == SrgOptions(weight=2.0, momentum=0.5, windows=2)
    assert mode.sacfa


@pytest.mark.parametrize("text", ["t2v_sacfa", "i2v_srg", "t2v_tailcoh_sacfa_srg"])
def test_subject_tricks_need_a_subject(text: str) -> None:
    with pytest.raises(ModeError, match="`subject`"):
        parse_mode(text)
    with pytest.raises(ModeError, match="`subject`"):
        ModeOptions(sacfa=True)


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        ({"subject": ""}, "subject"),
        ({"subject_levels": (1, "x")}, "subject_levels"),
        ({"subject_levels": (-1,)}, "subject_levels"),
        ({"subject_levels": ()}, "subject_levels"),
        ({"subject_threshold": 0.0}, "subject_threshold"),
        ({"subject_threshold": 1.5}, "subject_threshold"),
        ({"srg_weight": -1.0}, "srg_weight"),
        ({"srg_weight": float("inf")}, "srg_weight"),
        ({"srg_momentum": 1.1}, "srg_momentum"),
        ({"srg_momentum": float("nan")}, "srg_momentum"),
        ({"srg_windows": 0}, "srg_windows"),
    ],
)
def test_invalid_ouroboros_parameters_name_their_option(arguments: dict, option: str) -> None:
    """The library names the parameter by its Python name; the command line prints its flag."""
    arguments = {"subject": "a fox", **arguments}
    with pytest.raises(ModeError, match=f"`{option}`") as err:
        parse_mode("t2v_sacfa_srg", tricks=TrickArguments(**arguments))
    assert err.value.options == (option,)
    assert f"--{option}" in cli_message(err.value) and "`" not in cli_message(err.value)
    with pytest.raises(
        ModeError, match=f"`{option}`"
    ):  # an invalid value is an error even when its trick is off
        parse_mode("t2v", tricks=TrickArguments(**arguments))


def test_flags_of_tricks_not_in_the_mode_are_logged_and_ignored(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="fifo.options"):
        mode = parse_mode("t2v_tailcoh", tricks=TrickArguments(subject="a fox", srg_weight=2.0))
    assert mode == parse_mode("t2v_tailcoh")
    messages = " ".join(r.getMessage() for r in caplog.records if r.name == "fifo.options")
    assert "--subject" in messages and "--srg_weight" in messages and "ignored" in messages
