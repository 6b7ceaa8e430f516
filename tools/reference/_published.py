"""Load a user-supplied checkout of published VideoCrafter/DynamiCrafter code next to nothing of ours.

Used only by the reference scripts of this folder, which are run by path
(``python tools/reference/<script>.py``): Python then puts this folder, not the project root,
on ``sys.path``, so ``import lvdm`` can only find the published package. ``use_checkout``
checks that and refuses to go on otherwise (both packages are called ``lvdm``).

Run-time patches, applied here and never to the published files:

- ``transformers`` / ``cv2`` are imported at module level by the published encoders and
  utilities but not used by the OpenCLIP embedders or model building: when they are not
  installed, empty stand-in modules take their place (a use of one raises).
- open_clip >= 3 runs its transformer blocks batch-first while the published embedders permute
  to sequence-first before calling them; ``sequence_first_openclip`` switches the blocks'
  attention to sequence-first so the published code computes what it was written for
  (open_clip < 3). Without this, each token would attend across the batch instead.
- open_clip >= 3's vision tower has no ``input_patchnorm`` attribute (the published image
  embedder reads it); it is set to False, what older open_clip used by default.
- The embedders' ``device`` attribute (default "cuda") is set to "cpu".
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class PublishedCodeError(RuntimeError):
    """The published checkout cannot be used (wrong folder, our lvdm already imported)."""


def stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def missing(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{name}.{attr} is a stand-in: install {name} to use it")

        return refuse

    module.__getattr__ = missing  # type: ignore[method-assign]
    return module


def use_checkout(checkout: str | Path) -> Path:
    """Put the published checkout first on sys.path and check that its ``lvdm`` is the one imported."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "lvdm" / "models" / "ddpm3d.py").is_file():
        raise PublishedCodeError(
            f"{root} is not a checkout of the published code (no lvdm/models/ddpm3d.py); "
            "pass the folder that holds its lvdm/ and utils/"
        )
    if "lvdm" in sys.modules:
        raise PublishedCodeError(
            "an lvdm package is already imported; run this script by path, in a fresh process"
        )
    sys.path.insert(0, str(root))
    for name in ("transformers", "cv2"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = stand_in(name)
    # The published lvdm has no __init__.py (a namespace package): check every folder it spans.
    folders = [Path(folder).resolve() for folder in importlib.import_module("lvdm").__path__]
    if folders != [root / "lvdm"]:
        raise PublishedCodeError(f"imported lvdm from {folders}, not only from {root / 'lvdm'}")
    return root


def cpu_memory_efficient_attention() -> None:
    """An ``xformers.ops.memory_efficient_attention`` for code that calls it unconditionally.

    Computes softmax(q·kᵀ / sqrt(d))·v on (batch, tokens, d) tensors with PyTorch's attention (no
    bias, no dropout), what xformers computes up to rounding. Registered only when xformers is
    not installed; call it before the published ``lvdm.modules.attention`` is imported.
    """
    if importlib.util.find_spec("xformers") is not None:
        return

    def memory_efficient_attention(q, k, v, attn_bias=None, op=None):  # noqa: ANN001, ANN202
        if attn_bias is not None:
            raise RuntimeError("the stand-in memory_efficient_attention takes no attn_bias")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    sys.modules["xformers"], sys.modules["xformers.ops"] = package, ops


def sequence_first_openclip(module: torch.nn.Module) -> int:
    """Make every nn.MultiheadAttention inside ``module`` sequence-first; returns how many."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.MultiheadAttention):
            sub.batch_first = False
            count += 1
    return count


def prepare_embedders(model: torch.nn.Module) -> None:
    """CPU device, open_clip < 3 semantics for the published text and image embedders."""
    for name in ("cond_stage_model", "embedder"):
        embedder = getattr(model, name, None)
        if embedder is None:
            continue
        embedder.device = "cpu"
        sequence_first_openclip(embedder)
        visual = getattr(embedder.model, "visual", None)
        if visual is not None and not hasattr(visual, "input_patchnorm"):
            visual.input_patchnorm = False


def cpu_ddim_sampler(sampler_class: type) -> None:
    """The published DDIMSampler moves every schedule tensor to CUDA; keep them where they are."""

    def register_buffer(self: Any, name: str, attr: Any) -> None:
        setattr(self, name, attr)

    sampler_class.register_buffer = register_buffer


def instantiate(config: Any) -> torch.nn.Module:
    """The published ``utils.utils.instantiate_from_config`` on an OmegaConf node."""
    utils = importlib.import_module("utils.utils")
    return utils.instantiate_from_config(config)
