"""Deterministic fixture weights: every parameter is a function of its state_dict key and shape.

A fixture then needs no multi-megabyte state_dict: both the reference script (which builds the
published model) and the project's tests recompute the same tensors from the key names alone.

For a key ``name`` with shape ``shape`` (float32, CPU):

- seed = the first 8 bytes of ``sha256(name.encode("utf-8"))`` read as a little-endian unsigned
  integer, modulo 2**63;
- ``g = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`` (float32);
- 2-D and larger tensors: ``g / sqrt(fan_in)`` with fan_in = prod(shape[1:]) (so layers keep
  activations of order one, like a default init);
- 1-D tensors whose name ends in ``weight`` (norm scales): ``1 + 0.1·g``;
- every other tensor (biases, 1-D embeddings, scalars): ``0.1·g``.

No tensor is zero, so a layer that the published code initialises to zero (``zero_module``)
still takes part. Buffers (schedules, ``scale_arr``) are not parameters: they keep the values
the model computes from its config.

Imports nothing from the project: the reference script runs it next to the published code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

import torch

SCHEME = "sha256-seeded torch.randn; >=2-D: /sqrt(fan_in); 1-D *weight: 1+0.1g; else 0.1g"


def key_seed(name: str) -> int:
    """Generator seed for one state_dict key."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") % (2**63)


def fixture_tensor(name: str, shape: Iterable[int]) -> torch.Tensor:
    """The fixture value of parameter ``name`` with ``shape`` (float32, CPU)."""
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator("cpu").manual_seed(key_seed(name))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if len(shape) >= 2:
        return values / math.sqrt(math.prod(shape[1:]))
    if len(shape) == 1 and name.endswith("weight"):
        return 1.0 + 0.1 * values
    return 0.1 * values


def fixture_state_dict(
    shapes: Mapping[str, Iterable[int]], keep: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Fixture values for every key of ``shapes``; keys in ``keep`` (buffers) keep their tensor."""
    keep = keep or {}
    return {
        name: keep[name] if name in keep else fixture_tensor(name, shape) for name, shape in shapes.items()
    }


def module_fixture_weights(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Fixture values for every state_dict key of ``module``, each seeded by ``prefix`` + its key.

    Buffers in the state_dict (schedules, ``scale_arr``) keep the values ``module`` holds. The
    prefix places a stand-alone part where it sits in a whole model (``"embedder."`` for the image
    tower of an image-to-video model), so both get the same numbers."""
    state = module.state_dict()
    buffers = {name for name, _ in module.named_buffers() if name in state}
    weights = fixture_state_dict(
        {prefix + k: v.shape for k, v in state.items()}, {prefix + k: state[k] for k in buffers}
    )
    return {k.removeprefix(prefix): v for k, v in weights.items()}


def parameters_digest(module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> str:
    """:func:`weights_digest` of ``weights`` less the keys that are buffers of ``module``."""
    buffers = {name for name, _ in module.named_buffers()}
    return weights_digest({k: v for k, v in weights.items() if k not in buffers})


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the keys in sorted order, each key's UTF-8 name, shape and float32 bytes."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode("utf-8"))
        digest.update(repr(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
