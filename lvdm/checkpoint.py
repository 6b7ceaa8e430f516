"""Reading checkpoints safely and loading them strictly, with errors that say what to do.

Formats, recognised by their content (not their name): a PyTorch Lightning ``.ckpt`` (a dict
with ``state_dict``), a DeepSpeed dict with ``module``, a plain state_dict (``torch.save``: zip
archive or the legacy format), or ``.safetensors``. A checkpoint never executes code: pickles
are read with PyTorch's ``weights_only`` unpickler, and the other objects Lightning checkpoints
carry (hyper-parameters, OmegaConf configs, callback states) with a restricted unpickler that
replaces unknown classes by inert placeholders (:mod:`lvdm.safe_pickle`). Only the state_dict
is kept.

Files that are not checkpoints get errors that say what they are: damaged or incomplete (with
their size, the expected size where it is known, and the command that downloads them again),
a web page or a Git LFS pointer saved in place of the file, or something else entirely.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

import torch
from torch import Tensor, nn

from infra.errors import UserError
from infra.key_mismatch import KeyMismatch
from lvdm.safe_pickle import PickledCodeError, restricted_pickle_module, safe_globals_for_torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A published checkpoint: where it lives under ``videocrafter_models/`` and on the Hub."""

    name: str
    repo_id: str
    which: str  # scripts/download_checkpoints.py --which

    @property
    def page_url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/main/model.ckpt"

    @property
    def file_url(self) -> str:
        """The file itself (``blob`` is its web page)."""
        return f"https://huggingface.co/{self.repo_id}/resolve/main/model.ckpt"


# By folder under videocrafter_models/ (the file is model.ckpt).
DOWNLOADS = {
    "base_512_v2": Published("VideoCrafter2 text-to-video", "VideoCrafter/VideoCrafter2", "t2v"),
    "Image2Video_512": Published("VideoCrafter1 image-to-video", "VideoCrafter/Image2Video-512", "i2v"),
}
DOWNLOAD_SCRIPT = "python scripts/download_checkpoints.py"
# scripts/download_checkpoints.py writes what the Hub says about a file (size, sha256) next to
# it, as <file><SIDECAR_SUFFIX>: the expected size of a file that turns out to be damaged.
SIDECAR_SUFFIX = ".download.json"
# Parts only the image-to-video model has.
IMAGE_MODEL_PREFIXES = ("embedder.", "image_proj_model.")

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (pre-1.6) format starts with this magic number, pickled with protocol 2.
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]  # without STOP
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message names the problem and the fix."""


class FileKind(Enum):
    """What a checkpoint file holds, judged by its first bytes."""

    TORCH_ZIP = "PyTorch checkpoint (zip)"
    TORCH_LEGACY = "PyTorch checkpoint (legacy format)"
    SAFETENSORS = "safetensors"


# ---------------------------------------------------------------------------------- messages
def published_checkpoint(path: Path) -> Published | None:
    """The published checkpoint that ``path`` is the local copy of (by its place), or None."""
    return DOWNLOADS.get(path.parent.name) if path.name == "model.ckpt" else None


def _download_hint() -> str:
    lines = [
        f"  {p.name}: {p.page_url}\n    → videocrafter_models/{folder}/model.ckpt"
        for folder, p in DOWNLOADS.items()
    ]
    return (
        f"Download the checkpoints (or run `{DOWNLOAD_SCRIPT}`):\n"
        + "\n".join(lines)
        + "\nor pass --random_init to run the tiny configs without one (tests and demos only)."
    )


def _redownload_hint(path: Path) -> str:
    published = published_checkpoint(path)
    if published is not None:
        return (
            f"Download it again: `{DOWNLOAD_SCRIPT} --which {published.which} --force` "
            f"(or by hand from {published.file_url})."
        )
    return (
        "Download or copy it again from where it came from (the published checkpoints: "
        f"`{DOWNLOAD_SCRIPT} --force`)."
    )


def recorded_download(path: Path) -> dict | None:
    """What ``scripts/download_checkpoints.py`` recorded about ``path`` (size, sha256), or None."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("size"), int) else None


