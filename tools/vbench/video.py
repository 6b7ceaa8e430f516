"""VBench's frame preprocessing for its feature models (``vbench/utils.py``: ``dino_transform`` and
``clip_transform``).

Both of VBench's transforms resize with ``antialias=False`` (since its commit of 2024-11-29): the
bilinear (DINO) and bicubic (CLIP) kernels keep their fixed width whether the frame shrinks or
grows, so a downscaled frame is sampled, not low-pass filtered. The same flag is used here;
``tests/test_vbench_preprocessing.py`` builds VBench's transforms from torchvision's classes with
those parameters and compares the tensors.
"""

from __future__ import annotations

import torch

from tools.vbench.common import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE


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

    The short side becomes 224 (bilinear, no antialiasing; the long side ``int(224 * long / short)``,
    e.g. 320x512 -> 224x358), no crop, then ``/255`` and ImageNet mean/std.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pixels = TF.resize(
        _float_pixels(frames), [INPUT_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=False
    )
    return TF.normalize(pixels / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_preprocess(frames: torch.Tensor) -> torch.Tensor:
    """VBench's CLIP input: ``(t, h, w, 3)`` uint8 -> ``(t, 3, 224, 224)`` float32.

    The short side becomes 224 (bicubic, no antialiasing; float pixels may overshoot ``[0, 255]`` a
    little, as in VBench), a 224x224 centre crop, then ``/255`` and CLIP's mean/std.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pixels = TF.resize(
        _float_pixels(frames), [INPUT_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=False
    )
    pixels = TF.center_crop(pixels, [INPUT_SIZE, INPUT_SIZE])
    return TF.normalize(pixels / 255.0, CLIP_MEAN, CLIP_STD)
