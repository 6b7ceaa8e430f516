"""The Python API (fifo/pipeline.py, docs/api.md): the page's example runs, and gives the frames of
the equivalent command line on the tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import videocrafter_main
from fifo.pipeline import FifoPipeline
from tests.conftest import REPO

PAGE = REPO / "docs" / "api.md"


def page_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def cli_frames(tmp_path: Path) -> np.ndarray:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\n")
    args = ["--config", str(REPO / "configs" / "tiny_t2v.yaml"), "--random_init", "-p", str(prompts)]
    args += ["-l", "3", "--video_length", "2", "--num_partitions", "2", "--height", "128", "--width", "128"]
    args += ["--no_progress", "--save_frames", "--output_dir", str(tmp_path / "cli")]
    assert videocrafter_main.main(args) == 0
    paths = sorted((tmp_path / "cli").rglob("fifo/*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def test_the_page_example_gives_the_command_line_frames(tmp_path, monkeypatch) -> None:
    expected = cli_frames(tmp_path)
    assert expected.shape == (3, 128, 128, 3)
    monkeypatch.chdir(tmp_path)  # the example's relative output folder lands here
    namespace: dict = {}
    (block,) = page_blocks()
    exec(compile(block, str(PAGE), "exec"), namespace)  # the example as a reader copies it
    assert np.array_equal(namespace["video"], expected)
    assert np.array_equal(namespace["frame"], expected[-1])  # the loop's last frame
    assert (tmp_path / "results" / "api").is_dir() and not (REPO / "results" / "api").exists()


def test_unknown_settings_are_named() -> None:
    pipe = FifoPipeline(None, "m", _defaults())
    with pytest.raises(TypeError, match="unknown settings \\['num_partition'\\]"):
        pipe.settings(3, num_partition=2)
    assert pipe.settings(3, num_partitions=2).new_video_length == 3


def _defaults():
    from fifo.options import GenerationSettings

    return GenerationSettings()
