"""Coherent tail latent sampling (Ouroboros-Diffusion, ``tailcoh``).

FIFO enqueues independent Gaussian noise at the tail, so nothing ties the layout of a new frame
to that of its neighbour. Ouroboros-Diffusion (Chen et al., AAAI 2025, Eq. 3) enqueues instead

    z_tail = F_low(ẑ) + F_high(η)

where ẑ is the previous tail latent brought to the tail's noise level, η fresh Gaussian noise,
and F_low / F_high a 3D FFT low-pass filter and its complement (1 − F_low). The low frequencies
(the coarse layout) carry over from frame to frame; the high ones stay random (motion, detail).

Choices made here (see docs/usage.md, "Ouroboros-Diffusion's tricks"):

- ẑ: the previous tail (the last slot after this iteration's windows, one DDIM step less noisy
  than the tail) diffused forward to the tail's level in closed form,
  ``ẑ = k·z + sqrt(1 − k²)·η`` with ``k² = ᾱ_tail / ᾱ_previous``. The paper diffuses it to the
  tail's level too; its demo walks the DDPM chain with a separate draw. Reusing the tail's one
  draw η keeps the random stream exactly as without the trick (one ``NoiseSource.tail`` call
  per iteration, same shape): resumed and multi-GPU runs rely on that.
- The frequency grid: each axis's frequencies as ``torch.fft.fftfreq`` gives them, scaled to
  [−1, 1) (1 = Nyquist), radius ``d`` over (t, h, w). The slot is one frame, so the temporal axis
  has only the zero frequency and the 3D transform reduces to the spatial one. (The demo's grid
  puts a one-frame volume's temporal frequency at −1, which lets only e^{−1/2} of the DC through;
  a low-pass filter passes DC whole.)
- The gain: the two bands of the demo's mix do not add up to the tail's noise level (the
  transition band loses power), so the fresh high band gets a scalar gain ``a`` such that the
  slot's expected per-element variance is 1, that of the Gaussian tail, assuming the previous
  tail's is 1 too (it is noise at ᾱ ≈ 0.005–0.1 for the schedules FIFO uses). ``a`` depends on
  the filter only and is solved in closed form.
- Cut-off 0 is the Gaussian tail itself (the draw returned unchanged, bit for bit).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fifo.noise import NoiseSource
from fifo.options import TailCoherenceOptions, TailFilter
from fifo.schedule import DDIMSchedule

FFT_DIMS = (-3, -2, -1)  # (t, h, w) of a (b, c, t, h, w) latent


def frequency_radius(shape: tuple[int, int, int]) -> np.ndarray:
    """Normalised frequency radius of every FFT bin of a (t, h, w) volume, in FFT (unshifted) order.

    Each axis's frequency lies in [−1, 1) (1 = Nyquist); the radius is their Euclidean norm.
    Computed on the host (numpy): a constant of the settings, also when the run is planned on
    fake tensors.
    """
    axes = [2.0 * np.fft.fftfreq(n) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(sum(g**2 for g in grids))


def lowpass_filter(shape: tuple[int, int, int], cutoff: float, kind: TailFilter) -> np.ndarray:
    """The low-pass filter F_low over the FFT bins of a (t, h, w) volume: (t, h, w) float64 in [0, 1].

    Gaussian: ``exp(−d² / (2·cutoff²))``; ideal: 1 where ``d ≤ cutoff``. Cut-off 0 passes nothing.
    """
    radius = frequency_radius(shape)
    if cutoff <= 0.0:
        return np.zeros_like(radius)
    if TailFilter(kind) is TailFilter.IDEAL:
        return (radius <= cutoff).astype(np.float64)
    return np.exp(-(radius**2) / (2.0 * cutoff**2))


def lowpass_mask(
    shape: tuple[int, int, int], cutoff: float, kind: TailFilter, device: torch.device | str = "cpu"
) -> Tensor:
    """:func:`lowpass_filter` as a float64 tensor on ``device``."""
    return torch.as_tensor(lowpass_filter(shape, cutoff, kind), device=device)


def high_band_gain(mask: Tensor | np.ndarray, keep: float) -> float:
    """The gain ``a`` of the fresh high band that keeps the slot's expected variance at 1.

    With ẑ = k·z + s·η (s = sqrt(1 − k²)), unit-variance z and η, and the mix
    ``m·ẑ + a·(1 − m)·η`` per bin, the expected power is
    ``mean(m²) + a²·mean((1 − m)²) + 2·a·s·mean(m·(1 − m))`` (η appears in both bands);
    setting it to 1 gives a quadratic in ``a`` whose positive root this returns.
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask, dtype=np.float64)
    high = float(((1.0 - m) ** 2).mean())
    if high < 1e-12:  # everything passes: there is no high band to scale
        return 1.0
    cross = 2.0 * math.sqrt(max(0.0, 1.0 - keep**2)) * float((m * (1.0 - m)).mean())
    missing = 1.0 - float((m**2).mean())
    return (-cross + math.sqrt(cross**2 + 4.0 * high * missing)) / (2.0 * high)


