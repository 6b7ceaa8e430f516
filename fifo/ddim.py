"""DDIM: the loop that samples a fixed-length clip (the base clip), through the schedule's step
(:func:`fifo.schedule.ddim_step`, also importable from here).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fifo.guidance import GuidedDenoiser
from fifo.noise import NoiseSource
from fifo.schedule import DDIMSchedule, ddim_step
from infra.progress import progress as progress_bar


def sample_ddim(
    denoise: GuidedDenoiser,
    x_T: Tensor,
    schedule: DDIMSchedule,
    cond: Tensor,
    uncond: Tensor | None,
    use_scale: bool,
    noise: NoiseSource | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> Tensor:
    """Denoise a clip from x_T (b, c, t, h, w) through every schedule step → clean latents.

    ``noise`` gives each step's DDIM noise (needed when the schedule's eta > 0). ``max_steps``
    stops early (the latents are then not clean: for planning a run).
    """
    x = x_T
    timesteps = schedule.timestep_values.tolist()  # host values: the device is never waited for
    indices = list(range(schedule.num_steps - 1, -1, -1))[:max_steps]
    for index in progress_bar(indices, desc="base clip (DDIM)", disable=not progress):
        t = torch.full((x.shape[0],), timesteps[index], device=x.device, dtype=torch.long)
        eps = denoise(x, t, cond, uncond)
        if noise is None and schedule.eta > 0:
            raise ValueError("eta > 0: sample_ddim needs a noise source")
        step_noise = None if noise is None else noise.step_noise(tuple(x.shape), x.dtype, schedule.eta > 0)
        x, _ = ddim_step(x, eps, schedule, index, step_noise, use_scale)
    return x
