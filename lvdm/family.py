"""What differs between the members of the VideoCrafter model family, named in one place.

VideoCrafter1/2 and DynamiCrafter share the U-Net, the autoencoder and the encoders; they differ
in a handful of facts that a sampler must know. :class:`ModelFamily` names them, read once from
a config (:func:`family_from_params`, before anything is built) and kept on the built model
(``LatentDiffusion.family``). The samplers consume it through narrow places only:

- the DDIM schedule (``fifo.schedule.DDIMSchedule``) carries ``prediction`` and
  ``dynamic_rescale``; ``fifo.ddim.ddim_step`` turns the model output into ε and x̂₀ per frame;
- the denoiser (``fifo.guidance.ModelDenoiser``) concatenates the image latent (``hybrid``)
  and feeds the frame-rate or frame-stride value;
- the generator refuses the modes a family cannot run (``fifo.generator.check_model_fits``).

Nothing else (the FIFO loop, the tricks, resume, ``--parallel windows``) looks at the family.
A further family is a new value of these fields (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Prediction(str, Enum):
    """What the U-Net predicts (``parameterization`` in the configs)."""

    EPS = "eps"  # the noise ε (VideoCrafter)
    V = "v"  # v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x₀ (DynamiCrafter)
    FLOW = "flow"  # the flow's velocity ε − x₀ on x_σ = (1 − σ)·x₀ + σ·ε (Wan2.1, flow matching)


class Conditioning(str, Enum):
    """How the condition enters the U-Net (``conditioning_key``)."""

    CROSSATTN = "crossattn"  # text (+ image) tokens through cross-attention
    HYBRID = "hybrid"  # cross-attention + the input image's latent concatenated to every frame


class TimestepSpacing(str, Enum):
    """Which training timesteps a DDIM schedule of n steps visits."""

    # n evenly spread from 0 to T−1 inclusive, rounded: the FIFO fork's (VideoCrafter).
    LINSPACE = "linspace"
    # T/n apart ending at T−1 ("uniform_trailing" in DynamiCrafter's sampler, what its 512/1024
    # scripts use, and what a zero-terminal-SNR model is sampled with: its last step is ᾱ = 0).
    TRAILING = "trailing"


class FrameConditioning(str, Enum):
    """What the U-Net's extra embedding (``fps_embedding``) is fed."""

    NONE = "none"
    FPS = "fps"  # VideoCrafter: frames per second (``--fps``)
    FRAME_STRIDE = "frame_stride"  # DynamiCrafter: the ``fs`` value (``--frame_stride``, ``default_fs``)


# The published U-Net's per-frame image-token rule: a context of 77 text tokens followed by
# 16 tokens per frame gives each frame its own 16 (DynamiCrafter's Resampler with video_length).
TEXT_TOKENS = 77
IMAGE_TOKENS_PER_FRAME = 16


