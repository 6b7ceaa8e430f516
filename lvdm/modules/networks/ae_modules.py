"""Building blocks of the 2D KL autoencoder ("first stage model") used by VideoCrafter.

The autoencoder works on single images: video latents are decoded frame by frame by folding
the frames into the batch. Module names mirror the published checkpoints, so that a
``first_stage_model.*`` state_dict loads strictly into :class:`Encoder` / :class:`Decoder`:

- ``encoder.conv_in``, ``encoder.down.{i}.block.{j}``, ``encoder.down.{i}.attn.{j}``,
  ``encoder.down.{i}.downsample.conv``, ``encoder.mid.{block_1,attn_1,block_2}``,
  ``encoder.norm_out``, ``encoder.conv_out``;
- ``decoder.conv_in``, ``decoder.mid.{block_1,attn_1,block_2}``, ``decoder.up.{i}.block.{j}``,
  ``decoder.up.{i}.attn.{j}``, ``decoder.up.{i}.upsample.conv``, ``decoder.norm_out``,
  ``decoder.conv_out``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "TowerConfig",
    "Upsample",
    "make_attn",
    "normalize",
]


def normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, the normalisation used throughout the autoencoder."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish nonlinearity ``x * sigmoid(x)`` (``F.silu`` computes exactly this, in one kernel)."""
    return F.silu(x)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: two (GroupNorm, swish, 3x3 conv) stages plus a shortcut.

    The autoencoder has no timestep embedding, so there is no ``temb_proj``. When the channel
    count changes the shortcut is a 1x1 convolution named ``nin_shortcut`` (as in the checkpoints).

    Input ``(b, in_channels, h, w)`` -> output ``(b, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels

        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c_in, h, w) -> (b, c_out, h, w)``."""
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h * w`` positions of a feature map, with a residual.

    q, k, v and the output projection are 1x1 convolutions; the logits are scaled by
    ``c ** -0.5`` (the default scale of ``scaled_dot_product_attention`` for head size c).

    Input and output ``(b, c, h, w)``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h, w)``."""
        h_ = self.norm(x)
        b, c, h, w = h_.shape

        # (b, c, h, w) -> (b, h*w, c): one token per position, the channels are the features.
        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, c, h * w).transpose(1, 2)

        q, k, v = tokens(self.q(h_)), tokens(self.k(h_)), tokens(self.v(h_))
        out = F.scaled_dot_product_attention(q, k, v, scale=c**-0.5)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """Attention block of the given kind: ``"vanilla"`` (:class:`AttnBlock`) or ``"none"`` (identity).

    The published code also knows a ``"linear"`` kind; no released VideoCrafter checkpoint uses it,
    so it is refused here rather than silently replaced.
    """
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise NotImplementedError(
        f"attention type {attn_type!r} is not supported by this autoencoder (use 'vanilla' or 'none')"
    )


class _Resample(nn.Module):
    """A resolution change with an optional 3x3 convolution (``conv``, as in the checkpoints)."""

    CONV_STRIDE, CONV_PADDING = 1, 1

    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(
                in_channels, in_channels, kernel_size=3, stride=self.CONV_STRIDE, padding=self.CONV_PADDING
            )


class Downsample(_Resample):
    """Halve the spatial size.

    With a convolution: pad right and bottom by one, then a 3x3 stride-2 convolution without
    padding (the asymmetric padding is what the checkpoints were trained with). Without: 2x2
    average pooling.

    Input ``(b, c, h, w)`` -> output ``(b, c, h // 2, w // 2)``.
    """

    CONV_STRIDE, CONV_PADDING = 2, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h // 2, w // 2)``."""
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(_Resample):
    """Double the spatial size: nearest-neighbour x2, then (optionally) a 3x3 convolution.

    Input ``(b, c, h, w)`` -> output ``(b, c, 2h, 2w)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, 2h, 2w)``."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.with_conv:
            x = self.conv(x)
        return x


class _Level(nn.Module):
    """One resolution level: a list of residual blocks, a (possibly empty) list of attention
    blocks applied after them, and an optional resampler (``downsample`` / ``upsample``).

    Only a container, so that the parameters are named ``{down,up}.{i}.block.{j}`` etc.
    """

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """Each residual block, followed by its attention block where the level has them."""
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    """Bottleneck: residual block, self-attention, residual block (names ``block_1``, ``attn_1``, ``block_2``)."""

    def __init__(self, channels: int, dropout: float, attn_type: str) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout=dropout)
        self.attn_1 = make_attn(channels, attn_type)
        self.block_2 = ResnetBlock(channels, channels, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w) -> (b, c, h, w)``."""
        return self.block_2(self.attn_1(self.block_1(h)))


