"""infra.key_mismatch: the one report of a state_dict that does not fit a model."""

from __future__ import annotations

import torch

from infra.key_mismatch import KeyMismatch, key_groups


def test_fitting_state_dict_is_no_mismatch() -> None:
    model = {"a.w": torch.zeros(2, 3), "a.b": torch.zeros(2)}
    assert not KeyMismatch.between(model, {k: torch.empty(v.shape, device="meta") for k, v in model.items()})


def test_mismatch_names_missing_unexpected_and_wrong_shapes() -> None:
    model = {"enc.0.w": torch.zeros(4, 2), "enc.1.w": torch.zeros(4), "dec.w": torch.zeros(1)}
    found = {"enc.0.w": torch.zeros(2, 4), "dec.w": torch.zeros(1), "extra": torch.zeros(1)}
    mismatch = KeyMismatch.between(model, found)
    assert mismatch and mismatch.missing == ("enc.1.w",) and mismatch.unexpected == ("extra",)
    assert mismatch.shape_lines() == ["enc.0.w: checkpoint (2, 4) vs model (4, 2)"]
    assert mismatch.examples() == [
        "  1 missing, e.g. enc.1.w",
        "  1 unexpected, e.g. extra",
        "  1 wrong shape, e.g. enc.0.w: checkpoint (2, 4) vs model (4, 2)",
    ]
    assert mismatch.by_group(depth=1) == [
        "missing keys by group: enc. (1)",
        "unexpected keys by group: extra (1)",
    ]


def test_key_groups_largest_first_and_bounded() -> None:
    keys = ["model.a.x", "model.a.y", "model.b", "embedder.z", "scale"]
    assert key_groups(keys, depth=1) == "model. (3), embedder. (1), scale (1)"
    assert key_groups(keys, depth=2) == "model.a. (2), model.b (1), embedder.z (1), scale (1)"
    assert key_groups(keys, depth=1, limit=1) == "model. (3), ... and 2 more"
