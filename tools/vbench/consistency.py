"""VBench's subject and background consistency: the DINO and CLIP feature models, and the score of
a video's per-frame features."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.vbench.common import RANDOM_INIT_SEED, FeatureWeightsError, _first_line, _seeded
from tools.vbench.weights import (
    _CLIP_WEIGHTS,
    _DINO_WEIGHTS,
    CLIP_ARCH,
    DINO_TIMM_NAME,
    _DropRootRecords,
    _hub_file,
    _HubWeights,
    _is_torchscript_archive,
    _local_file,
)

logger = logging.getLogger(__name__)


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


# --random_feature_models: towers 2 layers deep and 64 wide with the real input (224, the same
# patch) and output size, for the CLI's random mode only. A random ViT-B costs ~4-18 GFLOP a frame,
# which on a CPU takes a 64-frame test video far past its time budget, and random weights make any
# tower's scores meaningless. The full architectures are built by random_init alone, and are what
# weights files are checked against.
SMALL_TOWER = {"width": 64, "layers": 2, "heads": 2}


def build_dino(
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    small: bool = False,
) -> DinoFeatures:
    """The DINO ViT-B/16 of VBench's subject consistency, in eval mode on ``device`` (float32).

    Args:
        weights: A local file (timm's ``model.safetensors`` or DINO's ``dino_vitbase16_pretrain.pth``);
            ``None`` takes timm's ``vit_base_patch16_224.dino`` from the Hugging Face cache,
            downloading it there on first use.
        random_init: Seeded random weights of the same architecture, no file, no network (tests only).
        device: Where the model runs.
        small: With ``random_init``, a ViT of :data:`SMALL_TOWER`'s size (patch 16, class token) instead.

    Raises:
        FeatureWeightsError: weights missing (see :func:`_hub_file`) or not DINO ViT-B/16 weights.
    """
    import timm

    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        size = {}
        if small:
            size = {
                "embed_dim": SMALL_TOWER["width"],
                "depth": SMALL_TOWER["layers"],
                "num_heads": SMALL_TOWER["heads"],
            }
        with _seeded(RANDOM_INIT_SEED):
            vit = timm.create_model(DINO_TIMM_NAME, pretrained=False, num_classes=0, **size)
        source = "random-init, small" if small else "random-init"
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


def build_clip(
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    small: bool = False,
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
        small: With ``random_init``, a tower of :data:`SMALL_TOWER`'s size (see :func:`small_clip_tower`).

    Raises:
        FeatureWeightsError: weights missing (see :func:`_hub_file`) or not CLIP ViT-B/32 weights.
    """
    if random_init and small:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
        return small_clip_tower(CLIP_ARCH, device)
    return build_open_clip_tower(CLIP_ARCH, _CLIP_WEIGHTS, weights, random_init, device, precision)


def small_clip_tower(arch: str, device: str | torch.device = "cpu") -> ClipImageFeatures:
    """A seeded random CLIP image tower of :data:`SMALL_TOWER`'s size with ``arch``'s input size, patch
    and output dimension (float32, eval mode): for ``--random_feature_models`` only."""
    import open_clip
    from open_clip.transformer import QuickGELU, VisionTransformer

    config = open_clip.get_model_config(arch)
    vision = config["vision_cfg"]
    with _seeded(RANDOM_INIT_SEED):
        visual = VisionTransformer(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            width=SMALL_TOWER["width"],
            layers=SMALL_TOWER["layers"],
            heads=SMALL_TOWER["heads"],
            mlp_ratio=4.0,
            output_dim=config["embed_dim"],
            act_layer=QuickGELU,
        )
    logger.info("%s image tower (random-init, small) on %s", arch, device)
    tower = ClipImageFeatures(visual.to(device)).eval()
    tower.requires_grad_(False)
    return tower


def _check_projection(path: Path, arch: str, spec: _HubWeights) -> None:
    """Refuse a state-dict file whose image projection is not ``arch``'s before building the model.

    Building a CLIP (ViT-L/14: 430 M parameters) takes many seconds; reading a file's keys (memory
    mapped) does not. TorchScript archives (OpenAI's ``.pt``) are left to open_clip's full check.
    """
    import open_clip

    if _is_torchscript_archive(path):
        return
    vision = open_clip.get_model_config(arch)
    expected = (vision["vision_cfg"]["width"], vision["embed_dim"])
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                keys = set(file.keys())
                found = tuple(file.get_slice("visual.proj").get_shape()) if "visual.proj" in keys else None
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else {}
            state = {k.removeprefix("module."): v for k, v in state.items()}
            found = tuple(state["visual.proj"].shape) if "visual.proj" in state else None
    except Exception as err:  # unreadable: one clear message
        raise FeatureWeightsError(f"{path} does not hold {spec.label} weights ({_first_line(err)})") from err
    if found != expected:
        what = "no visual.proj key" if found is None else f"visual.proj of shape {found}"
        raise FeatureWeightsError(
            f"{path} does not hold {spec.label} weights: {what}, expected {expected} for open_clip's {arch}"
        )


def build_open_clip_tower(
    arch: str,
    spec: _HubWeights,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> ClipImageFeatures:
    """The image tower of OpenAI's CLIP ``arch`` (open_clip name, QuickGELU) in eval mode on ``device``.

    Args:
        arch: open_clip architecture, e.g. ``"ViT-B-32"``.
        spec: Where its weights live (Hub repo, the CLI flag, the original release) for messages.
        weights, random_init, device, precision: as :func:`build_clip`.

    Raises:
        FeatureWeightsError: weights missing (see :func:`_hub_file`) or not weights of ``arch``.
    """
    import open_clip

    device = torch.device(device)
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    path = None
    if random_init:
        if weights is not None:
            raise ValueError("random_init builds a model without weights: do not give a weights file")
    else:
        path = _local_file(weights, spec) if weights is not None else _hub_file(spec)
        _check_projection(path, arch, spec)
    quiet = _DropRootRecords()
    logging.getLogger().addFilter(quiet)
    try:
        with _seeded(RANDOM_INIT_SEED):
            # OpenAI's CLIP uses QuickGELU; open_clip's plain configs do not.
            model = open_clip.create_model(
                arch, pretrained=None, precision=precision, device=device, force_quick_gelu=True
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
                f"{path} does not hold {spec.label} weights ({_first_line(err)})"
            ) from err
    logger.info("%s (%s, %s) on %s", spec.label, path or "random-init", precision, device)
    tower = ClipImageFeatures(model.visual).eval()  # the text tower is dropped with `model`
    tower.requires_grad_(False)
    return tower
