"""Score the temporal consistency of generated videos, with VBench's dimensions.

    python scripts/evaluate.py results/videocraft_v2_fifo/random_noise
    python scripts/evaluate.py results/sweep/videos --out results/sweep/report \\
        --dino_weights dino_vitbase16_pretrain.pth --clip_weights ViT-B-32.pt
    python scripts/evaluate.py results/sweep/videos --random_feature_models   # tests only

Writes metrics.csv, metrics.json (per video), summary.csv (mean per experiment) and
consistency.png (per-frame curves); see tools/vbench/ and tools/evaluation.py for the metrics.
Prints the per-video table, then the per-experiment means.

Paths are relative to the current folder; the outputs go to the first input folder (or, for
video files, results/evaluation/) unless --out says otherwise.
Exit status: 0 done, 2 a usage error: bad arguments, no videos, an unreadable video or checkpoint,
or a feature-model weights file missing (the message says which file to put where). Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Run from anywhere without installing the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.cli_help import DefaultsHelpFormatter  # noqa: E402
from infra.errors import UserError  # noqa: E402
from tools.evaluation import format_table, run_evaluation  # noqa: E402
from tools.extras import eval_extra_problem  # noqa: E402
from tools.vbench import DIMENSIONS, FeatureWeightsError  # noqa: E402
from tools.vbench.long import LongProtocol  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Temporal quality of generated videos. VBench's dimensions, computed as VBench does, in "
            "percent: subject_consistency (DINO ViT-B/16 features), background_consistency (CLIP "
            "ViT-B/32 features), temporal_flickering (mean |frame i+1 - frame i|), aesthetic_quality (LAION "
            "aesthetic head on CLIP ViT-L/14), imaging_quality (MUSIQ, SPAQ weights), motion_smoothness "
            "(AMT-S predicts the odd frames from the even ones); and dynamic_degree (RAFT optical flow; "
            "per video 1 if it moves, else 0, as VBench reports it: the experiment mean is the share of "
            "moving videos). Extra columns: "
            "flicker and drift from the first frame on [0, 1] pixels and, with --clip_ckpt, "
            "VideoCrafter's CLIP ViT-H-14 similarity of consecutive frames and to the first frame. "
            "A video .../<prompt>/<experiment>.gif is reported under its prompt folder and experiment "
            "(file stem)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RESULT_DIR_OR_VIDEO",
        help="result folders (searched recursively for .gif/.mp4) and/or video files",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: the first RESULT_DIR, or results/evaluation for video files)",
    )
    parser.add_argument(
        "--dimensions",
        nargs="+",
        choices=DIMENSIONS,
        default=list(DIMENSIONS),
        metavar="DIM",
        help=f"VBench dimensions to compute, any of: {' '.join(DIMENSIONS)} "
        "(temporal_flickering alone needs no model)",
    )
    parser.add_argument(
        "--dino_weights",
        default=None,
        metavar="FILE",
        help="DINO ViT-B/16 weights for subject_consistency: timm's model.safetensors "
        "(timm/vit_base_patch16_224.dino) or DINO's dino_vitbase16_pretrain.pth; when not given, "
        "taken from the Hugging Face cache, downloaded there on first use",
    )
    parser.add_argument(
        "--clip_weights",
        default=None,
        metavar="FILE",
        help="CLIP ViT-B/32 (OpenAI) weights for background_consistency: open_clip's "
        "open_clip_model.safetensors (timm/vit_base_patch32_clip_224.openai) or OpenAI's ViT-B-32.pt; "
        "when not given, taken from the Hugging Face cache, downloaded there on first use",
    )
    parser.add_argument(
        "--aesthetic_weights",
        default=None,
        metavar="FILE",
        help="LAION aesthetic head for aesthetic_quality: sa_0_4_vit_l_14_linear.pth (LAION-AI/aesthetic-predictor "
        "on GitHub) or a .safetensors of its weight/bias; when not given, taken from $TORCH_HOME/hub/checkpoints, "
        "downloaded there on first use",
    )
    parser.add_argument(
        "--clip_l14_weights",
        default=None,
        metavar="FILE",
        help="CLIP ViT-L/14 (OpenAI) weights for aesthetic_quality: open_clip's open_clip_model.safetensors "
        "(timm/vit_large_patch14_clip_224.openai) or OpenAI's ViT-L-14.pt; when not given, taken from the "
        "Hugging Face cache, downloaded there on first use",
    )
    parser.add_argument(
        "--musiq_weights",
        default=None,
        metavar="FILE",
        help="MUSIQ weights for imaging_quality: pyiqa's musiq_spaq_ckpt-358bb6af.pth "
        "(chaofengc/IQA-PyTorch-Weights) or a .safetensors of the same keys; when not given, taken from the "
        "Hugging Face cache, downloaded there on first use",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="VBench-Long's protocol, with its defaults: cut each video into 2-second clips (int(fps) * 2 "
        "frames), write each clip as H.264 and read it back (CRF 23), score every clip as VBench scores a "
        "video and average the clips; subject/background consistency are the in-clip scores (the "
        "clip-to-clip score is written to metrics.json, not mixed in); also writes clip_scores.csv and "
        "clip_scores.png. See docs/evaluation.md",
    )
    parser.add_argument(
        "--long_scene_split",
        action="store_true",
        help="with --long: first split each video at scene cuts (PySceneDetect's ContentDetector, "
        "threshold 35: VBench-Long's --use_semantic_splitting) and score each scene as its own video",
    )
    parser.add_argument(
        "--long_decoded_clips",
        action="store_true",
        help="with --long: score the decoded frames of each clip directly, without VBench-Long's H.264 "
        "round trip (lossless, but the numbers then differ from VBench-Long's)",
    )
    parser.add_argument(
        "--amt_weights",
        default=None,
        metavar="FILE",
        help="AMT-S weights for motion_smoothness: the published amt-s.pth (huggingface.co/lalala125/AMT, "
        "a dict with 'state_dict'; VBench keeps it in ~/.cache/vbench/amt_model/), or a state dict / "
        ".safetensors with its keys; when not given, taken from the Hugging Face cache, downloaded there "
        "on first use",
    )
    parser.add_argument(
        "--raft_weights",
        default=None,
        metavar="FILE",
        help="RAFT weights for dynamic_degree and --static_filter: the original raft-things.pth "
        "(VBench keeps it in ~/.cache/vbench/raft_model/models/) or torchvision's "
        "raft_large_C_T_V1-22a6c225.pth (the same weights, renamed); when not given, torchvision's file "
        "from the torch hub cache, downloaded there on first use",
    )
    parser.add_argument(
        "--static_filter",
        action="store_true",
        help="score temporal_flickering only for videos that VBench's RAFT static filter finds static "
        "(as VBench does); the others get an empty cell. Off by default: generated long videos move, "
        "and the filter would leave each experiment a different subset",
    )
    parser.add_argument(
        "--random_feature_models",
        action="store_true",
        help="FOR TESTS ONLY: seeded random feature models, small towers with the real models' inputs and "
        "outputs (DINO, CLIP ViT-B/32 and ViT-L/14 2 layers deep, MUSIQ with a 1-layer transformer; AMT-S "
        "as it is, RAFT narrower), no weights and no network needed; the scores then mean nothing",
    )
    parser.add_argument(
        "--clip_ckpt",
        default=None,
        help="checkpoint holding VideoCrafter's CLIP image tower (e.g. "
        "videocrafter_models/Image2Video_512/model.ckpt) for the extra clip_* columns; "
        "without it they are skipped",
    )
    parser.add_argument("--clip_arch", default="ViT-H-14", help="OpenCLIP architecture of that tower")
    parser.add_argument(
        "--clip_prefix",
        default="embedder.",
        help="key prefix of the tower in the checkpoint ('' for a bare tower)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="frames per forward pass of each model")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device for the models; when not given, cuda if available, else cpu",
    )
    parser.add_argument(
        "--include_origin", action="store_true", help="also score origin.gif/.mp4 (the short base clip)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    weight_flags = (
        "dino_weights",
        "clip_weights",
        "aesthetic_weights",
        "clip_l14_weights",
        "musiq_weights",
        "amt_weights",
        "raft_weights",
    )
    long_only = [flag for flag in ("long_scene_split", "long_decoded_clips") if getattr(args, flag)]
    if long_only and not args.long:
        parser.error(f"--{long_only[0]} is an option of --long: add --long, or drop it")
    given = [f"--{name}" for name in weight_flags if getattr(args, name)]
    if args.random_feature_models and given:
        parser.error(f"--random_feature_models builds models without weights: drop {'/'.join(given)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (problem := eval_extra_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
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
            dimensions=args.dimensions,
            dino_weights=args.dino_weights,
            clip_weights=args.clip_weights,
            random_feature_models=args.random_feature_models,
            aesthetic_weights=args.aesthetic_weights,
            clip_l14_weights=args.clip_l14_weights,
            musiq_weights=args.musiq_weights,
            long_protocol=(
                LongProtocol(scene_split=args.long_scene_split, reencode=not args.long_decoded_clips)
                if args.long
                else None
            ),
            amt_weights=args.amt_weights,
            raft_weights=args.raft_weights,
            static_filter=args.static_filter,
        )
    except (UserError, FeatureWeightsError) as err:  # the user's inputs: exit 2, as every command line
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print()
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
