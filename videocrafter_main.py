"""Long video generation with FIFO diagonal denoising on VideoCrafter: the entry point.

    python videocrafter_main.py --config configs/inference_t2v_512_v2.0.yaml \\
        --ckpt_path videocrafter_models/base_512_v2/model.ckpt \\
        --prompt_file prompts/published_t2v.txt --mode t2v_TTqcache_attn1_unilatent

The command line lives in the ``cli`` package, one module per job: ``cli.parser`` (the flags),
``cli.request`` (every input checked into a ``RunRequest`` before a model is loaded),
``cli.distributed`` (torchrun), ``cli.dry_run`` (``--dry_run``) and ``cli.run`` (the videos,
SIGINT/SIGTERM); ``cli.main`` ties them together. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import sys

try:
    from cli.main import main
    from cli.parser import build_parser
except KeyboardInterrupt:  # Ctrl-C while the libraries load (seconds): a line, not a traceback
    if __name__ != "__main__":
        raise
    print("stopped by SIGINT while starting; nothing was written", file=sys.stderr)
    sys.exit(130)

# The entry point's interface: its parser (for tools that read every command line's --help)
# and main.
__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
