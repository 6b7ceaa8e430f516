"""MIGA's mechanisms through the CLI on every family's tiny config: each writes its -l frames,
combines with the published and Ouroboros-Diffusion parts, resumes byte for byte, and is refused
with the reason where it cannot run.

Sizes as in tests/test_ouroboros_cli.py: 64x64 frames, windows of f = 2 (f = 8 on DynamiCrafter,
whose per-frame image tokens fix it), one partition, 3 output frames.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import videocrafter_main
from fifo.miga_cost import cost_lines
from tests.conftest import REPO, write_png
from tests.test_resume import outputs, stop_after

pytestmark = pytest.mark.usefixtures("one_thread")

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
VC1_T2V = str(REPO / "configs" / "tiny_videocrafter1_t2v.yaml")
DC = str(REPO / "configs" / "tiny_dynamicrafter.yaml")
SIZE = ["--video_length", "2", "-n", "1", "-l", "3", "--no_progress", "-ex", "run", "--save_frames"]
DC_SIZE = ["--video_length", "8", *SIZE[2:], "--height", "64", "--width", "64"]
PROMPT = "a person swimming in the ocean"
SUBJECT = ["--subject", "a person", "--srg_windows", "2"]

# mode, config, extra arguments, the part whose removal must change the video, if checked
# (self-reflection changes it only where it fires: tests/test_miga_reflect.py checks the firing)
REFLECT = ["--reflect_threshold", "0", "--reflect_candidates", "2"]
# the zigzag queue needs a stage 1 (-n 2) and L_zig dividing the f/2 frames a window writes back
ZIGZAG = ["--video_length", "4", "-n", "2", "--zigzag_length", "2"]
CASES = [
    ("t2v_anchors", T2V, [], "_anchors"),
    ("t2v_reflect", T2V, REFLECT, None),
    ("t2v_reflect_anchors", T2V, REFLECT, "_anchors"),
    ("t2v_TTqcache_attn1_unilatent_tailcoh_sacfa_srg_reflect_anchors", T2V, [*SUBJECT, *REFLECT], "_anchors"),
    ("i2v_reflect_anchors", I2V, REFLECT, "_anchors"),
    ("t2v_seed_ar_reflect_anchors", I2V, REFLECT, "_anchors"),
    ("t2v_reflect_anchors", VC1_T2V, REFLECT, "_anchors"),
    ("i2v_reflect_anchors", DC, ["--anchor_frames", "2", *REFLECT], "_anchors"),
    ("t2v_zigzag_anchors", T2V, ZIGZAG, "_zigzag"),
    ("i2v_TTqcache_attn1_unilatent_sacfa_zigzag", I2V, [*ZIGZAG, "--subject", "a person"], None),
    ("t2v_seed_ar_zigzag_anchors", I2V, ZIGZAG, None),
    ("t2v_zigzag", VC1_T2V, ZIGZAG, None),
    ("i2v_zigzag_anchors", DC, ["-n", "2", "--anchor_frames", "2"], None),
]


def run(folder: Path, mode: str, config: str, *extra: str) -> dict[str, str]:
    """Run the CLI into ``folder``; the sha256 of every file it wrote (the base-clip cache aside)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = write_png(folder / "fox.png", (80, 48), seed=1)
    (folder / "prompts.txt").write_text((f"{image};{PROMPT}" if mode.startswith("i2v") else PROMPT) + "\n")
    size = DC_SIZE if config == DC else SIZE
    args = ["--config", config, "--random_init", "-p", str(folder / "prompts.txt"), "--mode", mode]
    assert videocrafter_main.main([*args, "--output_dir", str(folder / "out"), *size, *extra]) == 0
    return {
        str(p.relative_to(folder / "out")): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "out").rglob("*"))
        if p.is_file() and p.relative_to(folder / "out").parts[0] != "latents"
    }


@pytest.mark.parametrize(
    ("mode", "config", "extra", "part"), CASES, ids=[f"{c[0]}-{Path(c[1]).stem}" for c in CASES]
)
def test_every_family_runs_the_mechanisms_and_writes_its_frames(tmp_path, mode, config, extra, part) -> None:
    files = run(tmp_path / "a", mode, config, *extra)
    frames = sorted(k for k in files if "/fifo/" in k)
    assert len(frames) == 3 and any(k.endswith("run.gif") for k in files)
    if part is not None:
        plain = run(tmp_path / "b", mode.replace(part, ""), config, *extra)
        assert [files[k] for k in frames] != [plain[k] for k in frames]  # the part changes the video


