"""Where the subject is: its words in the prompt, and in every U-Net pass the positions of each
frame that attend to those words (the subject masks of Ouroboros-Diffusion's SACFA and SRG).

- :func:`subject_token_positions` finds the subject's tokens in a prompt's token ids.
- :class:`SubjectStore` holds the current video's scenes (their text tokens and subject token
  weights) and, per U-Net pass and per thread, the cross-attention maps of the subject words and
  the masks derived from them. U-Net forward hooks open and close a pass.
- :class:`SubjectMapProcessor` sits on the cross-attention (``attn2``) of the encoder's spatial
  transformers at the chosen levels and records, for every frame, how much each position
  attends to the subject's tokens; its output is the plain attention's.

A pass's rows are clips (windows × guidance branches, branch-major). Which rows carry a scene's
prompt is read off the context itself (its text part equals one scene's tokens); rows without
one (the unconditional branch: empty text) take the masks of the conditional row of the same
clip, so both branches of a window see the same subject, as in the Ouroboros-Diffusion demo.
A pass without conditional rows (the sequential path's unconditional call) reuses the masks of
the previous pass when it ran on the same input.

Masks of a level: the maps of the level's encoder layers, averaged, scaled to [0, 1] per frame
(min-max), and thresholded at ``SubjectOptions.threshold``. The processors need every frame of a
clip in one call: with SACFA or SRG on, transformers run unchunked (``fifo.generator``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, is_fake
from torch.utils.hooks import RemovableHandle

from fifo.options import SubjectOptions
from fifo.prompts import PromptJob
from infra.errors import SettingsError
from lvdm.modules.attention import (
    AttentionBackend,
    AttnProcessor,
    CrossAttention,
    SpatialTransformer,
    add_processor,
    processor_parts,
    remove_processors,
)
from lvdm.modules.layer_names import AttentionSite, UNetSide

logger = logging.getLogger(__name__)

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- the subject's words
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def mentions(prompt: str, phrase: str) -> bool:
    """Whether ``phrase``'s words stand in ``prompt`` one after the other (case and punctuation ignored)."""
    words, sub = _words(prompt), _words(phrase)
    return bool(sub) and any(words[i : i + len(sub)] == sub for i in range(len(words) - len(sub) + 1))


def check_subject_in_prompts(phrase: str, jobs: Sequence[PromptJob]) -> None:
    """Before any model is loaded: every video must mention the subject in at least one scene.

    A story scene without it is allowed (no subject while it runs; logged when it runs).

    Raises:
        SettingsError: a prompt (every scene of a story) without the subject's words.
    """
    for job in jobs:
        if not any(mentions(prompt, phrase) for prompt in job.prompts):
            raise SettingsError(
                f"`subject` {phrase!r} does not occur in the prompt of line {job.line} ({job.prompt!r}): "
                "give words that stand in the prompt",
                options=("subject",),
            )


def _inner_ids(ids: Tensor | Sequence[int]) -> list[int]:
    """Token ids between the start and end tokens: (m,) start, words..., end, zero padding."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    used = sum(1 for i in ids if i != 0)
    return ids[1 : used - 1]


def subject_token_positions(
    prompt_ids: Tensor | Sequence[int], subject_ids: Tensor | Sequence[int]
) -> list[int]:
    """Positions of the subject's tokens in a prompt's token ids (the first occurrence), or [].

    Both are one row of the text encoder's token ids, (m,): start token, words, end token, padding.
    """
    words, sub = _inner_ids(prompt_ids), _inner_ids(subject_ids)
    for i in range(len(words) - len(sub) + 1):
        if sub and words[i : i + len(sub)] == sub:
            return list(range(1 + i, 1 + i + len(sub)))  # +1: the start token
    return []


@dataclass(frozen=True)
class SubjectScene:
    """One scene's text tokens (m, d) and the weight of each token as a subject word (m,): 1 or 0."""

    text: Tensor
    weights: Tensor

    @property
    def has_subject(self) -> bool:
        if is_fake(self.weights):  # a planned run: the scenes come from prompts that name the subject
            return True
        return bool(self.weights.any())


