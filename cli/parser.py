"""The flags of ``videocrafter_main.py``: parsed once, here; read only by :mod:`cli.request`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from fifo.noise import NoiseOrder
from fifo.options import (
    MAX_NEW_VIDEO_LENGTH,
    Precision,
    TailFilter,
    TrickArguments,
    mode_parts_help,
)
from fifo.seed_model import DEFAULT_SEED_CKPT, DEFAULT_SEED_CONFIG
from infra.cli_help import RawDescriptionDefaultsHelpFormatter
from infra.cuda_runtime import GPUS
from lvdm.modules.attention_kernels import AttentionBackend

# The top of ``--help``: what the program does and a published command line.
DESCRIPTION = """Long video generation with FIFO diagonal denoising on VideoCrafter.

    python videocrafter_main.py --config configs/inference_t2v_512_v2.0.yaml \\
        --ckpt_path videocrafter_models/base_512_v2/model.ckpt \\
        --prompt_file prompts/published_t2v.txt --mode t2v_TTqcache_attn1_unilatent

Flow: arguments → options (mode, settings, prompts, outputs) → model → FIFO generator → videos.
Everything a user can get wrong is checked before the model is loaded.
"""


class Parallelism(StrEnum):
    """How the processes of a torchrun launch share the work (``--parallel``)."""

    PROMPTS = "prompts"  # each rank makes its share of the prompt list's videos
    WINDOWS = "windows"  # every rank takes part in every video: the windows of each iteration split


# The --attention kernels a user picks (the memory-efficient one stands in for SDPA in CUDA plans).
USER_ATTENTION = (AttentionBackend.SDPA, AttentionBackend.XFORMERS, AttentionBackend.MATH)


def choice_of(members: Sequence[StrEnum]) -> dict[str, Any]:
    """The ``type`` and ``choices`` of a flag whose text names one of ``members``: the text becomes
    the member once, at parsing; other text is left as it is, for argparse's ``choices`` check to
    name the valid values."""
    by_value = {m.value: m for m in members}

    def convert(text: str) -> StrEnum | str:
        return by_value.get(text, text)

    convert.__name__ = type(members[0]).__name__
    return {"type": convert, "choices": list(by_value)}


RESULTS = Path("results") / "videocraft_v2_fifo"
DEFAULT_OUTPUT_ROOT = RESULTS / "random_noise"
DEFAULT_CACHE_DIR = RESULTS / "latents"


# The Python names of options whose flag's destination is spelled otherwise (every other
# option is its flag's destination).
FLAG_DESTINATIONS = {"guidance": "unconditional_guidance_scale", "lookahead": "lookahead_denoising"}
_QUOTED = re.compile(r"`([a-z_][a-z0-9_]*)`")  # an option named in a library's message


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option → its flag's long spelling (``--<dest>``), read from ``parser``'s actions; the
    options of :data:`FLAG_DESTINATIONS` under their Python names too."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            flags[action.dest] = f"--{action.dest}" if f"--{action.dest}" in long else long[0]
    flags.update({name: flags[dest] for name, dest in FLAG_DESTINATIONS.items() if dest in flags})
    return flags


def quoted_as_flags(text: str, flags: dict[str, str]) -> str:
    """``text`` with every option quoted in it (`` `name` ``) that ``flags`` holds written as its flag."""
    return _QUOTED.sub(lambda m: flags.get(m[1], m[0]), text)


def _mode_parts_epilog() -> str:
    return mode_parts_help("--mode is {main}[_{sub}]..., e.g. t2v_TTqcache_attn1_unilatent")


def flag_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every flag at its default: what a command line that gives none of them gets,
    read from the parser's defaults (the command line is parsed once, not again for these)."""
    parser = build_parser()
    return argparse.Namespace(**{name: parser.get_default(name) for name in vars(args)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=DESCRIPTION,
        formatter_class=RawDescriptionDefaultsHelpFormatter,
    )
    p.add_argument("--config", default="configs/inference_t2v_512_v2.0.yaml", help="model config (YAML)")
    p.add_argument("--ckpt_path", default=None, help="checkpoint (.ckpt, .pt or .safetensors)")
    p.add_argument(
        "--prompt_file", "-p", required=True, help="prompts, one per line (i2v: image_path;prompt)"
    )
    p.add_argument("--mode", "-m", default="t2v", help="{main}[_{sub}]...: the parts are listed below")
    p.add_argument("--seed", type=int, default=321, help="random seed of the whole run")
    p.add_argument(
        "--video_length",
        type=int,
        default=None,
        help="frames per window f (default: the config's temporal_length)",
    )
    p.add_argument("--num_partitions", "-n", type=int, default=4, help="partitions n (DDIM steps = f·n)")
    p.add_argument(
        "--new_video_length",
        "-l",
        default=None,
        metavar="FRAMES",
        help=f"output frames (default: 100; a story sets its own): at most {MAX_NEW_VIDEO_LENGTH}, or inf for a "
        "video that runs until stopped (SIGINT/SIGTERM save the state and a playable video; --resume continues)",
    )
    p.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="accepted for published scripts and ignored: the DDIM steps are f·n, as the published code forces",
    )
    p.add_argument("--height", type=int, default=None, help="default: the config's latent size × 8 (320)")
    p.add_argument("--width", type=int, default=None, help="default: the config's latent size × 8 (512)")
    p.add_argument("--fps", type=int, default=8, help="frame-rate conditioning of the model")
    add_family_arguments(p)
    p.add_argument(
        "--unconditional_guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: 12.0) on the U-Nets, 5.0 on Wan2.1 (its own value)",
    )
    p.add_argument("--eta", "-e", type=float, default=1.0, help="DDIM eta (0: deterministic steps)")
    p.add_argument(
        "--lookahead_denoising",
        "-ld",
        action="store_false",
        help="turn lookahead denoising OFF (on by default)",
    )
    p.add_argument("--save_frames", action="store_true", help="also save every output frame as PNG")
    p.add_argument(
        "--experiment",
        "-ex",
        default=None,
        help="output name (default: the mode, the Q-cache weight and every setting that differs from its default)",
    )
    p.add_argument(
        "--output_dir",
        default=None,
        help=f"output root; the base-clip cache goes to its latents/ folder (default: {DEFAULT_OUTPUT_ROOT}, "
        f"cache in {DEFAULT_CACHE_DIR})",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run with the same name"
    )
    p.add_argument("--use_mp4", action="store_true", help="write .mp4 instead of .gif")
    p.add_argument("--output_fps", type=int, default=10, help="frames per second of the written video")
    p.add_argument(
        "--parallel",
        **choice_of(list(Parallelism)),
        default=Parallelism.PROMPTS,
        help="under torchrun: 'prompts' gives each rank its share of the prompt list; 'windows' "
        "splits the FIFO windows of every iteration of each video over the ranks (one video faster)",
    )
    p.add_argument("--rank", type=int, default=0, help="this process's shard of the prompt list")
    p.add_argument("--num_processes", type=int, default=1, help="number of shards")
    p.add_argument("--debug", action="store_true", help="debug logging (third-party libraries included)")
    p.add_argument("--qcache_weight", type=float, default=0.9, help="Q-cache weight w in [0, 1]")
    p.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)"
    )
    p.add_argument("--random_init", action="store_true", help="no checkpoint: random weights (tests, demos)")
    p.add_argument(
        "--allow_full_on_cpu",
        action="store_true",
        help="with --random_init, build a full-size model (0.5 B parameters or more; VideoCrafter2 t2v has 1.85 B: "
        "U-Net, autoencoder and text encoder) on a CPU anyway: hours per video",
    )
    p.add_argument(
        "--dtype",
        choices=[v.value for v in Precision],
        default=None,
        help="default: fp16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--window_batch", type=int, default=None, help="windows per U-Net call (default: auto)")
    p.add_argument("--sequential", action="store_true", help="published path: one window and branch per call")
    p.add_argument(
        "--attention",
        **choice_of(USER_ATTENTION),
        default=AttentionBackend.SDPA,
        help="attention kernel",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the U-Net through torch.compile: each call shape compiles once (minutes, kept in the cache "
        "folder for the next run), then runs faster",
    )
    p.add_argument(
        "--rng",
        choices=[o.value for o in NoiseOrder],
        default=NoiseOrder.DEFAULT.value,
        help="random numbers: 'default' (separate base-clip and FIFO streams; a cached base clip "
        "gives the same video) or 'published' (one stream seeded once, drawn in the published "
        "code's order: reproduces the published fork's video for a seed on the same device and dtype)",
    )
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted videos from their saved state (same arguments); finished ones are skipped",
    )
    p.add_argument(
        "--save_state_every",
        type=int,
        default=None,
        metavar="N",
        help="save the run's state every N output frames (default: at most once a minute)",
    )
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="check every input (the checkpoint's keys and shapes too, without reading its weights), then plan "
        "the run on fake tensors on the target device (memory, FLOPs, U-Net calls per frame) in seconds, "
        "without computing it; also for a GPU that is not present",
    )
    p.add_argument(
        "--plan_for",
        default=None,
        metavar="GPU",
        type=str.lower,
        choices=sorted(GPUS),
        help="with --dry_run: plan for this GPU (its memory and compute capability) instead of the one "
        "here: does the run fit, in which --dtype, with which window batch. One of "
        + ", ".join(f"{k} ({s.total_memory // 2**30} GiB, {s.sm})" for k, s in GPUS.items())
        + "; for another card use --device cuda --max_memory SIZE",
    )
    p.add_argument(
        "--max_memory",
        type=parse_memory,
        default=None,
        metavar="SIZE",
        help="with --dry_run: the device memory to plan for, e.g. 24GiB (default: the free memory of this "
        "GPU or of --plan_for's). A dry run whose plan needs more stops with the settings that would fit. "
        "A real run does not read it: its window batch follows the GPU's free memory",
    )
    add_ouroboros_arguments(p)
    add_miga_arguments(p)
    p.epilog = quoted_as_flags(_mode_parts_epilog(), parser_flags(p))  # the parts name flags as `name`
    return p


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options added with the family (``--frame_stride``, ``--seed_config``,
    ``--seed_ckpt``, ``--guidance_rescale``)."""
    parser.add_argument(
        "--frame_stride",
        type=int,
        default=None,
        help="frame-stride conditioning of DynamiCrafter models (default: the config's default_fs, "
        "24 for dynamicrafter_512_v1.0); the other models take --fps",
    )
    parser.add_argument(
        "--seed_config",
        default=None,
        help="t2v_seed / t2v_seed_ar: the text-to-video model (config) whose base clip seeds the run "
        f"(default on DynamiCrafter, which cannot sample one from text: {DEFAULT_SEED_CONFIG}; "
        "default elsewhere: the model's own base clip)",
    )
    parser.add_argument(
        "--seed_ckpt",
        default=None,
        help=f"the --seed_config model's checkpoint (default for {DEFAULT_SEED_CONFIG}: "
        f"{DEFAULT_SEED_CKPT}); --random_init gives it random weights too",
    )
    parser.add_argument(
        "--guidance_rescale",
        type=float,
        default=0.0,
        help="guidance rescale weight in [0, 1] (DynamiCrafter's own scripts use 0.7 for 512/1024); "
        "0 = plain classifier-free guidance",
    )


def add_ouroboros_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the Ouroboros-Diffusion tricks (tailcoh, sacfa, srg in --mode).

    Defaults (None here) are those of ``fifo.options``; a flag whose trick is not in --mode is
    logged and ignored, so that a sweep can pass the same flags to every mode.
    """
    g = p.add_argument_group(
        "Ouroboros-Diffusion tricks",
        "parameters of the tailcoh, sacfa and srg parts of --mode (see docs/usage.md)",
    )
    g.add_argument(
        "--tail_lowpass",
        type=float,
        default=None,
        help="tailcoh: low-pass cut-off in normalised frequency [0, 1] (default 0.25; 0: Gaussian tail)",
    )
    g.add_argument(
        "--tail_filter",
        choices=[f.value for f in TailFilter],
        default=None,
        help="tailcoh: filter shape (default gaussian)",
    )
    g.add_argument(
        "--subject",
        default=None,
        help='sacfa/srg: the subject\'s words as they stand in the prompt, e.g. "a person" '
        "(required by sacfa and srg; one subject for every scene of a story)",
    )
    g.add_argument(
        "--subject_levels",
        type=parse_levels,
        default=None,
        help="sacfa/srg: U-Net levels (0 = full latent size) that locate and use the subject (default 1,2)",
    )
    g.add_argument(
        "--subject_threshold",
        type=float,
        default=None,
        help="sacfa/srg: a position is subject where its attention to the subject words, min-max scaled "
        "over the frame, reaches this value in (0, 1] (default 0.5)",
    )
    g.add_argument("--srg_weight", type=float, default=None, help="srg: guidance weight ≥ 0 (default 1.0)")
    g.add_argument(
        "--srg_momentum",
        type=float,
        default=None,
        help="srg: moving average of the subject feature bank in [0, 1] (default 0.9)",
    )
    g.add_argument(
        "--srg_windows",
        type=int,
        default=None,
        help="srg: windows guided, counted from the queue's front (default: the front half)",
    )


