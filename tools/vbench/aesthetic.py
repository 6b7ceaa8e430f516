"""VBench's aesthetic quality: the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings.

VBench (``vbench/aesthetic_quality.py``) embeds every frame with OpenAI's CLIP ViT-L/14 (its
``clip_transform``: the same preprocessing as background consistency, :func:`clip_preprocess`),
L2-normalises the embedding in float32, applies LAION's linear head ``sa_0_4_vit_l_14_linear.pth``
(``nn.Linear(768, 1)``, a score on a 1..10 scale), and reports the mean over the frames divided by
10. :func:`aesthetic_quality_score` is that last step; the scorer reports it in percent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.vbench.common import (
    AESTHETIC,
    RANDOM_INIT_SEED,
    FeatureWeightsError,
    _first_line,
    _seeded,
    read_weights_file,
)
from tools.vbench.consistency import ClipImageFeatures, build_open_clip_tower, small_clip_tower
from tools.vbench.weights import _HubWeights, _local_url_file, _url_file, _UrlWeights

logger = logging.getLogger(__name__)

CLIP_L14_ARCH = "ViT-L-14"
CLIP_L14_HUB_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_L14_ORIGINAL_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"
)
EMBED_DIM = 768  # ViT-L/14's projected image embedding, the LAION head's input
# The file VBench downloads (get_aesthetic_model); it is not on the Hugging Face Hub.
LAION_HEAD_URL = (
    "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_l_14_linear.pth"
)
# VBench divides the LAION score (1..10) by 10.
LAION_SCALE = 10.0

_CLIP_L14_WEIGHTS = _HubWeights(
    "CLIP ViT-L/14 (OpenAI)",
    AESTHETIC,
    CLIP_L14_HUB_REPO,
    ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "--clip_l14_weights",
    CLIP_L14_ORIGINAL_URL,
)
_LAION_HEAD = _UrlWeights("LAION aesthetic head", AESTHETIC, LAION_HEAD_URL, "--aesthetic_weights")


def aesthetic_quality_score(frame_scores: torch.Tensor | np.ndarray) -> float:
    """VBench's aesthetic quality of one video from its frames' LAION scores: ``mean / 10``.

    Args:
        frame_scores: ``(t,)`` LAION aesthetic scores (1..10 for real images).

    Returns:
        A fraction (VBench's scale); NaN for no frames.
    """
    scores = torch.as_tensor(frame_scores, dtype=torch.float64)
    if scores.ndim != 1:
        raise ValueError(f"frame_scores must be (t,), got shape {tuple(scores.shape)}")
    return float(scores.mean()) / LAION_SCALE if len(scores) else float("nan")


def load_aesthetic_head(path: str | os.PathLike) -> nn.Linear:
    """LAION's linear head from a state-dict file (``.pth`` weights-only, or ``.safetensors``).

    Raises:
        FeatureWeightsError: unreadable, or not exactly ``weight (1, 768)`` and ``bias (1,)``.
    """
    path = Path(path)
    try:
        state = read_weights_file(path)
    except Exception as err:
        raise FeatureWeightsError(
            f"{path} does not hold the LAION aesthetic head ({_first_line(err)})"
        ) from err
    expected = {"weight": (1, EMBED_DIM), "bias": (1,)}
    found = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else None
    if found != expected:
        raise FeatureWeightsError(
            f"{path} does not hold the LAION aesthetic head (sa_0_4_vit_l_14_linear.pth): expected the keys "
            f"and shapes {expected}, found {found if found is not None else type(state).__name__}"
        )
    head = nn.Linear(EMBED_DIM, 1)
    head.load_state_dict(state, strict=True)
    return head


class AestheticPredictor(nn.Module):
    """CLIP image embedding -> L2 normalisation (float32) -> LAION's linear head, per frame.

    Args:
        tower: The CLIP image tower (ViT-L/14 for VBench's numbers), ``(b, 3, 224, 224) -> (b, 768)``.
        head: ``nn.Linear(768, 1)``.
    """

    def __init__(self, tower: ClipImageFeatures, head: nn.Linear) -> None:
        super().__init__()
        self.tower = tower
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(b, 3, 224, 224)`` CLIP-normalised frames -> ``(b,)`` LAION scores (float32)."""
        embedding = F.normalize(self.tower(images).float(), dim=-1)
        return self.head(embedding).squeeze(-1)


def build_aesthetic(
    head_weights: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> AestheticPredictor:
    """VBench's aesthetic predictor in eval mode on ``device``.

    Args:
        head_weights: LAION's ``sa_0_4_vit_l_14_linear.pth`` (or the same two tensors in a
            ``.safetensors``); ``None`` takes it from ``$TORCH_HOME/hub/checkpoints``, downloading
            it there from LAION's repository on first use.
        clip_weights: CLIP ViT-L/14 (OpenAI) weights, the formats of :func:`build_clip`; ``None``
            takes open_clip's ``ViT-L-14``/``openai`` from the Hugging Face cache.
        random_init: Seeded random head and a small random tower (:func:`small_clip_tower`), no
            file, no network (tests only).
        device: Where the model runs.
        precision: The tower's open_clip precision; by default float16 on CUDA, as VBench's ``clip.load``.

    Raises:
        FeatureWeightsError: weights missing, or a file that does not fit.
    """
    device = torch.device(device)
    if random_init:
        if head_weights is not None or clip_weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        # Small: a random ViT-L/14 costs ~80 GFLOP a frame (see consistency.SMALL_TOWER).
        tower = small_clip_tower(CLIP_L14_ARCH, device)
        with _seeded(RANDOM_INIT_SEED):
            head = nn.Linear(EMBED_DIM, 1)
        source = "random-init, small tower"
    else:
        path = (
            _local_url_file(head_weights, _LAION_HEAD) if head_weights is not None else _url_file(_LAION_HEAD)
        )
        head = load_aesthetic_head(path)  # the small file first: a wrong one fails before CLIP loads
        tower = build_open_clip_tower(
            CLIP_L14_ARCH, _CLIP_L14_WEIGHTS, clip_weights, False, device, precision
        )
        source = str(path)
    logger.info("LAION aesthetic head (%s) on %s", source, device)
    model = AestheticPredictor(tower, head.to(device)).eval()
    model.requires_grad_(False)
    return model
