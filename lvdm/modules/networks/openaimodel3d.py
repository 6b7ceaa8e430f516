"""The VideoCrafter 3D U-Net (``UNetModel``), built from the published config parameters.

Frames are folded into the batch, ``(b·t, c, h, w)``, everywhere except in the temporal
layers (temporal convolutions, temporal transformers), which see ``(b, c, t, h, w)``.
Timesteps may differ per frame (FIFO diagonal denoising) and per sample (batched windows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lvdm.modules.attention import AttnProcessor, CrossAttention, SpatialTransformer, TemporalTransformer
from lvdm.modules.qcache import QCacheBlendProcessor, QCacheRecordProcessor, QCacheStore
from lvdm.options import QCacheOptions


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
    """Group norm computed in float32 whatever the input dtype (stable under fp16)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters (untrained output layers start as the identity residual)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@dataclass(frozen=True)
class UNetExecution:
    """How the U-Net computes, without changing what (see ``UNetModel.set_execution``).

    Attributes:
        transformer_chunk: run every transformer's sequences in chunks of at most this many
            tokens (None: the whole batch at once). On CPU, chunks whose activations stay in
            cache run faster than one batch-sized pass over memory.
        temporal_conv_2d: compute the (3, 1, 1) temporal convolutions as 2D (3, 1)
            convolutions over (time, h·w). The same arithmetic; on CPU oneDNN runs it faster
            than its 3D kernel, and much faster than the generic 3D kernel PyTorch uses for a
            batch of one.
    """

    transformer_chunk: int | None = None
    temporal_conv_2d: bool = False

    def __post_init__(self) -> None:
        if self.transformer_chunk is not None and self.transformer_chunk < 1:
            raise ValueError(f"transformer_chunk must be ≥ 1 or None, got {self.transformer_chunk}")


