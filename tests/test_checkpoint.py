"""Checkpoint formats round-trip; every bad checkpoint gets a clear error and loads nothing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lvdm.build import build_model, load_model
from lvdm.checkpoint import CheckpointError, read_state_dict
from tests.conftest import REPO

T2V = REPO / "configs" / "tiny_t2v.yaml"
I2V = REPO / "configs" / "tiny_i2v.yaml"


@pytest.fixture(scope="module")
def t2v_state() -> dict:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in build_model(T2V).state_dict().items()}


def _assert_loaded(model, state: dict) -> None:
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("fmt", ["lightning", "plain", "safetensors", "deepspeed"])
def test_round_trip(fmt: str, t2v_state: dict, tmp_path) -> None:
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in t2v_state.items()}, path)
    else:
        path = tmp_path / "model.ckpt"
        payload = {
            "lightning": {"state_dict": t2v_state, "epoch": 3, "global_step": 10},
            "plain": t2v_state,
            "deepspeed": {"module": {f"_forward_module.{k}": v for k, v in t2v_state.items()}},
        }[fmt]
        torch.save(payload, path)
    model = load_model(T2V, path)
    _assert_loaded(model, t2v_state)


def test_missing_checkpoint_says_where_to_download(tmp_path) -> None:
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "videocrafter_models" / "base_512_v2" / "model.ckpt")
    msg = str(err.value)
    assert "not found" in msg and "huggingface.co/VideoCrafter" in msg and "base_512_v2/model.ckpt" in msg


def test_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(path)
    torch.save({"epoch": 1}, path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        read_state_dict(path)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(bad)


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(CheckpointError, match="could execute code"):
        read_state_dict(path)


def test_text_to_video_checkpoint_with_image_config(t2v_state: dict, tmp_path) -> None:
    path = tmp_path / "t2v.safetensors"
    save_file({k: v.contiguous() for k, v in t2v_state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(I2V, path)
    msg = str(err.value)
    assert "missing keys" in msg and "embedder.model" in msg and "image_proj_model" in msg
    assert "text-to-video checkpoint" in msg and "inference_t2v_512_v2.0.yaml" in msg


def test_image_checkpoint_with_text_config(tmp_path) -> None:
    torch.manual_seed(0)
    state = build_model(I2V).state_dict()
    path = tmp_path / "i2v.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(T2V, path)
    msg = str(err.value)
    assert (
        "unexpected keys" in msg
        and "image-to-video checkpoint" in msg
        and "inference_i2v_512_v1.0.yaml" in msg
    )


def test_shape_mismatch_names_keys_and_both_shapes(t2v_state: dict, tmp_path) -> None:
    state = dict(t2v_state)
    key = "model.diffusion_model.out.2.weight"
    state[key] = torch.zeros(8, *state[key].shape[1:])
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(T2V, path)
    msg = str(err.value)
    assert key in msg and "(8, 32, 3, 3)" in msg and "(4, 32, 3, 3)" in msg


def test_failed_load_leaves_model_untouched(t2v_state: dict) -> None:
    from lvdm.checkpoint import load_weights

    model = build_model(T2V)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(t2v_state)
    broken.pop("betas")
    with pytest.raises(CheckpointError):
        load_weights(model, broken)
    _assert_loaded(model, before)


def test_missing_config_and_bad_target(tmp_path) -> None:
    from lvdm.utils import ConfigError

    with pytest.raises(ConfigError, match="config not found"):
        build_model(tmp_path / "nope.yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  target: lvdm.models.ddpm3d.NoSuchModel\n")
    with pytest.raises(ConfigError, match="known targets"):
        build_model(cfg)
    cfg.write_text("model:\n  target: os.system\n  params: {command: 'true'}\n")
    with pytest.raises(ConfigError, match="outside this package"):
        build_model(cfg)
