"""The base-clip cache: sampled base clips kept on disk under a key of everything that shapes
them (:func:`fifo.resume.base_clip_key`), so that the next run of the same prompt and settings
(another mode, a sweep, a resume) reuses them."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from infra.atomic import atomic_path

logger = logging.getLogger(__name__)


class ClipCache:
    """Base clips by key in ``folder`` (``<digest>.pt``: the key and the tensors of the entry)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def file(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{digest}.pt"

    def load(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The entry saved under ``key`` (tensors on the CPU), or None: none, another key's, or
        unreadable (a damaged file is recomputed, never fatal)."""
        path = self.file(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            logger.warning("base clip: ignoring unreadable cache file %s (%s)", path, err)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        logger.info("base clip: reusing cached latents %s", path)
        return entry

    def save(self, key: dict[str, Any], entry: dict[str, Any]) -> None:
        """Keep ``entry`` (CPU tensors and plain values) under ``key``, written atomically."""
        with atomic_path(self.file(key)) as tmp:
            torch.save({"key": key, **entry}, tmp)
