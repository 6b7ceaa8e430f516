"""Wan's causal autoencoder decoding a stream of latent frames, one at a time, with its cache.

``AutoencoderKLWan`` decodes a clip frame by frame through causal 3D convolutions, each keeping
the last input frames it saw (its "feature cache"). Kept between calls, that cache lets the
latent frames come one by one, as FIFO dequeues them: the first latent frame gives one video
frame, every later one four, and the result equals decoding the whole stream at once. The
memory is the cache's, constant however long the video. :class:`DecoderCache` is that cache as
plain tensors, so that a saved FIFO state carries it (``FifoState.hook_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# diffusers marks a cache slot whose convolution has seen only the first (replicated) frame.
_REPEAT = "Rep"


@dataclass
class DecoderCache:
    """The decoder's temporal cache between two latent frames.

    Attributes:
        frames: latent frames decoded so far (0: the next is the stream's first).
        slots: one entry per causal convolution of the decoder: None (not reached yet), the
            marker ``"Rep"``, or the last input frames it saw (1, c, ≤2, h, w).
    """

    frames: int = 0
    slots: list = field(default_factory=list)

    def state_dict(self) -> dict:
        """Tensors and plain values only (for ``torch.save`` / ``weights_only`` loading)."""
        return {
            "frames": self.frames,
            "count": len(self.slots),
            "repeat": [i for i, s in enumerate(self.slots) if isinstance(s, str)],
            "tensors": {str(i): s for i, s in enumerate(self.slots) if isinstance(s, Tensor)},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> DecoderCache:
        slots: list = [None] * int(state["count"])
        for i in state["repeat"]:
            slots[int(i)] = _REPEAT
        for i, tensor in state["tensors"].items():
            slots[int(i)] = tensor
        return cls(int(state["frames"]), slots)


def causal_convolutions(vae: torch.nn.Module) -> int:
    """How many causal 3D convolutions the decoder has (one cache slot each)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())


class StreamDecoder:
    """Decodes latent frames in order, one call per frame, keeping the temporal cache.

    Args:
        vae: ``AutoencoderKLWan`` (float32).
        to_autoencoder: normalised latents → the autoencoder's (``WanModel.to_autoencoder``).
    """

    def __init__(self, vae: torch.nn.Module, to_autoencoder) -> None:
        self.vae, self.to_autoencoder = vae, to_autoencoder
        self.slots = causal_convolutions(vae)

    def start(self) -> DecoderCache:
        """The cache before the stream's first latent frame."""
        return DecoderCache(0, [None] * self.slots)

    @torch.no_grad()
    def decode(self, latent: Tensor, cache: DecoderCache) -> Tensor:
        """The next latent frame (1, c, 1, h, w) → its video frames (1, 3, k, H, W) in [-1, 1],
        k = 1 for the stream's first frame, 4 after; ``cache`` is advanced in place."""
        vae = self.vae
        z = self.to_autoencoder(latent.float()).to(next(vae.parameters()).dtype)
        x = vae.post_quant_conv(z)
        out = vae.decoder(x, feat_cache=cache.slots, feat_idx=[0], first_chunk=cache.frames == 0)
        cache.frames += 1
        return out.float().clamp(-1.0, 1.0)
