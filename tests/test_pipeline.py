"""fifo/generator.py: how FifoGenerator sets the model up for the fast and the reference path.

(Whole runs through the CLI are in test_cli.py.)
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from fifo.generator import FifoGenerator
from fifo.options import GenerationSettings, parse_mode
from fifo.perf import CPU_TRANSFORMER_CHUNK, FastPathPlan, UNetExecution, current_execution
from lvdm.build import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_fast_and_reference_paths_set_the_model_up(monkeypatch) -> None:
    model = load_model(ROOT / "configs" / "tiny_t2v.yaml", None, random_init=True, seed=0)
    settings = GenerationSettings(video_length=4, num_partitions=1, height=64, width=64, progress=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # plan as on a two-core machine
    fast = FifoGenerator(model, parse_mode("t2v"), settings, "test")
    assert fast.plan == FastPathPlan(
        shards=2, unet=UNetExecution(CPU_TRANSFORMER_CHUNK, temporal_conv_2d=True)
    )
    assert current_execution(model.unet) == fast.plan.unet
    monkeypatch.undo()

    # The fast denoiser splits a batch over worker threads; the result is one call's.
    threads: set[int] = set()
    apply_model = model.apply_model

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return apply_model(*args, **kwargs)

    monkeypatch.setattr(model, "apply_model", spy)
    # 16x16 latents: at the 8x8 minimum the 1x1 bottom level turns rounding into ~1e-3.
    x = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[999, 700, 400, 100], [900, 600, 300, 1]])
    cond, uncond = model.get_learned_conditioning(["a", "b"]), model.get_learned_conditioning(["", ""])
    with torch.inference_mode():
        sliced = fast.fifo_denoiser(x, t, cond, uncond)
        whole = fast.fifo_denoiser.denoise(x, t, cond, uncond)
    fast.close()
    assert len(threads - {threading.get_ident()}) == 2
    assert (sliced - whole).abs().max() < 1e-4

    reference = FifoGenerator(model, parse_mode("t2v"), GenerationSettings(batched=False, **_small()), "test")
    assert reference.plan == FastPathPlan()
    assert current_execution(model.unet) == UNetExecution()  # layers as published


def _small() -> dict:
    return {"video_length": 4, "num_partitions": 1, "height": 64, "width": 64, "progress": False}
