"""KL-regularised 2D autoencoder (VideoCrafter's "first stage model"), inference only.

Images ``(b, 3, H, W)`` in [-1, 1] are encoded to a diagonal Gaussian over latents
``(b, embed_dim, H / f, W / f)`` (f = 2**(len(ch_mult) - 1), 8 for the released models) and
latents are decoded back to images. Videos are handled by the caller, which folds the frames
into the batch. The diffusion model's ``scale_factor`` is *not* applied here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lvdm.modules.networks.ae_modules import Decoder, Encoder

logger = logging.getLogger(__name__)

__all__ = ["AutoencoderKL", "DiagonalGaussian"]


class DiagonalGaussian:
    """Gaussian with diagonal covariance, parameterised by the encoder's moments.

    ``parameters`` is ``(b, 2 * c, h, w)``: the mean in the first c channels, the log-variance in
    the last c. The log-variance is clamped to [-30, 20] for numerical safety, as published.
    Attributes ``mean``, ``logvar``, ``std`` and ``var`` are all ``(b, c, h, w)``.
    """

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.mean = mean
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw ``mean + std * eps`` with ``eps ~ N(0, I)``: ``(b, c, h, w)``.

        ``generator`` must live on the same device as the moments.
        """
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, i.e. the mean: ``(b, c, h, w)``."""
        return self.mean


class AutoencoderKL(nn.Module):
    """Encoder / decoder pair with 1x1 convolutions into and out of the latent space.

    Submodules (named as in the checkpoints): ``encoder``, ``decoder``, ``quant_conv``
    (moments ``2 * z_channels -> 2 * embed_dim``) and ``post_quant_conv``
    (``embed_dim -> z_channels``).

    Arguments follow the published config (``first_stage_config.params``). Only ``ddconfig``,
    ``embed_dim`` and ``colorize_nlabels`` shape the module; ``lossconfig``, ``ignore_keys``,
    ``monitor`` and any other training-only argument are accepted and ignored. Weights are never
    loaded here (the whole diffusion checkpoint is loaded by the caller): a ``ckpt_path`` raises
    ``ValueError`` so that a config expecting a separate autoencoder checkpoint fails loudly
    instead of running with random weights.

    Construction does no data-dependent work, so it can run under ``with torch.device("meta"):``.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Any,
        embed_dim: int,
        ckpt_path: str | None = None,
        ignore_keys: Iterable[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if ckpt_path is not None:
            raise ValueError(
                f"AutoencoderKL does not load checkpoints itself (got ckpt_path={ckpt_path!r}); "
                "load the full model's state_dict instead, which holds the first_stage_model.* weights"
            )
        logger.debug(
            "AutoencoderKL: unused at inference: lossconfig=%r, ignore_keys=%r, monitor=%r, other=%s",
            lossconfig,
            list(ignore_keys),
            monitor,
            sorted(kwargs),
        )
        ddconfig = dict(ddconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z = true (mean and log-variance)")
        z_channels = int(ddconfig["z_channels"])

        self.image_key = image_key
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)
        if colorize_nlabels is not None:
            # Only used upstream to visualise segmentation inputs; kept so such a checkpoint loads strictly.
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images ``(b, in_channels, H, W)`` -> posterior over latents ``(b, embed_dim, h, w)``."""
        _check_4d(x, "x")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(b, embed_dim, h, w)`` (unscaled) -> images ``(b, out_ch, H, W)``."""
        _check_4d(z, "z")
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct ``x`` ``(b, c, H, W)``; returns the reconstruction and the posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def _check_4d(t: torch.Tensor, name: str) -> None:
    # Video tensors (b, c, t, h, w) must be folded to (b*t, c, h, w) by the caller.
    if t.dim() != 4:
        raise ValueError(f"{name} must be (b, c, h, w), got shape {tuple(t.shape)}")
