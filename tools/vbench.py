"""VBench's temporal-quality dimensions, computed the way VBench computes them.

VBench (Huang et al., CVPR 2024) is the benchmark that long-video papers (FIFO-Diffusion,
Ouroboros-Diffusion, FreeLong, ...) print their consistency tables with. This module reproduces
three of its temporal dimensions per video, in percent as the papers print them:

- ``subject_consistency``: DINO ViT-B/16 [CLS] features of every frame.
- ``background_consistency``: CLIP ViT-B/32 image embeddings of every frame.
- ``temporal_flickering``: ``(255 - mean |frame i+1 - frame i|) / 255`` on the uint8 frames.

Both consistency dimensions use VBench's formula on unit-norm features ``f_0 .. f_{t-1}``: frame
``i >= 1`` scores ``(max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2`` and the video scores
the mean over its ``t - 1`` frames (:func:`consistency_curve`).

Matched to VBench's code (``vbench/subject_consistency.py``, ``background_consistency.py``,
``temporal_flickering.py``, ``utils.py``):

- every frame is scored (no frame sampling);
- the frames are float32 pixels in ``[0, 255]`` when they are resized (not uint8: no rounding);
- DINO: the short side resized to 224 (bilinear, antialiased, aspect ratio kept, no crop), then
  ``/255`` and ImageNet mean/std; the ViT sees a non-square image and interpolates its position
  embedding as DINO's own ``interpolate_pos_encoding`` does (:func:`dino_position_embedding`);
- CLIP: the short side resized to 224 (bicubic, antialiased), a 224 centre crop, ``/255`` and
  CLIP's mean/std; on CUDA the model runs in float16, as OpenAI's ``clip.load`` (which VBench
  uses) builds it there, and in float32 on the CPU;
- temporal flickering: the mean over consecutive pairs of the per-pair mean absolute difference.

Deviations, also listed in the README: the models come from ``timm`` (``vit_base_patch16_224.dino``,
the same DINO weights) and ``open_clip`` (``ViT-B-32`` with the ``openai`` weights and QuickGELU,
the same network) rather than ``torch.hub`` and OpenAI's ``clip`` package; frames go through the
models in batches (VBench: DINO one frame at a time); cosines are taken in float64; an ``.mp4`` is
decoded by ffmpeg through imageio rather than decord/OpenCV; temporal flickering has no static-video
filter (VBench scores it on its own static-scene prompts); a single-frame video scores NaN.
``motion_smoothness`` is not computed: VBench uses the AMT-S interpolation model, which no
installable package compatible with this project provides.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND",
    "CLIP_MEAN",
    "CLIP_STD",
    "DIMENSIONS",
    "FLICKER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "SUBJECT",
    "ClipImageFeatures",
    "DinoFeatures",
    "FeatureWeightsError",
    "VBenchScorer",
    "VBenchScores",
    "build_clip",
    "build_dino",
    "clip_preprocess",
    "consistency_curve",
    "dino_position_embedding",
    "dino_preprocess",
    "temporal_flickering_score",
]

SUBJECT = "subject_consistency"
BACKGROUND = "background_consistency"
FLICKER = "temporal_flickering"
DIMENSIONS = (SUBJECT, BACKGROUND, FLICKER)

INPUT_SIZE = 224
# VBench's normalisation constants (vbench/utils.py: dino_transform and clip_transform).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

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
# Random-initialised models are seeded, so that two test runs see the same (meaningless) scores.
RANDOM_INIT_SEED = 0


class FeatureWeightsError(RuntimeError):
    """A feature model's weights are missing (no network, not cached) or do not fit the model."""


# --------------------------------------------------------------------------------------------
# Preprocessing (VBench's transforms)


