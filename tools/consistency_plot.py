"""The per-frame consistency plot of ``scripts/evaluate.py``: one curve per experiment,
one panel per measure."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


class CurveRow(Protocol):
    """What a row of the plot needs (``tools.evaluation.VideoMetrics`` is one): the experiment it
    belongs to, and the curves the panels read by name (``clip_curve``, ``drift_curve``, ...)."""

    experiment: str


__all__ = ["plot_consistency"]


def _mean_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Average curves of different lengths: value k is the mean over the curves that reach k."""
    length = max(len(c) for c in curves)
    padded = np.full((len(curves), length), np.nan)
    for i, curve in enumerate(curves):
        padded[i, : len(curve)] = curve
    return np.nanmean(padded, axis=0)


@dataclass(frozen=True)
class _Panel:
    """One measure of the consistency plot: the curve attribute and how to label it."""

    curve: str
    first_frame: int  # the frame index of the curve's first value
    ylabel: str
    title: str


_VBENCH_PANELS = (
    _Panel(
        "subject_consistency_curve",
        1,
        "subject consistency (%)",
        "VBench subject consistency of frame i (DINO; higher is better)",
    ),
    _Panel(
        "background_consistency_curve",
        1,
        "background consistency (%)",
        "VBench background consistency of frame i (CLIP ViT-B/32; higher is better)",
    ),
)
_CLIP_PANEL = _Panel(
    "clip_to_first_curve",
    0,
    "CLIP cosine similarity to frame 0",
    "Consistency with the first frame (higher is better)",
)
_DRIFT_PANEL = _Panel(
    "drift_curve",
    0,
    "mean |frame - frame 0| (pixels in [0, 1])",
    "Drift from the first frame (lower is better)",
)


def plot_consistency(rows: Sequence[CurveRow], path: str | os.PathLike) -> Path:
    """Per-frame consistency, one curve per experiment (averaged over its prompts), one panel per measure.

    Panels: VBench's subject and background consistency of each frame (when every video has them:
    frame i's mean of its cosine to frame i - 1 and to frame 0), then our CLIP similarity to the
    first frame when every video has it, else the pixel drift from the first frame.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def everywhere(attr: str) -> bool:
        return bool(rows) and all(getattr(r, attr) is not None for r in rows)

    panels = [panel for panel in _VBENCH_PANELS if everywhere(panel.curve)]
    panels.append(_CLIP_PANEL if everywhere(_CLIP_PANEL.curve) else _DRIFT_PANEL)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 1.0 + 3.2 * len(panels)), dpi=120, sharex=True, squeeze=False
    )
    for ax, panel in zip(axes[:, 0], panels):
        groups: dict[str, list[list[float]]] = defaultdict(list)
        for row in rows:
            groups[row.experiment].append(getattr(row, panel.curve))
        for experiment in sorted(groups):
            curves = [c for c in groups[experiment] if len(c)]
            if not curves:
                continue  # single-frame videos have empty curves
            mean = _mean_curve(curves)
            frames = np.arange(panel.first_frame, panel.first_frame + len(mean))
            ax.plot(frames, mean, label=f"{experiment} (n={len(curves)})", linewidth=1.4)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        if groups:
            ax.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel("frame index")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
