"""The run: a video per prompt of this rank, stopped cleanly by SIGINT/SIGTERM (state saved,
the command to resume logged), and the ranks' summary."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from typing import TYPE_CHECKING

from cli import LOGGER_NAME
from cli.distributed import end_process_group, summarize_ranks, window_group
from cli.messages import cli_message
from cli.models import run_models
from cli.parser import Parallelism
from cli.request import RunRequest
from infra.cuda_runtime import bind_device
from infra.errors import UserError

if TYPE_CHECKING:
    from fifo.seed_clips import SeedClips
    from lvdm.models.ddpm3d import LatentDiffusion

logger = logging.getLogger(LOGGER_NAME)


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


def resume_command(argv: list[str] | None = None) -> str:
    """The user's command line (``argv``, default ``sys.argv``) with ``--resume``, to print when a
    run stops: each flag once, with the value the run used (argparse keeps a repeated flag's last),
    and without ``--overwrite``, which would contradict ``--resume``."""
    from cli.parser import build_parser

    program, *args = sys.argv if argv is None else argv
    actions = build_parser()._option_string_actions  # flag spelling (-l, --new_video_length) → action
    segments: list[tuple[str | None, list[str]]] = []  # (the flag's dest, its tokens)
    index = 0
    while index < len(args):
        token = args[index]
        action = actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
        taken = 1 if action is None or "=" in token or action.nargs == 0 else 2
        segments.append((None if action is None else action.dest, args[index : index + taken]))
        index += taken
    last = {dest: k for k, (dest, _) in enumerate(segments) if dest is not None}
    kept = [
        token
        for k, (dest, tokens) in enumerate(segments)
        if dest is None or (last[dest] == k and dest != "overwrite")
        for token in tokens
    ]
    if "resume" not in last:
        kept.append("--resume")
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], program, *kept])


def seed_clips_of(r: RunRequest, model: LatentDiffusion) -> SeedClips:
    """The seeded modes' text model (``--seed_config``), loaded next to the main one, as a
    base-clip source (``fifo.seed_clips``)."""
    from fifo.generator import FifoGenerator
    from fifo.seed_clips import SeedClips
    from fifo.seed_model import SEED_MODE, seed_settings
    from lvdm.build import model_identity

    spec = r.seed_model
    model_id = model_identity(spec.config, spec.ckpt_path, r.random_init, r.settings.seed)
    logger.info("base clips of mode %s: sampled by %s", r.mode.main.value, spec.config)
    return SeedClips(FifoGenerator(model, SEED_MODE, seed_settings(r.settings), model_id))


def run(request: RunRequest) -> int:
    """Generate the videos of ``request``; SIGINT/SIGTERM stop it cleanly (see :class:`StopRequest`)."""
    stop = StopRequest()
    with stop.installed():
        try:
            return _run(request, stop)
        finally:
            end_process_group()  # every exit, an error's too, leaves the process group cleanly


def _run(request: RunRequest, stop: StopRequest) -> int:
    import torch

    from fifo.outputs import create_folder
    from fifo.parallel import PeerFailed, shares_text
    from fifo.perf import tune_cpu_allocator
    from fifo.resume import ResumeOptions, RunInterrupted, state_folder
    from fifo.state import NonFiniteError
    from fifo.wan_generator import generator_class

    r = request
    device = bind_device(r.device)  # on CUDA: this rank's GPU made current (NCCL too), cuDNN autotuned
    if device.type == "cpu":
        tune_cpu_allocator()  # large tensors reuse heap memory instead of fresh page-faulting mmaps
    several = r.torchrun and r.world > 1
    group = window_group(r) if several and r.parallel is Parallelism.WINDOWS else None
    # --parallel windows: every rank takes part in every video, in rank 0's view of what is done.
    my_jobs = r.my_jobs
    done = r.done if group is None else group.broadcast_object(r.done)
    try:
        # Only the writer samples base clips: the seeded modes' text model is loaded there.
        model, seed_model = run_models(r, fake=False, seed=group is None or group.is_writer)
        seed_clips = None if seed_model is None else seed_clips_of(r, seed_model)
        # The automatic window batch's measurement is kept with the base-clip cache: the next
        # process of a sweep (or a --resume) skips it.
        memory_store = r.layout.cache_dir / "window_memory"
        generator = generator_class(model)(
            model,
            r.mode,
            r.settings,
            r.model_id,
            group=group,
            memory_store=memory_store,
            seed_clips=seed_clips,
            seed_model=None if r.seed_model is None else r.seed_model.config,
        )
        if r.compile_unet:
            from fifo.compile import compile_unet

            compile_unet(model.unet, r.layout.cache_dir / "compiled")  # kept for the next run of a sweep
        if group is None or group.is_writer:
            create_folder(r.layout.root)
    except UserError as err:
        print(f"error: {cli_message(err)}", file=sys.stderr)
        return 2

    if group is not None:
        windows = len(r.mode.queue_geometry(r.settings.geometry).windows())
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
    resume_options = ResumeOptions(
        resume=r.resume, save_every_frames=r.save_state_every, stop_requested=stop.requested
    )
    with torch.inference_mode(), contextlib.closing(generator):
        for index, job in enumerate(my_jobs):
            if index in done:
                logger.info("--resume: %s is complete already, skipped", r.layout.video_path(job))
                continue
            try:
                result = generator.run(job, r.layout, resume_options)
            except NonFiniteError as err:
                print(f"error: {job.prompt!r}: {cli_message(err)}", file=sys.stderr)
                return 1
            except PeerFailed as err:
                print(f"error: rank {r.rank}: {err}", file=sys.stderr)
                return 1
            except UserError as err:  # found only now (a saved state that cannot be resumed): exit 2
                print(f"error: {cli_message(err)}", file=sys.stderr)
                return 2
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
    if several and r.parallel is Parallelism.PROMPTS:
        summarize_ranks(r, results)
    end_process_group()
    return 0
