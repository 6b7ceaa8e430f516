"""Where every random number of a run comes from: one noise source (k-diffusion's ``noise_sampler``).

The samplers never call ``torch.randn`` themselves. They ask a :class:`NoiseSource` for the
draw they need, in the order they need it: the base clip's initial latents and per-step noise,
one draw per queue slot when the queue is built, the DDIM noise of an iteration's windows, the
tail slot's fresh noise. A test can replay a recorded stream through the same code; a resumed
run restores the source's state; several ranks that hold equal sources draw equal numbers.

Two things make a source:

- the **stream** the numbers come from: a ``torch.Generator`` (:class:`GeneratorStream`) or a
  recorded stream replayed strictly (:class:`RecordedStream`);
- the **order** (:class:`NoiseOrder`) in which a run asks for them. ``DEFAULT`` is this
  project's: one ``(W, c, f, h, w)`` draw per iteration for all windows, nothing drawn when
  eta = 0. ``PUBLISHED`` is the published FIFO code's: one ``(1, c, 1, h, w)`` draw per frame,
  window by window from the noisiest, every frame of every window (also the frames a lookahead
  window does not write back, and also when eta = 0, where the noise is multiplied by zero), the
  base sampler's noise at every step, and the tail drawn as ``(1, c, h, w)``. With the same
  stream, both orders give the same samples up to which number lands where.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor


class NoiseOrder(str, Enum):
    """In which order and shapes a run draws its numbers (see the module doc)."""

    DEFAULT = "default"
    PUBLISHED = "published"


class RandomStream(Protocol):
    """Standard-normal numbers, in order."""

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """The next ``prod(shape)`` numbers, as a tensor of ``shape``."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GeneratorStream:
    """Numbers from a ``torch.Generator``, drawn on its device."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=dtype)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (a byte tensor)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class NoiseStreamError(RuntimeError):
    """A recorded stream replayed out of step with its recording."""


class RecordedStream:
    """A recorded stream of numbers replayed strictly.

    Args:
        numbers: every draw of the recording, each flattened in C order, in draw order (1-D).
        shapes: the shape of every draw in order; when given, each draw must ask for exactly the
            next recorded shape.
        device: where the draws are put.
    """

    def __init__(
        self,
        numbers: Tensor,
        shapes: list[tuple[int, ...]] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.numbers, self.shapes, self.device = numbers.reshape(-1), shapes, torch.device(device)
        self.position = 0  # numbers consumed
        self.draws = 0  # draws made

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        shape = tuple(int(s) for s in shape)
        if self.shapes is not None:
            if self.draws >= len(self.shapes):
                raise NoiseStreamError(
                    f"draw {self.draws} of shape {shape}: the recording has only {len(self.shapes)}"
                )
            expected = tuple(self.shapes[self.draws])
            if shape != expected:
                raise NoiseStreamError(
                    f"draw {self.draws}: asked for shape {shape}, the recording drew {expected}"
                )
        count = 1
        for s in shape:
            count *= s
        if self.position + count > self.numbers.numel():
            raise NoiseStreamError(
                f"draw {self.draws} of shape {shape} needs {count} numbers; "
                f"{self.numbers.numel() - self.position} are left in the recording"
            )
        out = self.numbers[self.position : self.position + count].reshape(shape)
        self.position += count
        self.draws += 1
        return out.to(device=self.device, dtype=dtype)

    def check_consumed(self) -> None:
        """Raise unless every recorded number (and draw) was used."""
        left = self.numbers.numel() - self.position
        if left or (self.shapes is not None and self.draws != len(self.shapes)):
            raise NoiseStreamError(
                f"the recording was not fully consumed: {self.draws} draws made"
                + (f" of {len(self.shapes)}" if self.shapes is not None else "")
                + f", {left} numbers left"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.draws = int(state["position"]), int(state["draws"])


class NoiseSource:
    """The draws of a run, from ``stream`` in ``order``.

    Args:
        stream: a :class:`RandomStream`, or a ``torch.Generator`` (wrapped in :class:`GeneratorStream`).
        order: the draw order (see the module doc).
    """

    def __init__(
        self, stream: RandomStream | torch.Generator, order: NoiseOrder = NoiseOrder.DEFAULT
    ) -> None:
        self.stream = GeneratorStream(stream) if isinstance(stream, torch.Generator) else stream
        self.order = NoiseOrder(order)

    @classmethod
    def seeded(
        cls, seed: int, device: str | torch.device, order: NoiseOrder = NoiseOrder.DEFAULT
    ) -> NoiseSource:
        """A source drawing from a generator on ``device`` seeded with ``seed``."""
        return cls(torch.Generator(device=device).manual_seed(seed), order)

    @property
    def published(self) -> bool:
        return self.order is NoiseOrder.PUBLISHED

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """The next ``prod(shape)`` numbers of the stream, as a tensor of ``shape``."""
        return self.stream.randn(tuple(shape), dtype)

    # ------------------------------------------------------------------ the draws of a run
    def latents(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Initial latents of a clip, (b, c, f, h, w)."""
        return self.randn(shape, dtype)

    def step_noise(self, shape: tuple[int, ...], dtype: torch.dtype, needed: bool) -> Tensor | None:
        """One base-sampler DDIM step's noise, shaped like the clip; None when the step adds none
        (``needed`` False: eta = 0), except in the published order, which always draws."""
        if not (needed or self.published):
            return None
        return self.randn(shape, dtype)

    def queue_slot(self, like: Tensor) -> Tensor:
        """The noise of one queue slot as the queue is built, shaped like ``like`` (1, c, 1, h, w)."""
        return self.randn(tuple(like.shape), like.dtype)

    def window_noise(
        self, n_windows: int, window_shape: tuple[int, ...], dtype: torch.dtype, needed: bool = True
    ) -> Tensor | None:
        """DDIM noise for every window of an iteration, (W, c, f, h, w), windows in processing
        order; None when the step adds no noise (``needed`` False: eta = 0), except in the
        published order, which draws anyway (one draw per frame, window by window)."""
        if self.published:
            c, f, h, w = window_shape
            frames = [self.randn((1, c, 1, h, w), dtype) for _ in range(n_windows * f)]
            return torch.cat(frames, dim=2).reshape(c, n_windows, f, h, w).transpose(0, 1).contiguous()
        if not needed:
            return None
        return self.randn((n_windows, *window_shape), dtype)

    def tail(self, like: Tensor) -> Tensor:
        """Fresh noise for the tail slot after a shift, shaped like ``like`` (1, c, 1, h, w)."""
        if self.published:  # the published shift draws one (1, c, h, w) frame
            b, c, _, h, w = like.shape
            return self.randn((b, c, h, w), like.dtype).unsqueeze(2)
        return self.randn(tuple(like.shape), like.dtype)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What restores the stream to this point."""
        return {"order": self.order.value, **self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def fingerprint(self) -> str:
        """A short digest of the stream's state (for cache keys)."""
        digest = hashlib.sha256()
        for key, value in sorted(self.stream.state_dict().items()):
            digest.update(key.encode())
            digest.update(
                value.cpu().numpy().tobytes() if isinstance(value, Tensor) else repr(value).encode()
            )
        return digest.hexdigest()[:16]


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one stage of a run, derived from ``--seed`` and independent of other stages'."""
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
