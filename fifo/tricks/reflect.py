"""Self-reflection (MIGA, ``reflect``): a noisy frame that breaks consistency is re-drawn.

MIGA's first consistency mechanism (docs/miga.md). At the queue's noisy end, after every
iteration's windows, the frame that has now received ``depth`` DDIM steps (``depth`` =
max(1, f/8): 2 for f = 16) is evaluated:

- its **consistency score** is the mean cosine similarity, in latent space, between its
  predicted clean latent x̂₀ and those of its reference frames, the f − 1 frames before it in the
  queue (:func:`consistency_score`). The x̂₀ come from one guided U-Net pass of the window that
  ends at the frame (the queue after this iteration's step, each frame at its own level);
- when the score falls more than ``threshold`` below the mean of the last scores
  (:func:`drops`), ``candidates`` (n_samp) Gaussian frames are drawn from the run's noise source
  and each is denoised through the same ``depth`` steps the frame has received, in a window of
  the same f − 1 preceding frames (the "valid preceding frames" as guidance: they are held as
  they are, the candidate is the window's noisiest frame); each candidate is scored the same way
  and the most consistent of the candidates and the frame itself takes the frame's slot.

All of it happens in latent space, every random number from the run's :class:`NoiseSource` (so
``--resume`` and ``--rng`` stay exact), and the recent scores are kept in
``FifoState.hook_state["reflect"]``. Every rank of ``--parallel windows`` evaluates the same frame
of the same queue and draws the same numbers.

Cost: one guided window per iteration for the score; when it fires, ``depth`` + 1 guided passes
of ``candidates`` windows more. A run planned on fake tensors (``--dry_run``) plans the firing
case.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.hooks import LoopView, StepHook
from fifo.miga_options import ReflectOptions
from fifo.state import FifoState
from fifo.step import Schedule

# The recent scores a new one is set against (the mean of at most this many).
HISTORY = 4


def reflection_depth(geometry: FifoGeometry) -> int:
    """DDIM steps the evaluated frame has received: max(1, f/8)."""
    return max(1, geometry.video_length // 8)


def consistency_score(x0: Tensor) -> Tensor:
    """Mean cosine similarity of each window's last frame with its other frames, in latent space.

    Args:
        x0: (b, c, f, h, w) predicted clean latents; the last frame is evaluated, the others are
            its references.
    Returns:
        (b,) scores in [-1, 1].
    """
    b, c, f, h, w = x0.shape
    frames = x0.permute(0, 2, 1, 3, 4).reshape(b, f, c * h * w).float()
    cos = torch.nn.functional.cosine_similarity(frames[:, -1:], frames[:, :-1], dim=-1)  # (b, f − 1)
    return cos.mean(dim=1)


def drops(scores: list[float], score: float, threshold: float) -> bool:
    """Whether ``score`` falls more than ``threshold`` below the mean of the recent ``scores``
    (never for the first frame evaluated)."""
    return bool(scores) and sum(scores) / len(scores) - score > threshold


class SelfReflection(StepHook):
    """The ``reflect`` step hook (see the module doc).

    Args:
        options: threshold and candidates.
        schedule, geometry: the run's schedule (DDIM's, or the flow's Euler steps on Wan2.1) and
            queue layout.
    """

    name = "reflect"

    def __init__(self, options: ReflectOptions, schedule: Schedule, geometry: FifoGeometry) -> None:
        self.options, self.schedule, self.geometry = options, schedule, geometry
        self.depth = reflection_depth(geometry)
        f = geometry.video_length
        options.check(geometry)
        self.slot = geometry.queue_length - self.depth  # the evaluated frame's slot
        self.start = self.slot - f + 1  # its window: [start, slot]
        index = torch.from_numpy(geometry.slot_indices()[self.start : self.slot + 1]) - 1
        self.levels = index.clamp_min(0)  # each frame's schedule index after this iteration's step
        self.clean = index < 0  # frames already clean after it (the lookahead's leading slots)
        self.denoise: GuidedDenoiser | None = None
        self.last_scores: Tensor | None = None  # the candidates' scores at the last firing (tests)

    def wrap_windows(self, denoise: GuidedDenoiser) -> GuidedDenoiser:
        # The U-Net passes of this hook see the queue's own frames: keep the windows' denoiser
        # as it is before later hooks wrap it (anchors come after this hook).
        self.denoise = denoise
        return denoise

    def own_state(self, state: FifoState) -> dict[str, Any]:
        """This hook's part of the state: the recent scores; how many frames were evaluated, how
        many times the candidates were drawn (``fired``) and how many frames they replaced."""
        return state.hook_state.setdefault(
            self.name, {"scores": [], "evaluated": 0, "fired": 0, "replaced": 0}
        )

    def timesteps(self, device: torch.device) -> Tensor:
        """(f,) the window's timesteps after this iteration's step (0 where already clean)."""
        t = self.schedule.timesteps.to(device)[self.levels.to(device)]
        return torch.where(self.clean.to(device), torch.zeros_like(t), t)

    def predict_x0(
        self, window: Tensor, t: Tensor, index: Tensor, context: Tensor, uncond: Tensor | None
    ) -> Tensor:
        """x̂₀ of windows (b, c, f, h, w) at timesteps ``t`` (b, f) and schedule indices ``index`` (b, f)."""
        b = window.shape[0]
        unc = None if uncond is None else uncond.expand(b, -1, -1)
        eps = self.denoise(window, t, context.expand(b, -1, -1), unc)
        return self.schedule.step(window, eps, index)[1]

    def after_windows(self, loop: LoopView, state: FifoState, queue: Tensor, contexts: Tensor) -> Tensor:
        own = self.own_state(state)
        device = queue.device
        context = contexts[0:1]  # the noisiest window's: it holds the evaluated frame
        window = queue[:, :, self.start : self.slot + 1]
        t = self.timesteps(device)[None]
        index = self.levels.to(device)[None]
        score_t = consistency_score(self.predict_x0(window, t, index, context, loop.uncond))
        fake = is_fake(queue)
        score = 0.0 if fake else float(score_t[0])
        own["evaluated"] += 1
        if not (fake or drops(own["scores"], score, self.options.threshold)):
            own["scores"] = (own["scores"] + [score])[-HISTORY:]
            return queue
        # Re-draw: candidates from pure noise through the frame's depth steps, after the same
        # preceding frames (a planned run takes this path: its largest case).
        n, steps = self.options.candidates, self.geometry.steps
        b, c, _, h, w = queue.shape
        before = window[:, :, :-1].expand(n, -1, -1, -1, -1)
        x = state.noise.randn((n, c, 1, h, w), queue.dtype).to(device)
        for level in range(steps - 1, steps - 1 - self.depth, -1):
            t_c = torch.cat([t[:, :-1], self.schedule.timesteps.to(device)[level].reshape(1, 1)], dim=1)
            unc = None if loop.uncond is None else loop.uncond.expand(n, -1, -1)
            eps = self.denoise(
                torch.cat([before, x], dim=2), t_c.expand(n, -1), context.expand(n, -1, -1), unc
            )
            step_noise = None
            if self.schedule.eta > 0:
                step_noise = state.noise.randn((n, c, 1, h, w), queue.dtype).to(device)
            index_c = torch.full((n, 1), level, device=device, dtype=torch.long)
            x = self.schedule.step(x, eps[:, :, -1:], index_c, step_noise)[0]
        scores = consistency_score(
            self.predict_x0(
                torch.cat([before, x], dim=2), t.expand(n, -1), index.expand(n, -1), context, loop.uncond
            )
        )
        self.last_scores = scores.detach().clone()
        best = int(scores.argmax()) if not fake else 0
        own["fired"] += 1
        if not fake and float(scores[best]) <= score:  # the frame itself is the most consistent
            own["scores"] = (own["scores"] + [score])[-HISTORY:]
            return queue
        own["replaced"] += 1
        queue = queue.clone()
        queue[:, :, self.slot : self.slot + 1] = x[best : best + 1].to(queue.dtype)
        own["scores"] = (own["scores"] + [0.0 if fake else float(scores[best])])[-HISTORY:]
        return queue
