"""fifo/tricks/anchors.py: MIGA's long-range frame guidance (the bank, the anchored windows, the hook)."""

from __future__ import annotations

import pytest
import torch

from fifo.conditioning import VideoConditioning
from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.hooks import StepHook
from fifo.miga_options import AnchorOptions
from fifo.noise import NoiseSource
from fifo.option_errors import ModeError
from fifo.options import TrickArguments, parse_mode
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from fifo.tricks.anchors import AnchoredWindows, LongRangeGuidance, bank_add, bank_anchors, new_bank
from fifo.tricks.install import install_tricks
from lvdm.build import load_model
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def frame(value: float) -> torch.Tensor:
    return torch.full((1, 4, 1, 2, 2), float(value))


def test_the_bank_spreads_its_frames_evenly_over_the_video_in_bounded_memory() -> None:
    bank, capacity = new_bank(), 8
    sizes = []
    for i in range(1000):
        bank_add(bank, frame(i), capacity)
        sizes.append(bank["frames"].shape[0])
    assert max(sizes) <= capacity  # memory does not grow with the length
    kept = bank["frames"][:, 0, 0, 0].tolist()
    stride = bank["stride"]
    assert kept == [float(i) for i in range(0, 1000, stride)]  # evenly spaced from the first frame
    assert kept[-1] >= 1000 - stride  # up to the newest stride
    anchors = bank_anchors(bank, 4)
    assert anchors.shape == (1, 4, 4, 2, 2)
    values = anchors[0, 0, :, 0, 0].tolist()
    assert (
        values == sorted(values) and values[0] == 0.0 and values[-1] == kept[-1]
    )  # oldest first, whole span


def test_no_anchors_until_the_video_has_enough_frames() -> None:
    bank = new_bank()
    bank_add(bank, frame(0), 8)
    assert bank_anchors(bank, 2) is None
    bank_add(bank, frame(1), 8)
    assert bank_anchors(bank, 2)[0, 0, :, 0, 0].tolist() == [0.0, 1.0]


def test_anchored_windows_keep_the_frame_count_with_clean_anchors_in_front() -> None:
    seen = {}

    def denoise(x, t, cond, uncond):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    wrapped = AnchoredWindows(denoise)
    x = torch.randn(3, 4, 8, 2, 2)
    t = torch.arange(8).repeat(3, 1) * 10 + 5
    wrapped(x, t, None, None)
    assert seen["x"] is x  # no anchors yet: the windows as they are
    wrapped.anchors = torch.randn(1, 4, 2, 2, 2)
    out = wrapped(x, t, None, None)
    assert out.shape == x.shape and seen["x"].shape == x.shape  # the model's frame count
    for row in range(3):
        assert torch.equal(seen["x"][row, :, :2], wrapped.anchors[0])
        assert torch.equal(seen["x"][row, :, 2:], x[row, :, 2:])
    assert seen["t"][:, :2].eq(0).all() and torch.equal(seen["t"][:, 2:], t[:, 2:])


def test_anchor_count_default_and_limits() -> None:
    geometry = FifoGeometry(16, 4, lookahead=True)
    assert AnchorOptions().count(geometry) == 4
    assert AnchorOptions(8).count(geometry) == 8
    with pytest.raises(ModeError, match="`anchor_frames` \\(9\\) exceeds the 8 frames"):
        AnchorOptions(9).count(geometry)
    with pytest.raises(ModeError, match="without lookahead"):
        AnchorOptions().count(FifoGeometry(16, 4, lookahead=False))
    with pytest.raises(ModeError, match="`anchor_frames` must be ≥ 1"):
        parse_mode("t2v_anchors", tricks=TrickArguments(anchor_frames=0))
    mode = parse_mode("t2v_anchors", tricks=TrickArguments(anchor_frames=2))
    assert mode.name == "t2v_anchors" and mode.anchors == AnchorOptions(2)
    assert "anc2" in mode.trick_tokens() and mode.trick_parameters()["anchors"] == {"frames": 2}


class Calls(StepHook):
    """Records what every U-Net call of the windows received."""

    name = "calls"

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def wrap_windows(self, denoise):
        def recorded(x, t, cond, uncond):
            self.calls.append((x.clone(), t.clone()))
            return denoise(x, t, cond, uncond)

        return recorded


class Dequeued(StepHook):
    name = "dequeued"

    def __init__(self) -> None:
        self.latents: list[torch.Tensor] = []

    def after_dequeue(self, sampler, state, latent) -> None:
        self.latents.append(latent.clone())


@torch.no_grad()
def test_windows_see_clean_output_frames_in_front_on_the_tiny_model() -> None:
    model = load_model(REPO / "configs" / "tiny_t2v.yaml", None, random_init=True, device="cpu", seed=5)
    mode = parse_mode("t2v_anchors", tricks=TrickArguments(anchor_frames=2))
    geometry = FifoGeometry(4, 1, lookahead=True)  # 2 windows of 4 frames, 4 steps, no warm-up
    schedule = DDIMSchedule.from_model(model, geometry.steps, eta=1.0)
    denoiser = ModelDenoiser(model, fps=8)
    tricks = install_tricks(model, mode, schedule, geometry, denoiser)
    hook = next(h for h in tricks.hooks if isinstance(h, LongRangeGuidance))
    calls, dequeued = Calls(), Dequeued()
    hooks = (*tricks.hooks, dequeued)
    uncond = model.get_learned_conditioning([""])
    sampler = FifoSampler(
        model, mode, CFGDenoiser(denoiser, 12.0), schedule, geometry, uncond, None, hooks=hooks
    )
    sampler.denoise = hook.wrap_windows(calls.wrap_windows(sampler.denoise))  # record what the U-Net sees
    conditioning = VideoConditioning(model.get_learned_conditioning(["a red fox"]), (), 5)
    base = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    state = sampler.initial_state(base, NoiseSource.seeded(2, "cpu"))
    for _ in range(5):
        sampler.step(state, conditioning)
    assert len(calls.calls) == 5
    plain_t = calls.calls[0][1]  # the windows' timesteps without anchors (the same every iteration)
    for it, (x, t) in enumerate(calls.calls):
        assert x.shape == (2, 4, 4, 8, 8)  # every window holds the model's 4 frames
        if it < 2:  # fewer than 2 output frames so far: plain windows
            assert torch.equal(t, plain_t)
            continue
        assert t[:, :2].eq(0).all() and torch.equal(t[:, 2:], plain_t[:, 2:])
        # The anchors are clean output frames: the oldest and the newest kept by then.
        expected = torch.cat([dequeued.latents[0], dequeued.latents[it - 1]], dim=2)[0]
        for row in range(2):
            assert torch.equal(x[row, :, :2], expected)
    bank = state.hook_state["anchors"]
    assert bank["seen"] == 5 and bank["frames"].shape[0] == 5  # capacity 4·2 not reached yet
