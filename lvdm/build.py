"""From a YAML config (and a checkpoint) to a ready model."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from lvdm.checkpoint import CheckpointError, check_state_dict, read_state_dict
from lvdm.family import ModelFamily, family_from_params
from lvdm.models.ddpm3d import LatentDiffusion
from lvdm.modules.encoders.condition import register_openclip_configs
from lvdm.modules.networks.openaimodel3d import Downsample
from lvdm.utils import ConfigError, instantiate_from_config
from lvdm.wan import is_wan_config

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
    except yaml.MarkedYAMLError as err:  # a syntax error: say where, in one line
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: not valid YAML ({err.problem or err.context}); indent with spaces, not tabs, "
            "and close every [ and {"
        ) from None
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as err:
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
    family: ModelFamily = ModelFamily("VideoCrafter text-to-video")  # what differs between members
    # U-Net levels (0 = full latent size) with spatial transformers; None: not known.
    attention_levels: tuple[int, ...] | None = None
    # The training noise schedule's length: the most DDIM steps a schedule can take.
    timesteps: int = 1000


def config_facts(cfg: dict) -> ConfigFacts:
    """Read the facts from a loaded config (see :func:`load_config`)."""
    params = cfg["model"].get("params") or {}
    if is_wan_config(cfg):
        return wan_config_facts(params)
    unet = (params.get("unet_config") or {}).get("params") or {}
    ddconfig = ((params.get("first_stage_config") or {}).get("params") or {}).get("ddconfig") or {}
    vae = 2 ** (len(ddconfig.get("ch_mult", [1, 2, 4, 4])) - 1)
    unet_factor = 2 ** (len(unet.get("channel_mult", [1, 2, 4, 4])) - 1)
    latent = params.get("image_size", [40, 64])
    latent = latent if isinstance(latent, list) else [latent, latent]
    return ConfigFacts(
        has_image_embedder="cond_img_config" in params or "img_cond_stage_config" in params,
        temporal_length=int(unet.get("temporal_length") or 16),
        default_size=(int(latent[0]) * vae, int(latent[1]) * vae),
        size_multiple=vae * unet_factor,
        vae_scale=vae,
        unet_factor=unet_factor,
        family=family_from_params(params),
        attention_levels=_attention_levels(unet),
        timesteps=int(params.get("timesteps") or 1000),
    )


def _attention_levels(unet: dict) -> tuple[int, ...] | None:
    """The levels whose downsampling factor ``2**level`` is one of ``attention_resolutions``."""
    resolutions, mult = unet.get("attention_resolutions"), unet.get("channel_mult")
    if resolutions is None or mult is None:
        return None
    return tuple(level for level in range(len(mult)) if 2**level in {int(r) for r in resolutions})


def wan_config_facts(params: dict) -> ConfigFacts:
    """The facts of a Wan2.1 config (:mod:`lvdm.wan`): sides a multiple of the autoencoder's 8
    times the transformer's 2×2 patch; windows of ``temporal_length`` latent frames."""
    from lvdm.wan.model import WAN_FAMILY

    transformer = params.get("transformer") or {}
    vae = 2 ** (len((params.get("vae") or {}).get("dim_mult", [1, 2, 4, 4])) - 1)
    patch = int(list(transformer.get("patch_size", (1, 2, 2)))[1])
    size = params.get("default_size", [480, 832])
    return ConfigFacts(
        has_image_embedder=False,
        temporal_length=int(params.get("temporal_length", 20)),
        default_size=(int(size[0]), int(size[1])),
        size_multiple=vae * patch,
        vae_scale=vae,
        unet_factor=patch,
        family=WAN_FAMILY,
    )


