"""``videocrafter_main.main``: arguments → logging → checked request (agreed on by every rank) →
dry run or run. Exit codes: 0 done, 1 a run failed, 2 a usage error (a :class:`infra.errors.UserError`,
printed as ``error: ...``), 130/143 stopped by SIGINT/SIGTERM. Any other exception is a bug: it
keeps its traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli.distributed import agree_on_errors, end_process_group, start_process_group
from cli.dry_run import dry_run
from cli.messages import cli_message
from cli.parser import Parallelism, build_parser
from cli.request import build_request
from cli.run import run
from infra.cuda_runtime import emulated
from infra.errors import UserError


class _QuietThirdParty(logging.Filter):
    """Drop third-party INFO/DEBUG records (open_clip logs through the root logger)."""

    PACKAGES = (f"{os.sep}open_clip{os.sep}", f"{os.sep}timm{os.sep}", f"{os.sep}huggingface_hub{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(p in record.pathname for p in self.PACKAGES)


def configure_logging(debug: bool) -> None:
    """INFO from the project (DEBUG with ``--debug``, third-party libraries too), one line per record."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietThirdParty())
        for name in ("PIL", "matplotlib", "urllib3", "filelock", "fsspec"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # diffusers' import reaches bitsandbytes, which warns that it found no optional CPU kernel.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    if args.plan_for is None:
        return _main(args)
    # --plan_for: every CUDA runtime query (is there a GPU, its memory and capability) answered
    # for that GPU, one per process of this node; the run itself is planned on fake tensors.
    with emulated(args.plan_for, count=int(os.environ.get("LOCAL_WORLD_SIZE", 1))):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    """The command line after parsing (under ``--plan_for``'s emulation if given)."""
    several = start_process_group()
    if several and args.parallel is Parallelism.WINDOWS and int(os.environ["RANK"]) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        request, error = build_request(args), None
    except UserError as err:
        request, error = None, f"error: {cli_message(err)}"
    except KeyboardInterrupt:  # Ctrl-C while the inputs are checked: nothing was written yet
        print("stopped by SIGINT before the run started; nothing was written", file=sys.stderr)
        return 130
    error = agree_on_errors(error) if several else error
    if error is not None:
        print(error, file=sys.stderr)
        end_process_group()
        return 2
    return dry_run(request) if request.dry_run else run(request)