def _damaged(path: Path, size: int, what: str, expected: tuple[int, str] | None = None) -> CheckpointError:
    """The error for a checkpoint file that is cut short or corrupt."""
    record = recorded_download(path)
    published = published_checkpoint(path)
    if expected is None and record is not None:
        expected = (record["size"], f"as {path.name}{SIDECAR_SUFFIX} records from the Hub")
    if expected is not None:
        sizes = f"it has {size:,} bytes, the complete file has {expected[0]:,} ({expected[1]})"
    elif published is not None:
        sizes = (
            f"it has {size:,} bytes; the complete size is not recorded here "
            f"(`{DOWNLOAD_SCRIPT} --which {published.which} --verify-only` compares the file with the Hub's)"
        )
    else:
        sizes = f"it has {size:,} bytes"
    return CheckpointError(
        f"{path} is damaged or incomplete (an interrupted download or copy?): {what}; {sizes}.\n"
        + _redownload_hint(path)
    )


def _not_a_checkpoint(path: Path, head: bytes, size: int) -> CheckpointError:
    text = head.lstrip().lower()
    published = published_checkpoint(path)
    get_file = (
        f"`{DOWNLOAD_SCRIPT} --which {published.which}` or {published.file_url}"
        if published is not None
        else f"the file's download link, or `{DOWNLOAD_SCRIPT}` for the published checkpoints"
    )
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return CheckpointError(
            f"{path} is a web page (HTML, {size:,} bytes), not a checkpoint: the page was saved instead of "
            f"the file (Hugging Face's /blob/ links are pages, /resolve/ links are files). Download the "
            f"file itself: {get_file}."
        )
    if text.startswith(b"version https://git-lfs"):
        return CheckpointError(
            f"{path} is a Git LFS pointer ({size:,} bytes), not a checkpoint: the repository was cloned "
            f"without git-lfs. Run `git lfs pull` in it, or download the file: {get_file}."
        )
    return CheckpointError(
        f"{path} is not a checkpoint: it is neither a PyTorch checkpoint (torch.save) nor a safetensors "
        f"file ({size:,} bytes, starting with {head[:16]!r}). Pass the model's .ckpt, .pt or "
        ".safetensors file to --ckpt_path."
    )


# ---------------------------------------------------------------------------------- the file
def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    partial = path.parent / ".cache" / "huggingface" / "download"
    if path.parent.is_dir() and any(partial.glob("*.incomplete")):
        raise CheckpointError(
            f"checkpoint not found: {path}; a partial download of it is in {partial}: run "
            f"`{DOWNLOAD_SCRIPT}` again to finish it."
        )
    raise CheckpointError(f"checkpoint not found: {path}\n{_download_hint()}")


