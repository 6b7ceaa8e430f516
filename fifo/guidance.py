"""The model as the samplers see it: a denoiser, and classifier-free guidance over it.

Samplers call a :data:`GuidedDenoiser` ``(x, t, cond, uncond) → eps`` on a plain batch: row i of
``x``, ``t``, ``cond`` and ``uncond`` belong together, and eps has the rows of ``x``. Only
:class:`CFGDenoiser` knows that the U-Net can take both guidance branches in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

GuidedDenoiser = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
"""(x (b, c, t, h, w), timesteps (b,) or (b, t), cond (b, m, d), uncond (b, m', d) or None) → eps
(b, c, t, h, w), guidance applied."""


class ModelDenoiser:
    """A LatentDiffusion's U-Net as ``(x, t, context) → output`` in float32, at a fixed fps.

    The output is what the model predicts (ε, or v for a v-prediction family: the DDIM step
    converts it, ``fifo.ddim.ddim_step``); guidance is linear, so it applies to either. The
    U-Net computes in its weights' dtype (``LatentDiffusion.set_precision``); the samplers'
    latents and arithmetic stay float32.

    Args:
        model: a ``LatentDiffusion`` (``apply_model``).
        fps: the value of the extra embedding: the frame rate, or the frame stride for a
            frame-stride family (``lvdm.family.ModelFamily.frame_value``).
    """

    def __init__(self, model: nn.Module, fps: int) -> None:
        self.model, self.fps = model, fps
        # The hybrid families' image latent (1, c, 1, h, w), concatenated to every frame of
        # every clip this denoiser sees (windows, base clip, a trick's own passes); set per video.
        self.image_latent: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, context: Tensor, context_branches: int = 1) -> Tensor:
        """x (b, c, t, h, w), context (k·b, m, d) with k = ``context_branches`` → output (k·b, c, t, h, w)."""
        kwargs = {} if self.image_latent is None else {"concat": self.image_latent}
        out = self.model.apply_model(x, t, context, fps=self.fps, context_branches=context_branches, **kwargs)
        return out.float()


BranchDenoiser = Callable[..., Tensor]
"""(x (b, …), t, context (k·b, m, d), context_branches=k) → eps (k·b, …): a :class:`ModelDenoiser`."""


class CFGDenoiser:
    """Classifier-free guidance (k-diffusion's ``CFGDenoiser``): eps_u + scale·(eps_c − eps_u).

    Args:
        denoiser: the model denoiser (:class:`ModelDenoiser`, or a stand-in with its signature).
        scale: the guidance scale; 1 (or no unconditional context) means the conditional branch alone.
        batch_branches: evaluate both branches in one U-Net call (the clip goes once through the
            context-free head; same result). Otherwise, or when the two contexts differ in length
            (the image model's text-only base clip against text + zero-image unconditional
            tokens), two calls as published.
    """

    def __init__(
        self, denoiser: BranchDenoiser, scale: float, batch_branches: bool = True, rescale: float = 0.0
    ) -> None:
        self.denoiser, self.scale, self.batch_branches = denoiser, scale, batch_branches
        self.rescale = rescale

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None) -> Tensor:
        if uncond is None or self.scale == 1.0:
            return self.denoiser(x, t, cond)
        if self.batch_branches and cond.shape[1:] == uncond.shape[1:]:
            eps_c, eps_u = self.denoiser(x, t, torch.cat([cond, uncond]), context_branches=2).chunk(2)
        else:
            eps_c, eps_u = self.denoiser(x, t, cond), self.denoiser(x, t, uncond)
        guided = eps_u + self.scale * (eps_c - eps_u)
        return guided if self.rescale == 0.0 else rescale_guidance(guided, eps_c, self.rescale)


def rescale_guidance(guided: Tensor, cond: Tensor, weight: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4; ``--guidance_rescale``, DynamiCrafter's scripts use
    0.7): each sample's guided output is scaled to the standard deviation of its conditional
    output, over all its elements (a whole window), and mixed with the unscaled one by ``weight``.
    (b, …) → (b, …)."""
    dims = list(range(1, guided.dim()))
    matched = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return weight * matched + (1.0 - weight) * guided


def image_latent(model: nn.Module, images: Tensor) -> Tensor | None:
    """The hybrid families' condition of a video: images (1, 3, H, W) in [-1, 1] → the latent
    (1, c, 1, h, w) that :class:`ModelDenoiser` concatenates to every frame, or None for a family
    that takes none."""
    if not model.family.needs_input_image:
        return None
    return model.get_image_latent(images.to(model.device))