@dataclass(frozen=True)
class TowerConfig:
    """The published ``ddconfig``: what the encoder and the decoder are built from.

    Attributes:
        ch: channels of the full-resolution level; level i has ``ch * ch_mult[i]``.
        out_ch: image channels the decoder outputs.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attn_resolutions: resolutions (in pixels of a ``resolution``-sized image) with attention.
        in_channels: image channels the encoder takes.
        resolution: the training image size.
        z_channels: latent channels.
        double_z: the encoder outputs mean and log-variance (2 · z_channels).
        give_pre_end, tanh_out: decoder output options (off in the published models).
        use_linear_attn, attn_type: the attention block kind (``use_linear_attn`` wins).
    """

    ch: int
    out_ch: int
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    in_channels: int
    resolution: int
    z_channels: int
    ch_mult: Sequence[int] = (1, 2, 4, 8)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    double_z: bool = True
    give_pre_end: bool = False
    tanh_out: bool = False
    use_linear_attn: bool = False
    attn_type: str = "vanilla"

    @classmethod
    def from_ddconfig(cls, owner: str, ddconfig: dict[str, Any]) -> TowerConfig:
        """Read a ddconfig; keys the towers do not use are logged and ignored."""
        known = {f.name for f in fields(cls)}
        ignored = sorted(set(ddconfig) - known)
        if ignored:
            logger.debug("%s: ignoring unused arguments %s", owner, ignored)
        return cls(**{k: v for k, v in ddconfig.items() if k in known})

    @property
    def block_attention(self) -> str:
        # The published flag `use_linear_attn` overrides `attn_type`.
        return "linear" if self.use_linear_attn else self.attn_type


class _Tower(nn.Module):
    """What the encoder and the decoder share: their config and its published attribute names."""

    def __init__(self, ddconfig: dict[str, Any]) -> None:
        super().__init__()
        cfg = self.config = TowerConfig.from_ddconfig(type(self).__name__, ddconfig)
        self.ch = cfg.ch
        self.num_resolutions = len(cfg.ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        self.resolution = cfg.resolution
        self.in_channels = cfg.in_channels


class Encoder(_Tower):
    """Image -> latent moments.

    ``conv_in``, then one level per entry of ``ch_mult`` (``num_res_blocks`` residual blocks, an
    attention block after each where the current resolution is in ``attn_resolutions``, and a
    downsampler on all levels but the last), the mid block, GroupNorm, swish and ``conv_out``.

    Input ``(b, in_channels, H, W)`` -> output ``(b, 2 * z_channels if double_z else z_channels,
    H / 2**(len(ch_mult) - 1), W / 2**(len(ch_mult) - 1))``. Built from the keys of
    :class:`TowerConfig`.
    """

    def __init__(self, **ddconfig: Any) -> None:
        super().__init__(ddconfig)
        cfg = self.config
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1, *cfg.ch_mult)
        curr_res = cfg.resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            level = _Level()
            block_in = cfg.ch * in_ch_mult[i_level]
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(make_attn(block_in, cfg.block_attention))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, cfg.resamp_with_conv)
                curr_res //= 2
            self.down.append(level)

        self.mid = _Mid(block_in, cfg.dropout, cfg.block_attention)

        self.norm_out = normalize(block_in)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, in_channels, H, W) -> (b, 2 * z_channels, h, w)`` (``z_channels`` without double_z)."""
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            h = level.run_blocks(h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(_Tower):
    """Latent -> image.

    ``conv_in``, the mid block, then the levels from the deepest to level 0 (``num_res_blocks + 1``
    residual blocks each, attention after each where the current resolution is in
    ``attn_resolutions``, an upsampler on all levels but level 0), GroupNorm, swish and
    ``conv_out``. ``self.up[i]`` is level ``i`` (the deepest level is built first but stored last,
    matching the checkpoint names).

    Input ``(b, z_channels, h, w)`` -> output ``(b, out_ch, h * 2**(len(ch_mult) - 1), ...)``.
    Built from the keys of :class:`TowerConfig`.
    """

    def __init__(self, **ddconfig: Any) -> None:
        super().__init__(ddconfig)
        cfg = self.config
        self.give_pre_end = cfg.give_pre_end
        self.tanh_out = cfg.tanh_out

        block_in = cfg.ch * cfg.ch_mult[-1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, cfg.z_channels, curr_res, curr_res)
        logger.debug("Decoder works with z of shape %s", self.z_shape)

        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, cfg.block_attention)

        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(make_attn(block_in, cfg.block_attention))
            if i_level != 0:
                level.upsample = Upsample(block_in, cfg.resamp_with_conv)
                curr_res *= 2
            levels.append(level)
        # Built deepest first; stored so that index i is level i, as in the checkpoints.
        self.up = nn.ModuleList(reversed(levels))

        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(b, z_channels, h, w) -> (b, out_ch, H, W)`` (``(b, ch * ch_mult[0], H, W)`` with give_pre_end)."""
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            h = level.run_blocks(h)
            if i_level != 0:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(swish(self.norm_out(h)))
        if self.tanh_out:
            h = torch.tanh(h)
        return h