def test_zigzag_is_refused_with_the_reason(tmp_path, capsys) -> None:
    (tmp_path / "p.txt").write_text(PROMPT + "\n")
    args = [
        "--config",
        T2V,
        "--random_init",
        "-p",
        str(tmp_path / "p.txt"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    for mode, extra, reason in (
        ("t2v_zigzag_tailcoh", ZIGZAG, "zigzag and tailcoh do not combine: its tail follows the previous"),
        ("t2v_zigzag", [*ZIGZAG, "--zigzag_length", "4"], "--zigzag_length must divide the 2 frames"),
        ("t2v_zigzag", [*ZIGZAG, "-n", "1"], "use --num_partitions 2 or more with zigzag"),
    ):
        assert videocrafter_main.main([*args, "--mode", mode, *SIZE, *extra]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_anchors_are_refused_without_lookahead(tmp_path, capsys) -> None:
    (tmp_path / "p.txt").write_text(PROMPT + "\n")
    args = [
        "--config",
        T2V,
        "--random_init",
        "-p",
        str(tmp_path / "p.txt"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert videocrafter_main.main([*args, "--mode", "t2v_anchors", *SIZE, "-ld"]) == 2
    assert "keep lookahead denoising on to use anchors" in capsys.readouterr().err
    assert videocrafter_main.main([*args, "--mode", "t2v_anchors", *SIZE, "--anchor_frames", "2"]) == 2
    assert "--anchor_frames (2) exceeds the 1 frames" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


RESUME = ["--random_init", "--video_length", "4", "-n", "2", "-l", "6", "--no_progress", "-ex", "run"]


@pytest.mark.parametrize("mode", ["t2v_reflect_anchors", "t2v_zigzag_anchors", "t2v_zigzag_reflect"])
def test_stopped_then_resumed_is_byte_identical(tmp_path, monkeypatch, mode: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    args = [
        "--config",
        T2V,
        "-p",
        str(prompts),
        *RESUME,
        "--save_frames",
        "--mode",
        mode,
        "--save_state_every",
        "1",
        *(["--zigzag_length", "2"] if "zigzag" in mode else []),
        *(REFLECT if mode == "t2v_zigzag_reflect" else []),
    ]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    assert len([k for k in outputs(tmp_path / "whole") if "/fifo/" in k]) == 6  # its -l frames
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        stop_after(7, patch)  # 10 iterations, 4 of warm-up: the bank holds 3 frames at the stop
        assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 130
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert outputs(out) == outputs(tmp_path / "whole")


def test_the_benchmark_times_each_mechanism_against_fifo(tmp_path, capsys) -> None:
    from tests.conftest import load_script

    bench = load_script("scripts/benchmark.py")
    out = tmp_path / "mechanisms.json"
    args = ["--preset", "tiny", "--mechanisms", "--iterations", "1", "--warmup", "0", "--video_length", "4"]
    args += ["--num_partitions", "2", "--zigzag_length", "2"]
    assert bench.main([*args, "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["mechanism"] for r in rows] == ["fifo", "zigzag", "anchors", "reflect"]
    assert rows[0]["relative_to_fifo"] == 1.0
    assert all(r["seconds_per_frame"] > 0 and r["iterations"] == 1 for r in rows)
    printed = capsys.readouterr().out
    assert "| anchors | t2v_anchors |" in printed and "| reflect | t2v_reflect |" in printed
    assert "| zigzag | t2v_zigzag (L_zig = 2) |" in printed and rows[1]["zigzag_length"] == 2


def test_dry_run_on_the_full_videocrafter2_config_prints_their_cost(tmp_path, capsys) -> None:
    full = str(REPO / "configs" / "inference_t2v_512_v2.0.yaml")
    args = ["--config", full, "--random_init", "--dry_run", "--device", "cuda", "--dtype", "fp16"]
    args += ["-p", str(REPO / "prompts" / "demo.txt"), "--output_dir", str(tmp_path / "out")]
    assert videocrafter_main.main([*args, "--mode", "t2v_reflect_anchors"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out.strip().splitlines()[-1])
    anchors, reflect = plan["miga"]["anchors"], plan["miga"]["reflect"]
    assert plan["windows"] == 8 and anchors["plain_unet_frames_per_output_frame"] == 8 * 16
    assert anchors["anchor_frames"] == 4 and anchors["extra_unet_frames_per_output_frame"] == 0
    assert anchors["bank_latents"] == 16 and anchors["bank_bytes"] == 16 * 4 * 40 * 64 * 4
    assert reflect["depth"] == 2 and reflect["extra_unet_frames_per_output_frame"] == 16
    assert reflect["extra_unet_frames_when_fired"] == 3 * 4 * 16
    lines = cost_lines(plan["miga"])  # what the dry run logs after the plan's other lines
    assert lines[0].startswith("anchors: 4 clean frames") and lines[1].startswith(
        "reflect: 16 extra U-Net frames"
    )
    # zigzag: one window more per output frame, a queue 2·8 − 1 latents longer, FIFO's 64 steps
    assert videocrafter_main.main([*args, "--mode", "t2v_zigzag_anchors"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    zigzag = plan["miga"]["zigzag"]
    assert plan["windows"] == 9 and plan["miga"]["anchors"]["anchor_frames_per_output_frame"] == 4 * 9
    assert (
        zigzag["zigzag_length"] == 4 and zigzag["levels_per_window"] == 4 and zigzag["steps_per_frame"] == 64
    )
    assert (
        zigzag["extra_unet_frames_per_output_frame"] == 16
        and zigzag["plain_unet_frames_per_output_frame"] == 128
    )
    assert zigzag["queue_latents"] == 72 + 15 and zigzag["extra_queue_bytes"] == 15 * 4 * 40 * 64 * 4
    assert cost_lines(plan["miga"])[0].startswith("zigzag: L_zig 4, 4 noise levels per window; 9 windows")
    assert not (tmp_path / "out").exists()
