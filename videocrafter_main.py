"""Long video generation with FIFO diagonal denoising on VideoCrafter.

    python videocrafter_main.py --config configs/inference_t2v_512_v2.0.yaml \\
        --ckpt_path videocrafter_models/base_512_v2/model.ckpt \\
        --prompt_file prompts/published_t2v.txt --mode t2v_TTqcache_attn1_unilatent

Flow: arguments → options (mode, settings, prompts, outputs) → model → FIFO generator → videos.
Everything a user can get wrong is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fifo.families import add_family_arguments
from fifo.noise import NoiseOrder
from fifo.options import (
    MAIN_OPTIONS,
    SUB_OPTIONS,
    GenerationSettings,
    ModeError,
    ModeOptions,
    Precision,
    TailFilter,
    TrickArguments,
    parse_mode,
)
from tools.cli_help import RawDescriptionDefaultsHelpFormatter

if TYPE_CHECKING:
    from fifo.outputs import OutputLayout
    from fifo.prompts import PromptJob

logger = logging.getLogger("videocrafter_main")

RESULTS = Path("results") / "videocraft_v2_fifo"
DEFAULT_OUTPUT_ROOT = RESULTS / "random_noise"
DEFAULT_CACHE_DIR = RESULTS / "latents"
# The job's control collectives (agreeing on errors, the summary at the end) may wait for the
# slowest rank's whole share of the prompt list: hours.
CONTROL_TIMEOUT = datetime.timedelta(days=7)
# A model this large (parameters) on a CPU takes hours per video: refused unless asked for.
FULL_SIZE_PARAMETERS = 500_000_000


class UsageError(ValueError):
    """A mistake in the command line or its inputs: printed as ``error: ...``, exit code 2."""


def _mode_parts_epilog() -> str:
    mains = "\n".join(f"  {k:<13}{v}" for k, v in MAIN_OPTIONS.items())
    subs = "\n".join(f"  {k:<13}{v}" for k, v in SUB_OPTIONS.items())
    return f"--mode is {{main}}[_{{sub}}]..., e.g. t2v_TTqcache_attn1_unilatent\nmain:\n{mains}\nsub:\n{subs}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, epilog=_mode_parts_epilog(), formatter_class=RawDescriptionDefaultsHelpFormatter
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
        type=int,
        default=None,
        help="output frames (default: 100; a story sets its own)",
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
        "--unconditional_guidance_scale", type=float, default=12.0, help="classifier-free guidance"
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
        choices=("prompts", "windows"),
        default="prompts",
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
        help="run a full-size model (hundreds of millions of parameters) on a CPU anyway: hours per video",
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
        "--attention", choices=("sdpa", "xformers", "math"), default="sdpa", help="attention kernel"
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
        "without computing it; works for a GPU this machine does not have",
    )
    p.add_argument(
        "--max_memory",
        type=parse_memory,
        default=None,
        metavar="SIZE",
        help="device memory the run may use, e.g. 24GiB (default: the GPU's total); a dry run or a run "
        "whose plan needs more stops with the settings that would fit",
    )
    add_ouroboros_arguments(p)
    return p


def add_ouroboros_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the Ouroboros-Diffusion tricks (tailcoh, sacfa, srg in --mode).

    Defaults (None here) are those of ``fifo.options``; a flag whose trick is not in --mode is
    logged and ignored, so that a sweep can pass the same flags to every mode.
    """
    g = p.add_argument_group(
        "Ouroboros-Diffusion tricks",
        "parameters of the tailcoh, sacfa and srg parts of --mode (see the README)",
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


def trick_arguments(args: argparse.Namespace) -> TrickArguments:
    """The Ouroboros-Diffusion flags' values (None where not given), for ``parse_mode``."""
    return TrickArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrickArguments)})


