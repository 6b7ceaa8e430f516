"""fifo.plan's model set-up key (the name of a window-memory measurement): the parameters are
hashed once per model and precision, and the key is the one a full hash gives."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fifo import plan
from lvdm.build import build_model
from tests.conftest import REPO


def _full_key(model: torch.nn.Module) -> tuple:
    """The key hashed from scratch, as _model_setup_key did on every call before it was cached."""
    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        digest.update(f"{name}:{type(module).__name__}:{getattr(module, 'max_tokens', '')}".encode())
        if processor is not None:
            digest.update(f"{type(processor).__name__}:{processor.backend}".encode())
    return digest.hexdigest(), str(model.device)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(REPO / "configs" / "tiny_t2v.yaml")


def test_parameters_are_hashed_once_per_precision(model, monkeypatch) -> None:
    first = plan._model_setup_key(model)
    assert first == _full_key(model)

    def no_second_walk(*_args, **_kwargs):
        raise AssertionError("the parameters were hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(model, "named_parameters", no_second_walk)
        assert plan._model_setup_key(model) == first

    model.unet.set_attn_processor("math")  # the layers' part is read on every call
    assert plan._model_setup_key(model) == _full_key(model) != first
    model.unet.set_attn_processor("sdpa")
    assert plan._model_setup_key(model) == first

    model.set_precision(torch.float16)  # a new precision: hashed again
    half = plan._model_setup_key(model)
    assert half == _full_key(model) and half != first
