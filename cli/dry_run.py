"""``--dry_run``: the run planned on fake tensors on the target device, and what to change when
it does not fit."""

from __future__ import annotations

import logging
import sys

from cli import LOGGER_NAME
from cli.models import run_models
from cli.request import RunRequest
from fifo.options import GenerationSettings, Precision

logger = logging.getLogger(LOGGER_NAME)


def dry_run(request: RunRequest) -> int:
    """Plan the run (``--dry_run``): the models built as a run builds them, on fake tensors on the
    target device, and the first prompt run by the generator's own run function to the device
    boundary for a few frames (:func:`fifo.dry_run.plan_run`); print the plan, then the same as
    one JSON line."""
    import time

    from fifo.dry_run import plan_run
    from fifo.perf import FastPathPlan, plan_fast_path
    from infra.cuda_runtime import bind_device, cuda
    from lvdm.build import load_config
    from lvdm.checkpoint import CheckpointError
    from lvdm.wan import is_wan_config

    r = request
    start = time.perf_counter()
    if cuda().is_available():
        bind_device(r.device)  # as a run binds it (the GPU here, or --plan_for's)
    if is_wan_config(load_config(r.config)):
        return _dry_run_wan(r)
    try:
        # The models as a run makes them (cli.models), on fake tensors, the checkpoints checked.
        model, seed_model = run_models(r, fake=True)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds_to_model = time.perf_counter() - start
    # The dry run computes in one thread: the CPU plan's parallel slices do not change memory or FLOPs.
    cpu_plan = FastPathPlan(shards=1, unet=plan_fast_path(r.device).unet) if r.settings.batched else None

    budget = r.max_memory
    if budget is None and r.device.type == "cuda" and cuda().is_available():
        budget, _ = cuda().mem_get_info(r.device)  # free before the weights load
    if r.plan_for is not None:
        logger.info("plan: for %s", cuda().spec(r.device).describe())
    plan = plan_run(
        model, r.mode, r.settings, r.jobs[0], r.device, budget, seconds_to_model, seed_model, cpu_plan
    )
    if plan.attention != r.attention.value:
        plan.attention = f"{r.attention} (planned as {plan.attention})"
    return _report(plan, r.settings)


def _report(plan, settings: GenerationSettings) -> int:
    """Print the plan (lines, then one JSON line); exit 2 with the advice when it does not fit."""
    import json

    for line in plan.lines():
        logger.info("plan: %s", line)
    if plan.fits is False:
        print(f"error: {memory_advice(plan, settings)}", file=sys.stderr)
        print(json.dumps(plan.json()))
        return 2
    print(json.dumps(plan.json()))
    return 0


def _dry_run_wan(r: RunRequest) -> int:
    """The dry run of a Wan2.1 model (``fifo.wan_plan``): built on fake tensors from its config's
    sub-configs; a given diffusers folder is checked against them."""
    import time

    from fifo.plan import fake_tensors
    from fifo.wan_plan import plan_wan_run
    from infra.cuda_runtime import cuda
    from lvdm.build import build_model, load_config
    from lvdm.checkpoint import CheckpointError
    from lvdm.wan.model import check_wan_folder

    start = time.perf_counter()
    try:
        if not r.random_init:
            params = load_config(r.config)["model"].get("params") or {}
            check_wan_folder(r.ckpt_path, r.config, params)
            logger.info("checkpoint %s: a diffusers folder of the config's model", r.ckpt_path)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with fake_tensors(), r.device:
        model = build_model(r.config)
        model.set_precision(r.settings.dtype.torch_dtype)
        if r.device.type == "cuda":
            model.offload_text_encoder()  # as a CUDA run loads it (lvdm.wan.model.load_wan)
    budget = r.max_memory
    if budget is None and r.device.type == "cuda" and cuda().is_available():
        budget, _ = cuda().mem_get_info(r.device)  # free before the weights load
    if r.plan_for is not None:
        logger.info("plan: for %s", cuda().spec(r.device).describe())
    seconds = time.perf_counter() - start
    plan = plan_wan_run(model, r.mode, r.settings, r.jobs[0], r.device, budget, seconds)
    return _report(plan, r.settings)


def memory_advice(plan, settings: GenerationSettings) -> str:
    """Why a plan does not fit, and which of --window_batch / --dtype / --sequential would."""
    gib = 2**30
    activations = plan.peak_memory_bytes - plan.weights_bytes
    usable = plan.usable_bytes()
    need = (
        f"the run needs {activations / gib:.2f} GiB of device memory beyond its weights "
        f"({plan.weights_bytes / gib:.2f} GiB) at its peak"
    )
    have = (
        f"{max(0, usable) / gib:.2f} GiB are usable of the {plan.budget_bytes / gib:.2f} GiB free (--max_memory, or the "
        "GPU's free memory; a run keeps 15 % of what is free after the weights and 512 MiB for workspaces)"
    )
    options = []
    fixed = activations - plan.window_batch * plan.per_window_bytes
    fitting = (usable - fixed) // plan.per_window_bytes if plan.per_window_bytes else 0
    if settings.batched and 1 <= fitting < plan.window_batch:
        options.append(f"--window_batch {fitting}")
    half = plan.usable_bytes(plan.weights_bytes // 2)
    if settings.dtype is Precision.FP32 and activations / 2 <= half:
        options.append("--dtype fp16 (or bf16 from sm_80 on): weights and activations take half")
    if settings.batched and fixed + plan.per_window_bytes // 2 <= usable < fixed + plan.per_window_bytes:
        options.append("--sequential: one window and one guidance branch per call")
    if options:
        return f"{need}, but {have}. It would fit with " + ", or ".join(options) + "."
    return (
        f"{need}, but {have}, and no --window_batch, --dtype or --sequential setting brings it below "
        f"that (the weights alone take {plan.weights_bytes / gib:.2f} GiB): use a device with more memory."
    )
