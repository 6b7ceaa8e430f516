"""Wan2.1 text-to-video (a diffusion transformer with flow matching), through diffusers' own classes.

- :mod:`lvdm.wan.model`: :class:`WanModel` (transformer, causal video autoencoder, UMT5 text
  encoder and tokenizer), built from a config with random weights or loaded from a
  diffusers-format folder; its family (:data:`WAN_FAMILY`) and config facts.
- :mod:`lvdm.wan.stream`: the causal autoencoder decoding latent frames one at a time with its
  temporal cache (one latent frame → four video frames, the first → one).

diffusers and transformers are the ``[wan]`` extra: nothing here is imported by the VideoCrafter
and DynamiCrafter families.
"""

WAN_TARGET = "lvdm.wan.model.WanModel"


def is_wan_config(cfg: dict) -> bool:
    """Whether a loaded config (``lvdm.build.load_config``) builds a Wan model."""
    return str(cfg.get("model", {}).get("target", "")) == WAN_TARGET
