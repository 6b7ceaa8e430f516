"""The benchmark's options, parsed once from its command line into one frozen object."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class BenchOptions:
    """Everything a measurement depends on (see ``scripts/benchmark.py --help`` for each).

    ``height``/``width`` are the preset config's own size; ``dtype`` is the fast path's weights'
    dtype (``fp32``, ``fp16`` or ``bf16``; the sequential path is always fp32).
    """

    preset: str
    device: str
    iterations: int
    warmup: int
    seed: int
    dtype: str
    window_batch: int | None
    video_length: int
    num_partitions: int
    no_lookahead: bool
    guidance: float
    no_guidance: bool
    eta: float
    fps: int
    threads: int | None
    shards: int | None
    transformer_chunk: int | None
    conv3d: bool
    default_allocator: bool
    lengths: tuple[int, ...]
    no_memory: bool
    allow_cpu_full: bool
    height: int
    width: int
    compile: bool = False
    cache_dir: str | None = None  # where compiled artifacts are kept between runs (None: PyTorch's default)
    processes: int = 0  # time each path alone in this many fresh processes (0: all in this one, interleaved)
    bf16_row: bool = False  # also time the fast path in bf16 (CPUs with native bf16, --dtype left out)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> BenchOptions:
        """The options of a parsed and resolved command line (``resolve_args``)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["lengths"] = tuple(values.get("lengths") or ())
        return cls(**values)