def _safetensors_layout(path: Path, size: int, head: bytes) -> FileKind | None:
    """``SAFETENSORS`` if ``path`` starts like a safetensors file (8-byte header length, then
    JSON), None if it does not; raises when it does but is cut short or corrupt."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    header_len = int.from_bytes(head[:8], "little")
    if not 2 <= header_len <= _SAFETENSORS_MAX_HEADER:
        return None
    if size < 8 + header_len:
        raise _damaged(path, size, f"its header ({header_len:,} bytes) is cut off")
    with open(path, "rb") as fp:
        fp.seek(8)
        raw = fp.read(header_len)
    try:
        header = json.loads(raw)
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise _damaged(path, size, f"its safetensors header is not valid ({err})") from err
    expected = 8 + header_len + end
    if size < expected:
        raise _damaged(
            path, size, "its tensors are cut short", (expected, "according to its safetensors header")
        )
    if size > expected:
        raise _damaged(
            path, size, "it has bytes after its last tensor", (expected, "according to its header")
        )
    return FileKind.SAFETENSORS


def inspect_file(path: Path) -> FileKind:
    """What ``path`` holds, from its first bytes and its size: cheap, nothing is unpickled.

    Raises:
        CheckpointError: not a checkpoint (garbage, a web page, a Git LFS pointer, a TorchScript
            archive), or a checkpoint that is cut short (a truncated zip has no directory at its
            end; a safetensors header gives the full size).
    """
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, size, "the file is empty")
    with open(path, "rb") as fp:
        head = fp.read(64)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise _damaged(path, size, "its end is missing (the zip archive has no directory)")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise _damaged(path, size, f"its zip directory is corrupt ({err})") from err
        if any(name.endswith("constants.pkl") for name in names):
            raise CheckpointError(
                f"{path} is a TorchScript archive (torch.jit.save): it holds code, which is never loaded. "
                "Save the model's state_dict with torch.save, or as .safetensors."
            )
        if not any(name.endswith("data.pkl") for name in names):
            raise CheckpointError(
                f"{path} is a zip archive without a PyTorch checkpoint in it (no data.pkl among its "
                f"{len(names)} entries): pass the checkpoint file itself to --ckpt_path."
            )
        return FileKind.TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return FileKind.TORCH_LEGACY
    kind = _safetensors_layout(path, size, head)
    if kind is not None:
        return kind
    raise _not_a_checkpoint(path, head, size)


@contextlib.contextmanager
def _torch_source(path: Path) -> Iterator[str | IO[bytes]]:
    # torch.load hands any path ending in .safetensors to the safetensors library: a torch
    # checkpoint under that name is passed as an open file (it is then read without mmap).
    if path.suffix == ".safetensors":
        with open(path, "rb") as fp:
            yield fp
    else:
        yield str(path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _torch_load(path: Path, kind: FileKind) -> object:
    """Unpickle a torch.save file without running code from it (see :mod:`lvdm.safe_pickle`).

    Zip checkpoints are memory-mapped: their tensors are read from disk only when used.
    """
    mmap = kind is FileKind.TORCH_ZIP and path.suffix != ".safetensors"
    size = path.stat().st_size
    try:
        with torch.serialization.safe_globals(safe_globals_for_torch()), _torch_source(path) as source:
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # An object PyTorch's unpickler does not take (or a damaged pickle): the second pass says which.
        logger.debug("%s: weights_only refused (%s); reading it with placeholders", path, _first_line(err))
    except Exception as err:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise _damaged(path, size, f"PyTorch cannot read it ({_first_line(err)})") from err
    ignored: set[str] = set()
    try:
        with _torch_source(path) as source:
            obj = torch.load(
                source,
                map_location="cpu",
                weights_only=False,
                mmap=mmap,
                pickle_module=restricted_pickle_module(ignored),
            )
    except PickledCodeError as err:
        raise CheckpointError(
            f"{path} holds pickled code: it names {err.name}, which would run when the file is loaded. "
            "It was refused and nothing from it ran. A checkpoint needs none: if you trust its source, "
            "re-save its state_dict alone with torch.save or as .safetensors."
        ) from err
    except Exception as err:  # a damaged pickle fails in many ways; none of them is the user's bug
        raise _damaged(path, size, f"its pickled contents cannot be read ({_first_line(err)})") from err
    if ignored:
        logger.info(
            "%s: skipped pickled objects of types not known to be harmless (only the state_dict is used): %s",
            path,
            ", ".join(sorted(ignored)),
        )
    return obj


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


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read the tensors of a checkpoint file, whatever its format.

    Tensors of a zip checkpoint are memory-mapped (read from disk when first used).

    Raises:
        CheckpointError: missing, damaged or incomplete file, not a checkpoint, pickled code,
            or no state_dict inside.
    """
    path = _existing(path)
    kind = inspect_file(path)
    if kind is FileKind.SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return _extract_state_dict(dict(load_file(str(path))), path)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types
            raise _damaged(
                path, path.stat().st_size, f"safetensors cannot read it ({_first_line(err)})"
            ) from err
    return _extract_state_dict(_torch_load(path, kind), path)


