"""The FIFO queue (fifo.geometry, fifo.step) against the facts of the published method.

Facts (tests/fixtures/reference/README.md, "How the published method works"): f = video_length,
n = num_partitions, steps = f·n. With lookahead, f/2 leading slots at noise index 0 from base
frame 0, then slot i (schedule index i) seeded from base frame max(0, i − (steps − f)), or
i // (steps / f) with unilatent. Windows noisiest first: [r·f/2, r·f/2 + f) writing their last
f/2 (2n windows) with lookahead, [r·f, r·f + f) writing all (n windows) without. Iterations =
new_video_length + steps − f; the clean slot is f/2 (lookahead) or 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser
from fifo.noise import NoiseSource
from fifo.schedule import DDIMSchedule
from fifo.step import fifo_step, initial_queue, iteration_noise, shift_queue
from lvdm.models.utils_diffusion import linear_betas, schedule_buffers

GEOMETRIES = [(f, n, la) for f in (2, 4, 16) for n in (1, 2, 4) for la in (True, False)]


def schedule(steps: int, eta: float = 0.0) -> DDIMSchedule:
    ac = torch.from_numpy(schedule_buffers(linear_betas(1000, 0.00085, 0.012))["alphas_cumprod"])
    return DDIMSchedule.create(ac, steps, eta)


def geo_id(p: tuple[int, int, bool]) -> str:
    return f"f{p[0]}-n{p[1]}-{'la' if p[2] else 'nola'}"


@pytest.fixture(params=GEOMETRIES, ids=geo_id)
def geo(request) -> FifoGeometry:
    f, n, la = request.param
    return FifoGeometry(video_length=f, num_partitions=n, lookahead=la)


# ----------------------------------------------------------------------------- geometry
def test_sizes(geo: FifoGeometry) -> None:
    f, n = geo.video_length, geo.num_partitions
    assert geo.steps == f * n
    assert geo.lead == (f // 2 if geo.lookahead else 0)
    assert geo.queue_length == geo.lead + f * n
    assert geo.output_slot == (f // 2 if geo.lookahead else 0)
    for new_length in (1, 7, 100):
        assert geo.num_iterations(new_length) == new_length + f * n - f
    assert geo.discarded_frames() == f * n - f


def test_published_default_geometry() -> None:
    geo = FifoGeometry()  # f = 16, n = 4, lookahead
    assert (geo.steps, geo.lead, geo.queue_length, geo.output_slot) == (64, 8, 72, 8)
    assert geo.num_iterations(100) == 148
    assert len(geo.windows()) == 8


def test_initial_slot_to_base_frame(geo: FifoGeometry) -> None:
    f, steps = geo.video_length, geo.steps
    default = [geo.base_frame_for_step(i, unilatent=False) for i in range(steps)]
    uni = [geo.base_frame_for_step(i, unilatent=True) for i in range(steps)]
    assert default == [max(0, i - (steps - f)) for i in range(steps)]
    assert uni == [int(i // (steps / f)) for i in range(steps)]
    # Every base frame is used; the last slot always takes the last frame; never out of range.
    for frames in (default, uni):
        assert set(frames) == set(range(f))
        assert frames[-1] == f - 1
        assert frames == sorted(frames)


def test_base_frame_examples() -> None:
    geo = FifoGeometry(16, 4)
    assert [geo.base_frame_for_step(i, False) for i in (0, 47, 48, 49, 63)] == [0, 0, 0, 1, 15]
    assert [geo.base_frame_for_step(i, True) for i in (0, 3, 4, 5, 63)] == [0, 0, 1, 1, 15]


def test_slot_schedule_indices(geo: FifoGeometry) -> None:
    idx = geo.slot_indices()
    assert idx.dtype.kind == "i"
    assert len(idx) == geo.queue_length
    if geo.lookahead:
        assert (idx[: geo.video_length // 2] == 0).all()
    np.testing.assert_array_equal(idx[geo.lead :], np.arange(geo.steps))
    assert (np.diff(idx) >= 0).all()  # noise grows towards the tail


def test_windows(geo: FifoGeometry) -> None:
    f, n = geo.video_length, geo.num_partitions
    windows = geo.windows()
    if geo.lookahead:
        assert len(windows) == 2 * n
        expected = [(r * f // 2, r * f // 2 + f, r * f // 2 + f // 2) for r in range(2 * n)]
    else:
        assert len(windows) == n
        expected = [(r * f, r * f + f, r * f) for r in range(n)]
    got = [(w.start, w.end, w.write_start) for w in windows]
    assert got == expected[::-1]  # noisiest (highest start) first
    assert all(w.end - w.start == f for w in windows)
    assert all(w.start >= 0 and w.end <= geo.queue_length for w in windows)


def test_write_back_covers_every_denoised_slot_once(geo: FifoGeometry) -> None:
    written = np.zeros(geo.queue_length, dtype=int)
    for w in geo.windows():
        written[w.write_start : w.end] += 1
    # Lead slots (lookahead) are only read, every other slot is written exactly once.
    np.testing.assert_array_equal(written[: geo.lead], 0)
    np.testing.assert_array_equal(written[geo.lead :], 1)


def test_no_window_reads_a_slot_written_earlier_in_the_iteration(geo: FifoGeometry) -> None:
    written: set[int] = set()
    for w in geo.windows():
        reads = set(range(w.start, w.end))
        assert not reads & written, (w, sorted(reads & written))
        written |= set(range(w.write_start, w.end))
    # and the windows really are ordered from the noisiest down
    idx = geo.slot_indices()
    maxima = [idx[w.start : w.end].max() for w in geo.windows()]
    assert maxima == sorted(maxima, reverse=True)


@pytest.mark.parametrize(("f", "n"), [(0, 1), (1, 1), (3, 2), (5, 1), (4, 0), (4, -1)])
def test_invalid_geometry(f: int, n: int) -> None:
    with pytest.raises(ValueError):
        FifoGeometry(f, n)


def test_geometry_is_frozen() -> None:
    geo = FifoGeometry(4, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        geo.video_length = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        geo.windows()[0].start = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------- the queue
def _numbered_clip(f: int, c: int = 4, h: int = 8, w: int = 8) -> torch.Tensor:
    """A base clip whose frame k is the constant k + 1 (so a slot's base frame can be read off)."""
    return (torch.arange(f, dtype=torch.float32) + 1).reshape(1, 1, f, 1, 1).expand(1, c, f, h, w).clone()


@pytest.mark.parametrize("unilatent", [False, True])
@pytest.mark.parametrize(("f", "n", "la"), [(4, 2, True), (4, 2, False), (16, 4, True)])
def test_initial_queue_without_noise(f: int, n: int, la: bool, unilatent: bool, monkeypatch) -> None:
    geo = FifoGeometry(f, n, la)
    sched = schedule(geo.steps)
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: torch.zeros_like(real_randn(*a, **k)))
    queue = initial_queue(
        _numbered_clip(f), geo, sched, unilatent, NoiseSource(torch.Generator().manual_seed(0))
    )
    assert queue.shape == (1, 4, geo.queue_length, 8, 8)
    idx = geo.slot_indices()
    for s in range(geo.queue_length):
        i = int(idx[s])
        frame = 0 if s < geo.lead else geo.base_frame_for_step(s - geo.lead, unilatent)
        expected = float(sched.alphas[i]) ** 0.5 * (frame + 1)
        torch.testing.assert_close(queue[:, :, s], torch.full_like(queue[:, :, s], expected))


