"""Reading a motion model's weights file and loading it with a strict key and shape check, with
errors that name the file (shared by AMT-S and RAFT)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tools.vbench.common import FeatureWeightsError, _first_line


def read_weights(path: str | os.PathLike, label: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (``.pth``/``.pt``/``.ckpt`` with or without a ``state_dict`` entry, or
    ``.safetensors``), read without running pickled code.

    Raises:
        FeatureWeightsError: no such file, unreadable, or no tensors inside.
    """
    from lvdm.checkpoint import CheckpointError, read_state_dict

    try:
        return read_state_dict(Path(path))
    except CheckpointError as err:
        raise FeatureWeightsError(f"{path} does not hold {label} weights ({_first_line(err)})") from err


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, label: str) -> None:
    """Load ``state`` into ``model`` only if its keys and shapes are exactly the model's.

    Raises:
        FeatureWeightsError: naming ``source``, with the counts and first examples of the missing,
            unexpected and wrongly shaped keys.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = [f"{source} does not hold {label} weights:"]
        for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {'; '.join(items[:3])})")
        raise FeatureWeightsError(" ".join(parts))
    model.load_state_dict(dict(state), strict=True)
