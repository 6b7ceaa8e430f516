"""fifo/tricks/reflect.py: MIGA's self-reflection, on constructed queues and a stand-in denoiser.

The stand-in predicts ε = 0, so every x̂₀ is its latent scaled per frame and the consistency score
is the cosine similarity of the queue's own latents: a drop can be built by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fifo.geometry import FifoGeometry
from fifo.miga_cost import miga_costs
from fifo.miga_options import ReflectOptions
from fifo.noise import NoiseSource
from fifo.option_errors import ModeError
from fifo.options import TrickArguments, parse_mode
from fifo.schedule import DDIMSchedule
from fifo.state import FifoState
from fifo.tricks.reflect import SelfReflection, consistency_score, drops
from fifo.zigzag import ZigzagGeometry

GEOMETRY = FifoGeometry(4, 2, lookahead=True)  # 10 slots, 8 steps; depth 1: the tail slot is evaluated
SCHEDULE = DDIMSchedule.create(
    torch.linspace(0.999, 0.01, 1000, dtype=torch.float64), GEOMETRY.steps, eta=1.0
)
SAMPLER = SimpleNamespace(uncond=None)
CONTEXTS = torch.zeros(len(GEOMETRY.windows()), 3, 5)


def zero_eps(x, t, cond, uncond):
    assert x.shape[2] == GEOMETRY.video_length and t.shape == x.shape[:1] + x.shape[2:3]
    return torch.zeros_like(x)


def hook(threshold: float = 0.05, candidates: int = 3) -> SelfReflection:
    reflect = SelfReflection(ReflectOptions(threshold, candidates), SCHEDULE, GEOMETRY)
    reflect.wrap_windows(zero_eps)
    return reflect


def steady_queue(seed: int = 0) -> torch.Tensor:
    """Every frame the same latent (plus a little noise): a steady video."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 4, 1, 4, 4, generator=g)
    return v.repeat(1, 1, GEOMETRY.queue_length, 1, 1) + 0.01 * torch.randn(
        1, 4, GEOMETRY.queue_length, 4, 4, generator=g
    )


def test_the_score_is_the_mean_cosine_similarity_with_the_reference_frames() -> None:
    v = torch.randn(4, 4, 4)
    x0 = torch.stack([v, v, -v, 2 * v], dim=1)[None]  # references v, v, −v; evaluated 2v
    assert torch.allclose(consistency_score(x0), torch.tensor([1 / 3]), atol=1e-6)
    assert not drops([], -1.0, 0.05)  # the first frame has nothing to drop from
    assert drops([0.9, 0.8], 0.7, 0.05) and not drops([0.9, 0.8], 0.82, 0.05)


def test_a_steady_video_is_never_redrawn() -> None:
    reflect, state = hook(), FifoState(steady_queue(), NoiseSource.seeded(1, "cpu"))
    for seed in range(6):
        queue = steady_queue(seed)
        state.queue = queue
        assert torch.equal(reflect.after_windows(SAMPLER, state, queue, CONTEXTS), queue)
    extras = state.hook_state["reflect"]
    assert extras["evaluated"] == 6 and extras["fired"] == 0 and len(extras["scores"]) == 4


def test_a_drop_fires_and_the_most_consistent_candidate_replaces_the_frame() -> None:
    reflect, state = hook(candidates=5), FifoState(steady_queue(), NoiseSource.seeded(1, "cpu"))
    queue = steady_queue()
    reflect.after_windows(SAMPLER, state, queue, CONTEXTS)  # a steady first score, ~1
    broken = queue.clone()
    broken[:, :, reflect.slot] = -broken[:, :, reflect.slot]  # the tail frame turns against the others
    out = reflect.after_windows(SAMPLER, state, broken, CONTEXTS)
    extras = state.hook_state["reflect"]
    assert extras["fired"] == 1 and extras["replaced"] == 1
    assert torch.equal(out[:, :, : reflect.slot], broken[:, :, : reflect.slot])  # only that frame changes
    window = out[:, :, reflect.start : reflect.slot + 1]
    chosen = float(consistency_score(window))
    assert chosen == pytest.approx(float(reflect.last_scores.max()), abs=1e-5)  # the most consistent
    assert chosen > float(consistency_score(broken[:, :, reflect.start : reflect.slot + 1]))
    assert extras["scores"][-1] == pytest.approx(chosen, abs=1e-5)


