"""The full-size models built from the published configs have exactly the checkpoints' keys."""

from __future__ import annotations

import pytest
import torch

from lvdm.build import build_model
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ("inference_t2v_512_v2.0.yaml", "videocrafter2_t2v_512"),
        ("inference_i2v_512_v1.0.yaml", "videocrafter1_i2v_512"),
    ],
)
def test_full_size_model_matches_manifest(config: str, name: str, manifest: dict) -> None:
    with torch.device("meta"):  # no 10 GB allocation
        model = build_model(REPO / "configs" / config)
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    expected = manifest[name]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert ours["scale_arr"][0] == [1400]
