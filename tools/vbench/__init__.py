"""VBench's temporal-quality dimensions, computed the way VBench computes them.

VBench (Huang et al., CVPR 2024) is the benchmark that long-video papers (FIFO-Diffusion,
Ouroboros-Diffusion, FreeLong, ...) print their consistency tables with. This package reproduces
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
- DINO: the short side resized to 224 (bilinear, no antialiasing, aspect ratio kept, no crop), then
  ``/255`` and ImageNet mean/std; the ViT sees a non-square image and interpolates its position
  embedding as DINO's own ``interpolate_pos_encoding`` does (:func:`dino_position_embedding`);
- CLIP: the short side resized to 224 (bicubic, no antialiasing), a 224 centre crop, ``/255`` and
  CLIP's mean/std; on CUDA the model runs in float16, as OpenAI's ``clip.load`` (which VBench
  uses) builds it there, and in float32 on the CPU;
- temporal flickering: the mean over consecutive pairs of the per-pair mean absolute difference.

A single-frame video scores NaN, as VBench's formulas give (a mean over no frame pairs).

Deviations, also listed in ``docs/evaluation.md``: the models come from ``timm`` (``vit_base_patch16_224.dino``,
the same DINO weights) and ``open_clip`` (``ViT-B-32`` with the ``openai`` weights and QuickGELU,
the same network) rather than ``torch.hub`` and OpenAI's ``clip`` package; frames go through the
models in batches (VBench: DINO one frame at a time); cosines are taken in float64; an ``.mp4`` is
decoded by ffmpeg through imageio rather than decord/OpenCV; temporal flickering's static-video
filter is an option (``static_filter``), off by default.

Two motion dimensions: ``motion_smoothness`` (AMT-S predicts the odd frames from the even ones,
:mod:`.amt` and :mod:`.motion`) and ``dynamic_degree`` (RAFT flow, 1 or 0 per video; :mod:`.flow`,
which also holds the static filter).

Two quality dimensions per frame: ``aesthetic_quality`` (LAION's aesthetic head on CLIP ViT-L/14,
:mod:`.aesthetic`) and ``imaging_quality`` (pyiqa's MUSIQ with SPAQ weights, :mod:`.imaging`); and
VBench-Long's clip protocol for long videos (:mod:`.long`, with :mod:`.encode` for its H.264
round trip of every clip).

Modules: :mod:`.common` (dimension names, constants, :class:`DimensionScores`, the one type
that declares the seven dimensions, :class:`FeatureWeightsError`), :mod:`.video`
(VBench's frame preprocessing), :mod:`.weights` (Hub cache, local files, offline errors),
:mod:`.consistency` (DINO/CLIP models and the consistency score), :mod:`.flicker`,
:mod:`.scorer` (:class:`VBenchScorer`, one video at a time), :mod:`.strict` (strict loading of the
motion models). This file re-exports the public names.
"""

from __future__ import annotations

from tools.vbench.aesthetic import AestheticPredictor, aesthetic_quality_score, build_aesthetic
from tools.vbench.common import (
    AESTHETIC,
    BACKGROUND,
    CLIP_MEAN,
    CLIP_STD,
    DIMENSIONS,
    DYNAMIC,
    FLICKER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMAGING,
    INPUT_SIZE,
    MOTION,
    SUBJECT,
    DimensionScores,
    FeatureWeightsError,
)
from tools.vbench.consistency import (
    ClipImageFeatures,
    DinoFeatures,
    build_clip,
    build_dino,
    consistency_curve,
    dino_position_embedding,
)
from tools.vbench.flicker import temporal_flickering_score
from tools.vbench.flow import FlowScorer, build_raft, raft_things_to_torchvision
from tools.vbench.imaging import MusiqScores, build_musiq, imaging_preprocess, imaging_quality_score
from tools.vbench.motion import MotionScorer, build_amt, motion_smoothness_score
from tools.vbench.scorer import VBenchScorer, VBenchScores
from tools.vbench.video import clip_preprocess, dino_preprocess

# Kept importable from the package, where the tests (and callers of the single-module version) find it.
from tools.vbench.weights import _is_torchscript_archive as _is_torchscript_archive

__all__ = [
    "AESTHETIC",
    "BACKGROUND",
    "CLIP_MEAN",
    "CLIP_STD",
    "DIMENSIONS",
    "DYNAMIC",
    "FLICKER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGING",
    "INPUT_SIZE",
    "MOTION",
    "SUBJECT",
    "AestheticPredictor",
    "ClipImageFeatures",
    "DimensionScores",
    "DinoFeatures",
    "FeatureWeightsError",
    "FlowScorer",
    "MotionScorer",
    "MusiqScores",
    "VBenchScorer",
    "VBenchScores",
    "aesthetic_quality_score",
    "build_aesthetic",
    "build_amt",
    "build_clip",
    "build_dino",
    "build_musiq",
    "build_raft",
    "clip_preprocess",
    "consistency_curve",
    "dino_position_embedding",
    "dino_preprocess",
    "imaging_preprocess",
    "imaging_quality_score",
    "motion_smoothness_score",
    "raft_things_to_torchvision",
    "temporal_flickering_score",
]
