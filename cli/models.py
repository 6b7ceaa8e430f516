"""The models of a run, made one way for a run and for its dry run: loaded with their weights,
or built on fake tensors on the target device with the checkpoints' keys and shapes checked.

Both take the same steps in the same order (the device bound first, the model in the run's
dtype, the seeded modes' text model next to it, the attention backend set), so that a dry run
goes through the code a real run goes through up to the first weight read from disk."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cli import LOGGER_NAME
from cli.request import RunRequest
from lvdm.modules.attention_kernels import AttentionBackend

if TYPE_CHECKING:
    from lvdm.models.ddpm3d import LatentDiffusion

logger = logging.getLogger(LOGGER_NAME)


def planned_attention(request: RunRequest) -> AttentionBackend:
    """The attention backend a dry run plans with: on CUDA, SDPA runs fused kernels; on fake
    tensors without a GPU it would fall back to the math kernel and count the whole attention
    matrix, so the memory-efficient kernel stands in for it."""
    r = request
    if r.device.type == "cuda" and r.attention is not AttentionBackend.MATH:
        return AttentionBackend.EFFICIENT
    return r.attention


def run_models(
    request: RunRequest, fake: bool, seed: bool = True
) -> tuple[LatentDiffusion, LatentDiffusion | None]:
    """The run's model and, for the seeded modes (``--seed_config``) when ``seed``, the text model
    that samples their base clips; None for it otherwise.

    ``fake``: built on fake tensors on ``request.device`` (no weights read: the checkpoints'
    keys, shapes and dtypes are checked against the models), with the attention backend of
    :func:`planned_attention`. Else loaded (``lvdm.build.load_model``) with ``request.attention``.

    Raises:
        CheckpointError: a checkpoint that does not fit its config.
    """
    import torch

    from lvdm.build import build_model, check_checkpoint, load_model
    from lvdm.checkpoint import read_state_dict_meta

    r = request
    dtype = r.settings.dtype.torch_dtype
    specs = [(r.config, r.ckpt_path)]
    if seed and r.seed_model is not None:
        specs.append((r.seed_model.config, r.seed_model.ckpt_path))
    models = []
    for index, (config, ckpt) in enumerate(specs):
        random_init = r.random_init
        if not fake:
            model = load_model(config, ckpt, random_init, device=r.device, seed=r.settings.seed, dtype=dtype)
            if not model.family.flow_matching:  # Wan's transformer keeps diffusers' attention
                model.unet.set_attn_processor(r.attention)
            models.append(model)
            continue
        from fifo.plan import fake_tensors

        # Keys, shapes and dtypes only (a safetensors header, or a memory-mapped zip whose tensor
        # data is never read): a 10 GB checkpoint is checked in seconds, as a real run checks it.
        shapes = None if random_init or ckpt is None else read_state_dict_meta(ckpt)
        with fake_tensors(), torch.device(r.device):
            model = build_model(config)
            model.set_precision(dtype)
        if shapes is not None:
            check_checkpoint(model, shapes, ckpt, config)
            if index == 0:
                logger.info("checkpoint %s: %d tensors fit the model", ckpt, len(shapes))
            else:
                logger.info("seed checkpoint %s fits %s", ckpt, config)
        if not model.family.flow_matching:
            model.unet.set_attn_processor(planned_attention(r))
        models.append(model)
    return models[0], (models[1] if len(models) > 1 else None)
