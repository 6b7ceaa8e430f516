"""The issue's budget: the whole evaluation of a 64-frame 64x64 video with random models (every
VBench column) stays under 30 s on 2 cores. Measured as the CPU time (user + system) of the CLI
process, which a machine shared with other jobs does not inflate the way it inflates wall time;
on 2 free cores the wall time is at most about this."""

from __future__ import annotations

import csv
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from infra.video_io import write_video
from tools.vbench import DIMENSIONS

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 30.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_random_model_evaluation_of_64_frames_fits_the_budget(tmp_path: Path) -> None:
    coarse = np.random.default_rng(0).integers(0, 200, size=(8, 8, 3)).astype(np.float64)
    image = np.kron(coarse, np.ones((8, 8, 1)))
    frames = np.stack([np.clip(image + i, 0, 255) for i in range(64)]).astype(np.uint8)
    write_video(tmp_path / "videos" / "a_cat" / "run.mp4", frames, fps=8)
    out = tmp_path / "report"
    before = _children_cpu_s()
    # One thread: on a busy machine two threads spin waiting for each other, and the spinning counts
    # as CPU time (docs/performance.md, "Evaluation time"); one thread's CPU time is the wall time
    # on one free core, which bounds it on two.
    subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(tmp_path / "videos"), "--out", str(out)]
        + ["--random_feature_models", "--quiet"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    cpu_s = _children_cpu_s() - before
    with open(out / "metrics.csv") as fp:
        (row,) = list(csv.DictReader(fp))
    assert all(math.isfinite(float(row[name])) for name in DIMENSIONS)
    assert cpu_s < BUDGET_S, f"the evaluation took {cpu_s:.1f} CPU-s, over the {BUDGET_S:.0f} s budget"
