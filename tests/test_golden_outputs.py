"""Exact bytes of the videos and PNG frames of a set of tiny runs, recorded before the restructure.

The restructure of the FIFO run (state + step, noise source, explicit guidance, packages split
by concern) must not change a single output byte. Each case runs the CLI on the tiny configs with
random weights on one thread (the CPU plan shards by thread count, and a different batch split
may move the last bits) and compares the sha256 of every video and PNG it writes with the value
recorded by the code as it was before. The base-clip cache is not compared (its key names the
weights' identity, not the output). The GIF values were recorded again when the GIF writer's
palette changed from Pillow's median cut to ``infra/gif_palette.py``; the PNG frames and the mp4,
which hold the generated frames themselves, kept their values through that change.

To record new values after an intended change of the outputs: ``GOLDEN_PRINT=1 python -m pytest
tests/test_golden_outputs.py -s`` prints the table to paste below. Every case names its experiment (``-ex golden``) so that the file names do not
depend on the default experiment name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import videocrafter_main
from tests.conftest import REPO, write_png

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
COMMON = ["--random_init", "-ex", "golden", "--video_length", "4", "-n", "2", "-l", "3", "--no_progress"]
PROMPT = "a red fox running through snow"
STORY = "2|a cat sleeps\n2|the cat wakes up\n"

# name: (config, prompt-file text ("{image}" stands for an image path), extra arguments)
CASES: dict[str, tuple[str, str, list[str]]] = {
    "t2v": (T2V, PROMPT, []),
    "t2v_qcache_unilatent_frames": (
        T2V, PROMPT, ["--mode", "t2v_TTqcache_attn1_unilatent", "--save_frames"],
    ),
    "t2v_stqcache_attn2_no_lookahead": (T2V, PROMPT, ["--mode", "t2v_STqcache_attn2", "-ld"]),
    "t2v_sequential_qcache": (T2V, PROMPT, ["--mode", "t2v_TTqcache_attn1", "--sequential"]),
    "t2v_sequential_no_lookahead": (T2V, PROMPT, ["--sequential", "-ld", "--eta", "0.5"]),
    "t2v_story_frames": (T2V, STORY, ["--save_frames"]),
    "t2v_mp4": (T2V, PROMPT, ["--use_mp4", "--seed", "5"]),
    "i2v": (I2V, "{image};" + PROMPT, ["--mode", "i2v"]),
    "i2v_stqcache_no_lookahead": (I2V, "{image};" + PROMPT, ["--mode", "i2v_STqcache_attn1", "-ld"]),
    "t2v_seed_qcache": (I2V, PROMPT, ["--mode", "t2v_seed_TTqcache_attn1", "--qcache_weight", "0.5"]),
    "t2v_seed_ar_unilatent_frames": (I2V, PROMPT, ["--mode", "t2v_seed_ar_unilatent", "--save_frames"]),
}  # fmt: skip

# sha256 (first 16 hex digits) of every file written under --output_dir but the cache.
GOLDEN: dict[str, dict[str, str]] = {
    "i2v": {
        "fox_a_red_fox_running_through_snow/golden/origin.gif": "9b17049e7bb7cfa0",
        "fox_a_red_fox_running_through_snow/golden.gif": "98a453e0b6ea4926",
    },
    "i2v_stqcache_no_lookahead": {
        "fox_a_red_fox_running_through_snow/golden/origin.gif": "f9e1f4bc05a99cad",
        "fox_a_red_fox_running_through_snow/golden.gif": "309adc218761dcee",
    },
    "t2v": {
        "a_red_fox_running_through_snow/golden/origin.gif": "416d3deff7e14e88",
        "a_red_fox_running_through_snow/golden.gif": "b6998e0571a369da",
    },
    "t2v_mp4": {
        "a_red_fox_running_through_snow/golden/origin.gif": "d8e5471a735a8edf",
        "a_red_fox_running_through_snow/golden.mp4": "228b7a7539266d14",
    },
    "t2v_qcache_unilatent_frames": {
        "a_red_fox_running_through_snow/golden/fifo/0000.png": "780f3d1a670c02aa",
        "a_red_fox_running_through_snow/golden/fifo/0001.png": "4c75c7f7bdd43a08",
        "a_red_fox_running_through_snow/golden/fifo/0002.png": "a1936b64469b71d3",
        "a_red_fox_running_through_snow/golden/origin.gif": "64e06655ae76b343",
        "a_red_fox_running_through_snow/golden.gif": "092e4b340eb71089",
    },
    "t2v_seed_ar_unilatent_frames": {
        "a_red_fox_running_through_snow/golden/fifo/0000.png": "f81b49c785269943",
        "a_red_fox_running_through_snow/golden/fifo/0001.png": "f207b2cd23b61916",
        "a_red_fox_running_through_snow/golden/fifo/0002.png": "03ff27be634d2b68",
        "a_red_fox_running_through_snow/golden/origin.gif": "6929a3a00e641a88",
        "a_red_fox_running_through_snow/golden.gif": "6ad7057d196dcda7",
    },
    "t2v_seed_qcache": {
        "a_red_fox_running_through_snow/golden/origin.gif": "9b2c3cc6a9e35dfd",
        "a_red_fox_running_through_snow/golden.gif": "a2ff7bfd0fb188b0",
    },
    "t2v_sequential_no_lookahead": {
        "a_red_fox_running_through_snow/golden/origin.gif": "f212e9e747d59f7e",
        "a_red_fox_running_through_snow/golden.gif": "c4c17dc6afa9872a",
    },
    "t2v_sequential_qcache": {
        "a_red_fox_running_through_snow/golden/origin.gif": "35d7c737e829add0",
        "a_red_fox_running_through_snow/golden.gif": "e0b1e0956c9327b1",
    },
    "t2v_story_frames": {
        "a_cat_sleeps/golden/fifo/0000.png": "3651f5d96072694b",
        "a_cat_sleeps/golden/fifo/0001.png": "6e46e45e84eec622",
        "a_cat_sleeps/golden/fifo/0002.png": "420fdbe27e1b43b3",
        "a_cat_sleeps/golden/fifo/0003.png": "54c97620b99b82c2",
        "a_cat_sleeps/golden/origin.gif": "81685c0df836d602",
        "a_cat_sleeps/golden.gif": "39b86396b7621998",
    },
    "t2v_stqcache_attn2_no_lookahead": {
        "a_red_fox_running_through_snow/golden/origin.gif": "40783d279b6c8fcc",
        "a_red_fox_running_through_snow/golden.gif": "4a460ba777856cf1",
    },
}


def run_case(tmp_path: Path, name: str) -> dict[str, str]:
    config, text, extra = CASES[name]
    image = write_png(tmp_path / "in" / "fox.png", (80, 48), seed=1)
    prompts = tmp_path / "in" / "prompts.txt"
    prompts.write_text(text.replace("{image}", str(image)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = videocrafter_main.main(
        ["--config", config, "-p", str(prompts), "--output_dir", str(out), *COMMON, *extra]
    )
    assert rc == 0
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] != "latents"
    }


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_are_byte_identical(tmp_path: Path, name: str) -> None:
    hashes = run_case(tmp_path, name)
    if os.environ.get("GOLDEN_PRINT"):
        print(f"\n    {name!r}: {hashes!r},")
    assert hashes == GOLDEN[name]
