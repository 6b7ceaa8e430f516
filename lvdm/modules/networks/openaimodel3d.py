"""The VideoCrafter 3D U-Net (``UNetModel``), built from the published config parameters.

Frames are folded into the batch, ``(b·t, c, h, w)``, everywhere except in the temporal
layers (temporal convolutions, temporal transformers), which see ``(b, c, t, h, w)``.
Timesteps may differ per frame (FIFO diagonal denoising) and per sample (batched windows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lvdm.modules.attention import (
    AttentionBackend,
    AttnProcessor,
    CrossAttention,
    SpatialTransformer,
    TemporalTransformer,
)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding, cosines first: (n,) → (n, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """Group norm computed in float32 whatever the input and weight dtypes (stable under fp16)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters (untrained output layers start as the identity residual)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TemporalConv(nn.Conv3d):
    """A (3, 1, 1) convolution along time, zero-padded at both ends: (b, c, t, h, w) → same.

    A Conv3d as published (same checkpoint keys and shapes).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, (3, 1, 1), padding=(1, 0, 0))


class TemporalConvBlock(nn.Module):
    """Four residual (3, 1, 1) convolutions along time. (b, c, t, h, w) → same."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), TemporalConv(channels))
        for name in ("conv2", "conv3", "conv4"):
            setattr(
                self,
                name,
                nn.Sequential(
                    nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout), TemporalConv(channels)
                ),
            )
        zero_module(self.conv4[-1])

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally followed by temporal convs.

    x: (b·t, c, h, w), emb: (b·t, emb_channels) → (b·t, out_channels, h, w).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_temporal_conv: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.use_temporal_conv = use_temporal_conv
        if use_temporal_conv:
            # The misspelt name is the published checkpoint key.
            self.temopral_conv = TemporalConvBlock(out_channels, dropout=0.1)

    def forward(self, x: Tensor, emb: Tensor, batch_size: int) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.use_temporal_conv:
            h = rearrange(h, "(b t) c h w -> b c t h w", b=batch_size)
            h = rearrange(self.temopral_conv(h), "b c t h w -> (b t) c h w")
        return h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A U-Net block: routes the embedding, context and frame layout to each layer type."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, batch_size: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, frames=x.shape[0] // batch_size)
            elif isinstance(layer, TemporalTransformer):
                x = rearrange(x, "(b t) c h w -> b c t h w", b=batch_size)
                x = rearrange(layer(x), "b c t h w -> (b t) c h w")
            else:
                x = layer(x)
        return x


_UNSUPPORTED = {
    # option: value the published configs use (and the only one implemented)
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "tempspatial_aware": False,
    "temporal_selfatt_only": True,
    "use_causal_attention": False,
}


