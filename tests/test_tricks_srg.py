"""fifo/tricks/srg.py: self-recurrent guidance on the tiny model (CPU, one thread)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fifo.conditioning import VideoConditioning
from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.noise import NoiseSource
from fifo.options import TrickArguments, parse_mode
from fifo.plan import window_memory
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from fifo.state import FifoState
from fifo.tricks.install import Tricks, install_tricks
from fifo.tricks.srg import SelfRecurrentGuidance, subject_distance
from lvdm.build import load_model
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a person swimming in the ocean"


@pytest.fixture(scope="module")
def model():
    model = load_model(REPO / "configs" / "tiny_t2v.yaml", None, random_init=True, device="cpu", seed=5)
    yield model
    model.unet.set_attn_processor("sdpa")


@dataclass
class Run:
    sampler: FifoSampler
    hook: SelfRecurrentGuidance
    tricks: Tricks
    conditioning: VideoConditioning
    state: FifoState


def make_run(
    model,
    frames: int = 4,
    partitions: int = 1,
    weight: float = 1.0,
    mode: str = "t2v_srg",
    windows: int | None = None,
) -> Run:
    model.unet.set_attn_processor("sdpa")
    tricks = TrickArguments(subject="a person", srg_weight=weight, srg_windows=windows)
    options = parse_mode(mode, tricks=tricks)
    geometry = FifoGeometry(frames, partitions, lookahead=True)
    schedule = DDIMSchedule.from_model(model, geometry.steps, eta=1.0)
    denoiser = ModelDenoiser(model, fps=8)
    tricks = install_tricks(model, options, schedule, geometry, denoiser)
    uncond = model.get_learned_conditioning([""])
    sampler = FifoSampler(
        model, options, CFGDenoiser(denoiser, 12.0), schedule, geometry, uncond, None, hooks=tricks.hooks
    )
    texts = model.get_learned_conditioning([PROMPT])
    conditioning = VideoConditioning(texts, (), 4)
    base = torch.randn(1, 4, frames, 8, 8, generator=torch.Generator().manual_seed(1))
    state = sampler.initial_state(base, NoiseSource.seeded(2, "cpu"))
    hook = next(h for h in tricks.hooks if isinstance(h, SelfRecurrentGuidance))
    return Run(sampler, hook, tricks, conditioning, state)


def windows_step(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration's contexts, and the queue after its windows (before the hooks)."""
    from fifo.step import fifo_step, iteration_noise

    geo, state = run.sampler.geometry, run.state
    contexts = run.conditioning.window_contexts(geo, state.iteration, None)
    noise = iteration_noise(state.noise, geo, state.queue, run.sampler.schedule)
    queue = fifo_step(
        run.sampler.denoise, state.queue, geo, run.sampler.schedule, contexts, run.sampler.uncond, noise
    )
    return contexts, queue


def front_features(run: Run, contexts: torch.Tensor) -> tuple[dict, torch.Tensor]:
    index, window = run.hook.guided[0]
    features, present, grad = run.hook.guidance_gradient(
        run.state.queue, window, contexts[index : index + 1], {}, guide=False
    )
    assert grad is None
    return features, present


@torch.no_grad()
def test_no_guidance_when_the_front_frames_features_equal_the_bank(model) -> None:
    # f = 2 with lookahead, the front window alone guided: one frame, so one bank vector can equal it.
    run = make_run(model, frames=2, partitions=2, windows=1)
    with run.tricks.for_video(model, [PROMPT], run.conditioning.texts):
        contexts, queue = windows_step(run)
        features, present = front_features(run, contexts)
        _, window = run.hook.guided[0]
        guided = window.write_start - window.start
        assert bool(present[guided]), "the tiny model's subject mask is empty"
        bank = {site: f[guided].clone() for site, f in features.items()}
        assert float(subject_distance(features, bank, torch.arange(len(present)) == guided)) == 0.0
        run.hook.state(run.state)["bank"] = bank
        assert torch.equal(run.hook.after_windows(run.sampler, run.state, queue, contexts), queue)
        # Any other bank pulls the frame.
        run.hook.state(run.state)["bank"] = {site: f + 1.0 for site, f in bank.items()}
        assert not torch.equal(run.hook.after_windows(run.sampler, run.state, queue, contexts), queue)


@torch.no_grad()
def test_the_gradient_reaches_only_the_front_windows_written_frames(model) -> None:
    run = make_run(model, frames=4, partitions=1)
    with run.tricks.for_video(model, [PROMPT], run.conditioning.texts):
        contexts, queue = windows_step(run)
        features, _ = front_features(run, contexts)
        run.hook.state(run.state)["bank"] = {site: torch.zeros_like(f[0]) for site, f in features.items()}
        guided = run.hook.after_windows(run.sampler, run.state, queue, contexts)
    _, window = run.hook.guided[0]
    changed = (guided - queue).abs().flatten(3).amax(dim=(0, 1, 3)) > 0  # per slot
    expected = torch.zeros(queue.shape[2], dtype=torch.bool)
    expected[window.write_start : window.end] = True
    assert torch.equal(changed, expected), changed
    assert not guided.requires_grad and guided.grad_fn is None