def model_facts(model: LatentDiffusion) -> ConfigFacts:
    """The same facts, read from a built model."""
    if getattr(model, "family", None) is not None and model.family.flow_matching:
        return ConfigFacts(
            has_image_embedder=False,
            temporal_length=model.temporal_length,
            default_size=model.default_size,
            size_multiple=model.vae_scale * model.patch_size[1],
            vae_scale=model.vae_scale,
            unet_factor=model.patch_size[1],
            family=model.family,
        )
    unet = model.unet
    # The U-Net halves the latent at every Downsample and doubles it back: each latent side
    # must divide by 2**downsamples, or the skip connections do not line up.
    unet_factor = 2 ** sum(isinstance(m, Downsample) for m in unet.modules())
    vae = model.vae_scale
    return ConfigFacts(
        family=model.family,
        has_image_embedder=model.has_image_embedder,
        temporal_length=int(unet.temporal_length or 16),
        default_size=(model.image_size[0] * vae, model.image_size[1] * vae),
        size_multiple=vae * unet_factor,
        vae_scale=vae,
        unet_factor=unet_factor,
        timesteps=int(model.num_timesteps),
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
    if is_wan_config(cfg):
        return model
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
    dtype: torch.dtype | None = None,
) -> LatentDiffusion:
    """Build from ``config_path`` and load ``ckpt_path`` strictly; ``random_init`` skips the checkpoint.

    With a checkpoint the model's parameters are made on the meta device (no memory, no random
    init), the checkpoint's tensors are put in their place, then each is cast and moved once:
    to ``dtype`` for the parts :meth:`LatentDiffusion.set_precision` keeps in low precision (if
    ``dtype`` is given), to the dtype the model was built with for the rest, onto ``device``.
    Errors (config or checkpoint) are raised before anything is moved to the device.
    """
    if is_wan_config(load_config(config_path)):
        return _load_wan_model(config_path, ckpt_path, random_init, device, seed, dtype)
    if random_init:
        torch.manual_seed(seed)  # random_init weights are reproducible
        model = build_model(config_path)
        _wake_zero_layers(model)
        logger.warning("--random_init: running on random weights; outputs are noise-like by design")
        if dtype is not None:
            model.set_precision(dtype)
        return model.eval().requires_grad_(False).to(device)
    if ckpt_path is None:
        raise CheckpointError("no --ckpt_path given (use --random_init only for tests and demos)")
    start = time.perf_counter()
    state_dict = read_state_dict(ckpt_path)  # memory-mapped: read from disk as it is copied below
    with parameters_on_meta():
        model = build_model(config_path)
    check_checkpoint(model, state_dict, ckpt_path, config_path)
    targets = _target_dtypes(model, dtype)
    model.load_state_dict(state_dict, strict=True, assign=True)
    del state_dict  # the model holds the tensors now; each is released as it is replaced below
    _materialise(model, targets, torch.device(device))
    model.eval()
    logger.info(
        "model built on the meta device and %.2f GiB of weights loaded from %s onto %s in %.1f s",
        sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**30,
        ckpt_path,
        device,
        time.perf_counter() - start,
    )
    return model


def _load_wan_model(
    config_path: str | Path,
    ckpt_path: str | Path | None,
    random_init: bool,
    device: str | torch.device,
    seed: int,
    dtype: torch.dtype | None,
) -> torch.nn.Module:
    """A Wan2.1 model (:mod:`lvdm.wan`): random weights from the config's sub-configs, or the
    diffusers-format folder ``ckpt_path``."""
    from lvdm.wan.model import load_wan

    params = load_config(config_path)["model"].get("params") or {}
    if random_init:
        torch.manual_seed(seed)  # random_init weights are reproducible
        model = build_model(config_path)
        logger.warning("--random_init: running on random weights; outputs are noise-like by design")
        if dtype is not None:
            model.set_precision(dtype)
        model = model.eval().requires_grad_(False).to(device)
        if torch.device(device).type == "cuda":
            model.offload_text_encoder()  # as load_wan does: the device holds what denoises
        return model
    if ckpt_path is None:
        raise CheckpointError("no --ckpt_path given (use --random_init only for tests and demos)")
    return load_wan(ckpt_path, params, device, dtype)


def check_checkpoint(
    model: torch.nn.Module, state_dict: Mapping[str, Tensor], ckpt_path: str | Path, config_path: str | Path
) -> None:
    """:func:`~lvdm.checkpoint.check_state_dict` with a hint that names the configs the checkpoint
    fits (searched in ``configs/`` and next to ``config_path``) when it does not fit this one."""

    def fitting(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        return configs_fitting(shapes, config_path)

    check_state_dict(model, state_dict, str(ckpt_path), fitting)


# ---------------------------------------------------------------------------------- meta build
@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory, no random init.

    Buffers and other tensors are made as usual (on the CPU), by the modules' own code: the
    non-persistent ones that no checkpoint holds (open_clip's causal ``attn_mask``, the image
    embedder's ``mean``/``std``) are then right, and they are small. (Building everything under
    ``torch.device("meta")`` would leave those on the meta device, to be recomputed by hand.)
    A parameter is created on the CPU first, uninitialised (``torch.empty`` touches no memory),
    and moved to the meta device as it is registered, before its module initialises it.

    Not thread-safe: it patches ``nn.Module.register_parameter`` while the block runs.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def _tensor_slots(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, Tensor, bool]]:
    """Every ``(module, name, tensor, is_parameter)`` of ``model``."""
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                yield module, name, param, True
        for name, buffer in module._buffers.items():
            if buffer is not None:
                yield module, name, buffer, False