def read_state_dict_meta(path: str | Path) -> dict[str, Tensor]:
    """The keys, shapes and dtypes of a checkpoint's state_dict, as meta tensors, without reading
    the tensors' data: a safetensors file's header, or a zip checkpoint memory-mapped (only its
    pickle is read). Seconds and a few MB of memory for a 10 GB file; the same errors as
    :func:`read_state_dict`.
    """
    path = _existing(path)
    kind = inspect_file(path)
    if kind is FileKind.SAFETENSORS:
        from safetensors import safe_open

        out: dict[str, Tensor] = {}
        try:
            with safe_open(str(path), "pt") as fp:
                for key in fp.keys():  # noqa: SIM118 -- safe_open has keys(), no __iter__
                    view = fp.get_slice(key)
                    out[key] = torch.empty(
                        view.get_shape(), dtype=_SAFETENSORS_DTYPES[view.get_dtype()], device="meta"
                    )
        except KeyError as err:
            raise CheckpointError(
                f"{path} holds tensors of dtype {err}, which PyTorch does not support"
            ) from err
        except Exception as err:
            raise _damaged(
                path, path.stat().st_size, f"safetensors cannot read it ({_first_line(err)})"
            ) from err
        return _extract_state_dict(out, path)
    if kind is FileKind.TORCH_LEGACY:
        logger.info(
            "%s is in torch.save's legacy format, which cannot be memory-mapped: reading it whole", path
        )
    state_dict = _extract_state_dict(_torch_load(path, kind), path)
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------- checking
# Given the checkpoint's {key: shape}, the configs whose models have exactly those (for hints),
# or None when no search was made.
FittingConfigs = Callable[[Mapping[str, tuple[int, ...]]], Sequence[str] | None]


def _config_hint(state_dict: Mapping[str, Tensor], fitting: FittingConfigs | None) -> str:
    """Which --config to use: the configs whose model has exactly the checkpoint's keys and shapes,
    or, when none is found, what kind of checkpoint it is (never a config that does not fit)."""
    fits = fitting({k: tuple(v.shape) for k, v in state_dict.items()}) if fitting is not None else None
    if fits:
        others = f" (or {', '.join(fits[1:])})" if len(fits) > 1 else ""
        return f"The checkpoint fits --config {fits[0]}{others}."
    if any(k.startswith(IMAGE_MODEL_PREFIXES) for k in state_dict):
        kind = "This looks like an image-to-video checkpoint (it has an image embedder)"
    else:
        kind = "This looks like a text-to-video checkpoint (no image embedder)"
    searched = "; no config in configs/ has its keys and shapes" if fits is not None else ""
    return f"{kind}{searched}: pass the --config it was trained with."


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "checkpoint",
    fitting: FittingConfigs | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` exactly.

    Only keys and shapes are compared: ``state_dict`` may hold meta tensors
    (:func:`read_state_dict_meta`) and ``model`` may live on the meta device or on fake tensors.
    ``fitting`` finds the configs the checkpoint fits, for the hint.
    """
    mismatch = KeyMismatch.between(model.state_dict(), state_dict)
    if mismatch.missing or mismatch.unexpected:
        parts = [f"{source} does not match the model built from the config.", *mismatch.by_group()]
        parts.append(_config_hint(state_dict, fitting))
        raise CheckpointError("\n".join(parts))
    if mismatch.wrong_shape:
        lines = "\n".join(f"  {line}" for line in mismatch.shape_lines(5))
        raise CheckpointError(
            f"{source}: {len(mismatch.wrong_shape)} tensor(s) have the wrong shape for this config, e.g.\n{lines}\n"
            "Check that --config matches the checkpoint (model size, context_dim, channel_mult). "
            + _config_hint(state_dict, fitting)
        )


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Check, then load strictly (copying into the model's tensors); nothing is loaded if the check fails."""
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %d tensors from %s", len(state_dict), source)
