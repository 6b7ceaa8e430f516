"""What a FIFO run is between two iterations, and what one iteration gives.

:class:`FifoState` is everything that changes from one iteration to the next: the queue, the
noise source's stream, the iteration counter, the current image tokens (re-seeded every frame
in ``t2v_seed_ar``), the run's own image latent, how many output frames came out, and the
tricks' hook state. :class:`StepOutput` is what one iteration produced. Both are plain data:
nothing here reads or writes files or talks to other processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import maybe_get_fake_mode

from fifo.noise import NoiseSource


class NonFiniteError(RuntimeError):
    """NaN or infinite values in a stage of the run: stopping beats writing garbage frames."""


def check_finite(tensor: Tensor, stage: str, iteration: int | None = None) -> None:
    """Raise :class:`NonFiniteError` naming the stage (and iteration) if ``tensor`` has NaN or inf.

    One reduction and one host sync per call; fake tensors (a planned run) hold no values and pass.
    """
    if maybe_get_fake_mode(tensor) is not None or bool(torch.isfinite(tensor).all()):
        return
    where = stage if iteration is None else f"{stage} at FIFO iteration {iteration}"
    hint = (
        " Half precision overflows first: try `dtype` bf16 or `dtype` fp32."
        if tensor.dtype in (torch.float16, torch.bfloat16) or stage != "the decoded frame"
        else ""
    )
    raise NonFiniteError(
        f"non-finite values (NaN or inf) in {where}; the run stopped, nothing more was written.{hint}"
    )


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """(1, 3, t, H, W) in [-1, 1] → (t, H, W, 3) uint8."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass
class FifoState:
    """A FIFO run at an iteration boundary.

    Attributes:
        queue: (1, c, L, h, w) latents at increasing noise levels.
        noise: where the run's remaining random draws come from.
        iteration: iterations done so far.
        image_tokens: (1, 16, d) image tokens appended to every window's text (image modes),
            or None.
        image_latent: (1, c, 1, h, w), the hybrid families' image latent when the run made it from
            its own frames (the seeded modes on DynamiCrafter, :mod:`fifo.seed_clips`), or None (it
            comes from the input image, or the family takes none).
        frames_emitted: output frames produced so far.
        hook_state: the state of the tricks' step hooks, by hook name (tensors and plain values
            only, so that it is saved, restored and shared with the rest).
    """

    queue: Tensor
    noise: NoiseSource
    iteration: int = 0
    image_tokens: Tensor | None = None
    frames_emitted: int = 0
    hook_state: dict[str, Any] = field(default_factory=dict)
    image_latent: Tensor | None = None

    def to_payload(self) -> dict[str, Any]:
        """The state as plain values and CPU tensors: what a saved state holds and what the
        processes of one video receive from the writer (:meth:`from_payload` reverses it)."""
        return {
            "queue": _to_cpu(self.queue),
            "noise": _to_cpu(self.noise.state_dict()),
            "iteration": self.iteration,
            "image_tokens": _to_cpu(self.image_tokens),
            "frames_emitted": self.frames_emitted,
            "hook_state": _to_cpu(self.hook_state),
            "image_latent": _to_cpu(self.image_latent),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], noise: NoiseSource, device: torch.device) -> FifoState:
        """The state of :meth:`to_payload` on ``device``, drawing from ``noise`` restored to the
        payload's point of its stream.

        Raises:
            KeyError, TypeError, ValueError: not a payload of this format.
        """
        noise.load_state_dict(payload["noise"])
        # Saved states of earlier releases name the hook state "extras" and may lack the latent.
        hook_state = payload["hook_state"] if "hook_state" in payload else payload["extras"]
        return cls(
            queue=_to_device(payload["queue"], device),
            noise=noise,
            iteration=int(payload["iteration"]),
            image_tokens=_to_device(payload["image_tokens"], device),
            frames_emitted=int(payload["frames_emitted"]),
            hook_state=_to_device(hook_state, device),
            image_latent=_to_device(payload.get("image_latent"), device),
        )


@dataclass
class StepOutput:
    """What one iteration produced.

    Attributes:
        iteration: the iteration's number (0-based).
        latent: (1, c, 1, h, w), the dequeued (clean) latent, also during the warm-up.
        video: (1, 3, k, H, W) in ~[-1, 1], the decoded output frames (k = 1 on the U-Nets; on
            Wan the frames of one latent frame); None during the warm-up.
        frame_index: the index in the video of the first of them, or None.
    """

    iteration: int
    latent: Tensor
    video: Tensor | None = None
    frame_index: int | None = None

    @functools.cached_property
    def frames(self) -> np.ndarray | None:
        """The output frames as (k, H, W, 3) uint8 (converted when first asked for), or None."""
        return None if self.video is None else to_uint8_frames(self.video)

    @property
    def frame(self) -> np.ndarray | None:
        """The first output frame as (H, W, 3) uint8 (the one frame on the U-Nets), or None."""
        return None if self.frames is None else self.frames[0]


def _to_cpu(value: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) detached onto the CPU; other values as they are."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    """Tensors (also inside dicts, lists and tuples) moved to ``device``; other values as they are."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value