def subject_scenes(
    texts: Tensor,
    prompt_ids: Tensor | Sequence[Sequence[int]],
    subject_ids: Tensor | Sequence[Sequence[int]],
    prompts: Sequence[str],
) -> tuple[SubjectScene, ...]:
    """Every scene's :class:`SubjectScene`: texts (S, m, d), prompt_ids (S, m), subject_ids (1, m).

    A scene whose prompt does not contain the subject's tokens has none (logged).
    """
    scenes = []
    for text, ids, prompt in zip(texts, prompt_ids, prompts, strict=True):
        weights = torch.zeros(text.shape[0], dtype=torch.float32, device=text.device)
        positions = subject_token_positions(ids, subject_ids[0])
        if positions:
            weights[positions] = 1.0
        else:
            logger.warning("the subject's tokens are not in the prompt %r: no subject while it runs", prompt)
        scenes.append(SubjectScene(text, weights))
    return tuple(scenes)


# ----------------------------------------------------------------------------- per-pass state
@dataclass
class _Pass:
    """One U-Net pass on one thread."""

    rows: int  # clips (windows × branches)
    frames: int
    weights: list[Tensor | None]  # per row: subject token weights, or None (no subject prompt)
    source: list[int]  # per row: the row whose masks it takes (itself, its clip's conditional row), or -1
    key: tuple  # identifies the input (the sequential path's second call reuses the masks)
    maps: dict[int, list[Tensor]] = field(default_factory=dict)  # level → [(rows, frames, n)]
    masks: dict[int, Tensor] = field(default_factory=dict)  # level → (rows, frames, n) bool
    keys: dict[str, tuple[int, Tensor]] | None = None  # site → (level, keys): recorded on request

    @property
    def has_subject(self) -> bool:
        return any(w is not None for w in self.weights)


def _input_key(x: Tensor) -> tuple:
    """The same tensor, unchanged (inference tensors keep no version counter: they are never
    written in place between the two calls of one sequential guidance step)."""
    version = None if x.is_inference() else x._version
    # Fake tensors (the dry run's plan) have no data to point at.
    pointer = None if isinstance(x, FakeTensor) else x.data_ptr()
    return (id(x), pointer, tuple(x.shape), version, x.device)


