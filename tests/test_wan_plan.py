"""--dry_run on Wan2.1: the tiny model planned on the CPU, the full 1.3B model on a fake 24 GB GPU."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

import videocrafter_main  # noqa: E402


def _plan(capsys, *args: str) -> tuple[int, dict, str]:
    code = videocrafter_main.main(["--random_init", "-p", "prompts/demo.txt", "--dry_run", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_tiny_plan_matches_the_run_shapes(tmp_path, capsys) -> None:
    code, plan, _ = _plan(
        capsys, "--config", "configs/tiny_wan_t2v.yaml", "-l", "24", "--output_dir", str(tmp_path)
    )
    assert code == 0 and plan["fits"] is None  # no budget on a CPU
    assert plan["windows"] == 8 and plan["window_frames"] == 4 and plan["video_frames_per_latent"] == 4
    shapes = plan["stage_shapes"]
    assert shapes["decode_first"] == [1, 3, 1, 64, 64] and shapes["decode"] == [1, 3, 4, 64, 64]
    assert shapes["fifo_queue"] == [1, 4, 18, 8, 8]  # 16 levels + 2 lookahead slots
    assert plan["tflop_per_frame"] > 0 and plan["peak_memory_bytes"] > plan["weights_bytes"] > 0
    assert not any(tmp_path.iterdir())  # a plan writes nothing


def test_full_1_3b_on_a_24gb_gpu(tmp_path, capsys) -> None:
    """Wan2.1 1.3B at 480x832 in bf16: the text encoder offloaded, two windows per call fit."""
    args = ["--config", "configs/wan2.1_t2v_1.3b.yaml", "--plan_for", "rtx4090", "--dtype", "bf16"]
    code, plan, err = _plan(capsys, *args, "-n", "2", "-l", "81", "--output_dir", str(tmp_path))
    assert code == 0, err
    assert plan["device"].startswith("cuda") and plan["fits"] is True
    assert plan["stage_shapes"]["base_step"] == [1, 16, 20, 60, 104]
    assert 2.5 * 2**30 < plan["weights_bytes"] < 4 * 2**30  # the transformer and autoencoder, no UMT5
    assert plan["tflop_per_frame"] > 100 and plan["window_batch"] >= 1
