"""What MIGA's mechanisms add to a run's cost, for ``--dry_run`` (docs/miga.md).

Counted from the mode and the queue layout alone (no model): the extra U-Net frames per output
frame, beyond plain FIFO's windows, and the latents each mechanism keeps.
"""

from __future__ import annotations

import math
from typing import Any

from fifo.geometry import FifoGeometry
from fifo.options import ModeOptions
from fifo.tricks.anchors import BANK_PER_ANCHOR
from fifo.tricks.reflect import HISTORY, reflection_depth


def miga_costs(mode: ModeOptions, geometry: FifoGeometry, latent_bytes: int) -> dict[str, dict[str, Any]]:
    """Per mechanism of ``mode``: its extra U-Net frames per output frame and the memory it keeps.

    Args:
        latent_bytes: the bytes of one frame's latent (c·h·w values).
    Returns:
        ``{"anchors": {...}}`` for the mechanisms that are on (empty for none), plain values.
    """
    costs: dict[str, dict[str, Any]] = {}
    fifo = FifoGeometry(geometry.video_length, geometry.num_partitions, geometry.lookahead)
    f, windows = geometry.video_length, len(geometry.windows())
    plain_frames = len(fifo.windows()) * f  # U-Net frames of one FIFO iteration (one output frame)
    if mode.zigzag is not None:
        extra_slots = geometry.queue_length - fifo.queue_length
        costs["zigzag"] = {
            "zigzag_length": mode.zigzag.length,
            "levels_per_window": math.ceil(f / mode.zigzag.length),
            "windows": windows,
            "plain_windows": len(fifo.windows()),
            # One output frame per iteration as in FIFO; one window more covers the waiting latents.
            "extra_unet_frames_per_output_frame": windows * f - plain_frames,
            "plain_unet_frames_per_output_frame": plain_frames,
            "steps_per_frame": geometry.steps,
            "queue_latents": geometry.queue_length,
            "extra_queue_latents": extra_slots,
            "extra_queue_bytes": extra_slots * latent_bytes,
        }
    if mode.anchors is not None:
        m = mode.anchors.count(geometry)
        costs["anchors"] = {
            "anchor_frames": m,
            "anchor_frames_per_output_frame": m * windows,
            "extra_unet_frames_per_output_frame": 0,
            "plain_unet_frames_per_output_frame": plain_frames,
            "bank_latents": BANK_PER_ANCHOR * m,
            "bank_bytes": BANK_PER_ANCHOR * m * latent_bytes,
        }
    if mode.reflect is not None:
        depth, n = reflection_depth(geometry), mode.reflect.candidates
        # Under zigzag a group of L frames is evaluated together, once every L iterations.
        group = 1 if mode.zigzag is None else mode.zigzag.length
        costs["reflect"] = {
            "depth": depth,
            "candidates": n,
            "evaluated_frames": group,
            # One window scores the evaluated frames per evaluation; a firing denoises the
            # candidates through ``depth`` steps and scores them: (depth + 1) windows of each.
            "extra_unet_frames_per_output_frame": f // group,
            "extra_unet_frames_when_fired": (depth + 1) * n * f,
            "plain_unet_frames_per_output_frame": plain_frames,
            "kept_scores": HISTORY,
        }
    return costs


def cost_lines(costs: dict[str, dict[str, Any]], network: str = "U-Net") -> list[str]:
    """The costs of :func:`miga_costs` for people, one line per mechanism; ``network`` names the
    denoising network whose frames they count (Wan's: ``transformer``, its frames latent frames)."""
    lines = []
    zigzag = costs.get("zigzag")
    if zigzag is not None:
        plain = zigzag["plain_unet_frames_per_output_frame"]
        lines.append(
            f"zigzag: L_zig {zigzag['zigzag_length']}, {zigzag['levels_per_window']} noise levels per window; "
            f"{zigzag['windows']} windows per output frame instead of {zigzag['plain_windows']}: "
            f"{zigzag['extra_unet_frames_per_output_frame']} extra {network} frames (+{zigzag['extra_unet_frames_per_output_frame'] / plain:.0%} "
            f"over FIFO's {plain}); {zigzag['steps_per_frame']} steps per frame as FIFO; a queue of "
            f"{zigzag['queue_latents']} latents ({zigzag['extra_queue_latents']} more, "
            f"{zigzag['extra_queue_bytes'] / 2**20:.2f} MiB), whatever the length"
        )
    anchors = costs.get("anchors")
    if anchors is not None:
        lines.append(
            f"anchors: {anchors['anchor_frames']} clean frames in front of every window "
            f"({anchors['anchor_frames_per_output_frame']} of the {anchors['plain_unet_frames_per_output_frame']} "
            f"{network} frames per output frame, in place of frames a window only reads): "
            f"{anchors['extra_unet_frames_per_output_frame']} extra {network} frames; a bank of at most "
            f"{anchors['bank_latents']} latents ({anchors['bank_bytes'] / 2**20:.2f} MiB), whatever the length"
        )
    reflect = costs.get("reflect")
    if reflect is not None:
        plain = reflect["plain_unet_frames_per_output_frame"]
        k = reflect["evaluated_frames"]
        evaluated = "frame" if k == 1 else f"group of {k} frames (every {k} iterations)"
        lines.append(
            f"reflect: {reflect['extra_unet_frames_per_output_frame']} extra {network} frames per output frame "
            f"(+{reflect['extra_unet_frames_per_output_frame'] / plain:.0%} over FIFO's {plain}) to score the "
            f"{evaluated} {reflect['depth']} step(s) from pure noise; a re-draw costs "
            f"{reflect['extra_unet_frames_when_fired']} more ({reflect['candidates']} candidates through "
            f"{reflect['depth']} step(s) and their scores; the planned step includes one)"
        )
    return lines