class SubjectStore:
    """The subject of the current video, and per U-Net pass (per thread) its maps and masks.

    Args:
        options: the subject's phrase, levels and threshold.
    """

    def __init__(self, options: SubjectOptions) -> None:
        self.options = options
        self.scenes: tuple[SubjectScene, ...] = ()
        self.hooks: list[RemovableHandle] = []
        self._local = threading.local()

    # ------------------------------------------------------------------ the video
    def set_scenes(self, scenes: Sequence[SubjectScene]) -> None:
        """The current video's scenes (empty: no subject anywhere, plain attention)."""
        self.scenes = tuple(s for s in scenes if s.has_subject)
        self._local = threading.local()  # nothing carries over from another video

    # ------------------------------------------------------------------ passes (U-Net hooks)
    def begin_pass(self, x: Tensor, context: Tensor | None, branches: int = 1) -> None:
        """Open a pass: x (b, c, t, h, w), context (k·b, m, d) with k = ``branches``."""
        previous = getattr(self._local, "current", None)
        rows, frames = (0, x.shape[2]) if context is None else (context.shape[0], x.shape[2])
        weights: list[Tensor | None] = [self._scene_weights(context[r]) for r in range(rows)]
        clips = rows // max(1, branches)
        source = []
        for r in range(rows):
            same_clip = [r, *(j * clips + r % clips for j in range(branches))] if clips else [r]
            source.append(next((s for s in same_clip if s < rows and weights[s] is not None), -1))
        current = _Pass(rows, frames, weights, source, _input_key(x))
        if not current.has_subject and previous is not None and previous.key == current.key:
            current.masks = {level: m for level, m in previous.masks.items() if m.shape[0] == rows}
        current.keys = {} if getattr(self._local, "recording", False) else None
        self._local.current = current

    def _scene_weights(self, row: Tensor) -> Tensor | None:
        if is_fake(row):
            # A planned run cannot compare values: plan every row with the (first) subject.
            return next((scene.weights for scene in self.scenes), None)
        for scene in self.scenes:
            m = scene.text.shape[0]
            if row.shape[0] >= m and torch.equal(row[:m].to(scene.text.dtype), scene.text):
                return scene.weights
        return None

    def end_pass(self) -> None:
        """Close a pass: its masks stay for the next pass on the same input."""
        current = getattr(self._local, "current", None)
        if current is not None:
            for level in list(current.maps):
                self.masks(level)
            current.maps.clear()

    def _pass(self, rows: int, frames: int) -> _Pass | None:
        current = getattr(self._local, "current", None)
        if current is None or (not current.has_subject and not current.masks):
            return None
        if (rows, frames) != (current.rows, current.frames):
            # A transformer that runs its clips in chunks, or frames of a clip apart.
            raise RuntimeError(
                f"subject masks: a call with {rows} clips of {frames} frames in a pass of "
                f"{current.rows} clips of {current.frames}: run the transformers unchunked"
            )
        return current

    # ------------------------------------------------------------------ maps and masks
    @torch.no_grad()
    def record_map(self, level: int, q: Tensor, k: Tensor, frames: int) -> None:
        """Record the subject map of one cross-attention layer: q (rows·t, heads, n, d), k (rows, heads, m, d)."""
        current = self._pass(k.shape[0], frames)
        if current is None or not current.has_subject:
            return
        rows, n = k.shape[0], q.shape[2]
        maps = q.new_zeros((rows, frames, n), dtype=torch.float32)
        scale = q.shape[-1] ** -0.5
        for r, weights in enumerate(current.weights):
            if weights is None:
                continue
            # One clip at a time: its probabilities (t, heads, n, m) stay small. In half
            # precision the scores are fp32 from the query scaled first (fp16's q·kᵀ overflows).
            clip = q[r * frames : (r + 1) * frames]
            if clip.dtype in (torch.float16, torch.bfloat16):
                probs = torch.einsum("thnd,hmd->thnm", clip.float() * scale, k[r].float()).softmax(-1)
            else:
                probs = (torch.einsum("thnd,hmd->thnm", clip, k[r]) * scale).softmax(-1)
            w = weights.to(probs.device, probs.dtype)
            maps[r] = ((probs * w).sum(-1) / w.sum()).mean(1).float()
        current.maps.setdefault(level, []).append(maps)
        current.masks.pop(level, None)

    def masks(self, level: int) -> Tensor | None:
        """The subject masks of the current pass at ``level``, (rows, t, n) bool, or None."""
        current = getattr(self._local, "current", None)
        if current is None:
            return None
        if level not in current.masks and current.maps.get(level):
            maps = torch.stack(current.maps[level]).mean(0)  # (rows, t, n)
            low, high = maps.amin(-1, keepdim=True), maps.amax(-1, keepdim=True)
            # Min-max per frame: a frame's subject is where it attends most to the subject's words.
            own = (maps - low >= self.options.threshold * (high - low)) & (high > low)
            if is_fake(maps):
                # A planned run (fake tensors) has no values: plan for the largest subject, every position.
                own = torch.ones_like(own)
            index = torch.tensor([max(s, 0) for s in current.source], device=own.device)
            has = torch.tensor([s >= 0 for s in current.source], device=own.device)
            current.masks[level] = own[index] & has[:, None, None]
        return current.masks.get(level)

    def pass_masks(self, level: int, rows: int, frames: int) -> Tensor | None:
        """:meth:`masks` for a layer call of ``rows`` clips of ``frames`` frames (checked against the pass)."""
        return None if self._pass(rows, frames) is None else self.masks(level)

    # ------------------------------------------------------------------ features (SRG)
    def start_recording(self) -> None:
        """Record the keys of the key recorders in the next passes of this thread (SRG)."""
        self._local.recording = True

    def take_keys(self) -> dict[str, tuple[int, Tensor]]:
        """Stop recording; the keys the last pass recorded, by site: (level, (rows·t, heads, n, d))."""
        self._local.recording = False
        current = getattr(self._local, "current", None)
        keys = {} if current is None or current.keys is None else current.keys
        if current is not None:
            current.keys = None
        return keys

    def record_keys(self, site: str, level: int, k: Tensor) -> None:
        current = getattr(self._local, "current", None)
        if current is not None and current.keys is not None:
            current.keys[site] = (level, k)


