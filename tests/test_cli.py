"""videocrafter_main end to end on the tiny configs with random weights (CPU, a few seconds each).

Sizes are the smallest the tiny models take: 64x64 frames (8x8 latents, the U-Net halves them
three times), windows of f = 4 frames (or 2), one partition, a handful of output frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli.parser
import cli.request
import videocrafter_main
from fifo.options import parse_mode
from fifo.prompts import safe_name
from infra.video_io import read_video
from tests.conftest import write_png

ROOT = Path(__file__).resolve().parents[1]
T2V = str(ROOT / "configs" / "tiny_t2v.yaml")
I2V = str(ROOT / "configs" / "tiny_i2v.yaml")
SIZE = 64
SMALL = ["--video_length", "4", "-n", "1", "-l", "3", "--no_progress"]
TINIEST = ["--video_length", "2", "-n", "1", "-l", "2", "--no_progress"]
# What SMALL and TINIEST add to the default experiment name (settings that differ from the defaults).
SMALL_NAME = "f4_n1_l3"
TINIEST_NAME = "f2_n1_l2"
PROMPT = "a red fox running through snow"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_png(path: Path) -> Path:
    return write_png(path, (80, 48), seed=1)


def prompt_file(tmp_path: Path, text: str, name: str = "prompts.txt") -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def i2v_prompt_file(tmp_path: Path, prompt: str = PROMPT) -> tuple[Path, str]:
    make_png(tmp_path / "in" / "images" / "fox.png")
    return prompt_file(tmp_path, f"images/fox.png;{prompt}\n"), safe_name(f"fox_{prompt}")


def run_cli(*args: str) -> int:
    return videocrafter_main.main([str(a) for a in args])


def experiment_of(mode: str, weight: float = 0.9, settings: str = SMALL_NAME) -> str:
    """The default experiment name of a run with SMALL (or ``settings``'s tokens)."""
    parsed = parse_mode(mode, weight)
    return parsed.name + (f"_w{weight:g}" if parsed.qcache else "") + (f"_{settings}" if settings else "")


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# ----------------------------------------------------------------------------- the mode matrix
# Every main option and every sub option appears at least once; lookahead on and off, gif and mp4.
MATRIX = [
    ("t2v", T2V, []),
    ("t2v_TTqcache_attn2", T2V, ["--save_frames"]),
    ("t2v_STqcache_unilatent", T2V, ["-ld", "--use_mp4"]),
    ("i2v", I2V, []),
    ("i2v_STqcache_attn1", I2V, ["-ld"]),
    ("t2v_seed", I2V, ["--use_mp4", "--save_frames"]),
    ("t2v_seed_TTqcache", I2V, ["--qcache_weight", "0.5"]),
    ("t2v_seed_ar", I2V, []),
    ("t2v_seed_ar_TTqcache_STqcache_attn1_attn2_unilatent", I2V, ["-ld"]),
]


@pytest.mark.parametrize(("mode", "config", "extra"), MATRIX, ids=[m[0] for m in MATRIX])
def test_mode_matrix(tmp_path: Path, work: Path, mode: str, config: str, extra: list[str]) -> None:
    if mode.startswith("i2v"):
        prompts, folder = i2v_prompt_file(tmp_path)
    else:
        prompts, folder = prompt_file(tmp_path, f"# one prompt\n{PROMPT}\n"), safe_name(PROMPT)
    out = tmp_path / "out"
    new_length = 3
    rc = run_cli(
        "--config", config, "--random_init", "--mode", mode, "-p", prompts, "--output_dir", out,
        *SMALL, *extra,
    )  # fmt: skip
    assert rc == 0
    weight = float(extra[extra.index("--qcache_weight") + 1]) if "--qcache_weight" in extra else 0.9
    experiment = experiment_of(mode, weight, SMALL_NAME + ("_nolookahead" if "-ld" in extra else ""))
    suffix = ".mp4" if "--use_mp4" in extra else ".gif"
    video = out / folder / f"{experiment}{suffix}"
    assert video.is_file(), files_under(out)
    frames = read_video(video)
    assert frames.shape == (new_length, SIZE, SIZE, 3)
    origin = read_video(out / folder / experiment / "origin.gif")
    assert origin.shape == (4, SIZE, SIZE, 3)  # the base clip: f frames
    pngs = sorted((out / folder / experiment / "fifo").glob("*.png"))
    if "--save_frames" in extra:
        assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(new_length)]
        for i, p in enumerate(pngs):
            with Image.open(p) as im:
                assert im.size == (SIZE, SIZE)
                if suffix == ".gif":  # the PNGs are the video's frames, up to the GIF palette
                    diff = np.abs(np.asarray(im.convert("RGB"), dtype=np.int16) - frames[i])
                    assert diff.mean() < 12, diff.mean()
    else:
        assert not pngs
    assert not [p for p in files_under(out) if ".partial-" in p.name]
    assert list(work.iterdir()) == []  # nothing written outside --output_dir


