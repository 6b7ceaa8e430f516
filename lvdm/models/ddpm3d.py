"""The latent video diffusion models: U-Net + autoencoder + encoders + noise schedule.

Inference-only, plain ``nn.Module`` s (no training machinery), with the published module
tree so that the published checkpoints load strictly:

- ``LatentDiffusion``: text-to-video (VideoCrafter2).
- ``LatentVisualDiffusion``: image-to-video (VideoCrafter1, DynamiCrafter): adds the CLIP image
  embedder (``embedder``) and the Resampler (``image_proj_model``) whose tokens follow the text
  tokens. DynamiCrafter's configs add v-prediction on a zero-terminal-SNR schedule, the hybrid
  conditioning (the image latent concatenated to every frame), dynamic rescale and the frame
  stride embedding: what differs is described by ``self.family`` (``lvdm.family``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvdm.family import Conditioning, ModelFamily, family_from_params
from lvdm.models.utils_diffusion import (
    linear_betas,
    rescale_zero_terminal_snr,
    scale_array,
    schedule_buffers,
)
from lvdm.utils import instantiate_from_config

logger = logging.getLogger(__name__)


class DiffusionWrapper(nn.Module):
    """Holds the U-Net under the published name ``model.diffusion_model``."""

    def __init__(self, unet_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.diffusion_model = instantiate_from_config(unet_config)


class LatentDiffusion(nn.Module):
    """Text-to-video latent diffusion (``lvdm.models.ddpm3d.LatentDiffusion`` in configs).

    Parameter names follow the published configs; training-only ones are accepted and ignored.
    """

    def __init__(
        self,
        unet_config: Mapping[str, Any],
        first_stage_config: Mapping[str, Any],
        cond_stage_config: Mapping[str, Any],
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        beta_schedule: str = "linear",
        scale_factor: float = 1.0,
        use_scale: bool = False,
        scale_a: float = 1.0,
        scale_b: float = 0.3,
        fix_scale_bug: bool = False,
        uncond_type: str = "empty_seq",
        conditioning_key: str = "crossattn",
        image_size: int | Sequence[int] = (40, 64),
        channels: int = 4,
        parameterization: str = "eps",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_rescale: bool = False,
        base_scale: float = 0.7,
        turning_step: int = 400,
        fps_condition_type: str = "fs",
        perframe_ae: bool = False,
        **training_only: Any,
    ) -> None:
        super().__init__()
        if beta_schedule != "linear":
            raise ValueError(
                f"beta_schedule {beta_schedule!r} is not supported (published models use 'linear')"
            )
        if conditioning_key not in ("crossattn", "hybrid"):
            raise ValueError(
                f"conditioning_key {conditioning_key!r} is not supported "
                "(published: 'crossattn' for VideoCrafter, 'hybrid' for DynamiCrafter)"
            )
        if parameterization not in ("eps", "v"):
            raise ValueError(
                f"parameterization {parameterization!r} is not supported (published: 'eps', 'v')"
            )
        if fps_condition_type not in ("fs", "fps"):
            raise ValueError(
                f"fps_condition_type {fps_condition_type!r} is not supported (published: 'fs', 'fps')"
            )
        if uncond_type != "empty_seq":
            raise ValueError(f"uncond_type {uncond_type!r} is not supported (published: 'empty_seq')")
        if training_only:
            logger.debug("ignoring training-only config parameters: %s", sorted(training_only))
        self.model = DiffusionWrapper(unet_config)
        self.first_stage_model = instantiate_from_config(first_stage_config)
        self.cond_stage_model = instantiate_from_config(cond_stage_config)
        self.scale_factor = float(scale_factor)
        self.channels = channels
        self.image_size = tuple(image_size) if isinstance(image_size, Sequence) else (image_size, image_size)
        self.num_timesteps = timesteps
        self.use_scale = use_scale
        self.use_dynamic_rescale = use_dynamic_rescale
        self.parameterization = parameterization
        self.fps_condition_type = fps_condition_type
        self.perframe_ae = perframe_ae
        if use_scale and use_dynamic_rescale:
            raise ValueError(
                "use_scale and use_dynamic_rescale exclude each other (both rescale the latents)"
            )
        # The config's description of this member of the family (the samplers read only this).
        self._family_params: dict[str, Any] = {
            "unet_config": unet_config,
            "conditioning_key": conditioning_key,
            "parameterization": parameterization,
            "rescale_betas_zero_snr": rescale_betas_zero_snr,
            "use_dynamic_rescale": use_dynamic_rescale,
            "use_scale": use_scale,
            "perframe_ae": perframe_ae,
        }
        self.family: ModelFamily = family_from_params(self._family_params)
        if use_dynamic_rescale:  # DynamiCrafter: a ramp from 1 to base_scale, as use_scale's
            scale_a, scale_b, fix_scale_bug = 1.0, base_scale, False
        self._schedule_config = (
            timesteps,
            linear_start,
            linear_end,
            scale_a,
            scale_b,
            fix_scale_bug,
            turning_step,
            rescale_betas_zero_snr,
        )
        _, scale_arr = self.schedule_arrays()
        buffers = schedule_buffers(self._betas(), v_prediction=parameterization == "v")
        for name, values in buffers.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
        if scale_arr is not None:
            self.register_buffer("scale_arr", torch.tensor(scale_arr, dtype=torch.float32))

    def _betas(self) -> np.ndarray:
        timesteps, linear_start, linear_end, *_, zero_snr = self._schedule_config
        betas = linear_betas(timesteps, linear_start, linear_end)
        return rescale_zero_terminal_snr(betas) if zero_snr else betas

    def schedule_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``alphas_cumprod`` and ``scale_arr`` (or None) as the buffers hold them (float32 values,
        as float64 arrays), computed from the config: for a model whose buffers hold no values."""
        timesteps, _, _, scale_a, scale_b, fix_scale_bug, turning_step, _ = self._schedule_config
        buffers = schedule_buffers(self._betas(), v_prediction=self.parameterization == "v")
        alphas_cumprod = buffers["alphas_cumprod"].astype(np.float32).astype(np.float64)
        scale_arr = None
        if self.use_scale or self.use_dynamic_rescale:
            scale_arr = scale_array(timesteps, scale_a, scale_b, fix_scale_bug, turning_step)
            scale_arr = scale_arr.astype(np.float32).astype(np.float64)
        return alphas_cumprod, scale_arr

    # ------------------------------------------------------------------ properties
    @property
    def unet(self) -> nn.Module:
        return self.model.diffusion_model

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def has_image_embedder(self) -> bool:
        return False

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the published autoencoder)."""
        return 2 ** (self.first_stage_model.decoder.num_resolutions - 1)

    def set_precision(self, dtype: torch.dtype) -> None:
        """Keep the denoising U-Net and the conditioning encoders' weights in ``dtype``.

        Like diffusers' ``torch_dtype``: half the weight memory in fp16/bf16, no autocast. The
        U-Net's group norms still compute in float32 (``GroupNorm32``). The autoencoder stays in
        float32 (frames are decoded in float32, as published: one frame per iteration costs
        little), and so do the noise schedule's buffers. Parameters are replaced, not converted
        in place, so this also works on meta and fake tensors. Buffers a module names in its
        ``FP32_BUFFERS`` (the CLIP normalisation constants) stay float32.
        """
        for part in self.low_precision_parts():
            for module in part.modules():
                for name, param in list(module._parameters.items()):
                    if param is not None and param.is_floating_point() and param.dtype != dtype:
                        module._parameters[name] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
                keep = getattr(module, "FP32_BUFFERS", ())  # constants that half precision would round
                for name, buffer in list(module._buffers.items()):
                    if name in keep:
                        continue
                    if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                        module._buffers[name] = buffer.to(dtype)

    def low_precision_parts(self) -> list[nn.Module]:
        """What :meth:`set_precision` converts: the U-Net and the text encoder."""
        return [self.model, self.cond_stage_model]

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def get_learned_conditioning(self, texts: Sequence[str]) -> Tensor:
        """Text tokens: list of b prompts → (b, 77, context_dim)."""
        return self.cond_stage_model(list(texts))

    def text_token_ids(self, texts: Sequence[str]) -> Tensor:
        """The text encoder's token ids of b prompts, (b, 77) int64: which token stands where in
        the context :meth:`get_learned_conditioning` gives."""
        return self.cond_stage_model.tokenize(list(texts))

    # ------------------------------------------------------------------ denoiser
    def apply_model(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        fps: int | Tensor = 8,
        context_branches: int = 1,
        concat: Tensor | None = None,
    ) -> Tensor:
        """The U-Net's output (ε or v, see ``self.family.prediction``) for x (b, c, t, h, w) at
        timesteps t (b,) or (b, t).

        ``context`` (k·b, m, d): one row per clip, or k = ``context_branches`` per clip
        (``UNetModel.forward``); the result has k·b rows. ``fps``: the value of the extra
        embedding (frame rate, or frame stride for DynamiCrafter). ``concat`` (1 or b, c', 1 or
        t, h, w): the hybrid models' image latent, concatenated to the channels of every frame
        (the same for both guidance branches, as published).
        """
        if concat is not None:
            concat = concat.to(x.dtype).expand(x.shape[0], -1, x.shape[2], -1, -1)
            x = torch.cat([x, concat], dim=1)
        elif self.family.conditioning is Conditioning.HYBRID:
            raise ValueError("a hybrid-conditioned model (DynamiCrafter) needs the image latent (concat=)")
        return self.model.diffusion_model(x, t, context, fps=fps, context_branches=context_branches)

    # ------------------------------------------------------------------ autoencoder
    @torch.no_grad()
    def decode_first_stage_2DAE(self, z: Tensor) -> Tensor:
        """Decode each frame with the 2D autoencoder: (b, c, t, h, w) → (b, 3, t, H, W) in ~[-1, 1]."""
        z = z.to(self.first_stage_model.post_quant_conv.weight.dtype) / self.scale_factor
        frames = [self.first_stage_model.decode(z[:, :, i]) for i in range(z.shape[2])]
        return torch.stack(frames, dim=2)

    @torch.no_grad()
    def encode_first_stage_2DAE(self, video: Tensor) -> Tensor:
        """Encode each frame (posterior mean): (b, 3, t, H, W) → (b, c, t, h, w), scaled."""
        frames = [self.first_stage_model.encode(video[:, :, i]).mode() for i in range(video.shape[2])]
        return torch.stack(frames, dim=2) * self.scale_factor


class LatentVisualDiffusion(LatentDiffusion):
    """Image-to-video latent diffusion (``lvdm.models.ddpm3d.LatentVisualDiffusion``).

    Args:
        cond_img_config: the CLIP image embedder (VideoCrafter1's name).
        img_cond_stage_config: the same, under DynamiCrafter's name.
        finegrained: published switch for the 16-token Resampler (the only projector here).
        image_proj_config: optional projector config; by default the published Resampler sizes
            for ViT-H-14 (1280-wide image tokens → 16 tokens of 1024).
        image_proj_stage_config: the projector under DynamiCrafter's name (its Resampler has
            ``video_length``: 16 tokens per frame).
    """

    def __init__(
        self,
        cond_img_config: Mapping[str, Any] | None = None,
        finegrained: bool = True,
        image_proj_config: Mapping[str, Any] | None = None,
        random_cond: bool = False,
        img_cond_stage_config: Mapping[str, Any] | None = None,
        image_proj_stage_config: Mapping[str, Any] | None = None,
        freeze_embedder: bool = True,
        image_proj_model_trainable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (cond_img_config is None) == (img_cond_stage_config is None):
            raise ValueError(
                "set exactly one of cond_img_config (VideoCrafter1) and img_cond_stage_config (DynamiCrafter)"
            )
        if image_proj_config is not None and image_proj_stage_config is not None:
            raise ValueError("set at most one of image_proj_config and image_proj_stage_config")
        cond_img_config = cond_img_config or img_cond_stage_config
        image_proj_config = image_proj_config or image_proj_stage_config
        self._family_params.update(cond_img_config=cond_img_config, image_proj_config=image_proj_config)
        self.family = family_from_params(self._family_params)
        if not finegrained and image_proj_config is None:
            raise ValueError(
                "finegrained: false (the 4-token projector) is not supported; use finegrained: true"
            )
        self.embedder = instantiate_from_config(cond_img_config)
        if image_proj_config is None:
            image_proj_config = {
                "target": "lvdm.modules.encoders.resampler.Resampler",
                "params": {
                    "dim": 1024,
                    "depth": 4,
                    "dim_head": 64,
                    "heads": 12,
                    "num_queries": 16,
                    "embedding_dim": 1280,
                    "output_dim": 1024,
                    "ff_mult": 4,
                },
            }
        self.image_proj_model = instantiate_from_config(image_proj_config)

    @property
    def has_image_embedder(self) -> bool:
        return True

    def low_precision_parts(self) -> list[nn.Module]:
        """The U-Net, the text encoder, the CLIP image embedder and the Resampler."""
        return [*super().low_precision_parts(), self.embedder, self.image_proj_model]

    @torch.no_grad()
    def get_image_embeds(self, images: Tensor) -> Tensor:
        """Image tokens: (b, 3, H, W) in [-1, 1] → (b, 16, context_dim), or (b, 16·video_length,
        context_dim) for DynamiCrafter's per-frame Resampler."""
        return self.image_proj_model(self.embedder(images))

    @torch.no_grad()
    def get_image_latent(self, images: Tensor) -> Tensor:
        """The hybrid models' concatenated condition: (b, 3, H, W) in [-1, 1] → (b, c, 1, h, w),
        the posterior mean of each image, scaled (``encode_first_stage_2DAE``)."""
        return self.encode_first_stage_2DAE(images[:, :, None])
