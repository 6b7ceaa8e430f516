"""MIGA's two-stage training-inference alignment (``zigzag``): the queue's layout (fifo/zigzag.py)
and the FIFO loop over it, on a toy denoiser (no model): levels per window, the unified stage, one
frame per iteration, the schedule's steps per frame, constant memory over a long run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fifo.conditioning import VideoConditioning
from fifo.geometry import FifoGeometry
from fifo.noise import NoiseSource
from fifo.options import ModeOptions, TrickArguments, parse_mode
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from fifo.step import fifo_step
from fifo.zigzag import DEFAULT_ZIGZAG_LENGTH, ZigzagGeometry
from infra.errors import SettingsError, UserError

LAYOUTS = [(16, 4, True, 4), (16, 4, False, 4), (16, 3, True, 2), (8, 2, True, 1), (4, 2, False, 2)]


def trace(geometry: ZigzagGeometry, iterations: int) -> tuple[dict[int, int], list[int]]:
    """Steps each latent k takes, and the latent dequeued at each iteration."""
    steps: dict[int, int] = {}
    dequeued = []
    for it in range(iterations):
        layout = geometry.at(it)
        k = layout.latents() + it - layout.phase
        stepping = layout.stepping()
        written = np.zeros(layout.queue_length, dtype=int)
        for w in layout.windows():
            assert 0 <= w.start < w.write_start < w.end <= layout.queue_length or (
                w.start == w.write_start and not geometry.lookahead
            )
            written[w.write_start : w.end] += 1
        assert written.max() == 1 and (written[stepping] == 1).all()  # every step in exactly one window
        for latent in k[stepping]:
            steps[int(latent)] = steps.get(int(latent), 0) + 1
        out = layout.output_slot
        assert layout.levels()[out] == -1 or (layout.levels()[out] == 0 and stepping[out])  # clean after it
        dequeued.append(int(k[out]))
    return steps, dequeued


@pytest.mark.parametrize(("f", "n", "lookahead", "length"), LAYOUTS)
def test_the_zigzag_layout(f: int, n: int, lookahead: bool, length: int) -> None:
    geometry = ZigzagGeometry(f, n, lookahead, length)
    s, g, u = geometry.steps, geometry.group, geometry.unified_level
    assert (s, u) == (f * n, f - 1) and g == (f // 2 if lookahead else f)
    for it in range(2 * g):
        layout = geometry.at(it)
        levels, stepping = layout.levels(), layout.stepping()
        for w in layout.windows():
            lv, st = levels[w.start : w.end], stepping[w.start : w.end]
            if (lv > u).all() and st.all():  # a stage-1 window: f/L levels, not f
                assert len(set(lv.tolist())) == math.ceil(f / length)
            block, moving = levels[w.write_start : w.end], stepping[w.write_start : w.end]
            if moving.any() and (block[moving] <= u).all():  # stage 2: the block steps at one level
                assert moving.all() and len(set(block.tolist())) == 1
        # stage 1 reaches u in groups of L; stage 2 leaves it in blocks of g, the schedule's last f steps
        stage2 = levels[stepping & (levels <= u)]
        assert len(stage2) % g == 0 and len(set(stage2.tolist())) == len(stage2) // g
        assert len(levels) == geometry.queue_length == geometry.lead + s + 2 * g - 1  # constant
    steps, dequeued = trace(geometry, 12 * g + 3 * s)
    assert dequeued == list(range(dequeued[0], dequeued[0] + len(dequeued)))  # one frame per iteration
    assert dequeued[geometry.discarded_frames()] == s - f  # the base clip's first frame, as in FIFO
    fresh = [k for k in steps if s + 2 * g <= k <= dequeued[-1]]
    assert fresh and all(steps[k] == s for k in fresh)  # every new latent: the schedule's f·n steps


def test_a_zigzag_length_of_one_group_per_window_and_its_refusals() -> None:
    assert DEFAULT_ZIGZAG_LENGTH == 4
    assert len(ZigzagGeometry(16, 4, True).windows()) == len(FifoGeometry(16, 4, True).windows()) + 1
    with pytest.raises(SettingsError, match="must divide the 8 frames a window writes back"):
        ZigzagGeometry(16, 4, True, 3)
    with pytest.raises(SettingsError, match="use `num_partitions` 2 or more"):
        ZigzagGeometry(16, 1, True, 4)
    with pytest.raises(UserError, match="zigzag and tailcoh do not combine: .*waits there as pure noise"):
        parse_mode("t2v_zigzag_tailcoh")
    assert parse_mode("t2v_zigzag_reflect").reflect is not None  # combined (tests/test_miga_reflect.py)
    mode = parse_mode("i2v_TTqcache_unilatent_zigzag_anchors", tricks=TrickArguments(zigzag_length=2))
    assert mode.name == "i2v_TTqcache_attn1_unilatent_zigzag_anchors" and mode.zigzag.length == 2
    assert mode.trick_tokens() == ["zz2"] and mode.trick_parameters()["zigzag"] == {"length": 2}
    assert "zigzag" not in parse_mode("t2v_anchors").trick_parameters()  # older states' fingerprints


def test_the_loop_over_a_zigzag_queue_keeps_waiting_latents_and_its_memory() -> None:
    """A long run on a toy denoiser: waiting latents are left as they are, every iteration
    dequeues one latent, and the queue and the state keep their size."""
    geometry = ZigzagGeometry(4, 2, True, 2)
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    schedule = DDIMSchedule.create(alphas, geometry.steps, eta=0.5)

    def denoise(x, t, cond, uncond):  # a toy ε that depends on the input and the timestep
        return 0.1 * x + t[:, None, :, None, None].to(x.dtype) / 1000

    model = SimpleNamespace(decode_first_stage_2DAE=lambda z: z)
    sampler = FifoSampler(model, ModeOptions(), denoise, schedule, geometry, None, None)
    noise = NoiseSource.seeded(0, "cpu")
    state = sampler.initial_state(torch.randn(1, 2, 4, 3, 3), noise)
    conditioning = VideoConditioning(torch.zeros(1, 77, 8), (), 10**6)
    shapes, frames = set(), 0
    for it in range(300):
        layout = geometry.at(it)
        before = state.queue.clone()
        after = fifo_step(
            denoise,
            before,
            layout,
            schedule,
            conditioning.window_contexts(layout, it, None),
            None,
            noise.window_noise(len(layout.windows()), (2, 4, 3, 3), before.dtype, needed=True),
        )
        waiting = torch.from_numpy(~layout.stepping())
        assert torch.equal(after[:, :, waiting], before[:, :, waiting])
        assert not torch.isclose(after[:, :, ~waiting], before[:, :, ~waiting]).all()
        out = sampler.step(state, conditioning)
        frames += out.frame is not None
        shapes.add(tuple(state.queue.shape))
        assert torch.isfinite(state.queue).all() and state.hook_state == {}
    assert shapes == {(1, 2, geometry.queue_length, 3, 3)}  # constant memory
    assert frames == 300 - geometry.discarded_frames() and state.frames_emitted == frames
