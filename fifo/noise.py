"""Where every random number of a run comes from: one noise source (k-diffusion's ``noise_sampler``).

The samplers never call ``torch.randn`` themselves. They ask a :class:`NoiseSource` for the
draw they need, in the order they need it: the base clip's initial latents and per-step noise,
one draw per queue slot when the queue is built, the DDIM noise of an iteration's windows, the
tail slot's fresh noise. A test can replay a recorded stream through the same code; a resumed
run restores the source's state; several ranks that hold equal sources draw equal numbers.

:class:`NoiseSource` draws from a ``torch.Generator``; subclasses may take numbers from
elsewhere by overriding :meth:`NoiseSource.randn`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor


class NoiseSource:
    """Standard-normal draws from a ``torch.Generator`` on the device where they are used.

    Args:
        generator: the generator (its device is where the numbers are drawn).
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    @classmethod
    def seeded(cls, seed: int, device: str | torch.device) -> NoiseSource:
        """A source seeded with ``seed`` on ``device``."""
        return cls(torch.Generator(device=device).manual_seed(seed))

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """The next ``prod(shape)`` numbers of the stream, as a tensor of ``shape``."""
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=dtype)

    # ------------------------------------------------------------------ the draws of a run
    def latents(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Initial latents of a clip (b, c, f, h, w), or one DDIM step's noise for it."""
        return self.randn(shape, dtype)

    def queue_slot(self, like: Tensor) -> Tensor:
        """The noise of one queue slot as the queue is built, shaped like ``like`` (1, c, 1, h, w)."""
        return self.randn(tuple(like.shape), like.dtype)

    def window_noise(
        self, n_windows: int, window_shape: tuple[int, ...], dtype: torch.dtype, needed: bool = True
    ) -> Tensor | None:
        """DDIM noise for every window of an iteration, (W, c, f, h, w), windows in processing
        order; None when the step adds no noise (``needed`` is False: eta = 0)."""
        if not needed:
            return None
        return self.randn((n_windows, *window_shape), dtype)

    def tail(self, like: Tensor) -> Tensor:
        """Fresh noise for the tail slot after a shift, shaped like ``like`` (1, c, 1, h, w)."""
        return self.randn(tuple(like.shape), like.dtype)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What restores the stream to this point (a byte tensor for a torch generator)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one stage of a run, derived from ``--seed`` and independent of other stages'."""
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
