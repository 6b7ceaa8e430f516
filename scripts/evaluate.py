"""Score the temporal consistency of generated videos.

    python scripts/evaluate.py results/videocraft_v2_fifo/random_noise
    python scripts/evaluate.py results/videocraft_v2_fifo/random_noise \\
        --clip_ckpt videocrafter_models/Image2Video_512/model.ckpt

Writes metrics.csv, metrics.json and consistency.png (see tools/evaluation.py for the metrics) and
prints a table: one line per video, grouped by experiment, then the per-experiment means.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run from anywhere without installing the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvdm.checkpoint import CheckpointError  # noqa: E402
from tools.evaluation import format_table, run_evaluation  # noqa: E402
from tools.video_io import VideoReadError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Temporal-consistency metrics of generated videos: flicker (mean |frame i+1 - frame i|), "
            "drift from the first frame and, with --clip_ckpt, CLIP image-embedding similarity of "
            "consecutive frames and to the first frame. A video .../<prompt>/<experiment>.gif is "
            "reported under its prompt folder and experiment (file stem)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RESULT_DIR_OR_VIDEO",
        help="result folders (searched recursively for .gif/.mp4) and/or video files",
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: the first RESULT_DIR, or the current folder)"
    )
    parser.add_argument(
        "--clip_ckpt",
        default=None,
        help="checkpoint holding the CLIP image tower (e.g. videocrafter_models/Image2Video_512/model.ckpt); "
        "without it the CLIP metrics are skipped",
    )
    parser.add_argument("--clip_arch", default="ViT-H-14", help="OpenCLIP architecture of that tower")
    parser.add_argument(
        "--clip_prefix",
        default="embedder.",
        help="key prefix of the tower in the checkpoint ('' for a bare tower)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="frames per CLIP forward pass")
    parser.add_argument(
        "--device", default=None, help="torch device for CLIP (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--include_origin", action="store_true", help="also score origin.gif/.mp4 (the short base clip)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        rows, outputs = run_evaluation(
            args.inputs,
            out_dir=args.out,
            clip_ckpt=args.clip_ckpt,
            clip_arch=args.clip_arch,
            clip_prefix=args.clip_prefix,
            batch_size=args.batch_size,
            include_origin=args.include_origin,
            device=args.device,
            progress=not args.quiet,
        )
    except (FileNotFoundError, VideoReadError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print()
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