_MEMORY_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_MEMORY_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """'24GiB', '24 GB', '1.5gib', '2000000000' → bytes (argparse type)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _MEMORY_UNITS or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size: use e.g. 24GiB, 16GB or 512MiB")
    return int(float(match.group(1)) * _MEMORY_UNITS[unit])


# ------------------------------------------------------------------------------------------ logging
class _QuietThirdParty(logging.Filter):
    """Drop third-party INFO/DEBUG records (open_clip logs through the root logger)."""

    PACKAGES = (f"{os.sep}open_clip{os.sep}", f"{os.sep}timm{os.sep}", f"{os.sep}huggingface_hub{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(p in record.pathname for p in self.PACKAGES)


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietThirdParty())
        for name in ("PIL", "matplotlib", "urllib3", "filelock", "fsspec"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------ the request
@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, checked: nothing below this point reads ``args``."""

    mode: ModeOptions
    settings: GenerationSettings
    jobs: list[PromptJob]
    config: str
    ckpt_path: str | None
    random_init: bool
    device: str
    attention: str
    layout: OutputLayout
    overwrite: bool
    rank: int
    world: int
    torchrun: bool
    parallel: str = "prompts"
    dry_run: bool = False
    max_memory: int | None = None
    resume: bool = False
    save_state_every: int | None = None
    done: frozenset[int] = frozenset()  # indices (in this rank's jobs) of videos already complete


