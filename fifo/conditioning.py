"""What conditions one video: the prompt's (or story's) text tokens and the image tokens.

A window's context is its text tokens followed, for the image-to-video model's modes, by the
current image tokens (16 after the 77 text tokens). Stories (multi-prompt files) give each
window the scene of the output frame its middle slot will become, so a scene change travels
through the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fifo.geometry import FifoGeometry


def with_image_tokens(text: Tensor, image_tokens: Tensor | None) -> Tensor:
    """Text tokens (k, 77, d) followed by the image tokens (1, 16, d) on every row, or the text alone."""
    if image_tokens is None:
        return text
    return torch.cat([text, image_tokens.expand(text.shape[0], -1, -1)], dim=1)


@dataclass(frozen=True)
class VideoConditioning:
    """The text side of one video's condition.

    Attributes:
        texts: (scenes, 77, d) text tokens, one row per scene (one scene for a plain prompt).
        scene_frames: output frames of each scene, for a story; empty for a single prompt.
        length: queue units of the video (output frames on the U-Nets, latent frames on Wan).
        output_frames: the video's frames where a queue unit decodes to several (Wan: the first
            latent frame to one, every later one to four, the last cut to the video's length);
            None: ``length``.
    """

    texts: Tensor
    scene_frames: tuple[int, ...]
    length: int
    output_frames: int | None = None

    @property
    def video_frames(self) -> int:
        """The frames of the video (``output_frames``, or ``length`` where a unit is one frame)."""
        return self.length if self.output_frames is None else self.output_frames

    @property
    def first_text(self) -> Tensor:
        """(1, 77, d): the text that conditions the base clip."""
        return self.texts[:1]

    def window_texts(self, geometry: FifoGeometry, iteration: int) -> Tensor:
        """Text condition of each window of ``iteration``, (W, 77, d), windows in processing order.

        A story assigns each window the scene of the output frame its middle slot will become.
        """
        windows = geometry.windows()
        if not self.scene_frames:
            return self.texts[:1].expand(len(windows), -1, -1)
        bounds = np.cumsum(self.scene_frames)
        picks = []
        for w in windows:
            frame = iteration + (w.start + w.end) // 2 - geometry.output_slot - geometry.discarded_frames()
            frame = min(max(frame, 0), self.length - 1)
            picks.append(int(np.searchsorted(bounds, frame, side="right")))
        return self.texts[torch.tensor(picks, device=self.texts.device)]

    def window_contexts(self, geometry: FifoGeometry, iteration: int, image_tokens: Tensor | None) -> Tensor:
        """Context of each window of ``iteration``, (W, m, d): its text, then the image tokens."""
        return with_image_tokens(self.window_texts(geometry, iteration), image_tokens)
