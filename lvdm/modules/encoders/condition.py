"""Frozen OpenCLIP encoders that turn prompts and images into cross-attention context.

- :class:`FrozenOpenCLIPEmbedder`: text -> per-token features ``(b, 77, width)`` taken after the
  penultimate (or last) text transformer block and ``ln_final``. Its ``model.*`` state_dict keys
  are the checkpoints' ``cond_stage_model.model.*`` keys.
- :class:`FrozenOpenCLIPImageEmbedderV2`: images in ``[-1, 1]`` -> all visual tokens
  ``(b, 1 + grid**2, vision_width)`` after the last visual block (no ``ln_post``, no projection).
  Its ``model.*`` keys are the image-to-video checkpoint's ``embedder.model.*`` keys.

Both wrap an ``open_clip`` CLIP model built without pretrained weights (the weights come from the
diffusion checkpoint). Models are created on the current default device, so they can be built
under ``with torch.device("meta"):`` without allocating memory.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PROJECT_OPENCLIP_CONFIGS",
    "FrozenOpenCLIPEmbedder",
    "FrozenOpenCLIPImageEmbedderV2",
    "antialias_params",
    "gaussian_blur2d",
    "register_openclip_configs",
    "resize_antialias",
]

# <repo>/configs/openclip: OpenCLIP model configs shipped with the project (e.g. the tiny test CLIP).
PROJECT_OPENCLIP_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "openclip"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip.add_model_config appends to a global search list on every call: register each folder once.
_registered_config_folders: set[Path] = set()


def register_openclip_configs(folder: str | Path) -> None:
    """Make the OpenCLIP model configs (``<arch>.json``) in ``folder`` known to ``open_clip``.

    Does nothing when the folder does not exist, holds no json file, or was registered before.
    """
    folder = Path(folder).resolve()
    if folder in _registered_config_folders or not folder.is_dir() or not any(folder.glob("*.json")):
        return
    open_clip.add_model_config(folder)
    _registered_config_folders.add(folder)
    logger.debug("Registered OpenCLIP model configs from %s", folder)


def _create_clip(arch: str) -> nn.Module:
    """Build the open_clip CLIP model ``arch`` without weights, on the current default device.

    The model class is built straight from open_clip's config (as ``open_clip.create_model``
    does with ``pretrained=None``), without ``create_model``'s final ``.to(device)``: under
    ``with torch.device(...)`` the parameters are made where they belong (the meta device, or a
    fake device in a dry run, where moving them is not possible). Unknown architectures are
    looked up in the project's ``configs/openclip`` folder. Never downloads.
    """
    if arch not in open_clip.list_models():
        register_openclip_configs(PROJECT_OPENCLIP_CONFIGS)
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(
            f"Unknown OpenCLIP architecture {arch!r}: put an OpenCLIP model config named {arch}.json "
            f"in {PROJECT_OPENCLIP_CONFIGS} (configs/openclip)."
        )
    config = copy.deepcopy(config)
    model_class = open_clip.CustomTextCLIP if config.pop("custom_text", False) else open_clip.CLIP
    model = model_class(**config, cast_dtype=None)
    logger.debug("Built OpenCLIP %s on %s without pretrained weights", arch, torch.get_default_device())
    return model


def _is_batch_first(transformer: nn.Module) -> bool:
    """Whether the residual blocks of an open_clip ``Transformer`` take ``(b, n, d)`` input.

    open_clip >= 3 runs its blocks batch-first; older releases ran them sequence-first ``(n, b, d)``.
    """
    batch_first = getattr(transformer, "batch_first", None)
    if batch_first is None:
        attn = getattr(transformer.resblocks[0], "attn", None)
        batch_first = getattr(attn, "batch_first", False)
    return bool(batch_first)


def _run_blocks(
    transformer: nn.Module,
    blocks: Iterable[nn.Module],
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply residual attention ``blocks`` of ``transformer`` to ``x (b, n, d)``; returns ``(b, n, d)``."""
    batch_first = _is_batch_first(transformer)
    if not batch_first:
        x = x.permute(1, 0, 2)  # (b, n, d) -> (n, b, d)
    for block in blocks:
        x = block(x, attn_mask=attn_mask)
    if not batch_first:
        x = x.permute(1, 0, 2)
    return x


def _freeze(module: nn.Module) -> None:
    """Put ``module`` in eval mode and stop gradients to all its parameters."""
    module.eval()
    for param in module.parameters():
        param.requires_grad = False


