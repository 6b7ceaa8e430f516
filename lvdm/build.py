"""From a YAML config (and a checkpoint) to a ready model."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lvdm.checkpoint import CheckpointError, load_weights, read_state_dict
from lvdm.models.ddpm3d import LatentDiffusion
from lvdm.modules.encoders.condition import register_openclip_configs
from lvdm.modules.networks.openaimodel3d import Downsample
from lvdm.utils import ConfigError, instantiate_from_config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or, when that does not exist and it is relative, the project's
    (so ``configs/...`` works from any working directory)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    return path


def load_config(path: str | Path) -> dict:
    """Read a model config; the ``model:`` entry must build a LatentDiffusion."""
    path = resolve_config_path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path} (configs live in {REPO_ROOT / 'configs'})")
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"{path} is not a readable YAML config: {err}") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "target" not in cfg["model"]:
        raise ConfigError(
            f"{path} has no 'model:' entry with a 'target:'; see configs/inference_t2v_512_v2.0.yaml"
        )
    return cfg


@dataclass(frozen=True)
class ConfigFacts:
    """What a run needs to know about a model before sampling: read from its config (before
    building it, :func:`config_facts`) or from the built model (:func:`model_facts`)."""

    has_image_embedder: bool
    temporal_length: int
    default_size: tuple[int, int]  # (height, width) in pixels
    size_multiple: int  # height and width must be multiples of this
    vae_scale: int = 8  # pixels per latent cell
    unet_factor: int = 8  # the U-Net halves the latent this many times over (2**downsamples)


def config_facts(cfg: dict) -> ConfigFacts:
    """Read the facts from a loaded config (see :func:`load_config`)."""
    params = cfg["model"].get("params") or {}
    unet = (params.get("unet_config") or {}).get("params") or {}
    ddconfig = ((params.get("first_stage_config") or {}).get("params") or {}).get("ddconfig") or {}
    vae = 2 ** (len(ddconfig.get("ch_mult", [1, 2, 4, 4])) - 1)
    unet_factor = 2 ** (len(unet.get("channel_mult", [1, 2, 4, 4])) - 1)
    latent = params.get("image_size", [40, 64])
    latent = latent if isinstance(latent, list) else [latent, latent]
    return ConfigFacts(
        has_image_embedder="cond_img_config" in params,
        temporal_length=int(unet.get("temporal_length") or 16),
        default_size=(int(latent[0]) * vae, int(latent[1]) * vae),
        size_multiple=vae * unet_factor,
        vae_scale=vae,
        unet_factor=unet_factor,
    )


def model_facts(model: LatentDiffusion) -> ConfigFacts:
    """The same facts, read from a built model."""
    unet = model.unet
    # The U-Net halves the latent at every Downsample and doubles it back: each latent side
    # must divide by 2**downsamples, or the skip connections do not line up.
    unet_factor = 2 ** sum(isinstance(m, Downsample) for m in unet.modules())
    vae = model.vae_scale
    return ConfigFacts(
        has_image_embedder=model.has_image_embedder,
        temporal_length=int(unet.temporal_length or 16),
        default_size=(model.image_size[0] * vae, model.image_size[1] * vae),
        size_multiple=vae * unet_factor,
        vae_scale=vae,
        unet_factor=unet_factor,
    )


def count_parameters(cfg: dict, config_dir: str | Path | None = None) -> int:
    """Parameters of the model a loaded config builds, counted on the meta device (no memory, ~s)."""
    register_openclip_configs(REPO_ROOT / "configs" / "openclip")
    if config_dir is not None:
        register_openclip_configs(config_dir)
    with torch.device("meta"):
        model = instantiate_from_config(cfg["model"])
    return sum(p.numel() for p in model.parameters())


def build_model(config_path: str | Path) -> LatentDiffusion:
    """Build the model of a config with random weights (on the current default device)."""
    config_path = resolve_config_path(config_path)
    cfg = load_config(config_path)
    # OpenCLIP architectures may be defined next to the config (fixtures) or in configs/openclip.
    register_openclip_configs(REPO_ROOT / "configs" / "openclip")
    register_openclip_configs(config_path.parent)
    model = instantiate_from_config(cfg["model"])
    if not isinstance(model, LatentDiffusion):
        raise ConfigError(
            f"{config_path}: model target must be a LatentDiffusion, got {type(model).__name__}"
        )
    return model


def load_model(
    config_path: str | Path,
    ckpt_path: str | Path | None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LatentDiffusion:
    """Build from ``config_path`` and load ``ckpt_path`` strictly; ``random_init`` skips the checkpoint.

    Errors (config or checkpoint) are raised before anything is moved to the device.
    """
    state_dict = None
    if not random_init:
        if ckpt_path is None:
            raise CheckpointError("no --ckpt_path given (use --random_init only for tests and demos)")
        state_dict = read_state_dict(ckpt_path)
    torch.manual_seed(seed)  # random_init weights are reproducible
    model = build_model(config_path)
    if state_dict is not None:
        load_weights(model, state_dict, source=str(ckpt_path))
    else:
        _wake_zero_layers(model)
        logger.warning("--random_init: running on random weights; outputs are noise-like by design")
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def _wake_zero_layers(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give zero-initialised parameters small random values.

    The published init zeroes every residual output layer (and the U-Net's last conv), so a
    freshly built model predicts exactly zero noise and ignores text, images and Q-caches.
    Random-weight runs (tests, demos) are only meaningful when every layer acts.
    """
    for param in model.parameters():
        if param.numel() and not param.any():
            param.normal_(0.0, std)


def model_identity(
    config_path: str | Path, ckpt_path: str | Path | None, random_init: bool, seed: int
) -> str:
    """A short fingerprint of the weights in use, for cache keys.

    A checkpoint is identified by its resolved path, size and modification time (hashing
    gigabytes would cost more than it saves); random weights by the config and init seed.
    """
    config_digest = hashlib.sha256(resolve_config_path(config_path).read_bytes()).hexdigest()[:16]
    if random_init or ckpt_path is None:
        return f"random:{config_digest}:{seed}"
    st = Path(ckpt_path).stat()
    return f"ckpt:{Path(ckpt_path).resolve()}:{st.st_size}:{st.st_mtime_ns}:{config_digest}"
