"""VBench's frame preprocessing, pinned to its parameters: every transform of tools/vbench is
compared with VBench's own chain rebuilt from torchvision's transform classes with the parameters
VBench's code passes them (``vbench/utils.py``: ``dino_transform``, ``clip_transform``;
``vbench/imaging_quality.py``: ``transform`` in its default ``'longer'`` mode).

VBench feeds its transforms the frames of ``load_video``: ``torch.Tensor`` of the decoded uint8
array, i.e. float32 pixels in ``[0, 255]``, ``(t, c, h, w)``.

Frames: textured (random pixels: every frequency) and smooth (a colour gradient), at sizes that are
downscaled (320x512, VideoCrafter's) and upscaled (64x96, 100x160 for CLIP's 224) by the 224
transforms, and 600x900 / 320x512 for imaging quality's 512 limit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from tools.vbench import clip_preprocess, dino_preprocess, imaging_preprocess

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _vbench_dino(antialias: bool = False) -> T.Compose:
    # dino_transform(224): Resize(size=224, antialias=False) (bilinear, torchvision's default), /255,
    # ImageNet mean/std.
    return T.Compose(
        [
            T.Resize(size=224, antialias=antialias),
            T.Lambda(lambda x: x.float().div(255.0)),
            T.Normalize(*IMAGENET),
        ]
    )


def _vbench_clip(antialias: bool = False) -> T.Compose:
    # clip_transform(224): Resize(224, BICUBIC, antialias=False), CenterCrop(224), /255, CLIP mean/std.
    return T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=antialias),
            T.CenterCrop(224),
            T.Lambda(lambda x: x.float().div(255.0)),
            T.Normalize(*OPENAI),
        ]
    )


def _vbench_imaging(pixels: torch.Tensor) -> torch.Tensor:
    # transform(images, 'longer'): when the longer side is over 512, Resize to
    # (int(scale * h), int(scale * w)) with scale = 512 / longer, antialias=False; then /255.
    h, w = pixels.shape[-2:]
    if max(h, w) > 512:
        scale = 512.0 / max(h, w)
        pixels = T.Resize(size=(int(scale * h), int(scale * w)), antialias=False)(pixels)
    return pixels / 255.0


def _frames(kind: str, h: int, w: int, t: int = 2) -> np.ndarray:
    """``(t, h, w, 3)`` uint8: ``textured`` random pixels or a ``smooth`` gradient."""
    if kind == "textured":
        return np.random.default_rng(h * w).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    y = np.linspace(0.0, 1.0, h)[:, None]
    x = np.linspace(0.0, 1.0, w)[None, :]
    image = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 127 + 100 * (x - y)], -1)
    return np.stack([np.clip(image + 3 * i, 0, 255) for i in range(t)]).round().astype(np.uint8)


def _load_video_tensor(frames: np.ndarray) -> torch.Tensor:
    # vbench/utils.py load_video without a transform: torch.Tensor(frames).permute(0, 3, 1, 2).
    return torch.Tensor(frames).permute(0, 3, 1, 2)


SIZES_224 = [(320, 512), (64, 96), (100, 160)]  # downscaled; upscaled; upscaled (short side 100)


@pytest.mark.parametrize("kind", ["textured", "smooth"])
@pytest.mark.parametrize(("h", "w"), SIZES_224)
def test_dino_and_clip_inputs_equal_vbench_transforms(kind: str, h: int, w: int) -> None:
    frames = _frames(kind, h, w)
    pixels = _load_video_tensor(frames)
    ours_dino = dino_preprocess(torch.from_numpy(frames))
    ours_clip = clip_preprocess(torch.from_numpy(frames))
    assert ours_dino.shape == (2, 3, 224, int(224 * w / h))
    assert ours_clip.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours_dino, _vbench_dino()(pixels), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_clip, _vbench_clip()(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), [(600, 900), (320, 512), (513, 300)])
@pytest.mark.parametrize("kind", ["textured", "smooth"])
def test_imaging_input_equals_vbench_longer_mode(kind: str, h: int, w: int) -> None:
    frames = _frames(kind, h, w)
    ours = imaging_preprocess(torch.from_numpy(frames))
    torch.testing.assert_close(ours, _vbench_imaging(_load_video_tensor(frames)), rtol=0, atol=1e-6)
    assert max(ours.shape[-2:]) == min(512, max(h, w))


def test_the_antialias_flag_matters_where_the_test_looks() -> None:
    # The comparisons above could not pass with antialiased resizing: on a downscaled textured frame
    # both kernels differ, and CLIP's bicubic kernel differs even when upscaling (antialiased
    # bicubic uses a different cubic coefficient).
    down = _load_video_tensor(_frames("textured", 320, 512))
    assert (
        _vbench_dino(antialias=True)(down) - dino_preprocess(torch.from_numpy(_frames("textured", 320, 512)))
    ).abs().max() > 0.1
    assert (_vbench_clip(antialias=True)(down) - _vbench_clip()(down)).abs().max() > 0.1
    up = _frames("textured", 100, 160)
    assert (
        _vbench_clip(antialias=True)(_load_video_tensor(up)) - clip_preprocess(torch.from_numpy(up))
    ).abs().max() > 1e-3