class SubjectMapProcessor(AttnProcessor):
    """Encoder cross-attention: records the subject map at ``level``; the attention stays plain."""

    def __init__(
        self, store: SubjectStore, level: int, backend: AttentionBackend = AttentionBackend.SDPA
    ) -> None:
        super().__init__(backend)
        self.store, self.level = store, level

    def attend_text(
        self, attn: CrossAttention, q: Tensor, k: Tensor, v: Tensor, context_repeats: int, inner: Attend
    ) -> Tensor:
        self.store.record_map(self.level, q, k, context_repeats)
        return inner(q, k, v)


# ----------------------------------------------------------------------------- where the layers are
def spatial_attention(
    unet: nn.Module, side: UNetSide, level: int, site: AttentionSite
) -> dict[str, CrossAttention]:
    """The ``site`` attention of every spatial transformer of ``side`` at ``level``, by module name."""
    sites = unet.encoder_attention_blocks if side is UNetSide.ENCODER else unet.decoder_attention_blocks
    prefix = side.blocks
    blocks = getattr(unet, prefix)
    found: dict[str, CrossAttention] = {}
    for (lvl, _), index in sorted(sites.items()):
        if lvl != level:
            continue
        for child, module in blocks[index].named_children():
            if isinstance(module, SpatialTransformer):
                for depth, block in enumerate(module.transformer_blocks):
                    found[f"{prefix}.{index}.{child}.transformer_blocks.{depth}.{site}"] = getattr(
                        block, site
                    )
    return found


def check_levels(unet: nn.Module, levels: Sequence[int]) -> None:
    """Raise SettingsError (naming ``subject_levels``) for a level without spatial transformers."""
    have = sorted(
        {lvl for lvl, _ in unet.encoder_attention_blocks} & {lvl for lvl, _ in unet.decoder_attention_blocks}
    )
    missing = [lvl for lvl in levels if lvl not in have]
    if missing:
        raise SettingsError(
            f"`subject_levels`: level(s) {missing} have no spatial transformers in this U-Net "
            f"(levels with attention: {', '.join(map(str, have))})",
            options=("subject_levels",),
        )


def remove_trick_processors(unet: nn.Module, kinds: tuple[type, ...]) -> list[Any]:
    """Take the processors of ``kinds`` off every layer; return the stores they used."""
    stores: dict[int, Any] = {}
    for layer in unet.attention_layers().values():
        for part in processor_parts(layer):
            if isinstance(part, kinds):
                stores[id(part.store)] = part.store
        remove_processors(layer, kinds, unet.attention_backend)
    return list(stores.values())


def set_subject_tracking(unet: nn.Module, options: SubjectOptions | None) -> SubjectStore | None:
    """Install the subject map recorders and the pass hooks on a ``UNetModel``; None removes them.

    Returns the store SACFA and SRG read, or None.
    """
    for store in remove_trick_processors(unet, (SubjectMapProcessor,)):
        for handle in store.hooks:
            handle.remove()
    if options is None:
        return None
    check_levels(unet, options.levels)
    store = SubjectStore(options)
    backend = unet.attention_backend
    for level in options.levels:
        for layer in spatial_attention(unet, UNetSide.ENCODER, level, AttentionSite.SECOND).values():
            add_processor(layer, SubjectMapProcessor(store, level, backend), backend)

    def begin(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = kwargs.get("context", args[2] if len(args) > 2 else None)
        branches = kwargs.get("context_branches", args[4] if len(args) > 4 else 1)
        store.begin_pass(args[0] if args else kwargs["x"], context, int(branches))

    store.hooks.append(unet.register_forward_pre_hook(begin, with_kwargs=True))
    store.hooks.append(unet.register_forward_hook(lambda _module, _args, _out: store.end_pass()))
    return store
