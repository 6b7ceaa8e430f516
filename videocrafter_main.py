"""Long video generation with FIFO diagonal denoising on VideoCrafter.

    python videocrafter_main.py --config configs/inference_t2v_512_v2.0.yaml \\
        --ckpt_path videocrafter_models/base_512_v2/model.ckpt \\
        --prompt_file prompts/published_t2v.txt --mode t2v_TTqcache_attn1_unilatent

Flow: arguments → options (mode, settings) → validated prompts → model → FIFO generator →
videos. Everything a user can get wrong is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from fifo.noise import NoiseOrder
from fifo.options import GenerationSettings, ModeError, ModeOptions, Precision, parse_mode

logger = logging.getLogger("videocrafter_main")

DEFAULT_OUTPUT_ROOT = Path("results") / "videocraft_v2_fifo" / "random_noise"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/inference_t2v_512_v2.0.yaml", help="model config (YAML)")
    p.add_argument("--ckpt_path", default=None, help="checkpoint (.ckpt, .pt or .safetensors)")
    p.add_argument(
        "--prompt_file", "-p", required=True, help="prompts, one per line (i2v: image_path;prompt)"
    )
    p.add_argument("--mode", "-m", default="t2v", help="{main}[_{sub}]...: see the README")
    p.add_argument("--seed", type=int, default=321)
    p.add_argument(
        "--video_length",
        type=int,
        default=None,
        help="frames per window f (default: the model's temporal_length, 16)",
    )
    p.add_argument("--num_partitions", "-n", type=int, default=4, help="partitions n (DDIM steps = f·n)")
    p.add_argument("--new_video_length", "-l", type=int, default=100, help="output frames")
    p.add_argument("--height", type=int, default=None, help="default: the config's latent size × 8 (320)")
    p.add_argument("--width", type=int, default=None, help="default: the config's latent size × 8 (512)")
    p.add_argument("--fps", type=int, default=8, help="frame-rate conditioning of the model")
    p.add_argument("--unconditional_guidance_scale", type=float, default=12.0)
    p.add_argument("--eta", "-e", type=float, default=1.0)
    p.add_argument(
        "--lookahead_denoising",
        "-ld",
        action="store_false",
        help="turn lookahead denoising OFF (on by default)",
    )
    p.add_argument("--save_frames", action="store_true", help="also save every output frame as PNG")
    p.add_argument("--experiment", "-ex", default=None, help="output name (default: the mode and weight)")
    p.add_argument("--output_dir", default=None, help=f"output root (default: {DEFAULT_OUTPUT_ROOT})")
    p.add_argument("--use_mp4", action="store_true", help="write .mp4 instead of .gif")
    p.add_argument("--output_fps", type=int, default=10)
    p.add_argument("--rank", type=int, default=0, help="this process's shard of the prompt list")
    p.add_argument("--num_processes", type=int, default=1, help="number of shards")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.add_argument("--qcache_weight", type=float, default=0.9, help="Q-cache weight w in [0, 1]")
    p.add_argument("--device", default=None, help="cuda when available, else cpu")
    p.add_argument("--random_init", action="store_true", help="no checkpoint: random weights (tests, demos)")
    p.add_argument(
        "--dtype",
        choices=[p.value for p in Precision],
        default=None,
        help="default: fp16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--window_batch", type=int, default=None, help="windows per U-Net call (default: auto)")
    p.add_argument("--sequential", action="store_true", help="published path: one window and branch per call")
    p.add_argument("--attention", choices=("sdpa", "xformers", "math"), default="sdpa")
    p.add_argument(
        "--rng",
        choices=[o.value for o in NoiseOrder],
        default=NoiseOrder.DEFAULT.value,
        help="random numbers: 'default' (separate base-clip and FIFO streams; a cached base clip "
        "gives the same video) or 'published' (one stream seeded once, drawn in the published "
        "code's order: reproduces the published fork's video for a seed on the same device and dtype)",
    )
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def validate(args: argparse.Namespace) -> None:
    """Checks of arguments that are not settings of the run; raise ValueError with the fix.

    The run's settings are checked where they are defined (``GenerationSettings``).
    """
    checks = [
        (
            args.num_processes >= 1 and 0 <= args.rank < args.num_processes,
            "--rank must be in [0, --num_processes)",
        ),
        (
            args.random_init or args.ckpt_path,
            "--ckpt_path is required (or --random_init for tests and demos)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def settings_from_args(args: argparse.Namespace, facts, device: str) -> GenerationSettings:
    """The run's settings; what the user left out comes from the model config ``facts``."""
    return GenerationSettings(
        video_length=args.video_length or facts.temporal_length,
        num_partitions=args.num_partitions,
        new_video_length=args.new_video_length,
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
        dtype=Precision(args.dtype) if args.dtype else Precision.default_for(device),
        progress=not args.no_progress,
        rng=NoiseOrder(args.rng),
    )


