"""fifo/tricks/tailcoh.py: coherent tail latent sampling (Ouroboros-Diffusion's Eq. 3)."""

from __future__ import annotations

import math

import pytest
import torch

from fifo.hooks import gaussian_tail
from fifo.noise import NoiseOrder, NoiseSource
from fifo.options import ModeError, TailCoherenceOptions, TailFilter, TrickArguments, parse_mode
from fifo.schedule import DDIMSchedule
from fifo.tricks.tailcoh import FFT_DIMS, CoherentTail, coherent_tail, high_band_gain, lowpass_mask

SHAPE = (1, 40, 64)  # one frame of the published model's latent size: both bands have many bins


def schedule(steps: int = 8) -> DDIMSchedule:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return DDIMSchedule.create(torch.cumprod(1 - betas, 0).float(), steps, eta=1.0)


def normal(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftn(x.double(), dim=FFT_DIMS)


@pytest.mark.parametrize("kind", list(TailFilter))
def test_the_filter_passes_dc_whole_and_falls_with_frequency(kind: TailFilter) -> None:
    mask = lowpass_mask(SHAPE, 0.25, kind)
    assert mask.shape == SHAPE
    assert mask[0, 0, 0] == 1.0  # DC passes whole
    assert mask.min() >= 0 and mask.max() <= 1
    # Along the width: from DC to Nyquist the gain never rises.
    row = torch.cat([mask[0, 0, :33]])
    assert bool((row[1:] <= row[:-1]).all())
    assert float(mask[0, 0, 32]) < 1e-3  # Nyquist is stopped
    assert not lowpass_mask(SHAPE, 0.0, kind).any()


@pytest.mark.parametrize("kind", list(TailFilter))
def test_low_band_is_the_previous_tails_and_high_band_the_fresh_noise(kind: TailFilter) -> None:
    previous, fresh = normal(2, 4, *SHAPE, seed=1), normal(2, 4, *SHAPE, seed=2)
    mask = lowpass_mask(SHAPE, 0.25, kind)
    new = coherent_tail(previous, fresh, mask, keep=1.0)  # no forward diffusion: ẑ is the previous tail
    gain = high_band_gain(mask, keep=1.0)
    s_new, s_prev, s_fresh = spectrum(new), spectrum(previous), spectrum(fresh)
    passband, stopband = mask >= 0.9, mask <= 0.1
    assert passband.sum() >= 3 and stopband.sum() >= 100
    # Within the filter's tolerance: in a bin of gain m, at most (1 − m) of the other band leaks in
    # (≤ 10 % here), the rest is the previous tail's (pass band) or the fresh noise's (stop band).
    both = s_prev.abs() + gain * s_fresh.abs()
    leak_low = (s_new - s_prev).abs() - (1 - mask) * both
    leak_high = (s_new - gain * s_fresh).abs() - mask * both
    assert float((leak_low / both)[..., passband].max()) <= 1e-6
    assert float((leak_high / both)[..., stopband].max()) <= 1e-6
    if kind is TailFilter.IDEAL:  # no transition band: the bands are exactly the two latents'
        torch.testing.assert_close(s_new[..., passband], s_prev[..., passband], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(s_new[..., stopband], gain * s_fresh[..., stopband], rtol=1e-5, atol=1e-4)
    # And exactly by construction: m·ẑ + a·(1 − m)·η.
    expected = mask * s_prev + gain * (1 - mask) * s_fresh
    torch.testing.assert_close(s_new, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", list(TailFilter))
@pytest.mark.parametrize("keep", [1.0, 0.9, 0.2])
@pytest.mark.parametrize("cutoff", [0.1, 0.25, 0.6])
def test_variance_is_the_tails_noise_level(kind: TailFilter, keep: float, cutoff: float) -> None:
    """The Gaussian tail has unit variance; so has the coherent one, given a tail-level previous latent."""
    previous, fresh = normal(16, 4, *SHAPE, seed=3), normal(16, 4, *SHAPE, seed=4)
    mask = lowpass_mask(SHAPE, cutoff, kind)
    new = coherent_tail(previous, fresh, mask, keep)
    assert abs(float(new.var()) - 1.0) < 0.02
    if kind is TailFilter.GAUSSIAN and cutoff >= 0.25:
        # Without the gain the two bands of the demo's mix fall short of it.
        unscaled = torch.fft.ifftn(
            mask * spectrum(previous) + (1 - mask) * spectrum(fresh), dim=FFT_DIMS
        ).real
        assert float(unscaled.var()) < 0.97


def test_previous_tail_is_diffused_to_the_tails_level_with_the_same_draw() -> None:
    sched = schedule(8)
    tail = CoherentTail(TailCoherenceOptions(cutoff=0.25), sched)
    assert tail.keep == pytest.approx(math.sqrt(float(sched.alphas[-1] / sched.alphas[-2])))
    queue = normal(1, 4, 9, 8, 8, seed=5)
    new = tail(queue, NoiseSource.seeded(7, "cpu"))
    fresh = NoiseSource.seeded(7, "cpu").tail(queue[:, :, :1])
    expected = coherent_tail(
        queue[:, :, -1:], fresh, lowpass_mask((1, 8, 8), 0.25, TailFilter.GAUSSIAN), tail.keep
    )
    assert torch.equal(new, expected)
    assert new.shape == (1, 4, 1, 8, 8) and new.dtype == queue.dtype


@pytest.mark.parametrize("order", list(NoiseOrder))
def test_cutoff_zero_is_todays_tail_and_the_stream_stays_aligned(order: NoiseOrder) -> None:
    queue = normal(1, 4, 9, 8, 8, seed=6)
    today, zero, coherent = (NoiseSource.seeded(11, "cpu", order) for _ in range(3))
    expected = gaussian_tail(queue, today)
    assert torch.equal(
        CoherentTail(TailCoherenceOptions(cutoff=0.0), schedule()).__call__(queue, zero), expected
    )
    CoherentTail(TailCoherenceOptions(cutoff=0.25), schedule())(queue, coherent)
    # Whatever the cut-off, the tail takes exactly the Gaussian tail's draw: the next one is the same.
    following = today.randn((3,))
    assert torch.equal(zero.randn((3,)), following)
    assert torch.equal(coherent.randn((3,)), following)


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        ({"tail_lowpass": -0.1}, "tail_lowpass"),
        ({"tail_lowpass": 1.5}, "tail_lowpass"),
        ({"tail_lowpass": float("nan")}, "tail_lowpass"),
        ({"tail_filter": "box"}, "tail_filter"),
    ],
)
def test_invalid_parameters_name_their_option(arguments: dict, option: str) -> None:
    with pytest.raises(ModeError, match=f"`{option}`") as err:
        parse_mode("t2v_tailcoh", tricks=TrickArguments(**arguments))
    assert err.value.options == (option,)


def test_options_parse_into_the_mode() -> None:
    mode = parse_mode("t2v_tailcoh", tricks=TrickArguments(tail_lowpass=0.4, tail_filter="ideal"))
    assert mode.tail == TailCoherenceOptions(cutoff=0.4, filter=TailFilter.IDEAL)
    assert mode.name == "t2v_tailcoh"
    assert parse_mode("t2v").tail is None
    assert parse_mode("t2v", tricks=TrickArguments(tail_lowpass=0.4)).tail is None  # logged, ignored
