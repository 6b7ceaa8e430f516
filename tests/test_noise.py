"""fifo/noise.py: the noise source, its two draw orders, strict replay and its state."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fifo.geometry import FifoGeometry
from fifo.noise import NoiseOrder, NoiseSource, NoiseStreamError, RecordedStream
from fifo.schedule import DDIMSchedule
from fifo.step import initial_queue, iteration_noise, shift_queue
from lvdm.models.utils_diffusion import linear_betas, schedule_buffers
from tools.reference import fifo_run_noise


def schedule(steps: int, eta: float) -> DDIMSchedule:
    ac = torch.from_numpy(schedule_buffers(linear_betas(1000, 0.00085, 0.012))["alphas_cumprod"])
    return DDIMSchedule.create(ac, steps, eta)


class Recording:
    """A generator stream that keeps every draw's shape and numbers."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[tuple[tuple[int, ...], torch.Tensor]] = []

    def randn(self, shape, dtype=torch.float32):
        out = torch.randn(shape, generator=self.generator, dtype=dtype)
        self.draws.append((tuple(shape), out.flatten()))
        return out

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def _draw_a_run(source: NoiseSource, geo: FifoGeometry, sched: DDIMSchedule, iterations: int) -> None:
    """Every draw a FIFO run makes, in order (the U-Net draws nothing, so it is left out)."""
    queue = initial_queue(torch.zeros(1, 4, geo.video_length, 16, 16), geo, sched, False, source)
    for _ in range(iterations):
        iteration_noise(source, geo, queue, sched)
        queue = shift_queue(queue, source)


def test_published_order_draws_what_the_published_loop_draws(reference_dir) -> None:
    """A generator seeded like the recording, drawn in the published order, yields the recorded
    stream draw for draw, with the recorded shapes (queue set-up per slot, one draw per frame of
    every window from the noisiest, the tail as (1, c, h, w))."""
    folder = reference_dir / "tiny_t2v"
    spec = json.loads((folder / "meta.json").read_text())["fifo_run"]
    data = load_file(folder / "fifo_run.safetensors")
    for run in spec["runs"]:
        geo = FifoGeometry(spec["video_length"], spec["num_partitions"], run["lookahead"])
        recording = Recording(run["noise_seed"])
        _draw_a_run(
            NoiseSource(recording, NoiseOrder.PUBLISHED), geo, schedule(geo.steps, 1.0), spec["iterations"]
        )
        assert [list(shape) for shape, _ in recording.draws] == [d[3] for d in run["draws"]], run["name"]
        stream = torch.cat([numbers for _, numbers in recording.draws])
        assert torch.equal(stream, fifo_run_noise(data, run)), run["name"]


def test_published_window_noise_layout() -> None:
    """noise[j, :, k] is the k-th draw of the j-th window; eta = 0 still draws (times zero)."""
    source = NoiseSource(torch.Generator().manual_seed(3), NoiseOrder.PUBLISHED)
    noise = source.window_noise(3, (2, 4, 5, 5), torch.float32, needed=False)
    replay = torch.Generator().manual_seed(3)
    for j in range(3):
        for k in range(4):
            assert torch.equal(noise[j, :, k], torch.randn((1, 2, 1, 5, 5), generator=replay)[0, :, 0])
    default = NoiseSource(torch.Generator().manual_seed(3))
    assert default.window_noise(3, (2, 4, 5, 5), torch.float32, needed=False) is None
    assert default.step_noise((1, 2), torch.float32, needed=False) is None
    assert source.step_noise((1, 2), torch.float32, needed=False) is not None


@pytest.mark.parametrize("order", list(NoiseOrder))
def test_both_orders_give_the_same_number_of_draws_per_element(order: NoiseOrder) -> None:
    """Same stream, same amount of numbers for a run with eta > 0: only where they land differs."""
    geo = FifoGeometry(4, 2)
    recording = Recording(0)
    _draw_a_run(NoiseSource(recording, order), geo, schedule(geo.steps, 1.0), 3)
    total = sum(numbers.numel() for _, numbers in recording.draws)
    per_iteration = len(geo.windows()) * geo.video_length + 1
    assert total == (geo.queue_length + 3 * per_iteration) * 4 * 16 * 16


def test_recorded_stream_is_strict() -> None:
    numbers = torch.arange(10, dtype=torch.float32)
    stream = RecordedStream(numbers, shapes=[(2, 2), (3,)])
    assert stream.randn((2, 2)).tolist() == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(NoiseStreamError, match=r"asked for shape \(2,\).*drew \(3,\)"):
        stream.randn((2,))
    assert stream.randn((3,)).tolist() == [4.0, 5.0, 6.0]
    with pytest.raises(NoiseStreamError, match="not fully consumed"):
        stream.check_consumed()  # three numbers left
    with pytest.raises(NoiseStreamError, match="has only 2"):
        stream.randn((1,))
    loose = RecordedStream(numbers)
    with pytest.raises(NoiseStreamError, match="numbers; 10 are left"):
        loose.randn((11,))
    loose.randn((10,))
    loose.check_consumed()


@pytest.mark.parametrize("order", list(NoiseOrder))
def test_state_round_trip_continues_the_stream(order: NoiseOrder) -> None:
    source = NoiseSource.seeded(7, "cpu", order)
    source.randn((5,))
    state = source.state_dict()
    ahead = source.tail(torch.zeros(1, 2, 1, 3, 3))
    source.load_state_dict(state)
    assert torch.equal(source.tail(torch.zeros(1, 2, 1, 3, 3)), ahead)
    fingerprint = source.fingerprint()
    source.randn((1,))
    assert source.fingerprint() != fingerprint
