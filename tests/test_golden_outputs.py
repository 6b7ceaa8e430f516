"""Exact bytes of the videos and PNG frames of a set of tiny runs, recorded before the restructure.

The restructure of the FIFO run (state + step, noise source, explicit guidance, packages split
by concern) must not change a single output byte. Each case runs the CLI on the tiny configs with
random weights on one thread (the CPU plan shards by thread count, and a different batch split
may move the last bits) and compares the sha256 of every video and PNG it writes with the value
recorded by the code as it was before. The base-clip cache is not compared (its key names the
weights' identity, not the output).

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
        "fox_a_red_fox_running_through_snow/golden/origin.gif": "ab10b774ffb96501",
        "fox_a_red_fox_running_through_snow/golden.gif": "37c880bf9e6630cc",
    },
    "i2v_stqcache_no_lookahead": {
        "fox_a_red_fox_running_through_snow/golden/origin.gif": "7ad0c3986df7d809",
        "fox_a_red_fox_running_through_snow/golden.gif": "37da3fe60ec5e9d2",
    },
    "t2v": {
        "a_red_fox_running_through_snow/golden/origin.gif": "e76c81558fb5b797",
        "a_red_fox_running_through_snow/golden.gif": "f276e4493501cb5b",
    },
    "t2v_mp4": {
        "a_red_fox_running_through_snow/golden/origin.gif": "7a1c5a5dcef656ca",
        "a_red_fox_running_through_snow/golden.mp4": "228b7a7539266d14",
    },
    "t2v_qcache_unilatent_frames": {
        "a_red_fox_running_through_snow/golden/fifo/0000.png": "780f3d1a670c02aa",
        "a_red_fox_running_through_snow/golden/fifo/0001.png": "4c75c7f7bdd43a08",
        "a_red_fox_running_through_snow/golden/fifo/0002.png": "a1936b64469b71d3",
        "a_red_fox_running_through_snow/golden/origin.gif": "b02584b26bfeecb2",
        "a_red_fox_running_through_snow/golden.gif": "c7ad28dd8c40c745",
    },
    "t2v_seed_ar_unilatent_frames": {
        "a_red_fox_running_through_snow/golden/fifo/0000.png": "f81b49c785269943",
        "a_red_fox_running_through_snow/golden/fifo/0001.png": "f207b2cd23b61916",
        "a_red_fox_running_through_snow/golden/fifo/0002.png": "03ff27be634d2b68",
        "a_red_fox_running_through_snow/golden/origin.gif": "e91c261af082a977",
        "a_red_fox_running_through_snow/golden.gif": "2822517f0cf4ff2a",
    },
    "t2v_seed_qcache": {
        "a_red_fox_running_through_snow/golden/origin.gif": "64e995ba0f52b897",
        "a_red_fox_running_through_snow/golden.gif": "8d317ec57442d96b",
    },
    "t2v_sequential_no_lookahead": {
        "a_red_fox_running_through_snow/golden/origin.gif": "50a8a1080af173ab",
        "a_red_fox_running_through_snow/golden.gif": "f47aef991c8a0b0d",
    },
    "t2v_sequential_qcache": {
        "a_red_fox_running_through_snow/golden/origin.gif": "7ccd6da989033939",
        "a_red_fox_running_through_snow/golden.gif": "4d54c8bcb0707d10",
    },
    "t2v_story_frames": {
        "a_cat_sleeps/golden/fifo/0000.png": "3651f5d96072694b",
        "a_cat_sleeps/golden/fifo/0001.png": "6e46e45e84eec622",
        "a_cat_sleeps/golden/fifo/0002.png": "420fdbe27e1b43b3",
        "a_cat_sleeps/golden/fifo/0003.png": "54c97620b99b82c2",
        "a_cat_sleeps/golden/origin.gif": "a909ff7cefeb5838",
        "a_cat_sleeps/golden.gif": "06e500653a7ab2df",
    },
    "t2v_stqcache_attn2_no_lookahead": {
        "a_red_fox_running_through_snow/golden/origin.gif": "f5d7ce8cb2a123b0",
        "a_red_fox_running_through_snow/golden.gif": "c5da204e0d628c59",
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
