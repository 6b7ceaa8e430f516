"""Multi-process sharding: torchrun (gloo on CPU) and --rank/--num_processes split prompts without loss."""

from __future__ import annotations

from tests.conftest import torchrun

PROMPTS = ["a red ball", "a blue cube", "a green cone", "a white sphere"]
SMALL = [
    "--config",
    "configs/tiny_t2v.yaml",
    "--random_init",
    "--video_length",
    "4",
    "-n",
    "1",
    "-l",
    "2",
    "--no_progress",
    "--window_batch",  # given: spares each rank the memory measurement that picks one
    "2",
]


def test_torchrun_two_cpu_ranks_split_four_prompts(tmp_path) -> None:
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    proc = torchrun(2, "videocrafter_main.py", *SMALL, "-p", str(prompt_file), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "rank 0/2: 2 of 4 prompt(s)" in log and "rank 1/2: 2 of 4 prompt(s)" in log
    assert "all ranks: 4 video(s) written" in log  # rank 0's summary
    videos = sorted(p.parent.name for p in out.glob("*/*.gif"))
    assert videos == sorted({v for v in videos}) and len(videos) == 4  # each prompt once, none lost
    for rank, prompts in ((0, PROMPTS[0::2]), (1, PROMPTS[1::2])):
        for prompt in prompts:
            assert f"rank {rank}: " in log and prompt in log