class _FrozenOpenCLIPTower(nn.Module):
    """One tower of an OpenCLIP model, built without weights; the other tower is dropped.

    ``version`` and ``device`` of the published configs are accepted and ignored: the weights
    come from the diffusion checkpoint, and the module follows ``.to()`` like any other.
    """

    LAYERS: tuple[str, ...] = ()
    DROPPED_TOWER = ""  # the open_clip attribute of the tower this encoder does not use

    def __init__(self, arch: str, layer: str, version: str | None = None, device: object = None) -> None:
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        model = _create_clip(arch)
        delattr(model, self.DROPPED_TOWER)
        self.model = model
        self.layer = layer


class FrozenOpenCLIPEmbedder(_FrozenOpenCLIPTower):
    """OpenCLIP text encoder: prompts -> per-token context ``(b, max_length, width)``.

    Tokens are embedded, pass all text transformer blocks but the last (``layer="penultimate"``)
    or all of them (``layer="last"``) under the causal mask, then ``ln_final``. ``self.model`` is
    the CLIP model without its visual tower.

    Args:
        arch: OpenCLIP architecture name (``ViT-H-14`` or a config in ``configs/openclip``).
        version: Pretrained tag of the published configs; ignored (weights come from the checkpoint).
        device: Ignored; the module follows ``.to()`` like any other.
        max_length: Token context length (77 for CLIP).
        freeze: Eval mode and no gradients.
        layer: ``"penultimate"`` or ``"last"``.
    """

    LAYERS = ("last", "penultimate")
    DROPPED_TOWER = "visual"

    def __init__(
        self,
        arch: str = "ViT-H-14",
        max_length: int = 77,
        freeze: bool = True,
        layer: str = "penultimate",
        **published: str | None,
    ) -> None:
        super().__init__(arch, layer, **published)
        self.max_length = max_length
        # Number of final blocks to skip.
        self.layer_idx = self.LAYERS.index(layer)
        if freeze:
            _freeze(self)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of prompts, ``(b, max_length)`` int64 on the CPU: start, words, end, zero padding."""
        return open_clip.tokenize(list(texts), context_length=self.max_length)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode prompts: list of ``b`` strings -> ``(b, max_length, width)``."""
        tokens = self.tokenize(texts)
        return self.encode_with_transformer(tokens.to(self.model.token_embedding.weight.device))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`forward` (the name the diffusion model calls)."""
        return self(texts)

    def encode_with_transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(b, n)`` -> features ``(b, n, width)`` after the chosen block and ``ln_final``."""
        n = tokens.shape[1]
        x = self.model.token_embedding(tokens) + self.model.positional_embedding[:n]
        # Built here rather than read from the non-persistent `attn_mask` buffer, which is
        # left unmaterialised when the model is created on the meta device.
        causal_mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        resblocks = self.model.transformer.resblocks
        x = _run_blocks(self.model.transformer, resblocks[: len(resblocks) - self.layer_idx], x, causal_mask)
        return self.model.ln_final(x)