def experiment_name(args: argparse.Namespace, mode: ModeOptions) -> str:
    from fifo.prompts import safe_name

    if args.experiment:
        return safe_name(args.experiment)
    name = mode.name
    if mode.qcache is not None:
        name += f"_w{mode.qcache.weight:g}"
    return name


def distributed_rank(args: argparse.Namespace) -> tuple[int, int, bool]:
    """(rank, world size, launched by torchrun). torchrun's environment wins over --rank."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), True
    return args.rank, args.num_processes, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        mode = parse_mode(args.mode, args.qcache_weight)
        validate(args)
        from fifo.prompts import parse_prompt_file

        jobs = parse_prompt_file(args.prompt_file, image_mode=mode.main.takes_input_image)
    except (ModeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run(args, mode, jobs)


def run(args: argparse.Namespace, mode: ModeOptions, jobs) -> int:
    import torch

    from fifo.generator import FifoGenerator, check_model_fits
    from fifo.perf import tune_cpu_allocator
    from lvdm.build import config_facts, load_config, load_model, model_identity
    from lvdm.checkpoint import CheckpointError
    from lvdm.utils import ConfigError

    rank, world, torchrun = distributed_rank(args)
    if torchrun:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and torchrun:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if torch.device(device).type == "cpu":
        tune_cpu_allocator()  # large tensors reuse heap memory instead of fresh page-faulting mmaps
    my_jobs = jobs[rank::world]
    try:
        facts = config_facts(load_config(args.config))
        settings = settings_from_args(args, facts, device)
        check_model_fits(facts, mode, settings, args.config)
        model = load_model(args.config, args.ckpt_path, args.random_init, device=device, seed=args.seed)
        model.unet.set_attn_processor(args.attention)
        generator = FifoGenerator(
            model, mode, settings, model_identity(args.config, args.ckpt_path, args.random_init, args.seed)
        )
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    output_root = Path(args.output_dir) if args.output_dir else DEFAULT_OUTPUT_ROOT
    # Published layout: results/videocraft_v2_fifo/latents; with --output_dir, inside it.
    cache_dir = output_root / "latents" if args.output_dir else DEFAULT_OUTPUT_ROOT.parent / "latents"
    experiment = experiment_name(args, mode)
    logger.info(
        "rank %d/%d: %d of %d prompt(s), mode %s, device %s",
        rank,
        world,
        len(my_jobs),
        len(jobs),
        mode.name,
        device,
    )
    results = []
    with torch.inference_mode(), contextlib.closing(generator):
        for job in my_jobs:
            result = generator.run(job, output_root, experiment, cache_dir)
            results.append(result)
            logger.info(
                "done: %d frames in %.1fs → %s%s",
                result.frames,
                result.seconds,
                result.video_path,
                " (cached base clip)" if result.base_clip_cached else "",
            )
    if torchrun:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, [(r.prompt, str(r.video_path), r.frames) for r in results])
        if rank == 0:
            total = sum(len(g) for g in gathered)
            logger.info("all ranks: %d video(s) written", total)
            for r, items in enumerate(gathered):
                for prompt, path, frames in items:
                    logger.info("  rank %d: %s (%d frames) %s", r, path, frames, prompt)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
