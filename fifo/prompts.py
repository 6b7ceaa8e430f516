"""Prompt files: parsed and validated completely before any model is loaded.

Formats (blank lines and ``#`` comments are skipped):

- text modes (``t2v``, ``t2v_seed``, ``t2v_seed_ar``): one prompt per line.
- ``i2v``: ``image_path;prompt`` per line, split on the first ``;``; a relative image path
  is relative to the prompt file.
- Multi-prompt stories: consecutive ``frames|prompt`` lines form one video
  that moves from scene to scene, each prompt lasting ``frames`` output frames. A blank
  line or a plain prompt line ends the story (a ``#`` comment line does not). In a text mode
  any line with a ``|`` is a story line and must start with a positive whole number of frames.
- ``i2v`` stories: the first scene is ``frames|image_path;prompt``, the next ones
  ``frames|prompt``: one image conditions the whole video (DynamiCrafter concatenates its
  latent to every frame), the text moves from scene to scene.

Files are read as UTF-8; a byte-order mark (as some Windows editors write) is dropped, and
Windows (CRLF) line endings work.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from infra.errors import UserError

_STORY_LINE = re.compile(r"^\s*(\d+)\s*\|(.*)$")
# What an image path before the first ";" looks like: an i2v line given to a text mode.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class PromptFileError(UserError, ValueError):
    """A prompt file that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class Scene:
    """One prompt of a story and how many output frames it lasts."""

    frames: int
    prompt: str


@dataclass(frozen=True)
class PromptJob:
    """One video to generate."""

    prompt: str  # the (first) prompt: names the output folder and conditions the base clip
    line: int
    image: Path | None = None
    scenes: tuple[Scene, ...] = ()  # non-empty for a multi-prompt story
    folder: str = ""  # output folder name; derived from the prompt when empty

    @property
    def identity(self) -> str:
        """What makes two jobs different videos (prompt, image, scenes)."""
        scenes = "|".join(f"{s.frames}:{s.prompt}" for s in self.scenes)
        return f"{self.prompt}\0{self.image or ''}\0{scenes}"

    @property
    def folder_name(self) -> str:
        if self.folder:
            return self.folder
        return safe_name(self.prompt if self.image is None else f"{self.image.stem}_{self.prompt}")

    @property
    def is_story(self) -> bool:
        return bool(self.scenes)

    @property
    def prompts(self) -> list[str]:
        """The text of every scene, in order (the prompt alone when it is not a story)."""
        return [s.prompt for s in self.scenes] if self.scenes else [self.prompt]

    @property
    def story_length(self) -> int:
        return sum(s.frames for s in self.scenes)


def _check_image(path: Path, where: str) -> None:
    if not path.is_file():
        raise PromptFileError(f"{where}: image not found: {path}")
    try:
        # Decode it fully: verify() misses damaged pixel data and raises SyntaxError on bad chunks.
        with Image.open(path) as im:
            im.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise PromptFileError(f"{where}: cannot read image {path}: {err}") from err


def _refuse_image_line(text: str, prompt_file: Path, where: str) -> None:
    """A text-mode line that starts with an image path and ';' was meant for i2v: say so."""
    if ";" not in text:
        return
    head = text.split(";", 1)[0].strip()
    candidate = Path(head).expanduser()
    candidate = candidate if candidate.is_absolute() else prompt_file.parent / candidate
    if head.lower().endswith(_IMAGE_SUFFIXES) or (head and candidate.is_file()):
        raise PromptFileError(
            f"{where}: {head!r} before ';' looks like an image path ('image_path;prompt' is the i2v "
            "format), but this mode takes text prompts only: use `mode` i2v with the image-to-video "
            "config, or remove the path from the line"
        )


