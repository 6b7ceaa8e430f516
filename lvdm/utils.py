"""Building objects from the ``target:`` / ``params:`` entries of the published YAML configs."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infra.errors import UserError

KNOWN_TARGETS = (
    "lvdm.models.ddpm3d.LatentDiffusion",
    "lvdm.models.ddpm3d.LatentVisualDiffusion",
    "lvdm.modules.networks.openaimodel3d.UNetModel",
    "lvdm.models.autoencoder.AutoencoderKL",
    "lvdm.modules.encoders.condition.FrozenOpenCLIPEmbedder",
    "lvdm.modules.encoders.condition.FrozenOpenCLIPImageEmbedderV2",
    "lvdm.modules.encoders.resampler.Resampler",
    "lvdm.wan.model.WanModel",
)


class ConfigError(UserError, ValueError):
    """A config that cannot be built; the message names the entry and the fix."""


def instantiate_from_config(config: Mapping[str, Any] | DictConfig) -> Any:
    """Build ``target(**params)``. Only classes of this package can be targets."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping) or "target" not in config:
        raise ConfigError(f"expected a mapping with a 'target:' entry, got {config!r}")
    target = str(config["target"])
    module_name, _, class_name = target.rpartition(".")
    if not target.startswith("lvdm."):
        raise ConfigError(
            f"target {target!r} is outside this package; known targets:\n  " + "\n  ".join(KNOWN_TARGETS)
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"unknown target {target!r} ({err}); known targets:\n  " + "\n  ".join(KNOWN_TARGETS)
        ) from err
    params = dict(config.get("params") or {})
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"bad parameters for {target}: {err}") from err