def _target_dtypes(model: LatentDiffusion, dtype: torch.dtype | None) -> dict[tuple[int, str], torch.dtype]:
    """The dtype each tensor of ``model`` must end up in, by ``(id(module), name)``: as built, or
    ``dtype`` for the floating-point tensors of the low-precision parts (the rule of
    :meth:`LatentDiffusion.set_precision`). Read before the checkpoint's tensors (whatever their
    dtype) take the tensors' places."""
    low = {id(m) for part in model.low_precision_parts() for m in part.modules()} if dtype else set()

    def lowered(module: torch.nn.Module, name: str, tensor: torch.Tensor, is_parameter: bool) -> bool:
        kept = not is_parameter and name in getattr(module, "FP32_BUFFERS", ())
        return id(module) in low and tensor.is_floating_point() and not kept

    return {
        (id(module), name): dtype if lowered(module, name, tensor, is_parameter) else tensor.dtype
        for module, name, tensor, is_parameter in _tensor_slots(model)
    }


@torch.no_grad()
def _materialise(
    model: torch.nn.Module, targets: Mapping[tuple[int, str], torch.dtype], device: torch.device
) -> None:
    """Cast and move every tensor once, to its target dtype on ``device``, frozen.

    Always a copy: the checkpoint's tensors are memory-mapped from its file, and a model must not
    change (or crash with SIGBUS) when that file is overwritten during a run.
    """
    for module, name, tensor, is_parameter in list(_tensor_slots(model)):
        if tensor.is_meta:
            owner = next(n for n, m in model.named_modules() if m is module)
            raise RuntimeError(
                f"{owner}.{name} is still on the meta device after loading: a tensor that the checkpoint "
                "does not hold was made from parameters while building. Build this module on the CPU."
            )
        moved = tensor.to(device=device, dtype=targets[(id(module), name)], copy=True)
        if is_parameter:
            module._parameters[name] = torch.nn.Parameter(moved, requires_grad=False)
        else:
            module._buffers[name] = moved


# ---------------------------------------------------------------------------------- config hints
@functools.lru_cache(maxsize=64)
def _config_shapes(path: Path, mtime_ns: int) -> dict[str, tuple[int, ...]] | None:
    """The state_dict keys and shapes of the model a config builds (built on the meta device), or
    None when the file is not a model config that builds. Cached by file and modification time."""
    try:
        cfg = load_config(path)
        register_openclip_configs(REPO_ROOT / "configs" / "openclip")
        register_openclip_configs(path.parent)
        with torch.device("meta"):
            model = instantiate_from_config(cfg["model"])
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception as err:  # any YAML may sit in a config folder; a hint must never fail the run
        logger.debug("%s is not a buildable model config: %s", path, err)
        return None


def _cannot_fit(cfg_path: Path, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """True when the config's U-Net width or image embedder already rules it out (no build needed)."""
    try:
        cfg = load_config(cfg_path)
    except ConfigError:
        return True
    params = cfg["model"].get("params") or {}
    unet = (params.get("unet_config") or {}).get("params") or {}
    first_conv = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if first_conv is not None and "model_channels" in unet and first_conv[0] != unet["model_channels"]:
        return True
    has_embedder = any(k.startswith("embedder.") for k in shapes)
    return has_embedder != ("cond_img_config" in params or "img_cond_stage_config" in params)


def configs_fitting(
    shapes: Mapping[str, tuple[int, ...]], config_path: str | Path | None = None
) -> list[str]:
    """The configs, in ``configs/`` and next to ``config_path`` (itself excluded), whose model has
    exactly the state_dict keys and ``shapes`` given: the ``--config`` a checkpoint fits.

    Configs are built on the meta device (a second or less each, only in the error path).
    """
    folders = [REPO_ROOT / "configs"]
    exclude = None
    if config_path is not None:
        exclude = resolve_config_path(config_path).resolve()
        if exclude.parent != folders[0].resolve():
            folders.append(exclude.parent)
    shapes = dict(shapes)
    found = []
    for folder in folders:
        for cfg_path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            resolved = cfg_path.resolve()
            if resolved == exclude or _cannot_fit(resolved, shapes):
                continue
            if _config_shapes(resolved, resolved.stat().st_mtime_ns) == shapes:
                found.append(_display_path(resolved))
    return found


def _display_path(path: Path) -> str:
    """A config path as a user types it: relative to the project (configs are found from any
    working directory, see :func:`resolve_config_path`), else as it is."""
    try:
        return str(path.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


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