def add_miga_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of MIGA's mechanisms (zigzag, anchors, reflect in --mode; docs/miga.md). Defaults (None
    here) are those of ``fifo.miga_options``; a flag whose part is not in --mode is logged and ignored."""
    g = p.add_argument_group(
        "MIGA", "parameters of the zigzag, anchors and reflect parts of --mode (docs/miga.md)"
    )
    g.add_argument(
        "--zigzag_length",
        type=int,
        default=None,
        help="zigzag: L_zig, the latents that share a noise level in the zigzag queue; it must divide the "
        "frames a window writes back (default 4, the paper's best)",
    )
    g.add_argument(
        "--anchor_frames",
        type=int,
        default=None,
        help="anchors: clean frames from the whole video in front of each window, at most half of "
        "--video_length (default: a quarter of --video_length, at least 1)",
    )
    g.add_argument(
        "--reflect_threshold",
        type=float,
        default=None,
        help="reflect: drop of the consistency score (a cosine similarity) below its recent mean that "
        "re-draws a frame, in [0, 2] (default 0.05)",
    )
    g.add_argument(
        "--reflect_candidates",
        type=int,
        default=None,
        help="reflect: Gaussian candidates denoised when a frame is re-drawn (default 4)",
    )


def trick_arguments(args: argparse.Namespace) -> TrickArguments:
    """The Ouroboros-Diffusion flags' values (None where not given), for ``parse_mode``."""
    return TrickArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrickArguments)})


_MEMORY_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_MEMORY_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,2' → (1, 2) (argparse type of --subject_levels; the range is checked with the options)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of levels: use e.g. 1,2") from None


def parse_memory(text: str) -> int:
    """'24GiB', '24 GB', '1.5gib', '2000000000' → bytes (argparse type)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _MEMORY_UNITS or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size: use e.g. 24GiB, 16GB or 512MiB")
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


def parse_length(text: str | None) -> int | float | None:
    """-l as given → frames: '100' → 100, 'inf' → ``math.inf`` (an endless video), None → None.

    Raises:
        ValueError: not a whole number in [1, MAX_NEW_VIDEO_LENGTH] nor inf; the message says so.
    """
    if text is None:
        return None
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        frames = int(text)
    except ValueError:
        raise ValueError(
            f"-l/--new_video_length {text} is not a number of frames: give a whole number, or -l inf to run "
            "until stopped"
        ) from None
    if not 1 <= frames <= MAX_NEW_VIDEO_LENGTH:
        raise ValueError(
            f"-l/--new_video_length {frames}: the length must lie in [1, {MAX_NEW_VIDEO_LENGTH}] (the largest "
            "accepted); for a video that runs until you stop it, pass -l inf"
        )
    return frames