@pytest.mark.parametrize("unilatent", [False, True])
def test_initial_queue_noise_levels(unilatent: bool) -> None:
    geo = FifoGeometry(4, 2, lookahead=True)
    sched = schedule(geo.steps)
    base = _numbered_clip(4, h=64, w=64)
    queue = initial_queue(base, geo, sched, unilatent, NoiseSource(torch.Generator().manual_seed(1)))
    idx = geo.slot_indices()
    eps_all = []
    for s in range(geo.queue_length):
        a = float(sched.alphas[int(idx[s])])
        frame = 0 if s < geo.lead else geo.base_frame_for_step(s - geo.lead, unilatent)
        eps = (queue[:, :, s] - a**0.5 * (frame + 1)) / (1 - a) ** 0.5
        assert abs(eps.mean().item()) < 0.05, s
        assert abs(eps.std().item() - 1.0) < 0.05, s
        eps_all.append(eps.flatten())
    # Fresh noise for every slot (no two slots share their noise).
    corr = torch.corrcoef(torch.stack(eps_all))
    off_diagonal = corr - torch.eye(len(eps_all), dtype=corr.dtype)
    assert off_diagonal.abs().max() < 0.1


def test_initial_queue_is_reproducible() -> None:
    geo = FifoGeometry(4, 1)
    sched = schedule(geo.steps)
    base = torch.randn(1, 4, 4, 8, 8)
    a = initial_queue(base, geo, sched, False, NoiseSource(torch.Generator().manual_seed(5)))
    b = initial_queue(base, geo, sched, False, NoiseSource(torch.Generator().manual_seed(5)))
    c = initial_queue(base, geo, sched, False, NoiseSource(torch.Generator().manual_seed(6)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_shift_queue_drops_the_head_and_appends_noise() -> None:
    queue = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1, 1).expand(1, 4, 6, 32, 32).clone()
    shifted = shift_queue(queue, NoiseSource(torch.Generator().manual_seed(0)))
    assert shifted.shape == queue.shape
    assert torch.equal(shifted[:, :, :-1], queue[:, :, 1:])
    tail = shifted[:, :, -1]
    assert abs(tail.mean().item()) < 0.1
    assert abs(tail.std().item() - 1.0) < 0.1
    again = shift_queue(queue, NoiseSource(torch.Generator().manual_seed(0)))
    assert torch.equal(shifted, again)


def test_window_noise() -> None:
    geo = FifoGeometry(4, 2)
    queue = torch.zeros(1, 4, geo.queue_length, 8, 8)
    source = NoiseSource(torch.Generator().manual_seed(0))
    assert iteration_noise(source, geo, queue, schedule(geo.steps, eta=0.0)) is None
    noise = iteration_noise(source, geo, queue, schedule(geo.steps, eta=1.0))
    assert noise.shape == (len(geo.windows()), 4, 4, 8, 8)


# ----------------------------------------------------------------------------- one step
def _fake_denoiser(calls: list):
    """A deterministic stand-in for the model denoiser that depends on x, the timesteps and the
    context (k = ``context_branches`` contexts per sample, branch-major, as ModelDenoiser takes them)."""

    def denoise(
        x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_branches: int = 1
    ) -> torch.Tensor:
        calls.append((x.shape, t.clone(), context.shape))
        branches = context_branches
        assert context.shape[0] == branches * x.shape[0]
        x, t = x.repeat(branches, 1, 1, 1, 1), t.repeat(branches, *([1] * (t.dim() - 1)))
        tt = t.to(x.dtype) / 1000.0
        tt = tt.reshape(x.shape[0], 1, -1, 1, 1) if t.dim() == 2 else tt.reshape(-1, 1, 1, 1, 1)
        ctx = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)
        return 0.3 * x + tt + ctx

    return denoise


