"""AMT-S, the frame-interpolation network of VBench's ``motion_smoothness``, written for this project.

AMT (Li et al., CVPR 2023, "All-Pairs Multi-Field Transforms for Efficient Frame Interpolation")
predicts the frame at time ``t`` between two frames. Its small variant, AMT-S, is what VBench runs
(``vbench/third_party/amt/cfgs/AMT-S.yaml``: correlation radius 3, 4 correlation levels, 3 flow
fields). This is an implementation from the published architecture, with the parameter names of the
published checkpoint ``amt-s.pth`` so that it loads with a strict key check
(``tests/fixtures/amt_s_keys.json`` lists every key and shape).

The network, for inputs ``(b, 3, h, w)`` in ``[0, 1]`` with ``h, w`` multiples of 16:

1. both frames minus their joint mean; a small RAFT-like feature encoder (1/8 resolution, 84
   channels) builds an all-pairs correlation volume, looked up in both directions;
2. a 4-level image pyramid (1/2 .. 1/16) per frame; decoders from 1/16 up to 1/2 predict the flows
   from time ``t`` to each frame and a feature map, each refined once by an update block that reads
   the correlation at the flows (scaled to 0->1 and 1->0 under linear motion);
3. the last decoder gives 3 flow pairs, blend masks and residuals at full size; the 3 candidate
   frames (each a masked blend of both frames warped backwards) are averaged and corrected by a
   small convolution, then clamped to ``[0, 1]``.

Where VBench's copy of AMT divides by ``size - 1`` to turn pixel coordinates into grid coordinates,
a correlation level of size 1 (frames under 128 pixels on a side) gives NaN there; here the lookup
uses the equivalent ``align_corners=False`` mapping, identical for larger levels (to float
rounding) and finite for size 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AMTS", "AMT_S_CHANNELS"]

# AMT-S's pyramid widths (1/2, 1/4, 1/8, 1/16) and the width of the side channels its residual
# blocks refine separately (networks/AMT-S.py defaults).
AMT_S_CHANNELS = (20, 32, 44, 56)
_SIDE_CHANNELS = 20
_CORR_RADIUS = 3
_CORR_LEVELS = 4
_NUM_FLOWS = 3
_FEATURE_DIM = 84


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    # AMT resizes by a scale factor (not a size): the factor, not the size ratio, places the samples.
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def _conv_prelu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.PReLU(c_out))


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` ``(b, c, h, w)`` at ``pixel + flow`` (``flow`` ``(b, 2, h, w)``, x then y).

    Bilinear, border padding, corners aligned (pixel centres at -1 and 1), as AMT warps.
    """
    b, _, h, w = flow.shape
    xs = (
        torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    )
    ys = (
        torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    )
    grid = torch.cat([xs, ys], dim=1)
    step = torch.cat([flow[:, :1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], dim=1)
    sample_at = (grid + step).permute(0, 2, 3, 1)
    return F.grid_sample(image, sample_at, mode="bilinear", padding_mode="border", align_corners=True)


def pixel_grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(batch, 2, height, width)`` float pixel coordinates: channel 0 is x (column), 1 is y (row)."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([cols, rows]).float()[None].repeat(batch, 1, 1, 1)


def _sample_pixels(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``volume`` ``(n, c, h, w)`` at pixel coordinates ``coords`` ``(n, ..., 2)``.

    Zero outside. ``align_corners=False`` with ``(2 x + 1) / w - 1`` maps pixel ``x`` exactly as
    ``align_corners=True`` with ``2 x / (w - 1) - 1`` does, and stays finite when ``w == 1``.
    """
    h, w = volume.shape[-2:]
    x, y = coords.split(1, dim=-1)
    grid = torch.cat([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
    return F.grid_sample(volume, grid, align_corners=False)


class BidirectionalCorrelation:
    """All-pairs correlation of two feature maps, pooled into levels, looked up both ways.

    Args:
        features0, features1: ``(b, d, h, w)`` feature maps of the two frames.
        levels: Pyramid levels (each halves the second map's grid by average pooling).
        radius: Lookup window ``(2 r + 1)^2`` around each target point.
    """

    def __init__(self, features0: torch.Tensor, features1: torch.Tensor, levels: int, radius: int) -> None:
        b, d, h, w = features0.shape
        # (b, h0 w0, h1 w1): the dot products, scaled by sqrt(d) as RAFT scales them.
        corr = (
            features0.flatten(2).transpose(1, 2) @ features1.flatten(2) / torch.sqrt(torch.tensor(float(d)))
        )
        forward = corr.reshape(b * h * w, 1, h, w)  # frame-0 pixel -> map over frame 1
        backward = corr.transpose(1, 2).reshape(b * h * w, 1, h, w)  # frame-1 pixel -> map over frame 0
        self.levels = levels
        self.radius = radius
        self.pyramid0 = [forward]
        self.pyramid1 = [backward]
        for _ in range(levels - 1):
            self.pyramid0.append(F.avg_pool2d(self.pyramid0[-1], 2, stride=2))
            self.pyramid1.append(F.avg_pool2d(self.pyramid1[-1], 2, stride=2))

    def _window(self, device: torch.device) -> torch.Tensor:
        # (2r+1, 2r+1, 2): entry [i, j] offsets x by step i and y by step j (the checkpoint's
        # update blocks expect the window flattened in this order).
        r = self.radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=device)
        first, second = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([first, second], dim=-1)

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Look up at ``coords0`` (in frame 1, per frame-0 pixel) and ``coords1`` (in frame 0, per
        frame-1 pixel), both ``(b, 2, h, w)`` -> two ``(b, levels (2r+1)^2, h, w)`` float32."""
        b, _, h, w = coords0.shape
        window = self._window(coords0.device).view(1, 2 * self.radius + 1, 2 * self.radius + 1, 2)
        outputs = []
        for pyramid, coords in ((self.pyramid0, coords0), (self.pyramid1, coords1)):
            centres = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
            per_level = [
                _sample_pixels(volume, centres / 2**level + window).view(b, h, w, -1)
                for level, volume in enumerate(pyramid)
            ]
            outputs.append(torch.cat(per_level, dim=-1).permute(0, 3, 1, 2).contiguous().float())
        return outputs[0], outputs[1]


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions with instance norms, plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.conv1 = nn.Conv2d(c_in, mid, 1)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(mid, c_out, 1)
        # Instance norms without affine parameters or running statistics: nothing in the checkpoint.
        self.norm1, self.norm2, self.norm3 = (
            nn.InstanceNorm2d(mid),
            nn.InstanceNorm2d(mid),
            nn.InstanceNorm2d(c_out),
        )
        self.downsample = (
            None
            if stride == 1
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride), nn.InstanceNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class _CorrelationFeatures(nn.Module):
    """``(b, 3, h, w)`` -> ``(b, 84, h / 8, w / 8)``: the features the correlation volume is built from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.layer1 = nn.Sequential(_Bottleneck(32, 32, 1), _Bottleneck(32, 32, 1))
        self.layer2 = nn.Sequential(_Bottleneck(32, 64, 2), _Bottleneck(64, 64, 1))
        self.layer3 = nn.Sequential(_Bottleneck(64, 96, 2), _Bottleneck(96, 96, 1))
        self.conv2 = nn.Conv2d(96, _FEATURE_DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _ImagePyramid(nn.Module):
    """``(b, 3, h, w)`` -> features at 1/2, 1/4, 1/8, 1/16 (widths :data:`AMT_S_CHANNELS`)."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.depth = len(channels)
        c_prev = 3
        for level, c in enumerate(channels, start=1):
            self.add_module(
                f"pyramid{level}", nn.Sequential(_conv_prelu(c_prev, c, 3, 2, 1), _conv_prelu(c, c))
            )
            c_prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in range(1, self.depth + 1):
            x = getattr(self, f"pyramid{level}")(x)
            features.append(x)
        return features


class _SideResidual(nn.Module):
    """A residual block whose last ``side`` channels get an extra convolution of their own, twice."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.conv1 = _conv_prelu(channels, channels)
        self.conv2 = _conv_prelu(side, side)
        self.conv3 = _conv_prelu(channels, channels)
        self.conv4 = _conv_prelu(side, side)
        self.conv5 = nn.Conv2d(channels, channels, 3, padding=1)
        self.prelu = nn.PReLU(channels)

    def _refine_side(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        return torch.cat([x[:, : -self.side], conv(x[:, -self.side :])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self._refine_side(self.conv1(x), self.conv2))
        out = self.conv5(self._refine_side(out, self.conv4))
        return self.prelu(x + out)


def _decoder_block(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    # conv + PReLU, a side-residual block, then a transposed convolution that doubles the size.
    return nn.Sequential(
        _conv_prelu(c_in, c_mid),
        _SideResidual(c_mid, _SIDE_CHANNELS),
        nn.ConvTranspose2d(c_mid, c_out, 4, 2, 1),
    )


class _FirstDecoder(nn.Module):
    """1/16 features of both frames and ``t`` -> flows ``t -> 0``, ``t -> 1`` and features at 1/8."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.convblock = _decoder_block(2 * c_in + 1, 2 * c_in, c_out + 4)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, embt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        time = embt.expand(-1, 1, *f0.shape[-2:])
        out = self.convblock(torch.cat([f0, f1, time], dim=1))
        return out[:, 0:2], out[:, 2:4], out[:, 4:]


class _MiddleDecoder(nn.Module):
    """Features, both frames' features warped by the flows, and the flows -> all of them at twice the size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.convblock = _decoder_block(3 * c_in + 4, 3 * c_in, c_out + 4)

    def forward(
        self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor, flow1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        x = torch.cat([ft, backward_warp(f0, flow0), backward_warp(f1, flow1), flow0, flow1], dim=1)
        out = self.convblock(x)
        up0 = out[:, 0:2] + 2.0 * _resize(flow0, 2.0)
        up1 = out[:, 2:4] + 2.0 * _resize(flow1, 2.0)
        return up0, up1, out[:, 4:]


class _LastDecoder(nn.Module):
    """As :class:`_MiddleDecoder`, but full-size: ``num_flows`` flow pairs, blend masks and residuals."""

    def __init__(self, c_in: int, num_flows: int) -> None:
        super().__init__()
        self.num_flows = num_flows
        self.convblock = _decoder_block(3 * c_in + 4, 3 * c_in, 8 * num_flows)

    def forward(
        self, ft: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, flow0: torch.Tensor, flow1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = self.num_flows
        x = torch.cat([ft, backward_warp(f0, flow0), backward_warp(f1, flow1), flow0, flow1], dim=1)
        delta0, delta1, mask, residual = torch.split(self.convblock(x), [2 * n, 2 * n, n, 3 * n], dim=1)
        up0 = delta0 + 2.0 * _resize(flow0, 2.0).repeat(1, n, 1, 1)
        up1 = delta1 + 2.0 * _resize(flow1, 2.0).repeat(1, n, 1, 1)
        return up0, up1, torch.sigmoid(mask), residual


class _UpdateBlock(nn.Module):
    """One refinement from the correlation at the current flows: deltas for the features and flows.

    Works at 1/8 resolution; with ``scale`` it first shrinks its features by ``scale`` and then
    enlarges (and, for flows, multiplies) its outputs by it.
    """

    def __init__(self, c_feat: int, scale: int | None) -> None:
        super().__init__()
        hidden, flow_dim, corr_dim, fc_dim = 76, 20, 64, 68
        corr_planes = _CORR_LEVELS * (2 * _CORR_RADIUS + 1) ** 2
        self.scale = scale
        self.convc1 = nn.Conv2d(2 * corr_planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, padding=3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def head(c_out: int, c_in: int = hidden) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, hidden, 3, padding=1),
                nn.LeakyReLU(0.1),
                nn.Conv2d(hidden, c_out, 3, padding=1),
            )

        self.gru = head(hidden, fc_dim + 4 + c_feat)
        self.feat_head = head(c_feat)
        self.flow_head = head(4)

    def forward(
        self, feat: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is not None:
            feat = _resize(feat, 1 / self.scale)
        corr_code = F.leaky_relu(self.convc1(corr), 0.1)
        flow_code = F.leaky_relu(self.convf2(F.leaky_relu(self.convf1(flow), 0.1)), 0.1)
        motion = F.leaky_relu(self.conv(torch.cat([corr_code, flow_code], dim=1)), 0.1)
        hidden = self.gru(torch.cat([motion, flow, feat], dim=1))
        delta_feat, delta_flow = self.feat_head(hidden), self.flow_head(hidden)
        if self.scale is not None:
            delta_feat = _resize(delta_feat, self.scale)
            delta_flow = self.scale * _resize(delta_flow, self.scale)
        return delta_feat, delta_flow


class AMTS(nn.Module):
    """AMT-S: the frame at time ``embt`` between ``img0`` and ``img1``."""

    def __init__(self) -> None:
        super().__init__()
        c = AMT_S_CHANNELS
        self.feat_encoder = _CorrelationFeatures()
        self.encoder = _ImagePyramid(c)
        self.decoder4 = _FirstDecoder(c[3], c[2])
        self.decoder3 = _MiddleDecoder(c[2], c[1])
        self.decoder2 = _MiddleDecoder(c[1], c[0])
        self.decoder1 = _LastDecoder(c[0], _NUM_FLOWS)
        self.update4 = _UpdateBlock(c[2], None)
        self.update3 = _UpdateBlock(c[1], 2)
        self.update2 = _UpdateBlock(c[0], 4)
        self.comb_block = nn.Sequential(
            nn.Conv2d(3 * _NUM_FLOWS, 6 * _NUM_FLOWS, 3, padding=1),
            nn.PReLU(6 * _NUM_FLOWS),
            nn.Conv2d(6 * _NUM_FLOWS, 3, 3, padding=1),
        )

    @staticmethod
    def _lookup(
        corr: BidirectionalCorrelation,
        grid: torch.Tensor,
        flow0: torch.Tensor,
        flow1: torch.Tensor,
        embt: torch.Tensor,
        downsample: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlation at the flows scaled to 0 -> 1 and 1 -> 0 (linear motion), at 1/8 resolution."""
        if downsample != 1:
            flow0 = _resize(flow0, 1 / downsample) / downsample
            flow1 = _resize(flow1, 1 / downsample) / downsample
        corr0, corr1 = corr(grid + flow1 / embt, grid + flow0 / (1.0 - embt))
        return torch.cat([corr0, corr1], dim=1), torch.cat([flow0, flow1], dim=1)

    def _refine(
        self,
        update: _UpdateBlock,
        corr: BidirectionalCorrelation,
        grid: torch.Tensor,
        flow0: torch.Tensor,
        flow1: torch.Tensor,
        feat: torch.Tensor,
        embt: torch.Tensor,
        downsample: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One update block's deltas added to the flows and features."""
        corr_values, flows = self._lookup(corr, grid, flow0, flow1, embt, downsample)
        delta_feat, delta_flow = update(feat, flows, corr_values)
        return flow0 + delta_flow[:, 0:2], flow1 + delta_flow[:, 2:4], feat + delta_feat

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` frames in ``[0, 1]`` (``h``, ``w`` multiples of 16), ``embt`` ``(b, 1, 1, 1)``
        -> ``(b, 3, h, w)`` the predicted frame at time ``embt``, in ``[0, 1]``."""
        b, _, h, w = img0.shape
        mean = torch.cat([img0, img1], dim=2).mean(dim=(1, 2, 3), keepdim=True)  # (b, 1, 1, 1)
        img0, img1 = img0 - mean, img1 - mean
        grid = pixel_grid(b, h // 8, w // 8, img0.device)
        # Both frames through the correlation encoder together: instance norms are per image.
        features0, features1 = self.feat_encoder(torch.cat([img0, img1])).chunk(2)
        corr = BidirectionalCorrelation(features0, features1, _CORR_LEVELS, _CORR_RADIUS)
        f0 = self.encoder(img0)
        f1 = self.encoder(img1)

        flow0, flow1, feat = self.decoder4(f0[3], f1[3], embt)
        flow0, flow1, feat = self._refine(self.update4, corr, grid, flow0, flow1, feat, embt, 1)
        flow0, flow1, feat = self.decoder3(feat, f0[2], f1[2], flow0, flow1)
        flow0, flow1, feat = self._refine(self.update3, corr, grid, flow0, flow1, feat, embt, 2)
        flow0, flow1, feat = self.decoder2(feat, f0[1], f1[1], flow0, flow1)
        flow0, flow1, feat = self._refine(self.update2, corr, grid, flow0, flow1, feat, embt, 4)
        flow0, flow1, mask, residual = self.decoder1(feat, f0[0], f1[0], flow0, flow1)
        return self._combine(img0, img1, flow0, flow1, mask, residual, mean).clamp(0, 1)

    def _combine(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        flow0: torch.Tensor,
        flow1: torch.Tensor,
        mask: torch.Tensor,
        residual: torch.Tensor,
        mean: torch.Tensor,
    ) -> torch.Tensor:
        """The mean of the ``n`` candidate frames plus a learnt correction from all of them."""
        b, _, h, w = flow0.shape
        n = _NUM_FLOWS

        def per_flow(x: torch.Tensor, channels: int) -> torch.Tensor:
            return x.reshape(b * n, channels, h, w)

        def repeat(x: torch.Tensor) -> torch.Tensor:
            return x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])

        warped0 = backward_warp(repeat(img0), per_flow(flow0, 2))
        warped1 = backward_warp(repeat(img1), per_flow(flow1, 2))
        blend = per_flow(mask, 1)
        candidates = blend * warped0 + (1 - blend) * warped1 + repeat(mean) + per_flow(residual, 3)
        candidates = candidates.reshape(b, n, 3, h, w)
        return candidates.mean(1) + self.comb_block(candidates.reshape(b, 3 * n, h, w))
