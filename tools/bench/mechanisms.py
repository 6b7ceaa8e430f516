"""MIGA's mechanisms against plain FIFO: seconds per output frame, measured side by side.

``scripts/benchmark.py --mechanisms``: one model with random weights, and one generator per mode
(:func:`fifo.wan_generator.generator_class`: the U-Nets', or Wan2.1's with ``--preset
tiny_wan``; plain ``t2v`` and each mechanism alone: ``zigzag``, ``anchors``, ``reflect``), each
with its own state started from the same base clip and noise. Every timed round runs one whole
FIFO iteration of every mode (the run's own sampler step: windows, the mechanism's own work,
dequeue and decode), in alternating order, so that the machine's load hits them alike; a row
keeps its median. An iteration dequeues one queue unit: one output frame on the U-Nets, one
latent frame of four video frames on Wan2.1, so an iteration's seconds are divided by the
frames it gave.

The states start at the first output frame (the queue's warm-up costs what any iteration costs)
and run ``warmup`` untimed iterations, at least as many as the anchors need to fill in, and on
Wan at least one (the stream's first latent frame decodes to one video frame only).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from fifo.generator import FifoGenerator
from fifo.noise import NoiseSource
from fifo.options import GenerationSettings, ModeOptions, TrickArguments, parse_mode
from fifo.prompts import PromptJob
from fifo.wan_generator import generator_class
from fifo.zigzag import DEFAULT_ZIGZAG_LENGTH
from lvdm.build import load_model
from tools.bench.options import BenchOptions
from tools.bench.presets import PRESETS, PROMPT

logger = logging.getLogger("benchmark")

# name → mode of the row (plain FIFO first: the rows are set against it)
MECHANISMS: dict[str, str] = {
    "fifo": "t2v",
    "zigzag": "t2v_zigzag",
    "anchors": "t2v_anchors",
    "reflect": "t2v_reflect",
}


@dataclass
class Row:
    name: str
    mode: ModeOptions
    generator: FifoGenerator
    state: Any
    conditioning: Any
    seconds: list[float]


def with_zigzag_length(tricks: TrickArguments, settings: GenerationSettings) -> TrickArguments:
    """``tricks`` with the zigzag row's L_zig: the one asked for, else the paper's 4 where it divides
    the frames a window writes back, else the largest length below 4 that does (a preset with short
    windows, such as tiny_wan's f = 4, still gets a zigzag row)."""
    if tricks.zigzag_length is not None:
        return tricks
    block = settings.geometry.frames_written
    length = max(d for d in range(1, min(DEFAULT_ZIGZAG_LENGTH, block) + 1) if block % d == 0)
    return replace(tricks, zigzag_length=length)


def mechanism_benchmark(opts: BenchOptions, tricks: TrickArguments | None = None) -> list[dict[str, Any]]:
    """Seconds per output frame of each mode of :data:`MECHANISMS` (see the module doc)."""
    from tools.bench.core import REPO

    device = torch.device(opts.device)
    model = load_model(
        REPO / PRESETS[opts.preset].config, None, random_init=True, device=device, seed=opts.seed
    )
    settings = GenerationSettings(
        video_length=opts.video_length,
        num_partitions=opts.num_partitions,
        new_video_length=10**6,
        height=opts.height,
        width=opts.width,
        fps=opts.fps,
        guidance=1.0 if opts.no_guidance else opts.guidance,
        eta=0.0 if model.family.flow_matching else opts.eta,  # the flow's Euler step draws no noise
        lookahead=not opts.no_lookahead,
        seed=opts.seed,
        window_batch=opts.window_batch,
        dtype=opts.dtype,
        progress=False,
    )
    tricks = with_zigzag_length(tricks or TrickArguments(), settings)
    scale = model.vae_scale
    shape = (1, model.channels, settings.video_length, settings.height // scale, settings.width // scale)
    base = torch.randn(shape, generator=torch.Generator().manual_seed(opts.seed)).to(device)
    rows = []
    for name, text in MECHANISMS.items():
        mode = parse_mode(text, tricks=tricks)
        generator = generator_class(model)(model, mode, settings, "benchmark")
        conditioning, _ = generator.conditioning(PromptJob(PROMPT, 1))
        state = generator.sampler.initial_state(base, NoiseSource.seeded(opts.seed, device))
        # Start at the first output frame, at an iteration whose queue layout is the initial
        # state's (a zigzag queue's layout has a phase; FIFO's is the same at every iteration).
        start, geometry = generator.geometry.discarded_frames(), generator.geometry
        while geometry.at(start) != geometry.at(0):
            start += 1
        state.iteration = start
        rows.append(Row(name, mode, generator, state, conditioning, []))
    warmup = max(
        [opts.warmup]
        + [r.mode.anchors.count(r.generator.geometry) for r in rows if r.mode.anchors is not None]
    )
    if model.family.video_frames_per_latent > 1:
        warmup = max(warmup, 1)
    with torch.inference_mode():
        for round_ in range(warmup + opts.iterations):
            order = rows if round_ % 2 == 0 else rows[::-1]
            for row in order:
                start, frames = time.perf_counter(), row.state.frames_emitted
                row.generator.sampler.step(row.state, row.conditioning)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:  # seconds per output frame of this iteration
                    row.seconds.append((time.perf_counter() - start) / (row.state.frames_emitted - frames))
    for row in rows:
        row.generator.close()
    plain = statistics.median(rows[0].seconds)
    return [
        {
            "mechanism": row.name,
            "mode": row.mode.name,
            "seconds_per_frame": statistics.median(row.seconds),
            "relative_to_fifo": statistics.median(row.seconds) / plain,
            **({"zigzag_length": row.mode.zigzag.length} if row.mode.zigzag is not None else {}),
            "iterations": len(row.seconds),
            # how often self-reflection re-drew a frame over all iterations run (its cost depends on it)
            **(
                {"reflect_fired": row.state.hook_state["reflect"]["fired"]}
                if "reflect" in row.state.hook_state
                else {}
            ),
        }
        for row in rows
    ]


def _length(row: dict[str, Any]) -> str:
    return f" (L_zig = {row['zigzag_length']})" if "zigzag_length" in row else ""


def format_mechanisms(results: list[dict[str, Any]], opts: BenchOptions) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"MIGA's mechanisms against plain FIFO ({opts.preset}, {opts.device}, {opts.dtype}, "
        f"f={opts.video_length}, n={opts.num_partitions}; medians of {opts.iterations} interleaved "
        "iterations, per output frame)",
        "",
        "| mechanism | mode | s / frame | × FIFO |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['mechanism']} | {r['mode']}{_length(r)} | {r['seconds_per_frame']:.3f} | {r['relative_to_fifo']:.2f} |"
        for r in results
    ]
    fired = [r for r in results if "reflect_fired" in r]
    lines += [f"\n{r['mechanism']}: re-drew {r['reflect_fired']} frame(s) in these iterations" for r in fired]
    return "\n".join(lines)
