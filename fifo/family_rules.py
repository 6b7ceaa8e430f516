"""What a model family (:class:`lvdm.family.ModelFamily`, what differs between the models) allows a
run and asks of it, in one place.

- :func:`check_model_fits`: every check of a mode and settings against a model (the image
  embedder, the size, and :func:`check_family_mode`).
- :func:`check_family_mode`: a mode or setting that a family cannot run is refused before the
  model is loaded, with the reason.
- :func:`frame_value`: the value of the U-Net's extra embedding (``--fps`` or ``--frame_stride``).

The FIFO loop, the tricks, resume and ``--parallel windows`` never look at the family: the
DDIM schedule carries the step's part and the denoiser the conditioning's.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from fifo.options import GenerationSettings, MainMode, ModeOptions
from fifo.seed_model import DEFAULT_SEED_CONFIG, SEED_MODE, seed_settings
from infra.errors import SettingsError
from lvdm.family import IMAGE_TOKENS_PER_FRAME, ModelFamily

if TYPE_CHECKING:
    from lvdm.build import ConfigFacts

I2V_CONFIG_HINT = "use `config` configs/inference_i2v_512_v1.0.yaml (or configs/tiny_i2v.yaml)"


def check_model_fits(
    facts: ConfigFacts,
    mode: ModeOptions,
    settings: GenerationSettings,
    source: str,
    seed_model: str | None = None,
) -> None:
    """The checks of a mode and settings against a model, in one place.

    ``facts`` come from the config before the model is built (the CLI) or from the built model
    (:class:`FifoGenerator`); ``source`` names it in the message. ``seed_model`` names the
    text-to-video model that samples the base clips of the seeded modes (``--seed_config``,
    :mod:`fifo.seed_model`), or is None when the model samples its own.

    Raises:
        SettingsError: the mode needs the image-to-video model, or the size does not fit the U-Net.
    """
    if mode.uses_image_model and not facts.has_image_embedder:
        raise SettingsError(
            f"mode {mode.main.value!r} needs the image-to-video model (a CLIP image embedder), but "
            f"{source} has none: {I2V_CONFIG_HINT}",
            options=("config",),
        )
    if mode.srg is not None:
        mode.srg.guided_windows(settings.geometry)  # raises for --srg_windows beyond the windows
    geometry = mode.queue_geometry(settings.geometry)  # raises for a zigzag length that does not fit
    if mode.anchors is not None:
        mode.anchors.count(geometry)  # raises for -ld, or --anchor_frames beyond the room
    if mode.reflect is not None:
        mode.reflect.check(settings.geometry)  # raises for a queue too short for its window
    steps = settings.geometry.steps
    if not facts.family.flow_matching and steps > facts.timesteps:
        raise SettingsError(
            f"`video_length` {settings.video_length} × `num_partitions` {settings.num_partitions} = {steps} DDIM "
            f"steps, more than the {facts.timesteps} timesteps {source} was trained on; lower `num_partitions`",
            options=("video_length", "num_partitions"),
        )
    if mode.subject is not None and facts.attention_levels is not None:
        missing = [level for level in mode.subject.levels if level not in facts.attention_levels]
        if missing:
            raise SettingsError(
                f"`subject_levels`: level(s) {missing} have no spatial transformers in the U-Net of {source} "
                f"(levels with attention: {', '.join(map(str, facts.attention_levels))})",
                options=("subject_levels",),
            )
    h, w = settings.height, settings.width
    if h % facts.size_multiple or w % facts.size_multiple:
        raise SettingsError(
            f"`height` and `width` must be multiples of {facts.size_multiple} for this model "
            f"(autoencoder ×{facts.vae_scale}, U-Net ×{facts.unet_factor}), got {h}x{w}",
            options=("height", "width"),
        )
    check_family_mode(facts, mode, settings, source, seed_model)


DYNAMICRAFTER_CONFIG_HINT = "configs/dynamicrafter_512_v1.0.yaml (or configs/tiny_dynamicrafter.yaml)"


def check_family_mode(
    facts: ConfigFacts,
    mode: ModeOptions,
    settings: GenerationSettings,
    source: str,
    seed_model: str | None = None,
) -> None:
    """Refuse what ``facts.family`` cannot run, naming the reason and what to use instead
    (``seed_model``: as in :func:`check_model_fits`).

    Raises:
        SettingsError: the message is shown to the user as it is.
    """
    family = facts.family
    if family.flow_matching:
        check_flow_mode(family, mode, settings, source)
        return
    if family.needs_input_image and mode.main is MainMode.T2V:
        raise SettingsError(
            f"mode 't2v' cannot run on {source} ({family.name}): it conditions every frame on an input "
            "image's latent; use `mode` i2v with 'image_path;prompt' lines (prompts/example_i2v.txt), "
            "or a text-to-video config for t2v",
            options=("mode",),
        )
    if family.needs_input_image and mode.main.seeds_image and seed_model is None:
        raise SettingsError(
            f"mode {mode.main.value!r} on {source} ({family.name}) needs a text-to-video model to "
            "sample its base clip (it cannot sample one from text alone): give `seed_config` (e.g. "
            f"{DEFAULT_SEED_CONFIG}) and its `seed_ckpt`",
            options=("seed_config", "seed_ckpt"),
        )
    if family.zero_terminal_snr and mode.tail is not None:
        raise SettingsError(
            f"sub-option 'tailcoh' cannot apply to {source} ({family.name}): its tail slot is at ᾱ = 0 "
            "(zero terminal SNR), so the previous tail's low frequencies carry nothing into the new "
            "one and the coherent tail would equal fresh noise; leave tailcoh out of `mode`",
            options=("mode",),
        )
    if settings.frame_stride is not None and not family.takes_frame_stride:
        raise SettingsError(
            f"`frame_stride` conditions frame-stride models ({DYNAMICRAFTER_CONFIG_HINT}); "
            f"{source} ({family.name}) is conditioned on `fps` instead",
            options=("frame_stride", "fps"),
        )
    if family.per_frame_image_tokens:
        # A window of another length would get every frame's tokens on every frame (the
        # published U-Net's fallback), which the model was not trained for.
        frames = family.image_tokens // IMAGE_TOKENS_PER_FRAME
        if settings.video_length != frames:
            raise SettingsError(
                f"`video_length` must be {frames} for {source}: its image tokens are "
                f"{IMAGE_TOKENS_PER_FRAME} per frame of a {frames}-frame clip (the Resampler's "
                f"video_length), got {settings.video_length}",
                options=("video_length",),
            )


WAN_TRICK_REASONS = {
    "qcache": "its caches sit on the U-Net's temporal transformers, which a diffusion transformer has no "
    "counterpart of (every block attends over all frames and positions at once)",
    "sacfa": "it chooses the U-Net's attention layers by resolution level, and a diffusion transformer's "
    "blocks all work at one resolution",
    "srg": "it reads the subject's masks from the U-Net's cross-attention maps",
    "subject": "it reads the subject's masks from the U-Net's cross-attention maps",
    "tailcoh": "the flow's tail slot is at σ = 1 (pure noise, no signal left), so the previous tail's low "
    "frequencies carry nothing into the new one and the coherent tail would equal fresh noise",
}


def check_flow_mode(
    family: ModelFamily, mode: ModeOptions, settings: GenerationSettings, source: str
) -> None:
    """What a flow-matching family (Wan2.1 text-to-video) runs: ``t2v`` (with ``unilatent``),
    stories, partitions and lookahead, and MIGA's parts (``anchors``, ``reflect``: step hooks on
    the queue; ``zigzag``: the queue's layout; no layer of the model); the U-Net's tricks are
    refused with the reason.

    Raises:
        SettingsError: the message is shown to the user as it is.
    """
    if mode.main is not MainMode.T2V:
        raise SettingsError(
            f"mode {mode.main.value!r} cannot run on {source} ({family.name}): it is a text-to-video model "
            "sampled from text alone; use `mode` t2v",
            options=("mode",),
        )
    # Every other sub-option is refused, a new one too until it is ported: the flow sampler
    # (fifo.wan) installs no processors or tail samplers, and MIGA's step hooks only.
    plain = ModeOptions(
        main=MainMode.T2V,
        unilatent=mode.unilatent,
        anchors=mode.anchors,
        reflect=mode.reflect,
        zigzag=mode.zigzag,
    )
    for f in fields(mode):
        if getattr(mode, f.name) != getattr(plain, f.name):
            name = {"tail": "tailcoh"}.get(f.name, f.name)
            reason = WAN_TRICK_REASONS.get(name, "the flow models' sampler does not run it (yet)")
            raise SettingsError(
                f"sub-option {name!r} cannot apply to {source} ({family.name}): {reason}; leave it out of `mode`",
                options=("mode",),
            )
    if settings.rng.value != "default":
        raise SettingsError(
            f"`rng` {settings.rng.value} reproduces the random draws of the published VideoCrafter code, "
            f"which has no {family.name} sampler; leave `rng` out",
            options=("rng",),
        )


def frame_value(family: ModelFamily, settings: GenerationSettings) -> int:
    """What the U-Net's frame-rate / frame-stride embedding is fed for these settings."""
    return family.frame_value(settings.fps, settings.frame_stride)


def check_seed_model(
    facts: ConfigFacts, mode: ModeOptions, settings: GenerationSettings, source: str
) -> None:
    """Check ``--seed_config``: the text-to-video model that samples a seeded mode's base clips.

    Raises:
        SettingsError: the mode takes no base clip from another model, the seed model is not a
            text-to-video model, or the size does not fit it.
    """
    if not mode.main.seeds_image:
        raise SettingsError(
            f"`seed_config` applies to the modes seeded by a base clip (t2v_seed, t2v_seed_ar), not to "
            f"{mode.main.value!r}; leave it out",
            options=("seed_config",),
        )
    if facts.family.needs_input_image or facts.has_image_embedder:
        raise SettingsError(
            f"`seed_config` {source}: the base clip must come from a text-to-video model, but this one "
            f"({facts.family.name}) takes an image; use e.g. {DEFAULT_SEED_CONFIG}",
            options=("seed_config",),
        )
    check_model_fits(facts, SEED_MODE, seed_settings(settings), f"`seed_config` {source}")
