"""The models and sizes the benchmark runs (random weights: no checkpoint is needed)."""

from __future__ import annotations

from dataclasses import dataclass

# The text prompt of every window (its embedding is computed once, outside every timed region).
PROMPT = "a red panda eating bamboo in a misty forest"


@dataclass(frozen=True)
class Preset:
    """A model config and the video size it is benchmarked at (default: the config's own).

    ``mechanisms_only``: a family whose windows do not run through the U-Net's sequential and fast
    paths (Wan2.1's transformer): only ``--mechanisms`` (plain FIFO and MIGA's mechanisms) runs it.
    """

    name: str
    config: str
    description: str
    gpu_only: bool = False
    mechanisms_only: bool = False


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "configs/tiny_t2v.yaml", "tiny test model, 64x64, f=8"),
    "medium": Preset(
        "medium",
        "configs/bench_medium.yaml",
        "VideoCrafter2's U-Net structure at CPU size (C=32), 128x128, f=16",
    ),
    "full": Preset(
        "full",
        "configs/inference_t2v_512_v2.0.yaml",
        "VideoCrafter2 (1.4B U-Net), 320x512, f=16",
        gpu_only=True,
    ),
    "tiny_wan": Preset(
        "tiny_wan",
        "configs/tiny_wan_t2v.yaml",
        "tiny Wan2.1 (diffusion transformer, flow matching), 64x64, f=4 latent frames of 4 video frames; "
        "--mechanisms only",
        mechanisms_only=True,
    ),
}
