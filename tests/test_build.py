"""Loading a checkpoint into a model built on the meta device gives the same model as building it
normally and copying the checkpoint in: every parameter and buffer (the non-persistent ones that
no checkpoint holds included), dtypes, devices and outputs, bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from lvdm.build import build_model, load_model, parameters_on_meta
from lvdm.checkpoint import load_weights
from tests.conftest import REPO

T2V = REPO / "configs" / "tiny_t2v.yaml"
I2V = REPO / "configs" / "tiny_i2v.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(
    config, tmp_path, dtype: torch.dtype = torch.float32, fmt: str = "ckpt"
) -> tuple[dict, object]:
    """A checkpoint of random (non-zero) weights for ``config``, stored in ``dtype``."""
    torch.manual_seed(7)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # no zero layer: every part shows in the output
    state = {k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state, "epoch": 1}, path)
    return state, path


def _reference(config, state: dict, dtype: torch.dtype | None) -> torch.nn.Module:
    """The model as built before meta loading: random init on the CPU, the checkpoint copied in."""
    model = build_model(config)
    load_weights(model, state)
    if dtype is not None:
        model.set_precision(dtype)
    return model.eval().requires_grad_(False)


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name, tensor in ta.items():
        other = tb[name]
        assert tensor.dtype == other.dtype and tensor.device == other.device, name
        assert torch.equal(tensor, other), name
        assert not tensor.requires_grad, name
    assert not a.training


def _unet_output(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.unet.parameters()).dtype
    x = torch.randn(1, 4, 4, 8, 8, generator=g).to(dtype)
    context = torch.randn(1, 77 + (16 if model.has_image_embedder else 0), 32, generator=g).to(dtype)
    with torch.no_grad():
        return model.apply_model(x, torch.tensor([500]), context)


@pytest.mark.parametrize("config", [T2V, I2V], ids=["t2v", "i2v"])
def test_meta_loaded_model_is_the_normally_loaded_model(config, tmp_path) -> None:
    state, path = _checkpoint(config, tmp_path)
    loaded = load_model(config, path)
    reference = _reference(config, state, None)
    _assert_same(loaded, reference)
    # The non-persistent buffers (in no checkpoint) were made by the modules' own code.
    names = set(dict(loaded.named_buffers())) - set(state)
    assert "cond_stage_model.model.attn_mask" in names
    if config == I2V:
        assert {"embedder.mean", "embedder.std", "embedder.model.attn_mask"} <= names
    assert torch.equal(_unet_output(loaded), _unet_output(reference))
    texts = ["a red fox", ""]
    assert torch.equal(loaded.get_learned_conditioning(texts), reference.get_learned_conditioning(texts))
    if config == I2V:
        images = torch.rand(1, 3, 64, 64) * 2 - 1
        assert torch.equal(loaded.get_image_embeds(images), reference.get_image_embeds(images))


@pytest.mark.parametrize(
    ("stored", "dtype", "fmt"),
    [
        (torch.float16, None, "ckpt"),
        (torch.float32, torch.bfloat16, "safetensors"),
        (torch.float16, torch.bfloat16, "ckpt"),
    ],
    ids=["fp16-stored-fp32-run", "fp32-stored-bf16-run", "fp16-stored-bf16-run"],
)
def test_dtypes_follow_set_precision_whatever_the_checkpoint_holds(stored, dtype, fmt, tmp_path) -> None:
    state, path = _checkpoint(I2V, tmp_path, stored, fmt)
    loaded = load_model(I2V, path, dtype=dtype)
    _assert_same(loaded, _reference(I2V, state, dtype))
    # The parts kept in fp32 are fp32 (autoencoder, schedule), the others in the run's dtype.
    assert loaded.first_stage_model.decoder.conv_out.weight.dtype == torch.float32
    assert loaded.alphas_cumprod.dtype == torch.float32
    assert loaded.unet.out[2].weight.dtype == (dtype or torch.float32)


def test_parameters_on_meta_keeps_buffers_real() -> None:
    with parameters_on_meta():
        model = build_model(I2V)
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    normal = build_model(I2V)
    for name, buffer in normal.named_buffers():
        assert torch.equal(dict(model.named_buffers())[name], buffer), name
    # The patch is gone after the block.
    assert not torch.nn.Linear(2, 2).weight.is_meta


def test_loaded_weights_do_not_follow_the_file(tmp_path) -> None:
    """The checkpoint is memory-mapped while loading; the model owns copies, so overwriting the
    file during a run (a re-download) changes nothing."""
    state, path = _checkpoint(T2V, tmp_path)
    loaded = load_model(T2V, path)
    size = path.stat().st_size
    with open(path, "r+b") as fp:  # same inode, new bytes everywhere but the zip structure's ends
        fp.seek(4096)
        fp.write(b"\x7f" * (size - 8192))
    _assert_same(loaded, _reference(T2V, state, None))


def test_load_reports_its_time(tmp_path, caplog) -> None:
    _, path = _checkpoint(T2V, tmp_path)
    with caplog.at_level(logging.INFO, logger="lvdm.build"):
        load_model(T2V, path)
    assert "built on the meta device" in caplog.text and " s" in caplog.text
