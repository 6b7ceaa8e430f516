"""The Wan2.1 text-to-video model: diffusers' transformer and causal autoencoder, the UMT5 encoder.

:class:`WanModel` holds the four parts WanPipeline holds (``transformer``, ``vae``,
``text_encoder``, ``tokenizer``) and offers what the samplers need: the text tokens of prompts
(:meth:`WanModel.encode_text`, as WanPipeline encodes them) and the flow velocity of a batch
of latent clips at one timestep per clip or per frame (:meth:`WanModel.velocity`). Built from
the sub-configs of a config with random weights (``instantiate_from_config``: tests, demos,
``--dry_run``), or loaded from a diffusers-format folder (:func:`load_wan`).
"""

from __future__ import annotations

import html
import logging
import re
import string
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lvdm.family import FrameConditioning, ModelFamily, Prediction

logger = logging.getLogger(__name__)

WAN_FAMILY = ModelFamily(
    name="Wan2.1 text-to-video",
    prediction=Prediction.FLOW,
    frame_conditioning=FrameConditioning.NONE,
    video_frames_per_latent=4,
    default_guidance=5.0,
)

# The folders of a diffusers-format model (model_index.json's components).
PARTS = ("transformer", "vae", "text_encoder", "tokenizer")


def character_tokenizer() -> Any:
    """A tokenizer built in code for the tiny model: one token per printable ASCII character,
    then ``</s>``; ``<pad>`` is 0 as in UMT5's vocabulary. (The real models read UMT5's
    tokenizer from their folder.)"""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in string.printable[:95]:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def clean_prompt(text: str) -> str:
    """A prompt as WanPipeline feeds it to the tokenizer: HTML entities undone (ftfy's repairs
    too where ftfy is installed), runs of white space made one space, stripped."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanModel(nn.Module):
    """Wan2.1 text-to-video: ``(b, c, f, h, w)`` latents, c = 16 (4 for the tiny model), h, w =
    pixels / 8; the transformer patches them 1×2×2.

    Args:
        transformer, vae, text_encoder: the keyword arguments of ``WanTransformer3DModel``,
            ``AutoencoderKLWan`` and ``transformers.UMT5Config`` (random weights).
        tokenizer: ``"characters"`` (:func:`character_tokenizer`) or ``"umt5"`` (read from the
            folder by :func:`load_wan`; the random-weight model then tokenizes by characters).
        flow_shift: the shift of the flow-matching schedule (Wan: 3.0 at 480p, 5.0 at 720p).
        max_sequence_length: text tokens per prompt (WanPipeline's default 512).
        temporal_length: latent frames of a FIFO window and of the base clip by default.
        default_size: (height, width) in pixels.
        parts: already built parts (``load_wan``) instead of the three configs.
    """

    def __init__(
        self,
        transformer: dict | None = None,
        vae: dict | None = None,
        text_encoder: dict | None = None,
        tokenizer: str = "characters",
        flow_shift: float = 3.0,
        max_sequence_length: int = 512,
        temporal_length: int = 20,
        default_size: tuple[int, int] | list[int] = (480, 832),
        parts: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        if parts is None:
            parts = {
                "transformer": WanTransformer3DModel(**(transformer or {})),
                "vae": AutoencoderKLWan(**(vae or {})),
                "text_encoder": UMT5EncoderModel(UMT5Config(**(text_encoder or {}))),
                "tokenizer": character_tokenizer(),
            }
        self.transformer = parts["transformer"]
        self.vae = parts["vae"]
        self.text_encoder = parts["text_encoder"]
        self.tokenizer = parts["tokenizer"]
        self.family = WAN_FAMILY
        self.flow_shift = float(flow_shift)
        self.max_sequence_length = int(max_sequence_length)
        self.temporal_length = int(temporal_length)
        self.default_size = (int(default_size[0]), int(default_size[1]))
        self.vae_scale = int(self.vae.config.scale_factor_spatial)
        self.temporal_scale = int(self.vae.config.scale_factor_temporal)
        self.channels = int(self.transformer.config.in_channels)
        self.patch_size = tuple(self.transformer.config.patch_size)
        self.text_encoder_offloaded = False

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (its patch embedding's; some parts stay float32)."""
        return self.transformer.patch_embedding.weight.dtype

    def set_precision(self, dtype: torch.dtype) -> None:
        """The transformer and the text encoder compute in ``dtype``, but for the transformer's
        parts that diffusers keeps in float32 (``_keep_in_fp32_modules``: timestep embedding,
        norms, modulation tables), as ``from_pretrained(torch_dtype=...)`` leaves them; the
        autoencoder stays in float32 (decoded frames are the output)."""
        keep = set(getattr(self.transformer, "_keep_in_fp32_modules", None) or ())
        # Parameters are replaced, not converted in place: this also works on fake tensors.
        for part, kept in ((self.transformer, keep), (self.text_encoder, set())):
            for module_name, module in part.named_modules():
                target = torch.float32 if kept & set(module_name.split(".")) else dtype
                for name, param in list(module._parameters.items()):
                    if param is None or not param.is_floating_point():
                        continue
                    want = torch.float32 if name in kept else target
                    if param.dtype != want:
                        module._parameters[name] = nn.Parameter(param.detach().to(want), requires_grad=False)
                for name, buffer in list(module._buffers.items()):
                    if buffer is not None and buffer.is_floating_point() and buffer.dtype != target:
                        module._buffers[name] = buffer.to(target)

    def offload_text_encoder(self) -> None:
        """Keep the text encoder (UMT5-XXL: 11 GiB in bf16, used once per video) in host memory and
        bring it to the device only while it encodes (:meth:`encode_text`), as diffusers' model
        offloading does; the device then holds the transformer and the autoencoder."""
        self.text_encoder_offloaded = True
        _move(self.text_encoder, torch.device("cpu"))

    def resident_weight_bytes(self) -> int:
        """Bytes of the weights that stay on the device (all but an offloaded text encoder)."""
        parts = [self.transformer, self.vae] + ([] if self.text_encoder_offloaded else [self.text_encoder])
        return sum(t.numel() * t.element_size() for p in parts for t in (*p.parameters(), *p.buffers()))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Prompts → text tokens (b, max_sequence_length, d) in the transformer's dtype, as WanPipeline
        makes them: UMT5's last hidden state over the prompt's tokens, zeros after them."""
        length = self.max_sequence_length
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
        )
        # Lengths from the tokenizer's own lists: no device value is read (fake tensors in a plan).
        keep = [sum(1 for v in row if v > 0) for row in tokens["attention_mask"]]
        ids = torch.tensor(tokens["input_ids"], dtype=torch.long, device=self.device)
        mask = torch.tensor(tokens["attention_mask"], dtype=torch.long, device=self.device)
        if self.text_encoder_offloaded:
            _move(self.text_encoder, self.device)
        try:
            hidden = self.text_encoder(ids, mask).last_hidden_state
        finally:
            if self.text_encoder_offloaded:
                _move(self.text_encoder, torch.device("cpu"))
        rows = [torch.cat([h[:n], h.new_zeros(length - n, h.shape[1])]) for h, n in zip(hidden, keep)]
        return torch.stack(rows).to(self.dtype)

    # ------------------------------------------------------------------ the transformer
    def velocity(self, x: Tensor, t: Tensor, context: Tensor, context_branches: int = 1) -> Tensor:
        """The flow velocity of latent clips, float32.

        Args:
            x: (b, c, f, h, w) latents.
            t: timesteps σ·1000, (b,) one per clip, or (b, f) one per frame (given to the
                transformer per token: each frame's tokens carry its own timestep).
            context: (k·b, m, d) text tokens, k = ``context_branches`` consecutive blocks of b
                (classifier-free guidance's branches); the clips are repeated for each block.
        Returns:
            (k·b, c, f, h, w).
        """
        if context_branches > 1:
            x = x.repeat(context_branches, 1, 1, 1, 1)
            t = t.repeat(context_branches, *([1] * (t.dim() - 1)))
        if t.dim() == 2:
            _, _, f, h, w = x.shape
            per_frame = (h // self.patch_size[1]) * (w // self.patch_size[2])
            t = t.repeat_interleave(per_frame, dim=1)  # (b, f·h'·w'), frame-major like the tokens
        out = self.transformer(
            hidden_states=x.to(self.dtype),
            timestep=t,
            encoder_hidden_states=context.to(self.dtype),
            return_dict=False,
        )[0]
        return out.float()

    # ------------------------------------------------------------------ the autoencoder's scale
    def to_autoencoder(self, z: Tensor) -> Tensor:
        """Normalised latents (what the transformer sees) → the autoencoder's latents."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        return z / inv_std + mean


def _move(module: nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of ``module`` to ``device``, replaced rather than converted in
    place (so that it also works on fake tensors)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device != device:
                sub._parameters[name] = nn.Parameter(param.detach().to(device), requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.device != device:
                sub._buffers[name] = buffer.to(device)


def check_wan_folder(
    folder: str | Path, config_path: str | Path | None = None, params: dict | None = None
) -> None:
    """A diffusers-format Wan2.1 folder: its parts are there and, given a config (its path, and the
    ``model.params`` read from it, :func:`lvdm.build.load_config`), the transformer's and the
    autoencoder's ``config.json`` agree with the config's sub-configs.

    Raises:
        lvdm.checkpoint.CheckpointError: naming what is missing or which setting differs.
    """
    import json

    from lvdm.checkpoint import CheckpointError

    folder = Path(folder)
    missing = [p for p in ("model_index.json", *PARTS) if not (folder / p).exists()]
    if missing:
        raise CheckpointError(
            f"--ckpt_path {folder} is not a diffusers-format Wan2.1 folder (missing: {', '.join(missing)}); "
            "fetch one with: python scripts/download_checkpoints.py --which wan2.1_t2v_1.3b"
        )
    if config_path is None or params is None:
        return
    for part in ("transformer", "vae"):
        try:
            stored = json.loads((folder / part / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"--ckpt_path {folder}: {part}/config.json cannot be read ({err})") from err
        for key, value in (params.get(part) or {}).items():
            have = stored.get(key)
            if key in stored and (list(have) if isinstance(have, (list, tuple)) else have) != value:
                raise CheckpointError(
                    f"--ckpt_path {folder} holds another model than {config_path}: {part} {key} is "
                    f"{have!r} there, {value!r} in the config; use the config of that model"
                )


def load_wan(
    folder: str | Path, params: dict, device: str | torch.device, dtype: torch.dtype | None
) -> WanModel:
    """Load a diffusers-format Wan2.1 folder (``model_index.json``, ``transformer/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/``) with diffusers' and transformers' own classes (safetensors:
    no pickled code runs).

    Raises:
        lvdm.checkpoint.CheckpointError: the folder is missing or is not a diffusers Wan folder.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from lvdm.checkpoint import CheckpointError

    folder = Path(folder)
    check_wan_folder(folder)
    weights = dtype or torch.float32
    try:
        parts = {
            "transformer": WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=weights),
            "vae": AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32),
            "text_encoder": UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=weights),
            "tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer"),
        }
    except (OSError, ValueError) as err:
        raise CheckpointError(f"--ckpt_path {folder}: cannot load the Wan2.1 model ({err})") from err
    keep = {
        k: v
        for k, v in params.items()
        if k in ("flow_shift", "max_sequence_length", "temporal_length", "default_size")
    }
    model = WanModel(parts=parts, **keep).eval().requires_grad_(False).to(device)
    if torch.device(device).type == "cuda":
        model.offload_text_encoder()
    return model
