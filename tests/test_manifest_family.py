"""The rest of the family: each model built from its config has exactly the keys, shapes and
dtypes of the published checkpoint (tests/fixtures/checkpoint_manifests_family.json, made from the
published code by tools/reference/make_family_manifests.py), and a checkpoint given the wrong
config is refused with an error that names the config it fits."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from lvdm.build import build_model, check_checkpoint
from lvdm.checkpoint import CheckpointError
from tests.conftest import REPO

MANIFESTS = REPO / "tests" / "fixtures" / "checkpoint_manifests_family.json"
MODELS = {
    "dynamicrafter_256": "dynamicrafter_256_v1.0.yaml",
    "dynamicrafter_512": "dynamicrafter_512_v1.0.yaml",
    "dynamicrafter_1024": "dynamicrafter_1024_v1.0.yaml",
    "videocrafter1_t2v_512": "inference_t2v_512_v1.0.yaml",
    "videocrafter1_t2v_1024": "inference_t2v_1024_v1.0.yaml",
}


@functools.cache
def manifests() -> dict:
    return json.loads(MANIFESTS.read_text())


def test_every_manifest_has_its_config() -> None:
    assert sorted(manifests()) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_size_model_matches_the_published_manifest(name: str) -> None:
    with torch.device("meta"):  # no allocation of billions of parameters
        model = build_model(REPO / "configs" / MODELS[name])
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    expected = manifests()[name]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]} == {}


@pytest.mark.parametrize(
    ("checkpoint", "wrong_config", "named"),
    [
        ("dynamicrafter_512", "inference_i2v_512_v1.0.yaml", "configs/dynamicrafter_512_v1.0.yaml"),
        ("videocrafter1_t2v_512", "inference_t2v_512_v2.0.yaml", "configs/inference_t2v_512_v1.0.yaml"),
    ],
)
def test_a_checkpoint_under_the_wrong_config_names_the_right_one(checkpoint, wrong_config, named) -> None:
    state = {k: torch.empty(shape, device="meta") for k, (shape, _) in manifests()[checkpoint].items()}
    config = REPO / "configs" / wrong_config
    with torch.device("meta"):
        model = build_model(config)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(model, state, f"videocrafter_models/{checkpoint}/model.ckpt", config)
    assert named in str(err.value), str(err.value)[-2000:]
