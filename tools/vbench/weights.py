"""Where the feature models' weights come from: the Hugging Face cache, a local file, and the clear
errors a user gets when neither is there (offline) or a file does not fit its model."""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tools.vbench.common import BACKGROUND, SUBJECT, FeatureWeightsError, _first_line

logger = logging.getLogger(__name__)

DINO_TIMM_NAME = "vit_base_patch16_224.dino"
DINO_HUB_REPO = "timm/vit_base_patch16_224.dino"
# The safetensors file first, then the pickle: the order timm itself tries on the Hub.
DINO_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
DINO_ORIGINAL_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
CLIP_ARCH = "ViT-B-32"
CLIP_PRETRAINED = "openai"
CLIP_HUB_REPO = "timm/vit_base_patch32_clip_224.openai"
# open_clip's own names and order (open_clip.constants: safetensors first).
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_ORIGINAL_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)


def _offline() -> bool:
    """Whether the Hub is off limits (``HF_HUB_OFFLINE``), read now so that it can change at run time."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or value in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class _HubWeights:
    """Where a feature model's weights live, and what to tell a user who has none."""

    label: str  # "DINO ViT-B/16"
    dimension: str
    repo_id: str
    filenames: tuple[str, ...]
    flag: str  # the CLI flag for a local file
    original: str  # the original release, also accepted by the flag

    def missing_message(self, cache: str, reason: str) -> str:
        return (
            f"{self.dimension} needs the {self.label} weights: {reason}. Either fetch them into the "
            f"Hugging Face cache ({cache}) once, on a machine with network: "
            f"`hf download {self.repo_id} {self.filenames[0]}`; or put {self.filenames[0]} "
            f"(https://huggingface.co/{self.repo_id}) or the original release {self.original} "
            f"anywhere and pass {self.flag} PATH. (--random_feature_models runs without weights, "
            "for tests only: its scores mean nothing.)"
        )


_DINO_WEIGHTS = _HubWeights(
    "DINO ViT-B/16", SUBJECT, DINO_HUB_REPO, DINO_HUB_FILES, "--dino_weights", DINO_ORIGINAL_URL
)
_CLIP_WEIGHTS = _HubWeights(
    "CLIP ViT-B/32 (OpenAI)", BACKGROUND, CLIP_HUB_REPO, CLIP_HUB_FILES, "--clip_weights", CLIP_ORIGINAL_URL
)


def _hub_file(spec: _HubWeights) -> Path:
    """The weights file from the Hugging Face cache, downloading it there unless offline.

    The cache is asked first without any network request, so a cached file costs nothing and an
    offline machine with the file never waits on the network.

    Raises:
        FeatureWeightsError: not cached, and offline (``HF_HUB_OFFLINE``) or the download failed.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for filename in spec.filenames:
        try:
            return Path(hf_hub_download(spec.repo_id, filename, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    cache = str(constants.HF_HUB_CACHE)
    if _offline():
        raise FeatureWeightsError(spec.missing_message(cache, "not in the cache and HF_HUB_OFFLINE is set"))
    errors = []
    for filename in spec.filenames:
        logger.info("downloading %s/%s into %s", spec.repo_id, filename, cache)
        try:
            return Path(hf_hub_download(spec.repo_id, filename))
        except LocalEntryNotFoundError as err:
            # The Hub could not be reached (after the client's retries): the next name would wait
            # just as long for the same answer.
            errors.append(f"{filename}: {_first_line(err)}")
            break
        except Exception as err:  # e.g. no such file in the repository: try the next name
            errors.append(f"{filename}: {_first_line(err)}")
    reason = "not in the cache and the download failed (" + "; ".join(errors) + ")"
    raise FeatureWeightsError(spec.missing_message(cache, reason))


def _local_file(path: str | os.PathLike, spec: _HubWeights) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FeatureWeightsError(
            f"{spec.flag} {path}: no such file. Give the {spec.label} weights: {spec.filenames[0]} from "
            f"https://huggingface.co/{spec.repo_id} or {spec.original}."
        )
    return path


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's ``ViT-B-32.pt`` (VBench's local copy) is a TorchScript archive, not a state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


class _DropRootRecords(logging.Filter):
    """Quiets open_clip while it builds the model: it logs each build step on the root logger, and
    warns that no weights were loaded (we load them right after)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO and not str(record.msg).startswith(
            "No pretrained weights loaded"
        )


@dataclass(frozen=True)
class _UrlWeights:
    """A small weights file published at a plain URL (not on the Hub), kept in torch's hub cache."""

    label: str  # "LAION aesthetic head"
    dimension: str
    url: str
    flag: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def missing_message(self, cache: Path, reason: str) -> str:
        return (
            f"{self.dimension} needs the {self.label} weights: {reason}. Either download {self.url} "
            f"once into {cache}, or put {self.filename} anywhere and pass {self.flag} PATH. "
            "(--random_feature_models runs without weights, for tests only: its scores mean nothing.)"
        )


def _url_file(spec: _UrlWeights) -> Path:
    """The weights file from ``$TORCH_HOME/hub/checkpoints``, downloading it there unless offline.

    The same offline switch as the Hub files (``HF_HUB_OFFLINE``), so one setting keeps every
    feature model off the network.

    Raises:
        FeatureWeightsError: not cached, and offline or the download failed.
    """
    import torch.hub

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / spec.filename
    if path.is_file():
        return path
    if _offline():
        raise FeatureWeightsError(spec.missing_message(cache, "not in the cache and HF_HUB_OFFLINE is set"))
    logger.info("downloading %s into %s", spec.url, cache)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(path), progress=False)
    except Exception as err:  # no network, HTTP error: one clear message
        reason = f"not in the cache and the download failed ({_first_line(err)})"
        raise FeatureWeightsError(spec.missing_message(cache, reason)) from err
    return path


def _local_url_file(path: str | os.PathLike, spec: _UrlWeights) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FeatureWeightsError(
            f"{spec.flag} {path}: no such file. Give the {spec.label} weights: {spec.url}."
        )
    return path
