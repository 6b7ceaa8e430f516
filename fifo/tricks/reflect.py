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

Under ``zigzag`` (:class:`~fifo.zigzag.ZigzagGeometry`) the latents at the noisy end wait as
pure noise and then step in groups of L (``--zigzag_length``) that share one level: a whole group
receives its ``depth``-th step at one iteration, every L iterations. That group is what is
evaluated then (:meth:`SelfReflection.target`): its score is the mean cosine similarity of each
of its L frames with the f − L frames before it (the preceding, less noisy groups), and the
candidates are groups of L Gaussian frames denoised together through the same ``depth`` steps at
the group's shared levels; the most consistent group (or the group itself) takes its slots.
Iterations at which no group reaches ``depth`` evaluate nothing. Plain FIFO is the case L = 1.

Cost: one guided window per evaluation for the score (every iteration; every L under zigzag);
when it fires, ``depth`` + 1 guided passes of ``candidates`` windows more. A run planned on fake
tensors (``--dry_run``) plans the firing case (under zigzag, of the next group to be evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from fifo.geometry import FifoGeometry
from fifo.guidance import GuidedDenoiser
from fifo.hooks import LoopView, StepHook
from fifo.miga_options import ReflectOptions
from fifo.option_errors import ModeError
from fifo.state import FifoState
from fifo.step import Schedule

# The recent scores a new one is set against (the mean of at most this many).
HISTORY = 4


def reflection_depth(geometry: FifoGeometry) -> int:
    """DDIM steps the evaluated frame has received: max(1, f/8)."""
    return max(1, geometry.video_length // 8)


def consistency_score(x0: Tensor, evaluated: int = 1) -> Tensor:
    """Mean cosine similarity of each window's last ``evaluated`` frames with its other frames, in latent space.

    Args:
        x0: (b, c, f, h, w) predicted clean latents; the last ``evaluated`` frames are evaluated,
            the others are their references.
        evaluated: k, the frames evaluated together (a zigzag group; 1 in plain FIFO).
    Returns:
        (b,) scores in [-1, 1].
    """
    b, c, f, h, w = x0.shape
    frames = x0.permute(0, 2, 1, 3, 4).reshape(b, f, c * h * w).float()
    if evaluated == 1:
        cos = torch.nn.functional.cosine_similarity(frames[:, -1:], frames[:, :-1], dim=-1)  # (b, f − 1)
        return cos.mean(dim=1)
    k = evaluated
    cos = torch.nn.functional.cosine_similarity(
        frames[:, -k:, None], frames[:, None, :-k], dim=-1
    )  # (b, k, f − k)
    return cos.mean(dim=(1, 2))


def drops(scores: list[float], score: float, threshold: float) -> bool:
    """Whether ``score`` falls more than ``threshold`` below the mean of the recent ``scores``
    (never for the first frame evaluated)."""
    return bool(scores) and sum(scores) / len(scores) - score > threshold


@dataclass(frozen=True)
class Target:
    """The frames evaluated at one iteration's layout: slots [``first``, ``end``), which have just
    received ``depth`` steps, in the window [``start``, ``end``) of the f frames ending at them.

    ``levels`` (f,) is each window frame's schedule index after the iteration's step (0 where
    clean), ``clean`` (f,) marks the frames already clean, ``window`` is the iteration's window
    that writes the evaluated frames (its context conditions the hook's passes).
    """

    start: int
    first: int
    end: int
    levels: Tensor
    clean: Tensor
    window: int

    @property
    def size(self) -> int:
        """k: the frames evaluated together."""
        return self.end - self.first


class SelfReflection(StepHook):
    """The ``reflect`` step hook (see the module doc).

    Args:
        options: threshold and candidates.
        schedule, geometry: the run's schedule (DDIM's, or the flow's Euler steps on Wan2.1) and
            queue layout (FIFO's or the zigzag's).
    """

    name = "reflect"

    def __init__(self, options: ReflectOptions, schedule: Schedule, geometry: FifoGeometry) -> None:
        self.options, self.schedule, self.geometry = options, schedule, geometry
        self.depth = reflection_depth(geometry)
        options.check(geometry)
        self._targets: dict[FifoGeometry, Target | None] = {}
        first = self.next_target(0)
        self.slot = first.end - 1  # the (last) evaluated frame's slot at the first evaluation
        self.start = first.start  # its window: [start, slot]
        self.levels, self.clean = first.levels, first.clean
        self.denoise: GuidedDenoiser | None = None
        self.last_scores: Tensor | None = None  # the candidates' scores at the last firing (tests)

    def target(self, geometry: FifoGeometry) -> Target | None:
        """What the layout ``geometry`` (one iteration's) evaluates: the frames whose level after
        this iteration's step is ``depth`` below pure noise and that stepped now; None if none.

        Raises:
            ModeError: the evaluated frames have fewer than f − k frames before them.
        """
        if geometry in self._targets:
            return self._targets[geometry]
        stepping = geometry.stepping()
        if stepping is None:  # plain FIFO: every slot steps, from its schedule index
            after = geometry.slot_indices() - 1
            reached = after == geometry.steps - 1 - self.depth
        else:
            now = geometry.levels()
            after = np.where(stepping, now - 1, now)
            reached = stepping & (after == geometry.steps - 1 - self.depth)
        slots = np.flatnonzero(reached)
        target = None
        if slots.size:
            first, end, f = int(slots[0]), int(slots[-1]) + 1, geometry.video_length
            if end - first != slots.size or end - first >= f:
                raise ValueError(f"reflect expects one group of fewer than {f} frames, got slots {slots}")
            if end - f < 0:
                raise ModeError(
                    f"reflect evaluates frames {self.depth} step(s) from pure noise in a window of the "
                    f"{f} frames ending at them, but this queue has only {end} slots up to them: "
                    "keep lookahead denoising on or set `num_partitions` to 2 or more"
                )
            index = torch.from_numpy(np.ascontiguousarray(after[end - f : end]))
            window = next(i for i, w in enumerate(geometry.windows()) if w.write_start <= first < w.end)
            target = Target(end - f, first, end, index.clamp_min(0), index < 0, window)
        self._targets[geometry] = target
        return target

    def next_target(self, iteration: int) -> Target:
        """The first evaluation at or after ``iteration`` (the layout is periodic)."""
        for ahead in range(self.geometry.queue_length + 1):
            target = self.target(self.geometry.at(iteration + ahead))
            if target is not None:
                return target
        raise ValueError("reflect found no frame that reaches its depth in this queue layout")

    def wrap_windows(self, denoise: GuidedDenoiser) -> GuidedDenoiser:
        # The U-Net passes of this hook see the queue's own frames: keep the windows' denoiser
        # as it is before later hooks wrap it (anchors come after this hook).
        self.denoise = denoise
        return denoise

    def own_state(self, state: FifoState) -> dict[str, Any]:
        """This hook's part of the state: the recent scores; how many evaluations were made, how
        many times the candidates were drawn (``fired``) and how many of them replaced the frames."""
        return state.hook_state.setdefault(
            self.name, {"scores": [], "evaluated": 0, "fired": 0, "replaced": 0}
        )

    def timesteps(self, target: Target, device: torch.device) -> Tensor:
        """(f,) the window's timesteps after this iteration's step (0 where already clean)."""
        t = self.schedule.timesteps.to(device)[target.levels.to(device)]
        return torch.where(target.clean.to(device), torch.zeros_like(t), t)

    def predict_x0(
        self, window: Tensor, t: Tensor, index: Tensor, context: Tensor, uncond: Tensor | None
    ) -> Tensor:
        """x̂₀ of windows (b, c, f, h, w) at timesteps ``t`` (b, f) and schedule indices ``index`` (b, f)."""
        b = window.shape[0]
        unc = None if uncond is None else uncond.expand(b, -1, -1)
        eps = self.denoise(window, t, context.expand(b, -1, -1), unc)
        return self.schedule.step(window, eps, index)[1]

    def after_windows(self, loop: LoopView, state: FifoState, queue: Tensor, contexts: Tensor) -> Tensor:
        fake = is_fake(queue)
        target = self.target(self.geometry.at(state.iteration))
        if target is None:
            if not fake:
                return queue
            target = self.next_target(state.iteration)  # a planned run plans an evaluation
        own = self.own_state(state)
        device = queue.device
        k = target.size
        context = contexts[target.window : target.window + 1]  # the window that writes the frames
        window = queue[:, :, target.start : target.end]
        t = self.timesteps(target, device)[None]
        index = target.levels.to(device)[None]
        score_t = consistency_score(self.predict_x0(window, t, index, context, loop.uncond), k)
        score = 0.0 if fake else float(score_t[0])
        own["evaluated"] += 1
        if not (fake or drops(own["scores"], score, self.options.threshold)):
            own["scores"] = (own["scores"] + [score])[-HISTORY:]
            return queue
        # Re-draw: candidates from pure noise through the frames' depth steps (k frames at one
        # level), after the same preceding frames (a planned run takes this path: its largest case).
        n, steps = self.options.candidates, self.geometry.steps
        b, c, _, h, w = queue.shape
        before = window[:, :, :-k].expand(n, -1, -1, -1, -1)
        x = state.noise.randn((n, c, k, h, w), queue.dtype).to(device)
        for level in range(steps - 1, steps - 1 - self.depth, -1):
            level_t = self.schedule.timesteps.to(device)[level].reshape(1, 1).expand(1, k)
            t_c = torch.cat([t[:, :-k], level_t], dim=1)
            unc = None if loop.uncond is None else loop.uncond.expand(n, -1, -1)
            eps = self.denoise(
                torch.cat([before, x], dim=2), t_c.expand(n, -1), context.expand(n, -1, -1), unc
            )
            step_noise = None
            if self.schedule.eta > 0:
                step_noise = state.noise.randn((n, c, k, h, w), queue.dtype).to(device)
            index_c = torch.full((n, k), level, device=device, dtype=torch.long)
            x = self.schedule.step(x, eps[:, :, -k:], index_c, step_noise)[0]
        scores = consistency_score(
            self.predict_x0(
                torch.cat([before, x], dim=2), t.expand(n, -1), index.expand(n, -1), context, loop.uncond
            ),
            k,
        )
        self.last_scores = scores.detach().clone()
        best = int(scores.argmax()) if not fake else 0
        own["fired"] += 1
        if not fake and float(scores[best]) <= score:  # the frames themselves are the most consistent
            own["scores"] = (own["scores"] + [score])[-HISTORY:]
            return queue
        own["replaced"] += 1
        queue = queue.clone()
        queue[:, :, target.first : target.end] = x[best : best + 1].to(queue.dtype)
        own["scores"] = (own["scores"] + [0.0 if fake else float(scores[best])])[-HISTORY:]
        return queue