def test_custom_size_and_experiment_name(tmp_path: Path, work: Path) -> None:
    out = tmp_path / "out"
    prompts = prompt_file(tmp_path, f"{PROMPT}\n")
    rc = run_cli(
        "--config", T2V, "--random_init", "-p", prompts, "--output_dir", out, *TINIEST,
        "--height", "64", "--width", "128", "-ex", "my/run",
    )  # fmt: skip
    assert rc == 0
    frames = read_video(out / safe_name(PROMPT) / "my_run.gif")
    assert frames.shape == (2, 64, 128, 3)


# ----------------------------------------------------------------------------- determinism and the cache
def _log_says_cached(caplog) -> bool:
    return any("reusing cached latents" in r.getMessage() for r in caplog.records)


def test_same_seed_same_video_and_cache_reuse(tmp_path: Path, work: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    prompts = prompt_file(tmp_path, f"{PROMPT}\n")
    base = ["--config", T2V, "--random_init", "-p", prompts, *TINIEST]  # eta = 1: noise in every step
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    video1 = out1 / safe_name(PROMPT) / f"t2v_{TINIEST_NAME}.gif"

    assert run_cli(*base, "--output_dir", out1) == 0
    assert not _log_says_cached(caplog)
    first = video1.read_bytes()
    assert len(list((out1 / "latents").glob("*.pt"))) == 1

    caplog.clear()
    assert run_cli(*base, "--output_dir", out1, "--overwrite") == 0  # the same name: replace it
    assert _log_says_cached(caplog)
    assert any("cached base clip" in r.getMessage() for r in caplog.records)
    # A reused base clip gives exactly the video that sampling it afresh gave.
    assert video1.read_bytes() == first

    caplog.clear()
    assert run_cli(*base, "--output_dir", out2) == 0
    assert not _log_says_cached(caplog)
    assert (out2 / safe_name(PROMPT) / f"t2v_{TINIEST_NAME}.gif").read_bytes() == first

    caplog.clear()
    assert run_cli(*base, "--output_dir", out1, "--seed", "7") == 0
    assert not _log_says_cached(caplog)  # another seed: another base clip
    assert video1.read_bytes() == first  # ... and another name: the first video is kept
    assert video1.with_name(f"t2v_{TINIEST_NAME}_seed7.gif").read_bytes() != first
    assert len(list((out1 / "latents").glob("*.pt"))) == 2


def test_published_rng_cached_base_clip_gives_the_same_video(tmp_path: Path, work: Path, caplog) -> None:
    """--rng published: one stream for base clip and FIFO; a cached base clip restores the stream
    where sampling left it, so the video is the one a fresh run gives. Two prompts: the second
    starts where the first left the stream (as the published code, seeded once per process)."""
    caplog.set_level(logging.INFO)
    prompts = prompt_file(tmp_path, f"{PROMPT}\na blue cube\n")
    base = ["--config", T2V, "--random_init", "-p", prompts, *TINIEST, "--rng", "published"]
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    videos = [out1 / safe_name(p) / f"t2v_{TINIEST_NAME}_rngpublished.gif" for p in (PROMPT, "a blue cube")]
    assert run_cli(*base, "--output_dir", out1) == 0
    assert not _log_says_cached(caplog)
    fresh = [v.read_bytes() for v in videos]
    assert len(list((out1 / "latents").glob("*.pt"))) == 2
    caplog.clear()
    assert run_cli(*base, "--output_dir", out1, "-ex", "again") == 0
    assert sum("reusing cached latents" in r.getMessage() for r in caplog.records) == 2
    assert [v.with_name("again.gif").read_bytes() for v in videos] == fresh
    # The default scheme draws differently (its own streams per stage and per prompt).
    assert run_cli(*base[:-2], "--output_dir", out2) == 0
    assert (out2 / safe_name(PROMPT) / f"t2v_{TINIEST_NAME}.gif").read_bytes() != fresh[0]


def test_cache_follows_the_checkpoint(tmp_path: Path, work: Path, caplog) -> None:
    from safetensors.torch import save_file

    from lvdm.build import build_model

    caplog.set_level(logging.INFO)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_model(T2V).state_dict().items()}
    ckpt_a, ckpt_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(state, str(ckpt_a))
    key = next(k for k in state if k.endswith("out.2.weight") and "diffusion_model" in k)
    state[key] = state[key] + 0.01
    save_file(state, str(ckpt_b))

    prompts = prompt_file(tmp_path, f"{PROMPT}\n")
    out = tmp_path / "out"
    base = ["--config", T2V, "-p", prompts, "--output_dir", out, *TINIEST, "--overwrite"]
    assert run_cli(*base, "--ckpt_path", ckpt_a) == 0
    assert not _log_says_cached(caplog)
    caplog.clear()
    assert run_cli(*base, "--ckpt_path", ckpt_a) == 0
    assert _log_says_cached(caplog)
    caplog.clear()
    assert run_cli(*base, "--ckpt_path", ckpt_b) == 0  # other weights
    assert not _log_says_cached(caplog)
    caplog.clear()
    ckpt_a.write_bytes(ckpt_b.read_bytes())  # same path, new content
    assert run_cli(*base, "--ckpt_path", ckpt_a) == 0
    assert not _log_says_cached(caplog)
    caplog.clear()
    assert run_cli(*base, "--random_init") == 0  # random weights are not the checkpoint's
    assert not _log_says_cached(caplog)


