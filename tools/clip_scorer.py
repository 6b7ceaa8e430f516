"""CLIP image-tower similarity of video frames (``clip_consecutive``, ``clip_to_first`` of
``scripts/evaluate.py --clip_ckpt``): the tower loaded strictly from a checkpoint, frames embedded
in batches."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from infra.key_mismatch import KeyMismatch, key_groups
from lvdm.checkpoint import CheckpointError, read_state_dict

logger = logging.getLogger("tools.evaluation")

__all__ = ["ClipScorer", "load_clip_embedder"]


def load_clip_embedder(
    ckpt: str | os.PathLike,
    arch: str = "ViT-H-14",
    prefix: str = "embedder.",
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build the CLIP image tower and load its weights strictly from a checkpoint.

    Args:
        ckpt: ``.ckpt``/``.pt``/``.safetensors`` holding the tower under ``prefix`` (the
            image-to-video checkpoint keeps it under ``embedder.``).
        arch: OpenCLIP architecture (``ViT-H-14`` for VideoCrafter, or a config in ``configs/openclip``).
        prefix: Key prefix of the tower in the checkpoint (``""`` for a bare tower state_dict).
        device: Where to put the model.

    Returns:
        A frozen ``FrozenOpenCLIPImageEmbedderV2`` in eval mode.

    Raises:
        CheckpointError: unreadable file, no key with ``prefix``, or keys/shapes that do not fit ``arch``.
    """
    from lvdm.modules.encoders.condition import FrozenOpenCLIPImageEmbedderV2

    state = read_state_dict(ckpt)
    tower = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not tower:
        raise CheckpointError(
            f"{ckpt} has no key starting with {prefix!r} (the CLIP image tower). Its keys start with: "
            f"{key_groups(state, depth=1, limit=15)}.\nUse the image-to-video checkpoint "
            "(videocrafter_models/Image2Video_512/model.ckpt) or pass --clip_prefix with the right prefix."
        )
    del state
    embedder = FrozenOpenCLIPImageEmbedderV2(arch=arch)
    _check_tower(embedder, tower, f"the weights under {prefix!r} in {ckpt}", arch)
    embedder.load_state_dict(tower, strict=True)
    logger.info("loaded CLIP image tower %s (%d tensors) from %s", arch, len(tower), ckpt)
    return embedder.to(device).eval()


def _check_tower(embedder: torch.nn.Module, tower: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Raise a short :class:`CheckpointError` (counts and examples) unless ``tower`` fits exactly."""
    mismatch = KeyMismatch.between(embedder.state_dict(), tower)
    if not mismatch:
        return
    parts = [f"{source} do not fit the OpenCLIP architecture {arch!r}:", *mismatch.examples()]
    parts.append("Check --clip_arch (VideoCrafter's image-to-video model uses ViT-H-14) and --clip_prefix.")
    raise CheckpointError("\n".join(parts))


class ClipScorer:
    """Unit-norm CLIP image embeddings of video frames, in batches.

    Args:
        embedder: A ``FrozenOpenCLIPImageEmbedderV2`` (``emb(images) -> tokens``, ``emb.pooled(tokens)``).
        batch_size: Frames per forward pass.
        device: Where the embedder lives.
    """

    def __init__(
        self, embedder: torch.nn.Module, batch_size: int = 16, device: str | torch.device = "cpu"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.embedder = embedder
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> torch.Tensor:
        """``(t, h, w, 3)`` uint8 -> ``(t, embed_dim)`` float64 unit vectors (on the CPU)."""
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            images = (
                batch.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            )  # (b, 3, h, w) in [-1, 1]
            pooled = self.embedder.pooled(
                self.embedder(images)
            ).double()  # float64: similarities of 1 stay <= 1
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)

    def similarities(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity curves of one video.

        Returns:
            ``(consecutive, to_first)``: ``(t - 1,)`` similarity of frame i to frame i + 1, and
            ``(t,)`` similarity of each frame to frame 0 (``to_first[0] == 1``), float64.
        """
        emb = self.embed(frames)
        consecutive = (emb[1:] * emb[:-1]).sum(-1)
        to_first = emb @ emb[0]
        return consecutive.numpy(), to_first.numpy()