class TemporalConv(nn.Conv3d):
    """A (3, 1, 1) convolution along time (a Conv3d, as published: same keys and shapes) that
    can run as the equivalent 2D convolution over (time, h·w)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.as_2d = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.as_2d:
            return super().forward(x)
        b, c, t, h, w = x.shape
        weight = self.weight.reshape(*self.weight.shape[:3], 1)  # (out, in, 3, 1)
        y = F.conv2d(x.reshape(b, c, t, h * w), weight, self.bias, padding=(1, 0))
        return y.reshape(b, -1, t, h, w)


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
                x = layer(x, context)
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
    "use_relative_position": False,
    "use_causal_attention": False,
}


class UNetModel(nn.Module):
    """VideoCrafter's 3D U-Net (``lvdm.modules.networks.openaimodel3d.UNetModel`` in configs).

    Parameter names are those of the published configs. ``use_checkpoint``, ``use_fp16``,
    ``conv_resample``, ``dims``, ``temporal_length`` are accepted for compatibility and have
    no effect at inference.
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
        self.fps_cond = fps_cond
        self.addition_attention = addition_attention
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
                )
            ]
            if temporal_attention:
                layers.append(
                    TemporalTransformer(ch, n_heads, d_head, transformer_depth, dropout, use_linear)
                )
            return layers

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if fps_cond:
            self.fps_embedding = nn.Sequential(
                nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        # Q-cache bookkeeping: (level, index within level) of blocks that hold transformers.
        self._encoder_sites: dict[tuple[int, int], int] = {}
        self._decoder_sites: dict[tuple[int, int], int] = {}

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
                    self._encoder_sites[(level, i)] = len(blocks)
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
                    model_channels, 8, num_head_channels, transformer_depth, dropout, use_linear=False
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
                    self._decoder_sites[(level, j)] = len(blocks)
                if level and j == num_res_blocks:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )
        self.attention_backend = "sdpa"
        self.execution = UNetExecution()
        self.qcache: QCacheOptions | None = None
        self._qcache_store: QCacheStore | None = None

    # ----------------------------------------------------------------- attention processors
    def _attention_layers(self) -> list[CrossAttention]:
        return [m for m in self.modules() if isinstance(m, CrossAttention)]

    def set_attention_backend(self, backend: str) -> None:
        """Choose the attention kernel: ``"sdpa"`` (default), ``"xformers"`` or ``"math"``."""
        AttnProcessor(backend)  # validates the name
        self.attention_backend = backend
        self.set_qcache(self.qcache)

    def set_execution(self, execution: UNetExecution) -> None:
        """Choose how the layers compute (:class:`UNetExecution`); the result stays the same.

        The default ``UNetExecution()`` runs the layers as published; the fast path's plan
        (``lvdm.perf.plan_fast_path``) picks what is faster on its device.
        """
        for layer in self.modules():
            if isinstance(layer, (SpatialTransformer, TemporalTransformer)):
                layer.max_tokens = execution.transformer_chunk
            elif isinstance(layer, TemporalConv):
                layer.as_2d = execution.temporal_conv_2d
        self.execution = execution

    def set_qcache(self, options: QCacheOptions | None) -> None:
        """Install Q-cache processors for ``options``; ``None`` restores plain attention.

        Decoder block j of a level takes the queries of encoder block
        ``max(0, num_res_blocks - 1 - j)`` of the same level (2 res blocks: second, first,
        first). The middle block and ``init_attn`` take no part.
        """
        backend = self.attention_backend
        for layer in self._attention_layers():
            layer.processor = AttnProcessor(backend)
        self.qcache = options
        self._qcache_store = None
        if options is None:
            return
        store = self._qcache_store = QCacheStore()
        kinds = {"spatial": SpatialTransformer, "temporal": TemporalTransformer}
        for (level, j), dec_index in self._decoder_sites.items():
            enc_index = self._encoder_sites[(level, max(0, self.num_res_blocks - 1 - j))]
            for kind in options.kinds:
                enc = next(m for m in self.input_blocks[enc_index] if isinstance(m, kinds[kind]))
                dec = next(m for m in self.output_blocks[dec_index] if isinstance(m, kinds[kind]))
                for depth, (enc_block, dec_block) in enumerate(
                    zip(enc.transformer_blocks, dec.transformer_blocks, strict=True)
                ):
                    for attn_name in options.attentions:
                        slot = (enc_index, kind, depth, attn_name)
                        getattr(enc_block, attn_name).processor = QCacheRecordProcessor(store, slot, backend)
                        getattr(dec_block, attn_name).processor = QCacheBlendProcessor(
                            store, slot, options.weight, backend
                        )

    # ---------------------------------------------------------------------------- forward
    def embed_time(self, timesteps: Tensor, batch: int, frames: int, fps: int | Tensor) -> Tensor:
        """Time (+ fps) embedding per frame: timesteps (b,) or (b, t) → (b·t, 4·model_channels)."""
        per_frame = timesteps.dim() == 2
        emb = self.time_embed(timestep_embedding(timesteps.reshape(-1), self.model_channels))
        if not per_frame:
            emb = emb.repeat_interleave(frames, dim=0)
        if self.fps_cond:
            fps_t = torch.as_tensor(fps, device=timesteps.device).reshape(-1).expand(batch)
            fps_emb = self.fps_embedding(timestep_embedding(fps_t, self.model_channels))
            emb = emb + fps_emb.repeat_interleave(frames, dim=0)
        return emb

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, fps: int | Tensor = 16) -> Tensor:
        """Predict the noise.

        Args:
            x: (b, c, t, h, w) noisy latents.
            timesteps: (b,) one timestep per clip, or (b, t) one per frame (FIFO).
            context: (k·b, m, context_dim) text tokens (+ image tokens for image models): k
                contexts per clip, branch-major (rows [i·b, (i+1)·b) are branch i, e.g. the
                conditional and unconditional branches of guidance with k = 2).
            fps: frame rate conditioning, an int or (b,).
        Returns:
            (k·b, out_channels, t, h, w): the noise of every clip under each of its contexts.
        """
        b, _, t, _, _ = x.shape
        if timesteps.dim() == 2 and timesteps.shape != (b, t):
            raise ValueError(
                f"per-frame timesteps must have shape (b, t) = {(b, t)}, got {tuple(timesteps.shape)}"
            )
        if context.shape[0] % b:
            raise ValueError(f"context rows ({context.shape[0]}) must be a multiple of the batch ({b})")
        branches = context.shape[0] // b
        if self._qcache_store is not None:
            self._qcache_store.clear()  # nothing left over from a pass that raised
        emb = self.embed_time(timesteps, b, t, fps).type(x.dtype)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        # The input convolution and the initial temporal attention see no context: run them
        # once per clip, then give every branch its copy.
        h = self.input_blocks[0](h, emb, None, b)
        if self.addition_attention:
            h = self.init_attn(h, emb, None, b)
        if branches > 1:
            h, emb, b = h.repeat(branches, 1, 1, 1), emb.repeat(branches, 1), b * branches
        # The context stays (b, m, d): cross-attention shares it across the t frames of a clip.
        skips = [h]
        for block in self.input_blocks[1:]:
            h = block(h, emb, context, b)
            skips.append(h)
        h = self.middle_block(h, emb, context, b)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        if self._qcache_store is not None:
            self._qcache_store.clear()  # free the recorded queries between passes
        return rearrange(self.out(h).type(x.dtype), "(b t) c h w -> b c t h w", b=b)