def _float_pixels(frames: torch.Tensor) -> torch.Tensor:
    """``(t, h, w, 3)`` uint8 -> ``(t, 3, h, w)`` float32 in ``[0, 255]``.

    VBench turns the decoded frames into a float tensor before its transforms, so the resize works
    on unrounded float pixels; resizing uint8 would round every output pixel.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (t, h, w, 3), got shape {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2).float()


def dino_preprocess(frames: torch.Tensor) -> torch.Tensor:
    """VBench's DINO input: ``(t, h, w, 3)`` uint8 -> ``(t, 3, 224, w')`` float32.

    The short side becomes 224 (bilinear, antialiased; the long side ``int(224 * long / short)``,
    e.g. 320x512 -> 224x358), no crop, then ``/255`` and ImageNet mean/std.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pixels = TF.resize(
        _float_pixels(frames), [INPUT_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    return TF.normalize(pixels / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_preprocess(frames: torch.Tensor) -> torch.Tensor:
    """VBench's CLIP input: ``(t, h, w, 3)`` uint8 -> ``(t, 3, 224, 224)`` float32.

    The short side becomes 224 (bicubic, antialiased; float pixels may overshoot ``[0, 255]`` a
    little, as in VBench), a 224x224 centre crop, then ``/255`` and CLIP's mean/std.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pixels = TF.resize(
        _float_pixels(frames), [INPUT_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    pixels = TF.center_crop(pixels, [INPUT_SIZE, INPUT_SIZE])
    return TF.normalize(pixels / 255.0, CLIP_MEAN, CLIP_STD)


# --------------------------------------------------------------------------------------------
# Scores


def consistency_curve(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """VBench's per-frame consistency of one video's features.

    Args:
        features: ``(t, d)`` features of the frames in order (any scale: they are L2-normalised here).

    Returns:
        ``(t - 1,)`` float64 in ``[0, 1]``: entry ``i - 1`` is frame ``i``'s
        ``(max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2``. The video's score is the mean.
    """
    feats = torch.as_tensor(features).double()
    if feats.ndim != 2:
        raise ValueError(f"features must be (t, d), got shape {tuple(feats.shape)}")
    # float64: identical frames give a cosine of 1 to ~1e-16, so a static video scores 100.
    unit = F.normalize(feats, dim=-1)
    to_previous = (unit[1:] * unit[:-1]).sum(-1).clamp(min=0.0)
    to_first = (unit[1:] @ unit[0]).clamp(min=0.0)
    return ((to_previous + to_first) / 2).numpy()


def temporal_flickering_score(frames: np.ndarray) -> float:
    """VBench's temporal flickering of one video, as a fraction (1.0: no change between frames).

    Args:
        frames: ``(t, h, w, c)`` uint8.

    Returns:
        ``(255 - mean_i MAE(frame_i, frame_{i+1})) / 255``, the mean over the ``t - 1`` pairs of the
        per-pair mean absolute difference; NaN for a single frame.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (t, h, w, c), got shape {frames.shape}")
    if len(frames) < 2:
        return math.nan
    # Pair by pair, so that a long video never needs a float copy of all its frames.
    pair_errors = [
        float(np.abs(frames[i + 1].astype(np.float32) - frames[i].astype(np.float32)).mean())
        for i in range(len(frames) - 1)
    ]
    return (255.0 - float(np.mean(pair_errors))) / 255.0


# --------------------------------------------------------------------------------------------
# Feature models


def dino_position_embedding(
    pos_embed: torch.Tensor, grid: tuple[int, int], square_input: bool
) -> torch.Tensor:
    """DINO's position embedding for a ``grid = (rows, cols)`` of patches.

    Args:
        pos_embed: ``(1, 1 + n, d)`` learnt embedding (class token first, then an ``sqrt(n)`` square grid).
        grid: Patch rows and columns of the input image.
        square_input: Whether the input image is square; DINO keeps the learnt embedding only for a
            square input with ``n`` patches.

    Returns:
        ``(1, 1 + rows * cols, d)``.
    """
    n = pos_embed.shape[1] - 1
    rows, cols = grid
    if rows * cols == n and square_input:
        return pos_embed
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    patch_grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # DINO adds 0.1 to the target grid before dividing (its guard against a float rounding down
    # the output size). The scale factor, not the output size, places the bicubic samples, so the
    # 0.1 shifts the values slightly; VBench's DINO does this, so we do too.
    resized = F.interpolate(
        patch_grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic"
    )
    if tuple(resized.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"position embedding resized to {tuple(resized.shape[-2:])}, expected {grid}")
    patch_pos = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


class DinoFeatures(nn.Module):
    """DINO ViT-B/16 [CLS] features of any image size, as DINO's own ViT computes them.

    timm's ViT asks for sides divisible by 16 and resizes its position embedding differently;
    DINO's patch convolution drops the remainder (224x358 -> 14x22 patches) and uses
    :func:`dino_position_embedding`. The layers and weights are timm's.

    Args:
        vit: A timm ``VisionTransformer`` with DINO's layout (class token, no register tokens).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if getattr(vit, "reg_token", None) is not None or getattr(vit, "no_embed_class", False):
            raise ValueError("DinoFeatures needs a ViT with a class token and no register tokens")
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` normalised images -> ``(b, 768)`` [CLS] features after the final norm."""
        vit = self.vit
        patches = vit.patch_embed.proj(images)  # (b, d, h // 16, w // 16): the remainder is dropped
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = vit.patch_embed.norm(patches.flatten(2).transpose(1, 2))  # (b, rows * cols, d)
        cls = vit.cls_token.expand(len(tokens), -1, -1)
        square = images.shape[-2] == images.shape[-1]
        x = torch.cat([cls, tokens], dim=1) + dino_position_embedding(vit.pos_embed, grid, square)
        x = vit.norm(vit.blocks(vit.norm_pre(x)))
        return x[:, 0]


class ClipImageFeatures(nn.Module):
    """The image tower of an open_clip CLIP: ``encode_image`` without the text tower.

    Args:
        visual: ``clip_model.visual``; its patch convolution's dtype (float16 on CUDA) sets the input
            dtype, as OpenAI's ``encode_image`` casts its input.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the layer that sees the input (in float16, some embeddings stay float32)."""
        return self.visual.conv1.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(b, 3, 224, 224)`` normalised images -> ``(b, 512)`` projected image embeddings."""
        return self.visual(images.to(self.dtype))


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Random initialisation from ``seed`` without touching the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_dino(
    weights: str | os.PathLike | None = None, random_init: bool = False, device: str | torch.device = "cpu"
) -> DinoFeatures:
    """The DINO ViT-B/16 of VBench's subject consistency, in eval mode on ``device`` (float32).

    Args:
        weights: A local file (timm's ``model.safetensors`` or DINO's ``dino_vitbase16_pretrain.pth``);
            ``None`` takes timm's ``vit_base_patch16_224.dino`` from the Hugging Face cache,
            downloading it there on first use.
        random_init: Seeded random weights of the same architecture, no file, no network (tests only).
        device: Where the model runs.

    Raises:
        FeatureWeightsError: weights missing (see :func:`_hub_file`) or not DINO ViT-B/16 weights.
    """
    import timm

    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        with _seeded(RANDOM_INIT_SEED):
            vit = timm.create_model(DINO_TIMM_NAME, pretrained=False, num_classes=0)
        source = "random-init"
    else:
        path = _local_file(weights, _DINO_WEIGHTS) if weights is not None else _hub_file(_DINO_WEIGHTS)
        try:
            # Read first: a file that is no checkpoint fails before a model is built. timm then loads
            # the weights strictly, through its converter for other ViT key layouts.
            state = timm.models.load_state_dict(str(path))
            vit = timm.create_model(
                DINO_TIMM_NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": state}
            )
        except Exception as err:  # unreadable file or wrong keys: one clear message
            raise FeatureWeightsError(
                f"{path} does not hold DINO ViT-B/16 weights ({_first_line(err)})"
            ) from err
        source = str(path)
    logger.info("DINO ViT-B/16 (%s) on %s", source, device)
    model = DinoFeatures(vit).to(device).eval()
    model.requires_grad_(False)
    return model


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


def build_clip(
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> ClipImageFeatures:
    """The CLIP ViT-B/32 image tower of VBench's background consistency, in eval mode on ``device``.

    Args:
        weights: A local file (open_clip's ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``,
            or OpenAI's ``ViT-B-32.pt``); ``None`` takes open_clip's ``ViT-B-32``/``openai`` weights
            from the Hugging Face cache, downloading them there on first use.
        random_init: Seeded random weights of the same architecture, no file, no network (tests only).
        device: Where the model runs.
        precision: open_clip's ``"fp16"`` or ``"fp32"``; by default float16 on CUDA and float32 on
            the CPU, as OpenAI's ``clip.load`` (VBench's loader) builds it.

    Raises:
        FeatureWeightsError: weights missing (see :func:`_hub_file`) or not CLIP ViT-B/32 weights.
    """
    import open_clip

    device = torch.device(device)
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    path = None
    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
    else:
        path = _local_file(weights, _CLIP_WEIGHTS) if weights is not None else _hub_file(_CLIP_WEIGHTS)
    quiet = _DropRootRecords()
    logging.getLogger().addFilter(quiet)
    try:
        with _seeded(RANDOM_INIT_SEED):
            # OpenAI's CLIP uses QuickGELU; open_clip's plain "ViT-B-32" config does not.
            model = open_clip.create_model(
                CLIP_ARCH, pretrained=None, precision=precision, device=device, force_quick_gelu=True
            )
    finally:
        logging.getLogger().removeFilter(quiet)
    if path is not None:
        try:
            # A TorchScript archive holds no pickled Python objects; anything else loads weights-only.
            open_clip.load_checkpoint(
                model, str(path), strict=True, weights_only=not _is_torchscript_archive(path)
            )
        except Exception as err:  # unreadable file or wrong keys: one clear message
            raise FeatureWeightsError(
                f"{path} does not hold CLIP ViT-B/32 weights ({_first_line(err)})"
            ) from err
    logger.info("CLIP ViT-B/32 (%s, %s) on %s", path or "random-init", precision, device)
    tower = ClipImageFeatures(model.visual).eval()  # the text tower is dropped with `model`
    tower.requires_grad_(False)
    return tower


# --------------------------------------------------------------------------------------------
# Scoring videos


@dataclass
class VBenchScores:
    """One video's VBench dimensions in percent (``None``: not computed; NaN: a single frame).

    Curves hold frame ``i``'s consistency for ``i = 1 .. t - 1`` (``(t - 1,)``), in percent.
    """

    subject_consistency: float | None = None
    background_consistency: float | None = None
    temporal_flickering: float | None = None
    subject_consistency_curve: list[float] | None = None
    background_consistency_curve: list[float] | None = None


def _percent_mean(curve: np.ndarray) -> float:
    return float(curve.mean()) * 100.0 if len(curve) else math.nan


class VBenchScorer:
    """Scores videos on the chosen VBench dimensions, frames in batches on one device.

    Args:
        dimensions: Names from :data:`DIMENSIONS`.
        dino: The model for ``subject_consistency`` (needed when it is chosen).
        clip: The model for ``background_consistency`` (needed when it is chosen).
        batch_size: Frames per forward pass.
        device: Where the models live; frames are preprocessed there too.
    """

    def __init__(
        self,
        dimensions: Sequence[str] = DIMENSIONS,
        dino: nn.Module | None = None,
        clip: nn.Module | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        unknown = [d for d in dimensions if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown VBench dimension(s) {unknown}; choose from {list(DIMENSIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if SUBJECT in dimensions and dino is None:
            raise ValueError(f"{SUBJECT} needs the DINO model")
        if BACKGROUND in dimensions and clip is None:
            raise ValueError(f"{BACKGROUND} needs the CLIP model")
        self.dimensions = tuple(d for d in DIMENSIONS if d in dimensions)  # VBench's order
        self.dino = dino
        self.clip = clip
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.sources: dict[str, str] = {}

    @classmethod
    def create(
        cls,
        dimensions: Sequence[str] = DIMENSIONS,
        dino_weights: str | os.PathLike | None = None,
        clip_weights: str | os.PathLike | None = None,
        random_init: bool = False,
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ) -> VBenchScorer:
        """Build the models the dimensions need (see :func:`build_dino`, :func:`build_clip`).

        ``device`` defaults to CUDA when available.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dino = build_dino(dino_weights, random_init, device) if SUBJECT in dimensions else None
        clip = build_clip(clip_weights, random_init, device) if BACKGROUND in dimensions else None
        scorer = cls(dimensions, dino, clip, batch_size, device)

        def source(weights: str | os.PathLike | None, repo: str) -> str:
            if random_init:
                return "random-init (tests only)"
            return str(weights) if weights is not None else f"hf:{repo}"

        if dino is not None:
            scorer.sources[SUBJECT] = source(dino_weights, DINO_HUB_REPO)
        if clip is not None:
            scorer.sources[BACKGROUND] = source(clip_weights, CLIP_HUB_REPO)
        return scorer

    @torch.inference_mode()
    def features(
        self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], frames: np.ndarray
    ) -> torch.Tensor:
        """``(t, h, w, 3)`` uint8 -> ``(t, d)`` float64 features (on the CPU), ``batch_size`` frames a pass."""
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            chunks.append(model(preprocess(batch.to(self.device))).double().cpu())
        return torch.cat(chunks)

    def score(self, frames: np.ndarray) -> VBenchScores:
        """The chosen dimensions of one video, ``frames`` ``(t, h, w, 3)`` uint8."""
        scores = VBenchScores()
        if SUBJECT in self.dimensions:
            curve = consistency_curve(self.features(self.dino, dino_preprocess, frames))
            scores.subject_consistency = _percent_mean(curve)
            scores.subject_consistency_curve = (curve * 100.0).tolist()
        if BACKGROUND in self.dimensions:
            curve = consistency_curve(self.features(self.clip, clip_preprocess, frames))
            scores.background_consistency = _percent_mean(curve)
            scores.background_consistency_curve = (curve * 100.0).tolist()
        if FLICKER in self.dimensions:
            scores.temporal_flickering = temporal_flickering_score(frames) * 100.0
        return scores

    def settings(self) -> dict[str, object]:
        """What produced the scores, for the JSON report."""
        return {
            "dimensions": list(self.dimensions),
            "scale": "percent",
            "models": dict(self.sources),
            "batch_size": self.batch_size,
            "device": str(self.device),
        }
