"""Reading an input image as the model takes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def load_image(path: Path, height: int, width: int) -> Tensor:
    """An input image as (1, 3, height, width) in [-1, 1]: resize the short side, centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(height / im.height, width / im.width)
        size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
        im = im.resize(size, Image.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        im = im.crop((left, top, left + width, top + height))
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
    return (arr / 127.5 - 1.0).permute(2, 0, 1)[None]