class UNetModel(nn.Module):
    """VideoCrafter's 3D U-Net (``lvdm.modules.networks.openaimodel3d.UNetModel`` in configs).

    Parameter names are those of the published configs. ``use_checkpoint``, ``use_fp16``,
    ``conv_resample``, ``dims`` are accepted for compatibility and have no effect at inference;
    ``temporal_length`` (the frames per clip the model was trained on) is kept for the caller.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        context_dim: int | None = None,
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        use_linear: bool = False,
        temporal_conv: bool = False,
        temporal_attention: bool = True,
        addition_attention: bool = False,
        use_image_attention: bool = False,
        fps_cond: bool = False,
        image_cross_attention: bool = False,
        image_cross_attention_scale_learnable: bool = False,
        fs_condition: bool = False,
        default_fs: int = 4,
        use_relative_position: bool = False,
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        temporal_length: int | None = None,
        **options: object,
    ) -> None:
        super().__init__()
        for name, value in options.items():
            if name not in _UNSUPPORTED:
                raise TypeError(f"UNetModel got an unknown config parameter {name!r}")
            if bool(value) != _UNSUPPORTED[name]:
                raise ValueError(
                    f"UNetModel: {name}={value} is not supported; the published models use "
                    f"{name}={_UNSUPPORTED[name]}"
                )
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels")
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        self.temporal_length = temporal_length
        # DynamiCrafter's names for the same layers: image cross-attention, and the extra
        # embedding (``fps_embedding``) fed the frame stride, ``default_fs`` when none is given.
        use_image_attention = use_image_attention or image_cross_attention
        fps_cond = fps_cond or fs_condition
        self.default_fs = default_fs if fs_condition else None
        self.fps_cond = fps_cond
        self.addition_attention = addition_attention
        # VideoCrafter1 text-to-video: relative positions in every temporal attention, up to
        # temporal_length frames apart.
        relative_position = None
        if use_relative_position:
            if temporal_length is None:
                raise ValueError("UNetModel: use_relative_position needs temporal_length")
            relative_position = int(temporal_length)
        emb_dim = model_channels * 4

        def heads_for(ch: int) -> tuple[int, int]:
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            return ch // num_head_channels, num_head_channels

        def attention_layers(ch: int) -> list[nn.Module]:
            n_heads, d_head = heads_for(ch)
            layers: list[nn.Module] = [
                SpatialTransformer(
                    ch,
                    n_heads,
                    d_head,
                    transformer_depth,
                    dropout,
                    context_dim,
                    use_linear,
                    use_image_attention,
                    image_cross_attention_scale_learnable,
                )
            ]
            if temporal_attention:
                layers.append(
                    TemporalTransformer(
                        ch,
                        n_heads,
                        d_head,
                        transformer_depth,
                        dropout,
                        use_linear=use_linear,
                        relative_position=relative_position,
                    )
                )
            return layers

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if fps_cond:
            self.fps_embedding = nn.Sequential(
                nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        # Where the transformers are: (level, index within the level) → block index, for the
        # encoder (input_blocks) and the decoder (output_blocks). Tricks that pair encoder and
        # decoder layers (the Q-caches) read them.
        self.encoder_attention_blocks: dict[tuple[int, int], int] = {}
        self.decoder_attention_blocks: dict[tuple[int, int], int] = {}

        blocks = [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for i in range(num_res_blocks):
                layers: list[nn.Module] = [
                    ResBlock(ch, emb_dim, dropout, mult * model_channels, use_temporal_conv=temporal_conv)
                ]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                    self.encoder_attention_blocks[(level, i)] = len(blocks)
                blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch, ch)))
                skip_channels.append(ch)
                ds *= 2
        self.input_blocks = nn.ModuleList(blocks)

        if addition_attention:
            # Extra temporal attention after the first convolution (published: 8 heads, conv proj).
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(
                    model_channels,
                    8,
                    num_head_channels,
                    transformer_depth,
                    dropout,
                    use_linear=False,
                    relative_position=relative_position,
                )
            )

        mid = [ResBlock(ch, emb_dim, dropout, use_temporal_conv=temporal_conv), *attention_layers(ch)]
        mid.append(ResBlock(ch, emb_dim, dropout, use_temporal_conv=temporal_conv))
        self.middle_block = TimestepEmbedSequential(*mid)

        blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for j in range(num_res_blocks + 1):
                layers = [
                    ResBlock(
                        ch + skip_channels.pop(),
                        emb_dim,
                        dropout,
                        mult * model_channels,
                        use_temporal_conv=temporal_conv,
                    )
                ]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                    self.decoder_attention_blocks[(level, j)] = len(blocks)
                if level and j == num_res_blocks:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )
        self.attention_backend = AttentionBackend.SDPA

    # ----------------------------------------------------------------- attention processors
    def attention_layers(self) -> dict[str, CrossAttention]:
        """Every attention layer by its module name (as in the checkpoint keys)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, CrossAttention)}

    def set_attn_processor(
        self, backend: AttentionBackend | str, processor: Callable[[], AttnProcessor] | None = None
    ) -> None:
        """Give every attention layer a fresh default processor for ``backend``.

        ``backend``: an :class:`AttentionBackend` (or its value). Tricks install their own
        processors on chosen layers afterwards; this restores plain attention everywhere.
        ``processor`` builds the processor instead (e.g. a subclass), called once per layer.
        """
        backend = AttnProcessor(backend).backend  # validates the name
        self.attention_backend = backend
        for layer in self.attention_layers().values():
            layer.processor = processor() if processor is not None else AttnProcessor(backend)

    # ---------------------------------------------------------------------------- forward
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights, which the forward pass computes in (float32 in the norms)."""
        return self.time_embed[0].weight.dtype

    def embed_time(self, timesteps: Tensor, batch: int, frames: int, fps: int | Tensor | None) -> Tensor:
        """Time (+ fps) embedding per frame: timesteps (b,) or (b, t) → (b·t, 4·model_channels)."""
        per_frame = timesteps.dim() == 2
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps.reshape(-1), self.model_channels).to(dtype))
        if not per_frame:
            emb = emb.repeat_interleave(frames, dim=0)
        if self.fps_cond:
            if fps is None:
                if self.default_fs is None:
                    raise ValueError("this U-Net's fps embedding needs a value (fps=)")
                fps = self.default_fs
            fps_t = torch.as_tensor(fps, device=timesteps.device).reshape(-1).expand(batch)
            fps_emb = self.fps_embedding(timestep_embedding(fps_t, self.model_channels).to(dtype))
            emb = emb + fps_emb.repeat_interleave(frames, dim=0)
        return emb

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        fps: int | Tensor | None = 16,
        context_branches: int = 1,
    ) -> Tensor:
        """Predict the noise.

        Args:
            x: (b, c, t, h, w) noisy latents.
            timesteps: (b,) one timestep per clip, or (b, t) one per frame (FIFO).
            context: (k·b, m, context_dim) text tokens (+ image tokens for image models), one
                row per clip, or k rows per clip with ``context_branches`` = k. With 16 image
                tokens per frame (77 + 16·t tokens, DynamiCrafter) frame i attends to its own
                16 (``lvdm.modules.attention.per_frame_image_tokens``), as published.
            fps: frame rate conditioning (frame stride for DynamiCrafter), an int or (b,);
                None: the config's ``default_fs``.
            context_branches: k ≥ 1 contexts per clip, branch-major (rows [i·b, (i+1)·b) are
                branch i; classifier-free guidance passes k = 2: conditional, unconditional).
                The layers before the first cross-attention (input convolution, initial
                temporal attention) see no context: they run once per clip, and each branch
                continues from a copy. The result equals k separate calls.
        Returns:
            (k·b, out_channels, t, h, w): the noise of every clip under each of its contexts, in
            the dtype of ``x`` (the layers compute in the weights' dtype, see :attr:`dtype`).
        """
        b, _, t, _, _ = x.shape
        out_dtype = x.dtype
        x, context = x.to(self.dtype), context.to(self.dtype)
        if timesteps.dim() == 2 and timesteps.shape != (b, t):
            raise ValueError(
                f"per-frame timesteps must have shape (b, t) = {(b, t)}, got {tuple(timesteps.shape)}"
            )
        if context_branches < 1 or context.shape[0] != context_branches * b:
            raise ValueError(
                f"context rows ({context.shape[0]}) must be context_branches ({context_branches}) "
                f"× the batch ({b})"
            )
        emb = self.embed_time(timesteps, b, t, fps).type(x.dtype)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        h = self.input_blocks[0](h, emb, None, b)
        if self.addition_attention:
            h = self.init_attn(h, emb, None, b)
        if context_branches > 1:
            h, emb = h.repeat(context_branches, 1, 1, 1), emb.repeat(context_branches, 1)
            b *= context_branches
        # The context stays (b, m, d): cross-attention shares it across the t frames of a clip.
        skips = [h]
        for block in self.input_blocks[1:]:
            h = block(h, emb, context, b)
            skips.append(h)
        h = self.middle_block(h, emb, context, b)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        return rearrange(self.out(h).type(out_dtype), "(b t) c h w -> b c t h w", b=b)
