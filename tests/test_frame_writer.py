"""Frames leave the generating thread: the writer thread keeps their order, bounds what waits,
stops the run with a consumer's error, and a saved state never counts a frame not yet written."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fifo.generator import FifoGenerator
from fifo.options import GenerationSettings, parse_mode
from fifo.outputs import OutputLayout
from fifo.prompts import PromptJob
from fifo.resume import ResumeOptions, StateStore
from fifo.sinks import FrameWriter
from lvdm.build import load_model
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(i: int) -> np.ndarray:
    return np.full((4, 4, 3), i, dtype=np.uint8)


def test_frames_are_written_in_order_on_another_thread() -> None:
    seen: list[tuple[int, str]] = []
    with FrameWriter([lambda i, f: seen.append((i, threading.current_thread().name))]) as writer:
        for i in range(10):
            writer.write(i, _frame(i))
    assert [i for i, _ in seen] == list(range(10))
    assert {name for _, name in seen} == {"frame-writer"}
    assert writer.frames == 10 and writer.seconds >= 0


def test_at_most_depth_frames_wait() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(i: int, f: np.ndarray) -> None:
        started.set()
        release.wait(10)

    writer = FrameWriter([slow], depth=2)
    writer.write(0, _frame(0))  # taken by the thread, which waits
    started.wait(10)
    writer.write(1, _frame(1))
    writer.write(2, _frame(2))  # the queue is full now
    blocked = threading.Thread(target=writer.write, args=(3, _frame(3)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # the generating thread waits for the writer
    release.set()
    blocked.join(10)
    writer.close()
    assert writer.frames == 4


def test_a_consumer_error_stops_the_run_with_its_message() -> None:
    def full_disk(i: int, f: np.ndarray) -> None:
        if i == 1:
            raise OSError(28, "No space left on device")

    writer = FrameWriter([full_disk], depth=1)
    writer.write(0, _frame(0))
    writer.write(1, _frame(1))
    with pytest.raises(OSError, match="No space left on device"):
        for i in range(2, 50):  # the error reaches the generating thread at its next write
            writer.write(i, _frame(i))
    with pytest.raises(OSError, match="No space left"):
        writer.close()


def test_a_run_writes_its_frames_off_the_generating_thread_and_saves_complete_states(tmp_path) -> None:
    model = load_model(str(REPO / "configs" / "tiny_t2v.yaml"), None, random_init=True)
    settings = GenerationSettings(
        video_length=2, num_partitions=1, new_video_length=4, height=64, width=64, progress=False
    )
    generator = FifoGenerator(model, parse_mode("t2v"), settings, "m")
    threads: set[str] = set()
    saved: list[tuple[int, int]] = []
    real_write, real_save = StateStore.write_frame, StateStore.save

    def write_frame(store, index, frame):
        threads.add(threading.current_thread().name)
        real_write(store, index, frame)

    def save(store, state):
        on_disk = len(list((store.folder / "frames").glob("*.png")))
        saved.append((state.frames_emitted, on_disk))
        real_save(store, state)

    resume_options = ResumeOptions(resume=False, save_every_frames=1, stop_requested=lambda: False)
    with pytest.MonkeyPatch.context() as mp, torch.inference_mode():
        mp.setattr(StateStore, "write_frame", write_frame)
        mp.setattr(StateStore, "save", save)
        result = generator.run(
            PromptJob("a fox", line=1), OutputLayout(tmp_path / "out", "exp", tmp_path / "c"), resume_options
        )
    assert result.frames == 4 and result.video_path.is_file()
    assert threads == {"frame-writer"}
    assert saved and all(frames == on_disk for frames, on_disk in saved)  # every counted frame on disk