def coherent_tail(
    previous: Tensor, fresh: Tensor, mask: Tensor, keep: float, gain: float | None = None
) -> Tensor:
    """Eq. 3: the low band of ẑ (``previous`` brought to the tail's level) + the gained high band of ``fresh``.

    Args:
        previous: (b, c, 1, h, w), the previous tail latent.
        fresh: (b, c, 1, h, w), the tail's fresh standard normal draw η.
        mask: (1, h, w) low-pass filter over the FFT bins (:func:`lowpass_mask`).
        keep: k = sqrt(ᾱ_tail / ᾱ_previous), the forward diffusion's signal factor (1: none).
    Returns:
        (b, c, 1, h, w) in ``fresh``'s dtype.
    """
    diffused = keep * previous.double() + math.sqrt(max(0.0, 1.0 - keep**2)) * fresh.double()
    m = mask.to(device=fresh.device, dtype=torch.float64)
    gain = high_band_gain(mask, keep) if gain is None else gain
    spectrum = m * torch.fft.fftn(diffused, dim=FFT_DIMS) + gain * (1.0 - m) * torch.fft.fftn(
        fresh.double(), dim=FFT_DIMS
    )
    return torch.fft.ifftn(spectrum, dim=FFT_DIMS).real.to(fresh.dtype)


class CoherentTail:
    """A :class:`~fifo.hooks.TailSampler`: the coherent tail of ``options`` for a DDIM ``schedule``.

    Draws its noise through ``NoiseSource.tail`` exactly as the Gaussian tail does.
    """

    def __init__(self, options: TailCoherenceOptions, schedule: DDIMSchedule) -> None:
        self.options = options
        alphas = np.asarray(schedule.alpha_values, dtype=np.float64)  # host values: fake-tensor safe
        # The previous tail is one DDIM step less noisy than the tail (index steps - 2).
        self.keep = float(np.sqrt(alphas[-1] / alphas[-2])) if alphas.size > 1 else 1.0
        self._filters: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}

    def filter(self, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        """The low-pass filter of a (t, h, w) slot and its high band's gain (computed once)."""
        if shape not in self._filters:
            mask = lowpass_filter(shape, self.options.cutoff, self.options.filter)
            self._filters[shape] = (mask, high_band_gain(mask, self.keep))
        return self._filters[shape]

    def __call__(self, queue: Tensor, noise: NoiseSource) -> Tensor:
        """``queue`` (1, c, L, h, w) before the shift → the new tail (1, c, 1, h, w)."""
        fresh = noise.tail(queue[:, :, :1])  # the Gaussian tail's own draw: the stream stays aligned
        if self.options.cutoff == 0.0:
            return fresh
        previous = queue[:, :, -1:]
        mask, gain = self.filter(tuple(previous.shape[2:]))
        return coherent_tail(previous, fresh, torch.as_tensor(mask, device=fresh.device), self.keep, gain)
