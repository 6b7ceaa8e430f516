"""Every input checked, in the order a user would fix them, into one frozen :class:`RunRequest`:
nothing below it reads the parsed arguments. No model is built and nothing is written here."""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cli import LOGGER_NAME
from cli.flag_rules import check_contradictions, log_unused
from cli.parser import (
    DEFAULT_CACHE_DIR,
    DEFAULT_OUTPUT_ROOT,
    Parallelism,
    flag_defaults,
    parse_length,
    trick_arguments,
)
from fifo.noise import NoiseOrder
from fifo.options import GenerationSettings, ModeOptions, Precision, parse_mode
from fifo.seed_model import SeedModelSpec
from infra.errors import UsageError
from lvdm.modules.attention_kernels import AttentionBackend

if TYPE_CHECKING:
    import torch

    from fifo.outputs import OutputLayout
    from fifo.prompts import PromptJob

logger = logging.getLogger(LOGGER_NAME)

# A model this large (parameters) on a CPU takes hours per video: refused unless asked for.
FULL_SIZE_PARAMETERS = 500_000_000


@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, checked: nothing below this point reads ``args``."""

    mode: ModeOptions
    settings: GenerationSettings
    jobs: list[PromptJob]
    config: str
    ckpt_path: str | None
    random_init: bool
    device: torch.device
    attention: AttentionBackend
    layout: OutputLayout
    overwrite: bool
    rank: int
    world: int
    torchrun: bool
    parallel: Parallelism = Parallelism.PROMPTS
    dry_run: bool = False
    max_memory: int | None = None
    resume: bool = False
    save_state_every: int | None = None
    done: frozenset[int] = frozenset()  # indices (in this rank's jobs) of videos already complete
    compile_unet: bool = False  # --compile: the U-Net through torch.compile (fifo/compile.py)
    seed_model: SeedModelSpec | None = None  # the text model of the seeded modes (fifo/seed_model.py)
    plan_for: str | None = None  # --plan_for: the GPU a dry run plans for (infra.cuda_runtime.GPUS)

    @property
    def model_id(self) -> str:
        """The weights' fingerprint for the caches and saved states (the seed model's included)."""
        return run_model_id(
            self.config, self.ckpt_path, self.random_init, self.settings.seed, self.seed_model
        )

    @property
    def my_jobs(self) -> list[PromptJob]:
        """The jobs of this rank (:func:`rank_jobs`)."""
        return rank_jobs(self.jobs, self.parallel, self.rank, self.world)


def rank_jobs(jobs: list[PromptJob], parallel: Parallelism, rank: int, world: int) -> list[PromptJob]:
    """The jobs a rank runs: every one with ``--parallel windows`` (every rank takes part in every
    video), else every ``world``-th from its ``rank`` (``--parallel prompts``)."""
    return jobs if parallel is Parallelism.WINDOWS else jobs[rank::world]


def run_model_id(
    config: str, ckpt_path: str | None, random_init: bool, seed: int, seed_model: SeedModelSpec | None
) -> str:
    """``lvdm.build.model_identity`` of the model, followed by the seed model's when one samples
    the base clips (another text model gives another video)."""
    from lvdm.build import model_identity

    model_id = model_identity(config, ckpt_path, random_init, seed)
    if seed_model is None:
        return model_id
    return f"{model_id}+seed:{model_identity(seed_model.config, seed_model.ckpt_path, random_init, seed)}"


def resolve_seed_model(args: argparse.Namespace, mode: ModeOptions, facts, settings) -> SeedModelSpec | None:
    """The text model that samples the seeded modes' base clips (``--seed_config``): given, or
    VideoCrafter2 by default for a family that cannot sample one (DynamiCrafter), else None."""
    from fifo.family_rules import check_seed_model
    from fifo.seed_model import DEFAULT_SEED_CKPT, DEFAULT_SEED_CONFIG
    from lvdm.build import config_facts, load_config

    config = args.seed_config
    if config is None and mode.main.seeds_image and facts.family.needs_input_image:
        config = DEFAULT_SEED_CONFIG
    if config is None:
        if args.seed_ckpt is not None:
            raise UsageError(
                "--seed_ckpt is the checkpoint of --seed_config, which this run does not use: leave it out"
            )
        return None
    check_seed_model(config_facts(load_config(config)), mode, settings, config)
    ckpt = args.seed_ckpt
    if args.random_init:
        if ckpt is not None:
            raise UsageError(
                f"--random_init and --seed_ckpt {ckpt} contradict each other: --random_init gives the seed "
                "model random weights too, so the checkpoint would not be read; drop one of them"
            )
        return SeedModelSpec(config, None)
    if ckpt is None and config == DEFAULT_SEED_CONFIG:
        ckpt = DEFAULT_SEED_CKPT
    if ckpt is None:
        raise UsageError(
            f"--seed_ckpt is required with --seed_config {config} (or --random_init for tests and demos)"
        )
    if not Path(ckpt).is_file():
        raise UsageError(
            f"--seed_ckpt {ckpt}: no such file. The seeded modes on this model take their base clip from "
            f"{config}: download its checkpoint (python scripts/download_checkpoints.py --which t2v for "
            "VideoCrafter2) or pass --seed_ckpt"
        )
    return SeedModelSpec(config, ckpt)


def distributed_rank(args: argparse.Namespace) -> tuple[int, int, bool]:
    """(rank, world size, launched by torchrun). torchrun's environment wins over --rank."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if args.rank != 0 or args.num_processes != 1:
            logger.info(
                "under torchrun, RANK and WORLD_SIZE set the shard; --rank and --num_processes are ignored"
            )
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True
    return args.rank, args.num_processes, False