# ----------------------------------------------------------------------------- prompt lists
def test_rank_shards_the_prompt_list(tmp_path: Path, work: Path) -> None:
    prompts = [f"prompt number {i}" for i in range(5)]
    pfile = prompt_file(tmp_path, "\n".join(prompts) + "\n")
    done: dict[int, set[str]] = {}
    for rank in range(3):
        out = tmp_path / f"rank{rank}"
        rc = run_cli(
            "--config", T2V, "--random_init", "-p", pfile, "--output_dir", out,
            "--video_length", "2", "-n", "1", "-l", "1", "--no_progress",
            "--rank", rank, "--num_processes", 3,
        )  # fmt: skip
        assert rc == 0
        done[rank] = {p.parent.name for p in out.glob("*/t2v_f2_n1_l1.gif")}
    for rank in range(3):
        assert done[rank] == {safe_name(p) for p in prompts[rank::3]}  # strided
    all_done = [name for names in done.values() for name in names]
    assert sorted(all_done) == sorted(safe_name(p) for p in prompts)  # none lost, none twice


def test_torchrun_environment_wins(monkeypatch) -> None:
    args = cli.parser.build_parser().parse_args(["-p", "x", "--rank", "1", "--num_processes", "2"])
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli.request.distributed_rank(args) == (1, 2, False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cli.request.distributed_rank(args) == (3, 4, True)


def test_story_prompt_file(tmp_path: Path, work: Path) -> None:
    pfile = prompt_file(
        tmp_path, "# a story\n2|a cat sleeps\n1|the cat wakes up\n# still the story\n3|the cat runs\n"
    )
    out = tmp_path / "out"
    rc = run_cli(
        "--config", T2V, "--random_init", "-p", pfile, "--output_dir", out,
        "--video_length", "2", "-n", "1", "-l", "50", "--no_progress", "--save_frames",
    )  # fmt: skip
    assert rc == 0
    folder = out / safe_name("a cat sleeps")
    name = "t2v_f2_n1"  # -l does not apply to a story, so it is not in the name
    assert read_video(folder / f"{name}.gif").shape == (6, SIZE, SIZE, 3)  # sum of the scene lengths
    assert len(list((folder / name / "fifo").glob("*.png"))) == 6


# ----------------------------------------------------------------------------- bad inputs
def _expect_usage_error(capsys, out: Path, work: Path, args: list, *words: str) -> str:
    rc = run_cli(*args, "--output_dir", out)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert files_under(out) == [] and not out.exists()
    assert list(work.iterdir()) == []
    return err


def test_error_unknown_mode(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    err = _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", T2V, "--random_init", "-p", pfile, "--mode", "t2v_seedy", *SMALL],
        "unknown", "seedy",
    )  # fmt: skip
    for part in ("t2v_seed_ar", "i2v", "TTqcache", "STqcache", "attn1", "attn2", "unilatent"):
        assert part in err


def test_error_malformed_i2v_line(tmp_path: Path, work: Path, capsys) -> None:
    make_png(tmp_path / "in" / "images" / "fox.png")
    pfile = prompt_file(tmp_path, "images/fox.png;ok\nimages/fox.png and no separator\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", I2V, "--random_init", "-p", pfile, "--mode", "i2v", *SMALL],
        f"{pfile}:2", "image_path;prompt",
    )  # fmt: skip


