"""Reading checkpoints safely and loading them strictly, with errors that say what to do.

Formats: a PyTorch Lightning ``.ckpt`` (a dict with ``state_dict``), a DeepSpeed dict with
``module``, a plain state_dict (``.pt``/``.pth``/``.ckpt``), or ``.safetensors``. Pickles are
read with ``weights_only=True``: a checkpoint never executes code.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

DOWNLOADS = {
    "base_512_v2": (
        "VideoCrafter2 text-to-video",
        "https://huggingface.co/VideoCrafter/VideoCrafter2/blob/main/model.ckpt",
    ),
    "Image2Video_512": (
        "VideoCrafter1 image-to-video",
        "https://huggingface.co/VideoCrafter/Image2Video-512/blob/main/model.ckpt",
    ),
}
T2V_CONFIG = "configs/inference_t2v_512_v2.0.yaml"
I2V_CONFIG = "configs/inference_i2v_512_v1.0.yaml"
# Parts only the image-to-video model has.
IMAGE_MODEL_PREFIXES = ("embedder.", "image_proj_model.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the problem and the fix."""


def _download_hint() -> str:
    lines = [
        f"  {name}: {url}\n    → videocrafter_models/{folder}/model.ckpt"
        for folder, (name, url) in DOWNLOADS.items()
    ]
    return (
        "Download the checkpoints (or run `python scripts/download_checkpoints.py`):\n"
        + "\n".join(lines)
        + "\nor pass --random_init to run the tiny configs without one (tests and demos only)."
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read the tensors of a checkpoint file, whatever its format.

    Raises:
        CheckpointError: missing file, unreadable file, or no state_dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}\n{_download_hint()}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors; it is not loaded because "
                "that could execute code. Re-save its state_dict with torch.save or as .safetensors."
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({msg})") from err
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping):
        # DeepSpeed wraps the model: keys start with "_forward_module.".
        obj = {k.removeprefix("_forward_module."): v for k, v in obj["module"].items()}
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state_dict (expected a dict of tensors, or a Lightning "
            "checkpoint with a 'state_dict' entry)"
        )
    # Early 256x256 checkpoints named the fps embedding differently.
    return {k.replace("framestride_embed", "fps_embedding"): v for k, v in obj.items()}


def _groups(keys: set[str], depth: int = 2) -> str:
    counts = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{g} ({n})" for g, n in sorted(counts.items()))


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` exactly."""
    expected = model.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        parts = [f"{source} does not match the model built from the config."]
        if missing:
            parts.append(f"missing keys by group: {_groups(missing)}")
        if unexpected:
            parts.append(f"unexpected keys by group: {_groups(unexpected)}")
        if any(k.startswith(IMAGE_MODEL_PREFIXES) for k in missing) and not any(
            k.startswith(IMAGE_MODEL_PREFIXES) for k in state_dict
        ):
            parts.append(
                f"This looks like a text-to-video checkpoint (no image embedder): use --config {T2V_CONFIG}."
            )
        elif any(k.startswith(IMAGE_MODEL_PREFIXES) for k in unexpected):
            parts.append(f"This looks like an image-to-video checkpoint: use --config {I2V_CONFIG}.")
        else:
            parts.append("Check that --config is the config this checkpoint was trained with.")
        raise CheckpointError("\n".join(parts))
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        lines = "\n".join(f"  {k}: checkpoint {a} vs model {b}" for k, a, b in mismatched[:5])
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensor(s) have the wrong shape for this config, e.g.\n{lines}\n"
            "Check that --config matches the checkpoint (model size, context_dim, channel_mult)."
        )


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Check, then load strictly; nothing is loaded if the check fails."""
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %d tensors from %s", len(state_dict), source)
