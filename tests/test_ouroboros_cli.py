"""The Ouroboros-Diffusion tricks through the CLI on the tiny configs: every new part with every
main mode it can join, a Q-cache and unilatent; each run twice, byte for byte the same.

All three parts run with every base mode; each part alone runs with several of them.

Sizes: 64x64 frames, windows of f = 2, one partition (2 windows), 3 output frames (enough for a
tail that entered the queue to reach the output). SRG guides both windows; on a schedule of two
DDIM steps its term is too small to move a pixel (it scales with 1 − ᾱ of the next step, ~0
at both ends of the schedule): ``tests/test_tricks_srg.py`` checks what it does to the latents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import videocrafter_main
from tests.conftest import REPO, write_png

pytestmark = pytest.mark.usefixtures("one_thread")

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
SIZE = ["--video_length", "2", "-n", "1", "-l", "3", "--no_progress", "-ex", "run", "--save_frames"]
PROMPT = "a person swimming in the ocean"
SUBJECT = ["--subject", "a person"]
TRICKS = [*SUBJECT, "--srg_windows", "2"]  # ignored (logged) where srg is off

# base mode → its config and whether prompts carry an image
BASES = {
    "t2v": T2V,
    "i2v": I2V,
    "t2v_seed_ar": I2V,
    "t2v_TTqcache_attn1": T2V,
    "t2v_unilatent": T2V,
}
PARTS = ["tailcoh", "sacfa", "srg"]
ALL = "tailcoh_sacfa_srg"
# Every part with every base: all three parts together on each base. Each part alone on plain t2v
# and on at least one other base, so every base also runs with a part on its own (the Q-cache
# with SACFA and SRG, whose key recorders share its attention layers).
COMBINATIONS = [(base, ALL) for base in BASES] + [("t2v", part) for part in PARTS]
COMBINATIONS += [("i2v", "sacfa"), ("t2v_seed_ar", "tailcoh"), ("t2v_unilatent", "tailcoh")]
COMBINATIONS += [("t2v_TTqcache_attn1", "sacfa"), ("t2v_TTqcache_attn1", "srg"), ("i2v", "srg")]
# The spatial Q-cache shares the decoder's attn1 layers with SACFA and SRG's key recorders.
BASES["t2v_STqcache_attn1"] = T2V
COMBINATIONS += [("t2v_STqcache_attn1", "sacfa"), ("t2v_STqcache_attn1", ALL)]


def run(
    tmp_path: Path, mode: str, config: str, *extra: str, prompt_text: str | None = None
) -> dict[str, str]:
    """Run the CLI into a fresh folder; the sha256 of every file it wrote (the base-clip cache aside)."""
    folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    prompts = folder / "prompts.txt"
    folder.mkdir(parents=True)
    if prompt_text is None:
        image = write_png(folder / "fox.png", (80, 48), seed=1)
        prompt_text = f"{image};{PROMPT}" if mode.startswith("i2v") else PROMPT
    prompts.write_text(prompt_text + "\n", encoding="utf-8")
    out = folder / "out"
    args = ["--config", config, "--random_init", "-p", str(prompts), "--output_dir", str(out), "--mode", mode]
    assert videocrafter_main.main([*args, *SIZE, *extra]) == 0
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] != "latents"
    }


def videos(hashes: dict[str, str]) -> dict[str, str]:
    """The output video and its frames as PNG (lossless: the GIF's palette may hide small changes)."""
    return {k: v for k, v in hashes.items() if k.endswith("run.gif") or "/fifo/" in k}


@pytest.fixture(scope="module")
def base_videos(tmp_path_factory) -> dict[str, dict[str, str]]:
    """The videos of the base modes without the new parts (computed once)."""
    folder = tmp_path_factory.mktemp("bases")
    return {mode: videos(run(folder, mode, config)) for mode, config in BASES.items()}


@pytest.mark.parametrize(("base", "part"), COMBINATIONS)
def test_every_new_part_with_every_base_runs_and_is_deterministic(
    tmp_path: Path, base: str, part: str, base_videos
) -> None:
    mode = f"{base}_{part}"
    first = run(tmp_path, mode, BASES[base], *TRICKS)
    second = run(tmp_path, mode, BASES[base], *TRICKS)
    assert first == second  # same bytes twice
    assert videos(first)
    if part != "srg":
        assert videos(first) != base_videos[base]  # the part changes the video


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("t2v_TTqcache_attn1_unilatent_tailcoh_sacfa_srg", []),  # the manual's demo mode
        ("t2v_sacfa_srg", ["--sequential"]),  # one window and one guidance branch per call
        ("t2v_tailcoh_sacfa_srg", ["-ld", "--eta", "0.5"]),  # lookahead off
        ("t2v_srg", ["--srg_windows", "1", "--srg_weight", "3", "--srg_momentum", "0.5"]),
        ("t2v_tailcoh_sacfa", ["--tail_filter", "ideal", "--tail_lowpass", "0.5", "--subject_levels", "2"]),
    ],
)
def test_variants_are_deterministic(tmp_path: Path, mode: str, extra: list[str]) -> None:
    assert run(tmp_path, mode, T2V, *SUBJECT, *extra) == run(tmp_path, mode, T2V, *SUBJECT, *extra)


def test_a_story_has_the_subject_in_every_scene_that_names_it(tmp_path: Path) -> None:
    story = "2|a person walks on the beach\n2|a seagull flies\n2|a person swims"
    first = run(tmp_path, "t2v_tailcoh_sacfa_srg", T2V, *SUBJECT, prompt_text=story)
    assert first == run(tmp_path, "t2v_tailcoh_sacfa_srg", T2V, *SUBJECT, prompt_text=story)


def test_trick_flags_without_their_trick_change_nothing(tmp_path: Path, base_videos) -> None:
    assert videos(run(tmp_path, "t2v", T2V, *TRICKS, "--tail_lowpass", "0.5")) == base_videos["t2v"]


@pytest.mark.parametrize(
    ("mode", "extra", "message"),
    [
        ("t2v_sacfa", [], "--subject"),
        ("t2v_srg", ["--subject", "a dog"], "--subject 'a dog' does not occur"),
        ("t2v_tailcoh", ["--tail_lowpass", "2"], "--tail_lowpass"),
        ("t2v_srg", [*SUBJECT, "--srg_windows", "3"], "--srg_windows"),
        ("t2v_sacfa", [*SUBJECT, "--subject_levels", "1,3"], "--subject_levels"),
        ("t2v_sacfa", [*SUBJECT, "--subject_threshold", "0"], "--subject_threshold"),
    ],
)
def test_invalid_use_is_a_usage_error_naming_the_flag(tmp_path: Path, capsys, mode, extra, message) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n", encoding="utf-8")
    args = ["--config", T2V, "--random_init", "-p", str(prompts), "--output_dir", str(tmp_path / "out")]
    assert videocrafter_main.main([*args, "--mode", mode, *SIZE, *extra]) == 2
    assert message in capsys.readouterr().err