def test_error_missing_image(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, "images/nowhere.png;a fox\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", I2V, "--random_init", "-p", pfile, "--mode", "i2v", *SMALL],
        f"{pfile}:1", "image not found", "nowhere.png",
    )  # fmt: skip


def test_error_unreadable_image(tmp_path: Path, work: Path, capsys) -> None:
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "images" / "fake.png").write_text("not an image")
    pfile = prompt_file(tmp_path, "images/fake.png;a fox\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", I2V, "--random_init", "-p", pfile, "--mode", "i2v", *SMALL],
        f"{pfile}:1", "cannot read image",
    )  # fmt: skip


def test_error_empty_prompt_file(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, "# nothing here\n\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work, ["--config", T2V, "--random_init", "-p", pfile, *SMALL], "no prompts"
    )


def test_error_missing_prompt_file(tmp_path: Path, work: Path, capsys) -> None:
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", T2V, "--random_init", "-p", tmp_path / "missing.txt", *SMALL],
        "prompt file not found", "missing.txt",
    )  # fmt: skip


def test_error_no_checkpoint_given(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work, ["--config", T2V, "-p", pfile, *SMALL], "--ckpt_path", "--random_init"
    )


def test_error_missing_checkpoint(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", T2V, "-p", pfile, "--ckpt_path", tmp_path / "models" / "model.ckpt", *SMALL],
        "checkpoint not found", "model.ckpt", "huggingface.co", "download_checkpoints",
    )  # fmt: skip


def test_error_checkpoint_of_the_other_model(tmp_path: Path, work: Path, capsys) -> None:
    from safetensors.torch import save_file

    from lvdm.build import build_model

    ckpt = tmp_path / "t2v.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(T2V).state_dict().items()}, str(ckpt))
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", I2V, "-p", pfile, "--ckpt_path", ckpt, "--mode", "t2v_seed", *SMALL],
        "does not match", "fits --config configs/tiny_t2v.yaml",
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["t2v_seed", "t2v_seed_ar_TTqcache", "i2v"])
def test_error_image_mode_with_the_text_model(tmp_path: Path, work: Path, capsys, mode: str) -> None:
    if mode == "i2v":
        pfile, _ = i2v_prompt_file(tmp_path)
    else:
        pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", T2V, "--random_init", "-p", pfile, "--mode", mode, *SMALL],
        "image-to-video model", "tiny_i2v.yaml",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--height", "60"], ["--height", "multiples of"]),
        (["--width", "96"], ["--height and --width", "multiples of 64"]),  # 8 | 96 but the U-Net needs 64
        (["--height", "-64"], ["positive"]),
        (["--video_length", "3"], ["--video_length", "even"]),
        (["--qcache_weight", "1.5", "--mode", "t2v_TTqcache"], ["[0, 1]"]),
        (["--rank", "2", "--num_processes", "2"], ["--rank"]),
        (["--eta", "1.5"], ["--eta"]),
        (["-n", "0"], ["--num_partitions"]),
        (["-l", "0"], ["--new_video_length"]),
    ],
    ids=["height", "width-unet", "negative", "odd-length", "weight", "rank", "eta", "partitions", "length"],
)
def test_error_bad_settings(tmp_path: Path, work: Path, capsys, args: list[str], words: list[str]) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work, ["--config", T2V, "--random_init", "-p", pfile, *SMALL, *args], *words
    )


def test_error_missing_config(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    _expect_usage_error(
        capsys, tmp_path / "out", work,
        ["--config", tmp_path / "nope.yaml", "--random_init", "-p", pfile, *SMALL],
        "config not found",
    )  # fmt: skip


def test_argparse_errors_exit_2(tmp_path: Path, work: Path, capsys) -> None:
    pfile = prompt_file(tmp_path, f"{PROMPT}\n")
    with pytest.raises(SystemExit) as info:
        run_cli("--config", T2V, "--random_init", "-p", pfile, "--dtype", "fp64")
    assert info.value.code == 2
    assert "--dtype" in capsys.readouterr().err
    assert list(work.iterdir()) == []