def resolve_device(requested: str | None, torchrun: bool, dry_run: bool = False) -> torch.device:
    """The device to run on; a clear error when CUDA is asked for and absent (a dry run plans for
    a device it does not need to have)."""
    import torch

    from infra.cuda_runtime import cuda

    runtime = cuda()
    if requested is None:
        requested = "cuda" if runtime.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise UsageError(f"--device {requested}: not a device; use cuda, cuda:N or cpu") from err
    if device.type == "cuda" and dry_run and not runtime.is_available():
        return device
    if device.type == "cuda":
        if not runtime.is_available():
            raise UsageError(
                f"--device {requested}: PyTorch finds no CUDA GPU it can use here "
                "(torch.cuda.is_available() is False); run on a GPU machine or pass --device cpu"
            )
        if device.index is not None and device.index >= runtime.device_count():
            raise UsageError(
                f"--device {requested}: only {runtime.device_count()} GPU(s) here (cuda:0 ... "
                f"cuda:{runtime.device_count() - 1})"
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
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif device.type != "cpu":
        raise UsageError(f"--device {requested}: only cuda and cpu are supported")
    return device


def settings_from_args(args: argparse.Namespace, facts, device: torch.device) -> GenerationSettings:
    """The run's settings; what the user left out comes from the model config ``facts``."""
    try:
        length = parse_length(args.new_video_length)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return GenerationSettings(
        video_length=args.video_length if args.video_length is not None else facts.temporal_length,
        num_partitions=args.num_partitions,
        new_video_length=length if length is not None else 100,
        height=args.height if args.height is not None else facts.default_size[0],
        width=args.width if args.width is not None else facts.default_size[1],
        fps=args.fps,
        guidance=args.unconditional_guidance_scale
        if args.unconditional_guidance_scale is not None
        else facts.family.default_guidance,
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


def _check_cpu_size(
    args: argparse.Namespace, device: torch.device, cfg: dict, config: str | None = None
) -> None:
    """Refuse a full-size model with random weights on a CPU: hours of work nobody asked for
    (``config``: the path of ``cfg``, default ``--config``)."""
    if not args.random_init or device.type != "cpu" or args.allow_full_on_cpu or args.dry_run:
        return
    from lvdm.build import count_parameters, resolve_config_path

    flag, tiny = "--config", "configs/tiny_t2v.yaml (or configs/tiny_i2v.yaml)"
    if config is not None:
        flag, tiny = "--seed_config", "configs/tiny_t2v.yaml"
    config = config or args.config
    parameters = count_parameters(cfg, resolve_config_path(config).parent)
    if parameters >= FULL_SIZE_PARAMETERS:
        raise UsageError(
            f"--random_init with {flag} {config} builds the full-size model ({parameters / 1e9:.2f} B "
            f"parameters: U-Net, autoencoder and text encoder) on a CPU: hours per video. "
            f"For a demo or a test use {flag} {tiny}; "
            "to run it anyway pass --allow_full_on_cpu."
        )


def _check_plan_flags(args: argparse.Namespace, device: torch.device) -> None:
    """--plan_for plans a dry run on a GPU; --max_memory is read by dry runs only."""
    if args.plan_for is not None and not args.dry_run:
        raise UsageError(f"--plan_for {args.plan_for} plans a dry run: add --dry_run")
    if args.plan_for is not None and args.device is not None and device.type != "cuda":
        raise UsageError(f"--plan_for {args.plan_for} plans for a GPU: drop --device {args.device}")
    if args.max_memory is not None and not args.dry_run:
        logger.warning(
            "--max_memory is read by --dry_run only: this run sizes its window batch from the GPU's free memory"
        )


def check_gpu_dtype(device: torch.device, precision: Precision) -> None:
    """bf16 on a GPU below sm_80 (T4, V100, RTX 20xx): no fused attention kernel takes it there,
    so attention would run as the math kernel and hold whole attention matrices. Refused before
    anything loads."""
    from infra.cuda_runtime import cuda

    if precision is not Precision.BF16 or device.type != "cuda" or not cuda().is_available():
        return
    gpu = cuda().spec(device)
    if not gpu.fused_bf16_attention:
        raise UsageError(
            f"--dtype bf16 on {gpu.describe()}: below sm_80 no fused attention kernel takes bf16, so "
            "attention would fall back to PyTorch's math kernel and its memory grows with the square of "
            "the tokens. Use --dtype fp16 (this GPU's fast half precision, the default on CUDA) or fp32"
        )


def _check_attention(backend: AttentionBackend, device: torch.device) -> None:
    """xformers: CUDA only and optional; found out now, not at the first attention call."""
    if backend is not AttentionBackend.XFORMERS:
        return
    from lvdm.modules.attention import xformers_available

    if device.type != "cuda":
        raise UsageError(f"--attention xformers runs on CUDA only, not on {device}: use --attention sdpa")
    if not xformers_available():
        raise UsageError(
            "--attention xformers: the xformers package is not installed (pip install xformers, matching "
            "your torch and CUDA); --attention sdpa (the default) uses PyTorch's fused kernels instead"
        )
    from infra.cuda_runtime import cuda
    from lvdm.modules.attention_kernels import xformers_failure

    if cuda().emulated or not cuda().is_available():
        return  # a dry run for a GPU that is not here: its xformers is checked where it runs
    failure = xformers_failure(device)
    if failure is not None:
        raise UsageError(
            f"--attention xformers: its kernel fails on {device} ({failure}); install the xformers build that "
            "matches your torch and CUDA, or use --attention sdpa (the default: PyTorch's fused kernels)"
        )


def _check_flow_flags(args: argparse.Namespace, defaults: argparse.Namespace, family: str) -> None:
    """The flags that drive the U-Net's machinery, refused on a flow-matching model with the reason."""
    refused = {
        "--compile": (args.compile, "it compiles the U-Net (fifo/compile.py), which this model has not"),
        "--attention xformers": (
            args.attention is AttentionBackend.XFORMERS,
            "the transformer runs diffusers' own attention; leave --attention out",
        ),
        "--seed_config": (
            args.seed_config is not None,
            "it seeds image models, and this model samples its own",
        ),
    }
    for flag, (given, reason) in refused.items():
        if given:
            raise UsageError(f"{flag} does not apply to {args.config} ({family}): {reason}")
    if args.eta != defaults.eta:
        logger.info("--eta does not apply to %s: its flow steps are deterministic Euler steps", family)


def _check_resumable(jobs, layout, mode, settings, model_id: str, device: torch.device) -> frozenset[int]:
    """For --resume: the jobs whose video is complete (skipped), and a usage error when a saved
    state was made with other arguments (naming what differs) or is damaged (a
    :class:`~fifo.resume.StateError` saying what the user can do; nothing is deleted)."""
    from fifo.resume import StateError, StateStore, resume_fingerprint, state_folder

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
        except StateError as err:
            raise store.damaged(err, video) from None
        current = StateStore(store.folder, resume_fingerprint(job, mode, settings, model_id, device, video))
        current.check_fingerprint(saved)
    return frozenset(done)


def build_request(args: argparse.Namespace) -> RunRequest:
    """Check every input, in the order a user would fix them; nothing is written, no model is built.

    Raises:
        UsageError, ModeError, ValueError (PromptFileError, ConfigError, OutputError): the message
        names the problem and the fix.
    """
    from fifo.family_rules import check_model_fits
    from fifo.outputs import OutputLayout, check_not_overwriting, check_writable_folder, experiment_name
    from fifo.prompts import parse_prompt_file, safe_name
    from lvdm.build import config_facts, load_config

    mode = parse_mode(args.mode, args.qcache_weight, trick_arguments(args))
    if not (args.num_processes >= 1 and 0 <= args.rank < args.num_processes):
        raise UsageError("--rank must be in [0, --num_processes)")
    if not (args.random_init or args.ckpt_path):
        raise UsageError("--ckpt_path is required (or --random_init for tests and demos)")
    check_contradictions(args)
    jobs = parse_prompt_file(args.prompt_file, image_mode=mode.main.takes_input_image)
    if mode.subject is not None:
        from fifo.tricks.subject import check_subject_in_prompts

        check_subject_in_prompts(mode.subject.phrase, jobs)
    rank, world, torchrun = distributed_rank(args)
    device = resolve_device(args.device, torchrun, args.dry_run)
    _check_plan_flags(args, device)
    cfg = load_config(args.config)
    facts = config_facts(cfg)
    settings = settings_from_args(args, facts, device)
    given_none = flag_defaults(args)  # every flag at its default: what the user changed is named
    if settings.dtype is Precision.FP16 and device.type == "cpu":
        raise UsageError(
            "--dtype fp16 on a CPU: PyTorch's CPU kernels do not all run (or run fast) in fp16; "
            "use --dtype bf16 or fp32 there"
        )
    check_gpu_dtype(device, settings.dtype)
    if facts.family.flow_matching:
        _check_flow_flags(args, given_none, facts.family.name)
    seed_model = resolve_seed_model(args, mode, facts, settings)
    log_unused(args, given_none, mode, facts)
    check_model_fits(facts, mode, settings, args.config, None if seed_model is None else seed_model.config)
    _check_cpu_size(args, device, cfg)
    if seed_model is not None:
        _check_cpu_size(args, device, load_config(seed_model.config), seed_model.config)
    _check_attention(args.attention, device)

    defaults = settings_from_args(given_none, facts, device)
    # A story sets its own length: -l does not shape its video, so it does not name it either.
    named = (
        replace(settings, new_video_length=defaults.new_video_length)
        if all(j.is_story for j in jobs)
        else settings
    )
    experiment = safe_name(args.experiment) if args.experiment else experiment_name(mode, named, defaults)
    root = Path(args.output_dir) if args.output_dir else DEFAULT_OUTPUT_ROOT
    # Published layout: results/videocraft_v2_fifo/latents; with --output_dir, inside it.
    cache_dir = root / "latents" if args.output_dir else DEFAULT_CACHE_DIR
    layout = OutputLayout(root, experiment, cache_dir, ".mp4" if settings.use_mp4 else ".gif")
    check_writable_folder(root)
    if not args.output_dir:
        check_writable_folder(cache_dir, name="the cache folder")
    if args.parallel is Parallelism.WINDOWS and not torchrun:
        logger.info("--parallel windows without torchrun: one process computes every window")
    my_jobs = rank_jobs(jobs, args.parallel, rank, world)
    if args.save_state_every is not None and args.save_state_every < 1:
        raise UsageError("--save_state_every must be ≥ 1 (output frames between saved states)")
    done: frozenset[int] = frozenset()
    if args.resume:
        model_id = run_model_id(args.config, args.ckpt_path, args.random_init, args.seed, seed_model)
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
    endless = [i for i, job in enumerate(my_jobs) if not job.is_story]
    if settings.new_video_length == math.inf and endless and endless[0] < len(my_jobs) - 1:
        raise UsageError(
            f"-l inf makes the video of {args.prompt_file} line {my_jobs[endless[0]].line} endless, so the "
            f"{len(my_jobs) - 1 - endless[0]} video(s) after it would never be made; run -l inf on a prompt "
            "file of one prompt, or give a number of frames"
        )
    stories = [job for job in my_jobs if job.is_story]
    if stories and args.new_video_length is not None:
        logger.warning(
            "-l/--new_video_length %s does not apply to the story in %s: a story's length is the sum of "
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
        compile_unet=args.compile,
        seed_model=seed_model,
        plan_for=args.plan_for,
    )