@pytest.mark.parametrize(("f", "n", "la"), [(4, 2, True), (4, 2, False), (2, 3, True)])
def test_fifo_step_batched_equals_sequential(f: int, n: int, la: bool) -> None:
    geo = FifoGeometry(f, n, la)
    sched = schedule(geo.steps, eta=1.0)
    gen = torch.Generator().manual_seed(0)
    queue = torch.randn(1, 4, geo.queue_length, 4, 4, generator=gen)
    n_win = len(geo.windows())
    contexts = torch.randn(n_win, 5, 3, generator=gen)
    uncond = torch.randn(1, 5, 3, generator=gen)
    noise = iteration_noise(NoiseSource(gen), geo, queue, sched)
    results = {}
    for name, (batched, window_batch) in {
        "batched": (True, None),
        "sequential": (False, 1),
        "chunks": (True, 2),
    }.items():
        calls: list = []
        guided = CFGDenoiser(_fake_denoiser(calls), 7.5, batch_branches=batched)
        results[name] = fifo_step(guided, queue, geo, sched, contexts, uncond, noise, window_batch)
        if name == "batched":
            assert len(calls) == 1
        if name == "sequential":
            assert len(calls) == 2 * n_win  # one window, one guidance branch per call
    torch.testing.assert_close(results["batched"], results["sequential"])
    torch.testing.assert_close(results["batched"], results["chunks"])
    out = results["batched"]
    # The lead slots are only read. A DDIM step at index 0 (ᾱ_prev = ᾱ) leaves its slot as it
    # is; every noisier slot is updated.
    assert torch.equal(out[:, :, : geo.lead], queue[:, :, : geo.lead])
    torch.testing.assert_close(out[:, :, geo.lead], queue[:, :, geo.lead])
    changed = ~torch.isclose(out, queue).all(dim=4).all(dim=3).all(dim=1)[0]
    assert changed[geo.lead + 1 :].all()


def test_fifo_step_gives_each_frame_its_own_timestep() -> None:
    geo = FifoGeometry(4, 2, lookahead=True)
    sched = schedule(geo.steps)
    queue = torch.randn(1, 4, geo.queue_length, 4, 4)
    calls: list = []
    windows = geo.windows()
    guided = CFGDenoiser(_fake_denoiser(calls), 1.0, batch_branches=False)
    fifo_step(guided, queue, geo, sched, torch.zeros(len(windows), 5, 3), None, window_batch=1)
    ts = sched.timesteps[torch.from_numpy(geo.slot_indices())]
    assert len(calls) == len(windows)
    for (shape, t, _), w in zip(calls, windows):
        assert shape == (1, 4, 4, 4, 4)
        assert torch.equal(t[0], ts[w.start : w.end])


def test_fifo_step_matches_a_hand_written_ddim_update() -> None:
    """eta = 0, no guidance: slot s of window w moves from index i to i − 1 by the DDIM formula."""
    geo = FifoGeometry(2, 2, lookahead=False)
    sched = schedule(geo.steps)
    queue = torch.randn(1, 1, geo.queue_length, 1, 1, dtype=torch.float64)

    def denoise(x, t, c, context_branches=1):
        return 0.5 * x

    out = fifo_step(CFGDenoiser(denoise, 1.0), queue, geo, sched, torch.zeros(2, 1, 1), None)
    for s in range(geo.queue_length):
        i = int(geo.slot_indices()[s])
        a, a_prev = float(sched.alphas[i]), float(sched.alphas_prev[i])
        x = float(queue[0, 0, s])
        eps = 0.5 * x
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        expected = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        assert float(out[0, 0, s]) == pytest.approx(expected, rel=1e-6)
