"""Where a run's files go, what they are called, and the checks that keep a run from failing late.

Layout under the output root (``--output_dir``, default ``results/videocraft_v2_fifo/random_noise``)::

    <prompt folder>/<experiment>.gif|mp4          the video
    <prompt folder>/<experiment>/origin.gif       the f-frame base clip
    <prompt folder>/<experiment>/fifo/0000.png    every output frame (--save_frames)

The experiment name is the mode (with the Q-cache weight) followed by every setting that changes
the video and differs from its default, so that runs of a sweep never share a file.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, fields
from pathlib import Path

from fifo.noise import NoiseOrder
from fifo.options import GenerationSettings, ModeOptions
from fifo.prompts import PromptJob, safe_name
from infra.errors import UserError


class OutputError(UserError, ValueError):
    """An output folder that cannot be used, or outputs that would be overwritten."""


def _fmt(value: float) -> str:
    return f"{value:g}"


# GenerationSettings field → its token in an experiment name, for every setting that changes the
# video (frames or file). Speed settings (window batch, attention kernel, threads) change at most
# the last bits of the arithmetic and are left out.
_NAME_TOKENS = {
    "seed": lambda s: f"seed{s.seed}",
    "new_video_length": lambda s: f"l{s.new_video_length}",
    "video_length": lambda s: f"f{s.video_length}",
    "num_partitions": lambda s: f"n{s.num_partitions}",
    "height": lambda s: f"{s.width}x{s.height}",
    "width": lambda s: f"{s.width}x{s.height}",
    "fps": lambda s: f"fps{s.fps}",
    "guidance": lambda s: f"cfg{_fmt(s.guidance)}",
    "eta": lambda s: f"eta{_fmt(s.eta)}",
    "lookahead": lambda s: "nolookahead",
    "output_fps": lambda s: f"ofps{s.output_fps}",
    "batched": lambda s: "sequential",
    "dtype": lambda s: s.dtype.value,
    "rng": lambda s: "rngpublished" if s.rng is NoiseOrder.PUBLISHED else "rngdefault",
    "frame_stride": lambda s: f"fs{s.frame_stride}",
    "guidance_rescale": lambda s: f"gr{_fmt(s.guidance_rescale)}",
}


def experiment_name(mode: ModeOptions, settings: GenerationSettings, defaults: GenerationSettings) -> str:
    """The default experiment name: the mode, the Q-cache weight, then a token per setting that
    differs from ``defaults`` (the settings the same command gives without options), in a fixed
    order, e.g. ``t2v_TTqcache_attn1_w0.9_seed7_l24``; the tricks' changed parameters and the
    subject come after the weight (``t2v_tailcoh_sacfa_lp0.1_subj-a-person``)."""
    parts = [mode.name]
    if mode.qcache is not None:
        parts.append(f"w{mode.qcache.weight:g}")
    parts += mode.trick_tokens()
    for field in fields(GenerationSettings):
        token = _NAME_TOKENS.get(field.name)
        if token is not None and getattr(settings, field.name) != getattr(defaults, field.name):
            text = token(settings)
            if text not in parts:  # height and width share one token
                parts.append(text)
    return safe_name("_".join(parts))


@dataclass(frozen=True)
class OutputLayout:
    """The files of a run: what the command line (or the Python API) hands the generator, which
    asks it for each video's :class:`VideoPaths`.

    Attributes:
        root: the output root.
        experiment: the experiment name (file and folder name of every video of the run).
        cache_dir: where base clips are cached (None: ``<root>/latents``).
        suffix: ``.gif`` or ``.mp4``.
    """

    root: Path
    experiment: str
    cache_dir: Path | None = None
    suffix: str = ".gif"

    @property
    def clip_cache(self) -> Path:
        """The folder of the base-clip cache."""
        return self.cache_dir if self.cache_dir is not None else self.root / "latents"

    def paths(self, job: PromptJob) -> VideoPaths:
        """Where the video of ``job`` and its folder go."""
        prompt_dir = self.root / job.folder_name
        return VideoPaths(prompt_dir / f"{self.experiment}{self.suffix}", prompt_dir / self.experiment)

    def video_path(self, job: PromptJob) -> Path:
        return self.paths(job).video

    def experiment_dir(self, job: PromptJob) -> Path:
        """The folder of the base clip, the PNG frames and other per-video files."""
        return self.paths(job).folder

    def existing_outputs(self, jobs: list[PromptJob]) -> list[Path]:
        """The videos and experiment folders of ``jobs`` that already exist."""
        paths = [p for job in jobs for p in (self.video_path(job), self.experiment_dir(job))]
        return [p for p in paths if p.exists()]


@dataclass(frozen=True)
class VideoPaths:
    """Where one video's files go: ``<output root>/<prompt folder>/<experiment>.gif`` (or .mp4),
    and beside it the folder ``<experiment>/`` (the base clip ``origin.gif``, the PNG frames)."""

    video: Path
    folder: Path


def check_writable_folder(path: Path, name: str = "`output_dir`") -> None:
    """Fail now, not after minutes of sampling, if ``path`` cannot become a writable folder.

    Nothing is created: the deepest existing ancestor must be a folder this process may write in
    (``os.access``, which also sees a read-only file system).

    Raises:
        OutputError: naming the problem and the fix.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = f"{name} {path}" if probe == path else f"{name} {path}: {probe}"
        raise OutputError(f"{what} is a file, not a folder; choose another {name}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"{name} {path}: cannot write in {probe} (read-only file system or no permission); "
            f"choose a writable {name}"
        )


def create_folder(path: Path, name: str = "`output_dir`") -> None:
    """Create ``path`` (and its parents), with an :class:`OutputError` instead of an ``OSError``."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "read-only file system" if err.errno == errno.EROFS else err.strerror or str(err)
        raise OutputError(
            f"{name} {path}: cannot create the folder ({reason}); choose another {name}"
        ) from err


def check_not_overwriting(layout: OutputLayout, jobs: list[PromptJob], overwrite: bool) -> None:
    """Refuse to overwrite earlier outputs unless ``overwrite``.

    An interrupted run's saved state (``<video>.state/``) is named first, with ``--resume``: the
    frames it holds are never thrown away unless ``--overwrite`` says so.

    Raises:
        OutputError: listing the existing outputs (or saved states) and the ways out.
    """
    if overwrite:
        return
    from fifo.resume import state_folder

    saved = [state_folder(layout.video_path(job)) for job in jobs]
    saved = [folder for folder in saved if (folder / "state.pt").is_file()]
    if saved:
        shown = "\n  ".join(f"{folder} ({_saved_frames(folder)} frame(s) so far)" for folder in saved[:5])
        more = f"\n  ... and {len(saved) - 5} more" if len(saved) > 5 else ""
        raise OutputError(
            f"an interrupted run of this command is saved in:\n  {shown}{more}\n"
            "Add `resume` to continue it. (`overwrite` deletes the saved frames and starts afresh; "
            "`experiment` NAME writes a new run beside it.)"
        )
    existing = layout.existing_outputs(jobs)
    if existing:
        shown = "\n  ".join(str(p) for p in existing[:5])
        more = f"\n  ... and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise OutputError(
            f"these outputs exist already:\n  {shown}{more}\n"
            "Pass `overwrite` to replace them, or `experiment` NAME to write the run under another name."
        )


def _saved_frames(state: Path) -> int:
    """How many output frames an interrupted run kept in its state folder ``state``."""
    frames = state / "frames"
    return sum(1 for _ in frames.glob("*.png")) if frames.is_dir() else 0