def antialias_params(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[tuple[float, float], tuple[int, int]] | None:
    """Gaussian blur applied before a kornia-style antialiased resize, or ``None`` when not downscaling.

    Returns per-axis ``(sigma_h, sigma_w)`` and odd kernel sizes ``(k_h, k_w)``. Both axes are
    blurred as soon as either is downscaled (a non-shrinking axis gets sigma 0.001, i.e. no blur).
    """
    factors = (in_size[0] / out_size[0], in_size[1] / out_size[1])
    if max(factors) <= 1:
        return None
    sigma_h, sigma_w = (max((f - 1.0) / 2.0, 0.001) for f in factors)
    # 2 sigma each side (kornia's choice), at least 3 taps, bumped to odd.
    k_h, k_w = (int(max(4.0 * s, 3)) for s in (sigma_h, sigma_w))
    return (sigma_h, sigma_w), (k_h + 1 - k_h % 2, k_w + 1 - k_w % 2)


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised Gaussian taps ``(size,)`` centred on the middle tap."""
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur2d(
    x: torch.Tensor, kernel_size: tuple[int, int], sigma: tuple[float, float]
) -> torch.Tensor:
    """Separable Gaussian blur of ``x (b, c, h, w)`` with reflect padding; returns ``(b, c, h, w)``.

    ``kernel_size`` and ``sigma`` are ``(height, width)`` pairs; kernel sizes must be odd.
    """
    c = x.shape[1]
    k_h, k_w = kernel_size
    kernel_w = _gaussian_kernel1d(k_w, sigma[1], x.dtype, x.device).view(1, 1, 1, k_w).expand(c, 1, 1, k_w)
    kernel_h = _gaussian_kernel1d(k_h, sigma[0], x.dtype, x.device).view(1, 1, k_h, 1).expand(c, 1, k_h, 1)
    # Horizontal pass, then vertical, each per channel (depthwise).
    x = F.conv2d(F.pad(x, (k_w // 2, k_w // 2, 0, 0), mode="reflect"), kernel_w, groups=c)
    return F.conv2d(F.pad(x, (0, 0, k_h // 2, k_h // 2), mode="reflect"), kernel_h, groups=c)


def resize_antialias(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bicubic resize (``align_corners=True``) of ``x (b, c, h, w)`` to ``(b, c, *size)``, as kornia does.

    When downscaling with ``antialias`` the image is first Gaussian-blurred (see
    :func:`antialias_params`). An input already of ``size`` is returned unchanged.
    """
    in_size = (x.shape[-2], x.shape[-1])
    if in_size == tuple(size):
        return x
    params = antialias_params(in_size, size) if antialias else None
    if params is not None:
        sigmas, kernel_sizes = params
        x = gaussian_blur2d(x, kernel_sizes, sigmas)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


class FrozenOpenCLIPImageEmbedderV2(_FrozenOpenCLIPTower):
    """OpenCLIP image encoder: images in ``[-1, 1]`` -> all visual tokens ``(b, 1 + grid**2, width)``.

    Images are resized to 224x224, mapped to ``[0, 1]`` and normalised with the CLIP mean/std, then
    patchified and run through every visual transformer block; the class token and all patch tokens
    are returned without ``ln_post`` or the projection. ``self.model`` is the CLIP model without its
    text transformer (the other text parameters stay, as in the checkpoints).

    Args:
        arch: OpenCLIP architecture name (``ViT-H-14`` or a config in ``configs/openclip``).
        version: Pretrained tag of the published configs; ignored (weights come from the checkpoint).
        device: Ignored; the module follows ``.to()`` like any other.
        freeze: Eval mode and no gradients.
        layer: Only ``"pooled"`` / ``"last"`` are accepted; the tokens after the last block are returned.
        antialias: Blur before downscaling (kornia's antialiasing).
    """

    FP32_BUFFERS = ("mean", "std")

    LAYERS = ("pooled", "last")
    DROPPED_TOWER = "transformer"

    def __init__(
        self,
        arch: str = "ViT-H-14",
        freeze: bool = True,
        layer: str = "pooled",
        antialias: bool = True,
        **published,
    ) -> None:
        super().__init__(arch, layer, **published)
        self.antialias = antialias
        # fp32 whatever the model's dtype (set_precision reads FP32_BUFFERS): in fp16 the mean
        # 0.48145466 would become 0.48144531.
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)
        if freeze:
            _freeze(self)

    @property
    def image_size(self) -> tuple[int, int]:
        """Input size of the visual tower ``(h, w)``."""
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` in ``[-1, 1]`` -> CLIP-normalised ``(b, 3, 224, 224)``."""
        x = resize_antialias(images.float(), self.image_size, antialias=self.antialias)
        x = (x + 1.0) / 2.0
        return (x - self.mean.float().view(1, -1, 1, 1)) / self.std.float().view(1, -1, 1, 1)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Transformer input: ``(b, 3, h, w)`` in ``[-1, 1]`` -> ``(b, 1 + grid**2, vision_width)``.

        Preprocess, patchify, prepend the class token, add positions, patch dropout, ``ln_pre``.
        """
        visual = self.model.visual
        x = visual.conv1(self.preprocess(images).to(visual.conv1.weight.dtype))  # (b, d, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (b, grid**2, d)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` in ``[-1, 1]`` -> tokens ``(b, 1 + grid**2, vision_width)`` after the last block.

        Attention runs over the tokens of each image. (The published code permuted to
        ``(n, b, d)`` for sequence-first blocks; fed to open_clip >= 3's batch-first blocks that
        layout makes attention mix images of the batch instead, which we do not reproduce.)
        """
        transformer = self.model.visual.transformer
        return _run_blocks(transformer, transformer.resblocks, self.embed_tokens(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward`."""
        return self(images)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Standard CLIP image embedding from :meth:`forward` tokens: ``(b, n, d) -> (b, embed_dim)``."""
        return self.model.visual.ln_post(tokens[:, 0]) @ self.model.visual.proj