def distributed_rank(args: argparse.Namespace) -> tuple[int, int, bool]:
    """(rank, world size, launched by torchrun). torchrun's environment wins over --rank."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True
    return args.rank, args.num_processes, False


def resolve_device(requested: str | None, torchrun: bool, dry_run: bool = False) -> str:
    """The device to run on; a clear error when CUDA is asked for and absent (a dry run plans for
    a device it does not need to have)."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise UsageError(f"--device {requested}: not a device; use cuda, cuda:N or cpu") from err
    if device.type == "cuda" and dry_run and not torch.cuda.is_available():
        return "cuda" if device.index is None else str(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {requested}: this machine has no CUDA GPU that PyTorch can use "
                "(torch.cuda.is_available() is False); run on a GPU machine or pass --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {requested}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 ... "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        if torchrun:
            # One GPU per process of a node: torchrun's LOCAL_RANK picks it.
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
            if device.index is not None and local_ranks > 1:
                raise UsageError(
                    f"--device {requested} under torchrun would put all {local_ranks} processes of this node "
                    "on one GPU; pass --device cuda (each process takes cuda:LOCAL_RANK)"
                )
            if device.index is None:
                return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    elif device.type != "cpu":
        raise UsageError(f"--device {requested}: only cuda and cpu are supported")
    return str(device)


def settings_from_args(args: argparse.Namespace, facts, device: str) -> GenerationSettings:
    """The run's settings; what the user left out comes from the model config ``facts``."""
    return GenerationSettings(
        video_length=args.video_length or facts.temporal_length,
        num_partitions=args.num_partitions,
        new_video_length=args.new_video_length if args.new_video_length is not None else 100,
        height=args.height if args.height is not None else facts.default_size[0],
        width=args.width if args.width is not None else facts.default_size[1],
        fps=args.fps,
        guidance=args.unconditional_guidance_scale,
        eta=args.eta,
        lookahead=args.lookahead_denoising,
        seed=args.seed,
        save_frames=args.save_frames,
        use_mp4=args.use_mp4,
        output_fps=args.output_fps,
        batched=not args.sequential,
        window_batch=args.window_batch,
        # --sequential is the published path: fp32 unless asked otherwise.
        dtype=Precision(args.dtype)
        if args.dtype
        else (Precision.FP32 if args.sequential else Precision.default_for(device)),
        progress=not args.no_progress,
        rng=NoiseOrder(args.rng),
        frame_stride=args.frame_stride,
        guidance_rescale=args.guidance_rescale,
    )


def _check_cpu_size(args: argparse.Namespace, device: str, cfg: dict) -> None:
    """Refuse a full-size model with random weights on a CPU: hours of work nobody asked for."""
    if not args.random_init or not device.startswith("cpu") or args.allow_full_on_cpu or args.dry_run:
        return
    from lvdm.build import count_parameters, resolve_config_path

    parameters = count_parameters(cfg, resolve_config_path(args.config).parent)
    if parameters >= FULL_SIZE_PARAMETERS:
        raise UsageError(
            f"--random_init with {args.config} builds the full-size model ({parameters / 1e9:.1f} B "
            "parameters) on a CPU: hours per video. For a demo or a test use --config "
            "configs/tiny_t2v.yaml (or configs/tiny_i2v.yaml); to run it anyway pass --allow_full_on_cpu."
        )


def _check_attention(backend: str, device: str) -> None:
    """xformers: CUDA only and optional; found out now, not at the first attention call."""
    if backend != "xformers":
        return
    from lvdm.modules.attention import xformers_available

    if not device.startswith("cuda"):
        raise UsageError(f"--attention xformers runs on CUDA only, not on {device}: use --attention sdpa")
    if not xformers_available():
        raise UsageError(
            "--attention xformers: the xformers package is not installed (pip install xformers, matching "
            "your torch and CUDA); --attention sdpa (the default) uses PyTorch's fused kernels instead"
        )


def _check_resumable(jobs, layout, mode, settings, model_id: str, device: str) -> frozenset[int]:
    """For --resume: the jobs whose video is complete (skipped), and a usage error when a saved
    state was made with other arguments (naming what differs). A damaged state is left to the run,
    which reports it and starts afresh."""
    from fifo.generator import resume_fingerprint
    from fifo.resume import StateError, StateStore, fingerprint_differences, state_folder

    done = set()
    for index, job in enumerate(jobs):
        video = layout.video_path(job)
        store = StateStore(state_folder(video), {})
        if not store.exists():
            if video.is_file():
                done.add(index)
            continue
        try:
            saved = store.read_fingerprint()
        except StateError:
            continue
        differences = fingerprint_differences(
            saved, resume_fingerprint(job, mode, settings, model_id, device, video)
        )
        if differences:
            raise UsageError(
                f"--resume: the state saved in {store.folder} was made with other arguments:\n  "
                + "\n  ".join(differences)
                + "\nRun the interrupted command again with --resume, or drop --resume (and pass "
                "--overwrite) to start afresh."
            )
    return frozenset(done)


def build_request(args: argparse.Namespace) -> RunRequest:
    """Check every input, in the order a user would fix them; nothing is written, no model is built.

    Raises:
        UsageError, ModeError, ValueError (PromptFileError, ConfigError, OutputError): the message
        names the problem and the fix.
    """
    from fifo.generator import check_model_fits
    from fifo.outputs import OutputLayout, check_not_overwriting, check_writable_folder, experiment_name
    from fifo.prompts import parse_prompt_file, safe_name
    from lvdm.build import config_facts, load_config, model_identity

    mode = parse_mode(args.mode, args.qcache_weight, trick_arguments(args))
    if not (args.num_processes >= 1 and 0 <= args.rank < args.num_processes):
        raise UsageError("--rank must be in [0, --num_processes)")
    if not (args.random_init or args.ckpt_path):
        raise UsageError("--ckpt_path is required (or --random_init for tests and demos)")
    jobs = parse_prompt_file(args.prompt_file, image_mode=mode.main.takes_input_image)
    if mode.subject is not None:
        from fifo.tricks.subject import check_subject_in_prompts

        check_subject_in_prompts(mode.subject.phrase, jobs)
    rank, world, torchrun = distributed_rank(args)
    device = resolve_device(args.device, torchrun, args.dry_run)
    cfg = load_config(args.config)
    facts = config_facts(cfg)
    settings = settings_from_args(args, facts, device)
    if settings.dtype.value == "fp16" and device.startswith("cpu"):
        raise UsageError(
            "--dtype fp16 on a CPU: PyTorch's CPU kernels do not all run (or run fast) in fp16; "
            "use --dtype bf16 or fp32 there"
        )
    check_model_fits(facts, mode, settings, args.config)
    _check_cpu_size(args, device, cfg)
    _check_attention(args.attention, device)

    defaults = settings_from_args(build_parser().parse_args(["-p", args.prompt_file]), facts, device)
    experiment = safe_name(args.experiment) if args.experiment else experiment_name(mode, settings, defaults)
    root = Path(args.output_dir) if args.output_dir else DEFAULT_OUTPUT_ROOT
    # Published layout: results/videocraft_v2_fifo/latents; with --output_dir, inside it.
    cache_dir = root / "latents" if args.output_dir else DEFAULT_CACHE_DIR
    layout = OutputLayout(root, experiment, cache_dir, ".mp4" if settings.use_mp4 else ".gif")
    check_writable_folder(root)
    if not args.output_dir:
        check_writable_folder(cache_dir, flag="the cache folder")
    if args.parallel == "windows" and not torchrun:
        logger.info("--parallel windows without torchrun: one process computes every window")
    # --parallel windows: every rank works on every video; rank 0 writes.
    my_jobs = jobs if args.parallel == "windows" else jobs[rank::world]
    if args.save_state_every is not None and args.save_state_every < 1:
        raise UsageError("--save_state_every must be ≥ 1 (output frames between saved states)")
    done: frozenset[int] = frozenset()
    if args.resume:
        model_id = model_identity(args.config, args.ckpt_path, args.random_init, args.seed)
        done = _check_resumable(my_jobs, layout, mode, settings, model_id, device)
    else:
        check_not_overwriting(layout, my_jobs, args.overwrite)

    if args.num_inference_steps is not None and args.num_inference_steps != settings.geometry.steps:
        logger.info(
            "--num_inference_steps %d is ignored: the DDIM steps are video_length × num_partitions = %d "
            "(as the published code forces)",
            args.num_inference_steps,
            settings.geometry.steps,
        )
    stories = [job for job in my_jobs if job.is_story]
    if stories and args.new_video_length is not None:
        logger.warning(
            "-l/--new_video_length %d does not apply to the story in %s: a story's length is the sum of "
            "its scenes' frames (%s)",
            args.new_video_length,
            args.prompt_file,
            ", ".join(str(job.story_length) for job in stories),
        )
    return RunRequest(
        mode=mode,
        settings=settings,
        jobs=jobs,
        config=args.config,
        ckpt_path=args.ckpt_path,
        random_init=args.random_init,
        device=device,
        attention=args.attention,
        layout=layout,
        overwrite=args.overwrite,
        rank=rank,
        world=world,
        torchrun=torchrun,
        parallel=args.parallel,
        dry_run=args.dry_run,
        max_memory=args.max_memory,
        resume=args.resume,
        save_state_every=args.save_state_every,
        done=done,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    from fifo.outputs import OutputError
    from fifo.prompts import PromptFileError
    from lvdm.utils import ConfigError

    several = start_process_group()
    if several and args.parallel == "windows" and int(os.environ["RANK"]) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        request, error = build_request(args), None
    except (UsageError, ModeError, PromptFileError, ConfigError, OutputError, ValueError) as err:
        request, error = None, f"error: {err}"
    error = agree_on_errors(error) if several else error
    if error is not None:
        print(error, file=sys.stderr)
        end_process_group()
        return 2
    return dry_run(request) if request.dry_run else run(request)


def start_process_group() -> bool:
    """Under torchrun with several processes, join the job's process group (gloo, for agreeing on
    errors, small objects and the summary; each video's data goes through its own group). Returns
    whether there are several processes. Nothing is computed yet: inputs are checked next, on
    every rank, and the ranks agree on the outcome before any work."""
    from fifo.parallel import LaunchEnv

    launch = LaunchEnv.from_environment()
    if launch is None or launch.world < 2:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=CONTROL_TIMEOUT)
    return True


def end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree_on_errors(error: str | None) -> str | None:
    """Every rank's input check → one outcome: this rank's own error, or the first failed rank's
    (so that a bad input found on one rank stops every rank at once, none waits for it)."""
    import torch.distributed as dist

    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    if error is not None:
        return error
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, first = failed[0]
    return f"error: rank {rank} stopped the job: {first.removeprefix('error: ')}"


def dry_run(request: RunRequest) -> int:
    """Plan the run (``--dry_run``): the model built on fake tensors on the target device, each stage
    of the first prompt run once; print the plan, then the same as one JSON line."""
    import json
    import time

    import torch

    from fifo.generator import FifoGenerator
    from fifo.perf import FastPathPlan, plan_fast_path
    from fifo.plan import fake_tensors, plan_run
    from lvdm.build import build_model, check_checkpoint
    from lvdm.checkpoint import CheckpointError, read_state_dict_meta

    r = request
    start = time.perf_counter()
    try:
        # Keys, shapes and dtypes only (a safetensors header, or a memory-mapped zip whose tensor
        # data is never read): a 10 GB checkpoint is checked in seconds, as a real run would check it.
        shapes = None if r.random_init else read_state_dict_meta(r.ckpt_path)
        fake = fake_tensors()
        with fake, torch.device(r.device):
            model = build_model(r.config)
            model.set_precision(r.settings.dtype.torch_dtype)
        if shapes is not None:
            check_checkpoint(model, shapes, r.ckpt_path, r.config)
            logger.info("checkpoint %s: %d tensors fit the model", r.ckpt_path, len(shapes))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # On CUDA, SDPA runs fused kernels; on fake tensors without a GPU it would fall back to the
    # math kernel and count the whole attention matrix: plan with the memory-efficient kernel.
    model.unet.set_attn_processor(
        "efficient" if r.device.startswith("cuda") and r.attention != "math" else r.attention
    )
    seconds_to_model = time.perf_counter() - start
    # The dry run computes in one thread: the CPU plan's parallel slices do not change memory or FLOPs.
    cpu_plan = FastPathPlan(shards=1, unet=plan_fast_path(r.device).unet) if r.settings.batched else None

    def build_generator(settings: GenerationSettings) -> FifoGenerator:
        return FifoGenerator(model, r.mode, settings, "dry-run", plan=cpu_plan)

    budget = r.max_memory
    if budget is None and r.device.startswith("cuda") and torch.cuda.is_available():
        budget = torch.cuda.get_device_properties(torch.device(r.device)).total_memory
    plan = plan_run(build_generator, model, r.mode, r.settings, r.jobs[0], r.device, budget, seconds_to_model)
    plan.attention = (
        r.attention if plan.attention == r.attention else f"{r.attention} (planned as {plan.attention})"
    )
    for line in plan.lines():
        logger.info("plan: %s", line)
    if not plan.fits:
        print(f"error: {memory_advice(plan, r.settings)}", file=sys.stderr)
        print(json.dumps(plan.json()))
        return 2
    print(json.dumps(plan.json()))
    return 0


def memory_advice(plan, settings: GenerationSettings) -> str:
    """Why a plan does not fit, and which of --window_batch / --dtype / --sequential would."""
    gib = 2**30
    need = f"the run needs {plan.peak_memory_bytes / gib:.2f} GiB of device memory at its peak"
    have = f"{plan.budget_bytes / gib:.2f} GiB are available (--max_memory, or the GPU's total)"
    options = []
    fixed = plan.peak_memory_bytes - plan.window_batch * plan.per_window_bytes
    fitting = (plan.budget_bytes - fixed) // plan.per_window_bytes if plan.per_window_bytes else 0
    if settings.batched and 1 <= fitting < plan.window_batch:
        options.append(f"--window_batch {fitting}")
    if settings.dtype.value == "fp32" and plan.peak_memory_bytes / 2 <= plan.budget_bytes:
        options.append("--dtype fp16 (or bf16): weights and activations take half")
    if (
        settings.batched
        and fixed + plan.per_window_bytes // 2 <= plan.budget_bytes < fixed + plan.per_window_bytes
    ):
        options.append("--sequential: one window and one guidance branch per call")
    if options:
        return f"{need}, but {have}. It would fit with " + ", or ".join(options) + "."
    return (
        f"{need}, but {have}, and no --window_batch, --dtype or --sequential setting brings it below "
        f"that (the weights alone take {plan.weights_bytes / gib:.2f} GiB): use a device with more memory."
    )


class StopRequest:
    """SIGINT/SIGTERM during a run: the first asks the run to stop after the current iteration
    (state saved, partial video written); a second one ends the process at once."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else "request"

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES.get(self.signal_number, 1)

    def _handle(self, number: int, _frame: object) -> None:
        if self.signal_number is not None:
            os._exit(self.EXIT_CODES.get(number, 1))  # the second signal: now
        self.signal_number = number
        logger.warning(
            "%s: finishing the current iteration, then saving the state (send it again to stop at once)",
            signal.Signals(number).name,
        )

    @contextlib.contextmanager
    def installed(self):  # noqa: ANN201 -- a context manager
        """Handle SIGINT and SIGTERM while the block runs (main thread only), then restore."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.EXIT_CODES}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def resume_command() -> str:
    """The command line of this run with --resume (to print when it stops)."""
    argv = [sys.executable.rsplit("/", 1)[-1], *sys.argv]
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join(shlex.quote(a) for a in argv)


def run(request: RunRequest) -> int:
    """Generate the videos of ``request``; SIGINT/SIGTERM stop it cleanly (see :class:`StopRequest`)."""
    stop = StopRequest()
    with stop.installed():
        return _run(request, stop)


def _run(request: RunRequest, stop: StopRequest) -> int:
    import torch

    from fifo.generator import FifoGenerator
    from fifo.outputs import OutputError, create_folder
    from fifo.parallel import shares_text
    from fifo.perf import tune_cpu_allocator
    from fifo.resume import Durability, RunInterrupted, state_folder
    from fifo.run import NonFiniteError
    from lvdm.build import load_model, model_identity
    from lvdm.checkpoint import CheckpointError

    r = request
    device = torch.device(r.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # this rank's GPU for everything CUDA does implicitly (NCCL too)
    if device.type == "cpu":
        tune_cpu_allocator()  # large tensors reuse heap memory instead of fresh page-faulting mmaps
    several = r.torchrun and r.world > 1
    group = window_group(r) if several and r.parallel == "windows" else None
    # --parallel windows: every rank takes part in every video, in rank 0's view of what is done.
    my_jobs = r.jobs if r.parallel == "windows" else r.jobs[r.rank :: r.world]
    done = r.done if group is None else group.broadcast_object(r.done)
    try:
        model = load_model(
            r.config,
            r.ckpt_path,
            r.random_init,
            device=r.device,
            seed=r.settings.seed,
            dtype=r.settings.dtype.torch_dtype,
        )
        model.unet.set_attn_processor(r.attention)
        model_id = model_identity(r.config, r.ckpt_path, r.random_init, r.settings.seed)
        # The automatic window batch's measurement is kept with the base-clip cache: the next
        # process of a sweep (or a --resume) skips it.
        memory_store = r.layout.cache_dir / "window_memory"
        generator = FifoGenerator(model, r.mode, r.settings, model_id, group=group, memory_store=memory_store)
        if group is None or group.is_writer:
            create_folder(r.layout.root)
    except (CheckpointError, OutputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if group is not None:
        windows = len(r.settings.geometry.windows())
        logger.info(
            "%d ranks share every video's %d windows (%s per rank); mode %s, experiment %s, device %s",
            r.world, windows, shares_text(windows, r.world), r.mode.name, r.layout.experiment, r.device,
        )  # fmt: skip
    else:
        logger.info(
            "rank %d/%d: %d of %d prompt(s), mode %s, experiment %s, device %s",
            r.rank, r.world, len(my_jobs), len(r.jobs), r.mode.name, r.layout.experiment, r.device,
        )  # fmt: skip
    results = []
    durability = Durability(
        resume=r.resume, save_every_frames=r.save_state_every, stop_requested=stop.requested
    )
    with torch.inference_mode(), contextlib.closing(generator):
        for index, job in enumerate(my_jobs):
            if index in done:
                logger.info("--resume: %s is complete already, skipped", r.layout.video_path(job))
                continue
            try:
                result = generator.run(
                    job, r.layout.root, r.layout.experiment, r.layout.cache_dir, durability
                )
            except NonFiniteError as err:
                print(f"error: {job.prompt!r}: {err}", file=sys.stderr)
                return 1
            except RunInterrupted as stopped:
                if group is None or group.is_writer:
                    logger.warning(
                        "stopped by %s after %d frame(s); state saved in %s%s. To continue: %s",
                        stop.signal_name,
                        stopped.frames,
                        state_folder(r.layout.video_path(job)),
                        f"; the frames so far: {stopped.partial_video}" if stopped.partial_video else "",
                        resume_command(),
                    )
                return stop.exit_code
            results.append(result)
            logger.info(
                "done: %d frames in %.1fs → %s%s",
                result.frames,
                result.seconds,
                result.video_path,
                " (cached base clip)" if result.base_clip_cached else "",
            )
    if several and r.parallel == "prompts":
        summarize_ranks(r, results)
    end_process_group()
    return 0


def window_group(request: RunRequest):  # noqa: ANN201 -- a fifo.parallel.RankGroup
    """--parallel windows: the ranks' data group (NCCL between GPUs, gloo on CPUs), with timeouts
    so that a rank that died makes the others fail instead of waiting forever."""
    import torch
    import torch.distributed as dist

    from fifo.parallel import DEFAULT_TIMEOUT, RankGroup

    device = torch.device(request.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    return RankGroup(
        request.rank, request.world, device, dist.new_group(backend=backend, timeout=DEFAULT_TIMEOUT)
    )


def summarize_ranks(request: RunRequest, results: list) -> None:
    """--parallel prompts: rank 0 logs every rank's videos (a gloo collective with a long timeout:
    ranks that finish early wait here for the slowest one)."""
    import torch.distributed as dist

    gathered: list = [None] * request.world
    dist.all_gather_object(gathered, [(x.prompt, str(x.video_path), x.frames) for x in results])
    if request.rank == 0:
        logger.info("all ranks: %d video(s) written", sum(len(g) for g in gathered))
        for rank, items in enumerate(gathered):
            for prompt, path, frames in items:
                logger.info("  rank %d: %s (%d frames) %s", rank, path, frames, prompt)


if __name__ == "__main__":
    sys.exit(main())
