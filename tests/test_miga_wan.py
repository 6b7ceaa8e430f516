"""MIGA on the tiny random Wan2.1 model: the anchors are clean latent frames in front of every
window, self-reflection re-draws a latent frame along the flow, the zigzag queue groups latent
frames; a stopped and resumed run writes the same file (two ranks: tests/test_miga_parallel.py's
Wan cases)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from fifo.options import GenerationSettings, TrickArguments, parse_mode  # noqa: E402
from fifo.outputs import OutputLayout  # noqa: E402
from fifo.prompts import PromptJob  # noqa: E402
from fifo.resume import ResumeOptions, RunInterrupted  # noqa: E402
from fifo.tricks.anchors import AnchoredWindows  # noqa: E402
from fifo.wan_generator import WanGenerator  # noqa: E402
from tests.test_miga_parallel import Fired  # noqa: E402
from tests.test_parallel import model_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/tiny_wan_t2v.yaml"
JOB = PromptJob("a red fox", 1)
# 4 latent frames per window, lookahead: 2 of them read but not written back, room for 1 anchor.
SETTINGS = dict(video_length=4, num_partitions=2, new_video_length=5, height=64, width=64)
SETTINGS |= dict(progress=False, seed=7)
MODES = {
    "reflect_anchors": parse_mode(
        "t2v_reflect_anchors",
        tricks=TrickArguments(anchor_frames=1, reflect_threshold=0.0, reflect_candidates=2),
    ),
    # the zigzag queue in latent frames: groups of 2 (the write block of a 4-frame window)
    "zigzag_anchors": parse_mode("t2v_zigzag_anchors", tricks=TrickArguments(zigzag_length=2)),
}


def generator(mode: str = "reflect_anchors", **settings) -> WanGenerator:
    return WanGenerator(model_of(CONFIG), MODES[mode], GenerationSettings(**(SETTINGS | settings)), "tiny")


def test_anchors_and_reflection_run_on_wan(tmp_path) -> None:
    gen = generator()
    anchored = gen.sampler.denoise
    assert isinstance(anchored, AnchoredWindows)
    seen_anchors = []
    inner = anchored.denoise

    def recording(x, t, cond, uncond):
        if anchored.anchors is not None:
            seen_anchors.append((x[:, :, :1].clone(), t[:, :1].clone()))
        return inner(x, t, cond, uncond)

    anchored.denoise = recording
    recorder = Fired()
    gen.sampler.hooks += (recorder,)
    with torch.inference_mode():
        result = gen.run(JOB, OutputLayout(tmp_path, "miga", tmp_path / "cache"))
    assert result.frames == 5  # 1 + 4 video frames from 2 latent frames
    assert recorder.fired > 0  # threshold 0: every drop re-draws
    # Once the video has a latent frame, every window starts with it, clean (t = 0).
    assert seen_anchors and all(bool((t == 0).all()) for _, t in seen_anchors)
    first_output = recorder.latents[gen.geometry.discarded_frames()]
    assert torch.equal(seen_anchors[0][0][:1], first_output)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resume_is_byte_identical(tmp_path, mode) -> None:
    """Stopped mid-run (queue, anchor bank, reflection scores and decoder cache saved), resumed."""
    with torch.inference_mode():
        whole = generator(mode, new_video_length=9).run(
            JOB, OutputLayout(tmp_path / "A", "x", tmp_path / "c")
        )
        calls = iter(range(100))
        stop = ResumeOptions(save_every_frames=2, stop_requested=lambda: next(calls) == 5)
        with pytest.raises(RunInterrupted) as stopped:
            generator(mode, new_video_length=9).run(
                JOB, OutputLayout(tmp_path / "B", "x", tmp_path / "c"), stop
            )
        assert 0 < stopped.value.frames < 9
        resumed = generator(mode, new_video_length=9).run(
            JOB,
            OutputLayout(tmp_path / "B", "x", tmp_path / "c"),
            ResumeOptions(resume=True, save_every_frames=2),
        )
    assert resumed.frames == whole.frames == 9
    assert resumed.video_path.read_bytes() == whole.video_path.read_bytes()
