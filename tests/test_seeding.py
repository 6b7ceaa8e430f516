"""t2v_seed / t2v_seed_ar on DynamiCrafter, whose base clip comes from a text-to-video model
(``--seed_config``, :mod:`fifo.seed_clips`): refusals before any model is loaded, the base clip equal
to the text model's own ``t2v`` base clip, the image latent of the first frame carried by the state
through a stop and ``--resume`` and to the other rank of ``--parallel windows``, and the dry run's
plan holding both models' weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

import videocrafter_main
from tests.conftest import REPO, torchrun
from tests.test_parallel import frames_of
from tests.test_resume import outputs, stop_after

DC = str(REPO / "configs" / "tiny_dynamicrafter.yaml")
T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
SMALL = ["--random_init", "--video_length", "8", "-n", "1", "-l", "3", "--height", "64", "--width", "64"]
SMALL += ["--no_progress", "-ex", "run", "--save_frames", "--window_batch", "2"]
SEEDED = ["--config", DC, "--seed_config", T2V, *SMALL]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prompts(tmp_path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("a red ball rolls over the grass\n")
    return str(path)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", DC, "--mode", "t2v_seed", "--random_init"], ["--seed_config configs/inference_t2v_512_v2.0.yaml", "--seed_config configs/tiny_t2v.yaml"]),
        (["--config", DC, "--mode", "t2v_seed", "--ckpt_path", str(REPO / "README.md")], ["--seed_ckpt videocrafter_models/base_512_v2/model.ckpt: no such file", "--which t2v"]),
        (["--config", DC, "--mode", "t2v_seed", "--random_init", "--seed_config", DC], ["must come from a text-to-video model", "DynamiCrafter"]),
        (["--config", DC, "--mode", "t2v_seed", "--random_init", "--seed_config", I2V], ["must come from a text-to-video model"]),
        (["--config", T2V, "--mode", "t2v", "--random_init", "--seed_config", T2V], ["applies to the modes seeded by a base clip", "'t2v'"]),
        (["--config", T2V, "--mode", "t2v", "--random_init", "--seed_ckpt", "x.ckpt"], ["--seed_ckpt is the checkpoint of --seed_config"]),
        (["--config", DC, "--mode", "t2v_seed", "--seed_config", T2V, "--ckpt_path", str(REPO / "README.md")], ["--seed_ckpt is required with --seed_config"]),
    ],
)  # fmt: skip
def test_seed_model_mistakes_are_refused_before_loading(
    tmp_path, capsys, no_model, prompts, args, words
) -> None:
    rc = videocrafter_main.main(["-p", prompts, *args, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "mode"),
    [(DC, "t2v_seed"), (DC, "t2v_seed_ar_TTqcache_attn1"), (I2V, "t2v_seed")],  # I2V: its own clip by default
    ids=["dynamicrafter", "dynamicrafter_ar_qcache", "videocrafter1_i2v"],
)
def test_seeded_run_starts_from_the_text_models_own_base_clip(tmp_path, prompts, config, mode) -> None:
    seeded = tmp_path / "seeded"
    args = ["-p", prompts, "--config", config, "--seed_config", T2V, *SMALL, "--mode", mode]
    assert videocrafter_main.main([*args, "--output_dir", str(seeded)]) == 0
    frames = frames_of(seeded)
    assert frames.shape == (3, 64, 64, 3) and frames.std() > 0
    # The text model alone, plain t2v with the same settings: the same base clip (origin.gif).
    plain = tmp_path / "plain"
    assert videocrafter_main.main(["-p", prompts, "--config", T2V, *SMALL, "--output_dir", str(plain)]) == 0
    (origin,) = seeded.rglob("origin.gif")
    assert origin.read_bytes() == next(plain.rglob("origin.gif")).read_bytes()
    assert not np.array_equal(frames, frames_of(plain))  # but the image model made the FIFO frames


def test_stopped_then_resumed_seeded_run_is_byte_identical(tmp_path, monkeypatch, prompts) -> None:
    # t2v_seed_ar: the image latent changes every frame, so the resumed run needs the saved one.
    args = ["-p", prompts, *SEEDED, "--mode", "t2v_seed_ar", "--save_state_every", "1"]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        stop_after(2, patch)
        assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 130
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert outputs(out) == outputs(tmp_path / "whole")


def test_two_ranks_share_the_seeded_image_latent(tmp_path, prompts) -> None:
    args = ["-p", prompts, *SEEDED, "--mode", "t2v_seed_ar", "-n", "2", "-l", "2"]
    proc = torchrun(
        2, "videocrafter_main.py", *args, "--parallel", "windows", "--output_dir", str(tmp_path / "A")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "B")]) == 0
    one, two = frames_of(tmp_path / "B"), frames_of(tmp_path / "A")
    assert one.shape == two.shape == (2, 64, 64, 3)
    differ = np.abs(one - two)
    assert differ.max() <= 4 and (differ > 0).mean() < 0.01, (differ.max(), (differ > 0).mean())


def test_dry_run_plans_both_models(tmp_path, capsys, prompts) -> None:
    import torch

    from fifo.plan import weight_bytes
    from lvdm.build import build_model

    args = ["-p", prompts, *SEEDED, "--mode", "t2v_seed_ar", "--dry_run", "--device", "cuda"]
    assert videocrafter_main.main(args) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["dtype"] == "fp16"
    assert plan["stage_shapes"]["base_step"] == [1, 4, 8, 8, 8]  # the text model's clip, encoded
    assert plan["stage_shapes"]["image_tokens"] == [1, 128, 32]  # 16 per frame of the 8-frame clip
    expected = 0
    for config in (DC, T2V):
        model = build_model(config)
        model.set_precision(torch.float16)
        expected += weight_bytes(model)
    assert plan["weights_bytes"] == expected