def test_reflection_is_reproducible_from_the_noise_state() -> None:
    def once() -> torch.Tensor:
        reflect, state = hook(threshold=0.0), FifoState(steady_queue(), NoiseSource.seeded(7, "cpu"))
        reflect.after_windows(SAMPLER, state, steady_queue(), CONTEXTS)
        broken = steady_queue(3)
        broken[:, :, reflect.slot] *= -1
        return reflect.after_windows(SAMPLER, state, broken, CONTEXTS)

    first, second = once(), once()
    assert torch.equal(first, second) and not torch.equal(first, steady_queue(3))


def test_options_and_refusals() -> None:
    mode = parse_mode("t2v_reflect", tricks=TrickArguments(reflect_threshold=0.1, reflect_candidates=2))
    assert mode.name == "t2v_reflect" and mode.reflect == ReflectOptions(0.1, 2)
    assert {"rth0.1", "rcand2"} <= set(mode.trick_tokens())
    with pytest.raises(ModeError, match="`reflect_candidates` must be ≥ 1"):
        parse_mode("t2v_reflect", tricks=TrickArguments(reflect_candidates=0))
    with pytest.raises(ModeError, match="`reflect_threshold` must lie in"):
        parse_mode("t2v_reflect", tricks=TrickArguments(reflect_threshold=float("nan")))
    with pytest.raises(ModeError, match="keep lookahead denoising on"):
        ReflectOptions().check(FifoGeometry(4, 1, lookahead=False))


def test_under_zigzag_a_group_is_evaluated_when_it_reaches_the_depth_and_redrawn_on_a_drop() -> None:
    """In the zigzag queue (f = 4, L = 2) the group of 2 latents that has just had its first step
    is evaluated, every second iteration; a drop re-draws the whole group, nothing else."""
    zigzag = ZigzagGeometry(4, 2, lookahead=True, zigzag_length=2)  # 13 slots, 8 steps
    reflect = SelfReflection(ReflectOptions(0.05, 5), SCHEDULE, zigzag)
    reflect.wrap_windows(zero_eps)
    target = reflect.target(zigzag.at(0))
    assert (target.first, target.end, target.start) == (9, 11, 7) and reflect.target(zigzag.at(1)) is None
    assert target.levels.tolist() == [4, 4, 6, 6]  # two groups, L levels apart; the evaluated one at S − 2
    contexts = torch.zeros(len(zigzag.windows()), 3, 5)

    def steady(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(1, 4, 1, 4, 4, generator=g)
        return v.repeat(1, 1, zigzag.queue_length, 1, 1) + 0.01 * torch.randn(
            1, 4, zigzag.queue_length, 4, 4, generator=g
        )

    state = FifoState(steady(0), NoiseSource.seeded(1, "cpu"))
    for it in range(2):  # a steady score at iteration 0; nothing reaches the depth at iteration 1
        state.iteration = it
        assert torch.equal(reflect.after_windows(SAMPLER, state, steady(0), contexts), steady(0))
    assert state.hook_state["reflect"]["evaluated"] == 1
    broken = steady(0)
    broken[:, :, 9:11] = -broken[:, :, 9:11]  # the group turns against the frames before it
    state.iteration = 2
    out = reflect.after_windows(SAMPLER, state, broken, contexts)
    extras = state.hook_state["reflect"]
    assert extras["evaluated"] == 2 and extras["fired"] == 1 and extras["replaced"] == 1
    assert torch.equal(out[:, :, :9], broken[:, :, :9]) and torch.equal(out[:, :, 11:], broken[:, :, 11:])
    assert not torch.equal(out[:, :, 9:11], broken[:, :, 9:11])
    chosen = float(consistency_score(out[:, :, 7:11], 2))
    assert chosen == pytest.approx(float(reflect.last_scores.max()), abs=1e-5)  # the most consistent
    assert chosen > float(consistency_score(broken[:, :, 7:11], 2))
    cost = miga_costs(
        parse_mode("t2v_zigzag_reflect", tricks=TrickArguments(zigzag_length=4)),
        ZigzagGeometry(16, 4, True, 4),
        1,
    )
    assert cost["reflect"]["extra_unet_frames_per_output_frame"] == 4  # one window of 16 every 4 iterations