def test_the_bank_is_a_moving_average_of_the_dequeued_frames_in_plain_state(model) -> None:
    run = make_run(model)
    extras = run.hook.state(run.state)
    first, second = {"site": torch.ones(3)}, {"site": torch.full((3,), 3.0)}
    extras["pending"] = first
    run.hook.after_dequeue(run.sampler, run.state, torch.zeros(1))
    assert torch.equal(extras["bank"]["site"], torch.ones(3)) and extras["pending"] is None
    extras["pending"] = second
    run.hook.after_dequeue(run.sampler, run.state, torch.zeros(1))
    m = run.hook.options.momentum
    torch.testing.assert_close(extras["bank"]["site"], m * torch.ones(3) + (1 - m) * torch.full((3,), 3.0))
    assert extras["frames"] == 2

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or isinstance(value, (torch.Tensor, int, float, str))

    assert plain(run.state.hook_state)


def _run_steps(run: Run, iterations: int) -> list[torch.Tensor]:
    with torch.inference_mode(), run.tricks.for_video(run.sampler.model, [PROMPT], run.conditioning.texts):
        return [run.sampler.step(run.state, run.conditioning).latent for _ in range(iterations)]


def test_whole_steps_under_inference_mode_guide_once_the_bank_exists(model) -> None:
    guided = make_run(model, weight=1.0)
    latents = _run_steps(guided, 4)
    extras = guided.state.hook_state["srg"]
    assert extras["frames"] == 4 and extras["bank"]
    assert all(t.is_inference() and not t.requires_grad for t in latents)
    # Weight 0 computes the term and applies none: the plain model's latents, bit for bit.
    unguided = _run_steps(make_run(model, weight=0.0), 4)
    plain = _run_steps(make_plain(model), 4)
    assert all(torch.equal(a, b) for a, b in zip(unguided, plain, strict=True))
    assert torch.equal(latents[0], plain[0])  # the first frame: no bank yet
    assert not torch.equal(latents[-1], plain[-1])


def make_plain(model) -> Run:
    """The same run without any trick (the hook only to share the helpers)."""
    run = make_run(model, weight=0.0)
    run.sampler.hooks = ()
    install_tricks(model, parse_mode("t2v"), run.sampler.schedule, run.sampler.geometry, run.hook.denoise)
    return run


class SavedBytes:
    """Bytes of activations autograd keeps for the backward pass (distinct storages; the weights,
    in memory anyway, not counted), while active."""

    def __init__(self, model) -> None:
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def guided_pass_saved_bytes(model, partitions: int) -> int:
    run = make_run(model, frames=4, partitions=partitions)
    with run.tricks.for_video(model, [PROMPT], run.conditioning.texts), torch.no_grad():
        contexts, _ = windows_step(run)
        features, _ = front_features(run, contexts)
        bank = {site: torch.zeros_like(f[0]) for site, f in features.items()}
        index, window = run.hook.guided[0]
        saved = SavedBytes(model)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            _, _, grad = run.hook.guidance_gradient(
                run.state.queue, window, contexts[index : index + 1], bank, True
            )
    assert grad is not None and grad.abs().sum() > 0
    return saved.total


def test_memory_of_the_guided_pass_is_one_window_whatever_the_queue(model) -> None:
    """The only autograd graph SRG ever holds is one window's, one guidance branch.

    Stated bound: the activations autograd saves for the backward pass are at most 16 times the
    peak activation memory of one window's inference call, one branch, as measured on fake
    tensors (``fifo.plan.window_memory``, float32), and do not grow with the queue (n = 1 and n = 3 partitions save the same bytes).
    Measured on the tiny model (f = 4, 8x8 latents): 21.8 MB, 8.5 times the inference peak (an
    inference pass frees each activation once used; the backward pass needs them all).
    """
    one, three = guided_pass_saved_bytes(model, 1), guided_pass_saved_bytes(model, 3)
    assert one == three
    estimate = window_memory(model, 4, (8, 8), guidance=False).for_windows(1)
    assert 0 < one <= 16 * estimate, (one, estimate)


PEAK_SCRIPT = """
import sys, tempfile, pathlib, torch
torch.set_num_threads(1)
import videocrafter_main
from infra.memory import peak_memory_bytes
folder = pathlib.Path(tempfile.mkdtemp())
prompts = folder / "prompts.txt"
prompts.write_text("a person swimming in the ocean\\n")
rc = videocrafter_main.main(["--config", "configs/tiny_t2v.yaml", "--random_init", "-p", str(prompts),
    "--video_length", "4", "-n", "1", "-l", "3", "--no_progress", "--mode", sys.argv[1],
    "--subject", "a person", "--output_dir", str(folder)])
print("PEAK", rc, peak_memory_bytes("cpu"))
"""


def test_peak_memory_of_a_tiny_run_with_srg_stays_within_its_bound() -> None:
    """Stated bound: a tiny run (f = 4, n = 1, 3 frames, 64x64, fp32, one thread) with ``srg``
    peaks at most 64 MiB above the same run without it (peak RSS of two fresh processes, run side
    by side; identical processes vary by a few MiB)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", PEAK_SCRIPT, mode], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for mode in ("t2v", "t2v_srg")
    }
    peaks = {}
    for mode, process in runs.items():
        out, _ = process.communicate(timeout=300)
        line = next(line for line in out.splitlines() if line.startswith("PEAK"))
        _, rc, peak = line.split()
        assert rc == "0"
        peaks[mode] = int(peak)
    assert peaks["t2v_srg"] <= peaks["t2v"] + 64 * 2**20, peaks
