"""Key manifests of the published DynamiCrafter and VideoCrafter1-t2v checkpoints (names, shapes, dtypes).

Writes ``tests/fixtures/checkpoint_manifests_family.json`` in the format of
``tests/fixtures/reference/checkpoint_manifest.json``:
``{model_name: {state_dict_key: [shape, dtype]}}``. Each entry is the state_dict of the model
that the PUBLISHED code builds from the config, i.e. what the published checkpoint loads into
with ``strict=True``. The models are built on the meta device (no memory,
no weights); the OpenCLIP embedders get ``version: null`` so open_clip builds the ViT-H-14
architecture without downloading its weights.

How to run (not part of CI):

    mkdir -p /tmp/dc /tmp/vc
    git -C <clone of Doubiiu/DynamiCrafter> archive HEAD lvdm utils | tar -x -C /tmp/dc
    git -C <clone of AILab-CVC/VideoCrafter> archive HEAD lvdm utils | tar -x -C /tmp/vc
    /tmp/refvenv/bin/python tools/reference/make_family_manifests.py --dynamicrafter /tmp/dc --videocrafter /tmp/vc

(/tmp/refvenv: see make_dynamicrafter_goldens.py.) Run it by path. Every model is built in its
own subprocess: the two checkouts both call their package ``lvdm``.

Note: the published DynamiCrafter loader renames ``framestride_embed`` to ``fps_embedding``
when a checkpoint (the 256 one) does not load as is; the manifest lists the model's names.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("make_family_manifests")
REPO = Path(__file__).resolve().parents[2]

# (manifest name, which checkout, config in configs/)
MODELS = [
    ("dynamicrafter_256", "dynamicrafter", "dynamicrafter_256_v1.0.yaml"),
    ("dynamicrafter_512", "dynamicrafter", "dynamicrafter_512_v1.0.yaml"),
    ("dynamicrafter_1024", "dynamicrafter", "dynamicrafter_1024_v1.0.yaml"),
    ("videocrafter1_t2v_512", "videocrafter", "inference_t2v_512_v1.0.yaml"),
    ("videocrafter1_t2v_1024", "videocrafter", "inference_t2v_1024_v1.0.yaml"),
]


def worker(checkout: Path, config: Path, out: Path) -> None:
    """Write the manifest of one published model as JSON to ``out`` (runs in its own process)."""
    import torch
    from _published import instantiate, use_checkout
    from omegaconf import OmegaConf

    use_checkout(checkout)
    cfg = OmegaConf.load(config)
    params = cfg.model.params
    if "cond_img_config" in params:  # the fork's key name; DynamiCrafter's class takes img_cond_stage_config
        params.img_cond_stage_config = params.pop("cond_img_config")
    for key in ("cond_stage_config", "img_cond_stage_config", "cond_img_config"):
        if key in params:
            params[key].params.version = None  # architecture only, no download
    # The schedule is computed through numpy and checked with .item(): build those (small)
    # buffers on the CPU; everything else stays on the meta device.
    ddpm_class = importlib.import_module("lvdm.models.ddpm3d").DDPM
    register_schedule = ddpm_class.register_schedule

    def cpu_schedule(self: object, *args: object, **kwargs: object) -> None:
        with torch.device("cpu"):
            register_schedule(self, *args, **kwargs)

    ddpm_class.register_schedule = cpu_schedule
    # The published embedders ask open_clip for a CPU model, which would copy the meta tensors.
    import open_clip

    create = open_clip.create_model_and_transforms

    def create_on_meta(*args: object, **kwargs: object) -> object:
        return create(*args, **{**kwargs, "device": torch.device("meta")})

    open_clip.create_model_and_transforms = create_on_meta
    with torch.device("meta"):
        model = instantiate(cfg.model)
    manifest = {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()
    }
    out.write_text(json.dumps(manifest))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dynamicrafter", type=Path, help="checkout of Doubiiu/DynamiCrafter (lvdm/, utils/)"
    )
    parser.add_argument(
        "--videocrafter", type=Path, help="checkout of AILab-CVC/VideoCrafter (lvdm/, utils/)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "tests" / "fixtures" / "checkpoint_manifests_family.json"
    )
    parser.add_argument("--worker", nargs=3, metavar=("CHECKOUT", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*(Path(arg) for arg in args.worker))
        return 0
    checkouts = {"dynamicrafter": args.dynamicrafter, "videocrafter": args.videocrafter}
    missing = [f"--{name}" for name, path in checkouts.items() if path is None]
    if missing:
        log.error("missing %s: pass the published checkouts (see the docstring)", ", ".join(missing))
        return 2
    manifests = {}
    for name, source, config in MODELS:
        log.info("building %s from %s with %s", name, config, checkouts[source])
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "manifest.json"
            worker_args = [str(checkouts[source]), str(REPO / "configs" / config), str(part)]
            result = subprocess.run(
                [sys.executable, __file__, "--worker", *worker_args],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                log.error("%s failed:\n%s", name, result.stderr[-3000:])
                return 1
            manifests[name] = json.loads(part.read_text())
        log.info("%s: %d keys", name, len(manifests[name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(manifests, indent=0, sort_keys=True) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