@dataclass(frozen=True)
class ModelFamily:
    """The facts in which members of the family differ.

    Attributes:
        name: for messages (``"VideoCrafter2 text-to-video"``, ``"DynamiCrafter"``, ...).
        prediction: ε or v.
        zero_terminal_snr: the schedule is rescaled to ᾱ = 0 at the last timestep.
        conditioning: cross-attention only, or hybrid (image latent concatenated).
        frame_conditioning: what the extra embedding takes; ``default_frame_value`` is the
            config's ``default_fs`` for frame-stride models.
        image_tokens: image tokens after the text tokens (0: none; 16 or 16·frames).
        per_frame_image_tokens: the image tokens are 16 per frame of the clip (video_length).
        dynamic_rescale: DynamiCrafter's x̂₀ rescale by ``scale_arr`` at every DDIM step.
        use_scale: VideoCrafter's ``use_scale`` arithmetic in the base sampler.
        perframe_ae: the autoencoder runs one frame at a time (ours always does).
        timestep_spacing: the DDIM timesteps (trailing for zero-terminal-SNR models).
        video_frames_per_latent: video frames of one latent frame after the first (4 for
            Wan's causal autoencoder, whose first latent frame is one video frame; 1 here).
        default_guidance: the classifier-free guidance scale when none is given (the FIFO
            fork's 12 for the U-Nets; Wan's own 5).
    """

    name: str
    prediction: Prediction = Prediction.EPS
    zero_terminal_snr: bool = False
    conditioning: Conditioning = Conditioning.CROSSATTN
    frame_conditioning: FrameConditioning = FrameConditioning.FPS
    default_frame_value: int | None = None
    image_tokens: int = 0
    per_frame_image_tokens: bool = False
    dynamic_rescale: bool = False
    use_scale: bool = False
    perframe_ae: bool = False
    timestep_spacing: TimestepSpacing = TimestepSpacing.LINSPACE
    video_frames_per_latent: int = 1
    default_guidance: float = 12.0

    @property
    def flow_matching(self) -> bool:
        """Whether the model is sampled along a flow (``fifo.flow.FlowSchedule``), not by DDIM."""
        return self.prediction is Prediction.FLOW

    @property
    def has_image_tokens(self) -> bool:
        return self.image_tokens > 0

    @property
    def needs_input_image(self) -> bool:
        """Whether every frame is conditioned on an input image's latent (no text-only mode)."""
        return self.conditioning is Conditioning.HYBRID

    @property
    def takes_frame_stride(self) -> bool:
        return self.frame_conditioning is FrameConditioning.FRAME_STRIDE

    def frame_value(self, fps: int, frame_stride: int | None) -> int:
        """The value the U-Net's extra embedding is fed: ``--fps``, or ``--frame_stride`` (default
        the config's ``default_fs``) for frame-stride models."""
        if self.takes_frame_stride:
            return int(frame_stride if frame_stride is not None else self.default_frame_value or 0)
        return fps


def _params(cfg: Mapping[str, Any] | None) -> dict:
    return dict((cfg or {}).get("params") or {})


def family_from_params(params: Mapping[str, Any]) -> ModelFamily:
    """The family of a model from its config's ``model.params`` (nothing is built)."""
    unet = _params(params.get("unet_config"))
    image_proj = _params(params.get("image_proj_stage_config") or params.get("image_proj_config"))
    has_image = "cond_img_config" in params or "img_cond_stage_config" in params
    conditioning = Conditioning(params.get("conditioning_key", "crossattn"))
    frame_stride = bool(unet.get("fs_condition"))
    fps = bool(unet.get("fps_cond"))
    if frame_stride:
        frame = FrameConditioning.FRAME_STRIDE
    elif fps:
        frame = FrameConditioning.FPS
    else:
        frame = FrameConditioning.NONE
    video_length = image_proj.get("video_length")
    queries = int(image_proj.get("num_queries", IMAGE_TOKENS_PER_FRAME))
    tokens = 0
    if has_image:
        tokens = queries * int(video_length) if video_length else queries
    prediction = Prediction(params.get("parameterization", "eps"))
    zero_snr = bool(params.get("rescale_betas_zero_snr", False))
    if conditioning is Conditioning.HYBRID:
        name = "DynamiCrafter"
    elif has_image:
        name = "VideoCrafter1 image-to-video"
    else:
        name = "VideoCrafter text-to-video"
    return ModelFamily(
        name=name,
        prediction=prediction,
        zero_terminal_snr=zero_snr,
        conditioning=conditioning,
        frame_conditioning=frame,
        default_frame_value=int(unet.get("default_fs", 4)) if frame_stride else None,
        image_tokens=tokens,
        per_frame_image_tokens=bool(has_image and video_length),
        dynamic_rescale=bool(params.get("use_dynamic_rescale", False)),
        use_scale=bool(params.get("use_scale", False)),
        perframe_ae=bool(params.get("perframe_ae", False)),
        timestep_spacing=TimestepSpacing.TRAILING if zero_snr else TimestepSpacing.LINSPACE,
    )