def parse_prompt_file(path: str | Path, image_mode: bool) -> list[PromptJob]:
    """Read a prompt file for a text mode (``image_mode=False``) or ``i2v`` (``True``).

    Raises:
        PromptFileError: missing/empty file, malformed line, missing or unreadable image.
    """
    path = Path(path)
    if path.is_dir():
        raise PromptFileError(f"prompt file {path} is a folder: give the text file of prompts inside it")
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PromptFileError(f"cannot read prompt file {path}: {err}") from err

    jobs: list[PromptJob] = []
    story: list[Scene] = []
    story_line = 0
    story_image: Path | None = None

    def end_story() -> None:
        nonlocal story, story_image
        if story:
            jobs.append(
                PromptJob(prompt=story[0].prompt, line=story_line, scenes=tuple(story), image=story_image)
            )
            story, story_image = [], None

    def image_and_prompt(text: str, where: str) -> tuple[Path, str]:
        image_text, prompt = (part.strip() for part in text.split(";", 1))
        if not image_text or not prompt:
            raise PromptFileError(f"{where}: both the image path and the prompt must be non-empty")
        image = Path(image_text).expanduser()
        image = image if image.is_absolute() else (path.parent / image)
        _check_image(image, where)
        return image, prompt

    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        text = raw.strip()
        if text.startswith("#"):
            continue  # a comment, even inside a story
        if not text:
            end_story()
            continue
        story_match = _STORY_LINE.match(text)
        if "|" in text and not story_match and not image_mode:
            head = text.split("|", 1)[0].strip()
            raise PromptFileError(
                f"{where}: a story line must start with a positive whole number of output frames, "
                f"got {head!r} before '|' (expected 'frames|prompt', e.g. '40|a boat at dawn')"
            )
        if story_match:
            frames, prompt = int(story_match.group(1)), story_match.group(2).strip()
            if frames < 1:
                raise PromptFileError(f"{where}: a story scene needs at least 1 frame, got {frames}")
            if image_mode and not story:
                # An i2v story: its first scene names the one image of the whole video.
                if ";" not in prompt:
                    raise PromptFileError(
                        f"{where}: an i2v story starts with 'frames|image_path;prompt', got {text!r}"
                    )
                story_image, prompt = image_and_prompt(prompt, where)
            if not prompt:
                raise PromptFileError(f"{where}: empty prompt after '{frames}|'")
            if not story:
                story_line = number
            story.append(Scene(frames, prompt))
            continue
        end_story()
        if image_mode:
            if ";" not in text:
                raise PromptFileError(
                    f"{where}: expected 'image_path;prompt' for i2v, got {text!r} (no ';' found)"
                )
            image, prompt = image_and_prompt(text, where)
            jobs.append(PromptJob(prompt=prompt, line=number, image=image))
        else:
            _refuse_image_line(text, path, where)
            jobs.append(PromptJob(prompt=text, line=number))
    end_story()
    if not jobs:
        raise PromptFileError(f"prompt file {path} has no prompts (only blank lines or # comments)")
    return assign_folders(jobs)


def assign_folders(jobs: list[PromptJob]) -> list[PromptJob]:
    """Give every distinct job its own output folder.

    Prompts that differ only in characters a folder name cannot hold ("a cat!" and
    "a cat?") would share a folder and overwrite each other: those get a short hash suffix.
    """
    owners: dict[str, set[str]] = {}
    for job in jobs:
        owners.setdefault(job.folder_name, set()).add(job.identity)
    out = []
    for job in jobs:
        name = job.folder_name
        if len(owners[name]) > 1:
            name = f"{name[:90]}_{hashlib.sha256(job.identity.encode()).hexdigest()[:8]}"
        out.append(replace(job, folder=name))
    return out


def safe_name(text: str, max_length: int = 100) -> str:
    """A stable folder name for a prompt: no path separators, bounded length."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    if not name:
        # Nothing printable is left (e.g. a prompt in a non-Latin script): keep prompts apart.
        name = f"prompt_{digest}"
    if len(name) > max_length:
        name = f"{name[: max_length - 9]}_{digest}"
    return name
