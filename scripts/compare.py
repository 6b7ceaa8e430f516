"""Put videos side by side: a labelled grid video and/or a PNG contact sheet.

    python scripts/compare.py a/t2v.gif a/t2v_TTqcache_attn1_w0.9.gif
    python scripts/compare.py --prompt_dir results/videocraft_v2_fifo/random_noise/<prompt> \\
        --out compare.gif --sheet sheet.png --every 8

Paths are relative to the current folder. Without --out and --sheet the grid goes to
results/compare/compare.mp4; keep outputs out of the prompt folders (a compare.gif inside one
would be scored as an experiment by scripts/evaluate.py). Exit code 2: a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run from anywhere without installing the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.cli_help import DefaultsHelpFormatter  # noqa: E402
from infra.errors import MissingInputError, SettingsError, UserError  # noqa: E402
from infra.video_io import VIDEO_SUFFIXES, find_videos, probe_video, read_video  # noqa: E402
from tools.comparison import default_labels, make_contact_sheet, save_contact_sheet, write_grid  # noqa: E402

# Outputs go under results/ unless told otherwise, beside (not inside) the generated videos' tree:
# a compare video in a prompt folder would be scored as an experiment by scripts/evaluate.py.
DEFAULT_OUT = str(Path("results") / "compare" / "compare.mp4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Side-by-side comparison of videos: a grid video with a label above each tile and/or a PNG "
            f"contact sheet (one row per video). Without --out and --sheet, writes {DEFAULT_OUT}."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "videos", nargs="*", metavar="VIDEO", help=f"videos to compare ({'/'.join(VIDEO_SUFFIXES)})"
    )
    parser.add_argument(
        "--prompt_dir",
        default=None,
        help="take every experiment video in this prompt folder (label = experiment name)",
    )
    parser.add_argument(
        "--include_origin",
        action="store_true",
        help="with --prompt_dir: also show origin.gif (the base clip)",
    )
    parser.add_argument("--labels", nargs="+", default=None, help="one label per video (default: file stems)")
    parser.add_argument("--out", default=None, help="grid video to write (.gif or .mp4)")
    parser.add_argument("--sheet", default=None, help="contact sheet to write (.png)")
    parser.add_argument(
        "--every",
        type=int,
        default=None,
        help="contact sheet: every K-th frame (default: at most 12 columns)",
    )
    parser.add_argument(
        "--thumb_height", type=int, default=128, help="contact sheet: thumbnail height in pixels"
    )
    parser.add_argument(
        "--sheet_labels", choices=("left", "top"), default="left", help="contact sheet: where the labels go"
    )
    parser.add_argument(
        "--fps", type=float, default=None, help="grid frame rate (default: that of the first video)"
    )
    parser.add_argument("--cols", type=int, default=None, help="tiles per row (default: all in one row)")
    parser.add_argument(
        "--pad",
        action="store_true",
        help="pad shorter videos with their last frame (default: cut all to the shortest)",
    )
    parser.add_argument(
        "--tile_height",
        type=int,
        default=None,
        help="resize tiles to this height (default: the tallest video)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    if not args.videos and not args.prompt_dir:
        parser.error("give video files or --prompt_dir DIR")
    for name in ("every", "thumb_height", "cols", "tile_height"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.fps is not None and args.fps <= 0:
        parser.error(f"--fps must be > 0, got {args.fps}")
    if args.out is not None and Path(args.out).suffix.lower() not in VIDEO_SUFFIXES:
        parser.error(f"--out must end in .gif or .mp4, got {args.out}")
    if args.out is None and args.sheet is None:
        args.out = DEFAULT_OUT
    return args


def collect(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """The videos to compare and their labels."""
    paths = [Path(p) for p in args.videos]
    if args.prompt_dir:
        folder = Path(args.prompt_dir)
        if not folder.is_dir():
            raise MissingInputError(f"--prompt_dir {folder} is not a folder")
        found = find_videos([folder], include_origin=args.include_origin, recursive=False)
        if not found:
            hint = "" if args.include_origin else " (origin.* is skipped unless --include_origin)"
            raise MissingInputError(f"no .gif or .mp4 videos in {folder}{hint}")
        paths += found
    labels = args.labels or default_labels(paths)
    if len(labels) != len(paths):
        raise SettingsError(
            f"got {len(labels)} labels for {len(paths)} videos; give one --labels entry per video"
        )
    return paths, labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        paths, labels = collect(args)
        videos = [read_video(p) for p in paths]
        written = []
        if args.out:
            fps = args.fps or probe_video(paths[0]).fps or 8.0
            written.append(write_grid(args.out, videos, labels, fps, args.cols, args.pad, args.tile_height))
        if args.sheet:
            sheet = make_contact_sheet(
                videos, labels, args.every, args.thumb_height, label_position=args.sheet_labels, pad=args.pad
            )
            written.append(save_contact_sheet(args.sheet, sheet))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
