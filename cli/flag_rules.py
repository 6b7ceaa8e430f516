"""The flags that contradict each other (an error naming both) and the values a run does not
read (one log line each): every value given is used, refused with the reason, or said to be
ignored. Read by :func:`cli.request.build_request`."""

from __future__ import annotations

import argparse
import logging
import os

from cli import LOGGER_NAME
from cli.parser import Parallelism
from fifo.options import ModeOptions
from infra.errors import UsageError

logger = logging.getLogger(LOGGER_NAME)


def check_contradictions(args: argparse.Namespace) -> None:
    """Two flags that ask for opposite things: an error naming both, never one of them silently
    dropped. A flag that only does not apply here is said in one log line instead.

    Raises:
        UsageError: naming both flags and how to choose.
    """
    if args.random_init and args.ckpt_path:
        raise UsageError(
            f"--random_init and --ckpt_path {args.ckpt_path} contradict each other: --random_init builds the "
            "model with random weights and would not read the checkpoint; drop --random_init to use the "
            "checkpoint, or --ckpt_path for a test or demo on random weights"
        )
    if args.resume and args.overwrite:
        raise UsageError(
            "--resume and --overwrite contradict each other: --resume continues the saved state, --overwrite "
            "deletes it and starts afresh; pass one of them"
        )
    if args.sequential and args.window_batch is not None:
        raise UsageError(
            f"--sequential and --window_batch {args.window_batch} contradict each other: the sequential path "
            "runs one window per U-Net call; drop --sequential to batch windows"
        )
    if args.allow_full_on_cpu and not args.random_init:
        logger.info("--allow_full_on_cpu applies to --random_init only (a checkpoint's model runs as asked)")


def log_unused(args: argparse.Namespace, defaults: argparse.Namespace, mode: ModeOptions, facts) -> None:
    """One log line for each value given that this run does not read (``defaults``: every flag at
    its default, ``facts``: the model's)."""
    given = {name: getattr(args, name) for name in ("qcache_weight", "fps", "save_state_every")}
    given = {k: v for k, v in given.items() if v != getattr(defaults, k)}
    if "qcache_weight" in given and mode.qcache is None:
        logger.info(
            "--qcache_weight %g is ignored: no Q-cache (TTqcache, STqcache) in --mode", args.qcache_weight
        )
    if "fps" in given and facts.family.takes_frame_stride:
        logger.info("--fps %d is ignored: %s is conditioned on --frame_stride instead", args.fps, args.config)
    if "save_state_every" in given and args.dry_run:
        logger.info("--save_state_every does not apply to --dry_run, which saves nothing")
    if args.compile and args.dry_run:
        logger.info("--compile does not apply to --dry_run: the plan runs the U-Net as it is, uncompiled")
    if args.parallel is Parallelism.WINDOWS and args.num_processes > 1 and "RANK" not in os.environ:
        logger.info(
            "--parallel windows splits each video's windows over torchrun's processes; --rank and "
            "--num_processes are ignored (every prompt runs here)"
        )
