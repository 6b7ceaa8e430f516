"""Long runs lose nothing: a stopped or killed run, continued with --resume, writes exactly the
video (and PNG frames) an uninterrupted run writes (fifo/resume.py, FifoGenerator.run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli.run
import videocrafter_main
from fifo.resume import StateSaver, StateStore
from tests.conftest import REPO

T2V = str(REPO / "configs" / "tiny_t2v.yaml")
I2V = str(REPO / "configs" / "tiny_i2v.yaml")
SMALL = [
    "--random_init",
    "--video_length",
    "4",
    "-n",
    "2",
    "-l",
    "6",
    "--no_progress",
    "-ex",
    "run",
    "--save_frames",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the base-clip cache, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != "latents"
    }


def prompt_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    return path


def stop_after(iterations: int, monkeypatch) -> None:
    """A SIGINT arriving during iteration ``iterations``: the run stops after it (the CLI's
    StopRequest is asked after every iteration)."""
    calls = {"n": 0}

    def requested(self) -> bool:
        calls["n"] += 1
        if calls["n"] >= iterations:
            self.signal_number = signal.SIGINT
        return self.signal_number is not None

    monkeypatch.setattr(cli.run.StopRequest, "requested", requested)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The outputs of an uninterrupted run of each case (computed once per case)."""
    done: dict[str, dict[str, bytes]] = {}

    def outputs_of(case: str, args: list[str]) -> dict[str, bytes]:
        if case not in done:
            out = tmp_path_factory.mktemp(case)
            assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 0
            done[case] = outputs(out)
        return done[case]

    return outputs_of


CASES = {
    "qcache_unilatent": (T2V, "a red fox in the snow\n", ["--mode", "t2v_TTqcache_attn1_unilatent"]),
    "story": (T2V, "3|a cat sleeps\n3|the cat wakes up\n", []),
    "seed_ar": (I2V, "a red fox in the snow\n", ["--mode", "t2v_seed_ar"]),
}


# The Ouroboros tricks keep state across iterations (SRG's feature bank in FifoState.hook_state, the
# coherent tail reads the queue): resumed mid-run only, to keep the suite short.
TRICKS_CASE = (
    T2V,
    "a person swimming in the ocean\n",
    ["--mode", "t2v_tailcoh_sacfa_srg", "--subject", "a person", "--srg_windows", "2"],
)


@pytest.mark.parametrize(
    ("case", "stop_at"),
    [(case, stop) for case in sorted(CASES) for stop in (1, 5, 9)] + [("ouroboros", 5)],
    ids=lambda v: (
        {1: "first-iteration", 5: "mid-run", 9: "last-frame"}.get(v, v) if isinstance(v, int) else v
    ),
)
def test_stopped_then_resumed_is_byte_identical(
    tmp_path, monkeypatch, uninterrupted, case: str, stop_at: int
) -> None:
    config, text, extra = CASES.get(case, TRICKS_CASE)
    prompts = prompt_file(tmp_path.parent, text)  # one path for every test of the case: one cache key
    args = ["--config", config, "-p", str(prompts), *SMALL, *extra, "--save_state_every", "2"]
    expected = uninterrupted(case, args)

    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        stop_after(stop_at, patch)  # 10 iterations (6 frames after 4 of warm-up): stop after 1, 5 or 9
        assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 130
    stopped = outputs(out)
    assert any(name.endswith(".state/state.pt") for name in stopped)
    video = next(name for name in expected if name.endswith("run.gif"))
    assert video not in stopped  # the final video appears only when complete
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert outputs(out) == expected  # byte-identical, and nothing else left (no state, no partial video)


def test_killed_before_the_first_state_starts_again(tmp_path, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO)
    prompts = prompt_file(tmp_path, "a red fox in the snow\n")
    args = ["--config", T2V, "-p", str(prompts), *SMALL]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    folder = out / "a_red_fox_in_the_snow"
    folder.mkdir(parents=True)
    (folder / ".run.partial-dead.gif").write_bytes(b"GIF89a unfinished")  # what a kill leaves
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert any(
        "no saved state" in r.getMessage() and "from the beginning" in r.getMessage() for r in caplog.records
    )
    assert outputs(out) == outputs(tmp_path / "whole")


def test_damaged_state_is_refused_and_nothing_is_deleted(tmp_path, monkeypatch, capsys) -> None:
    prompts = prompt_file(tmp_path, "a red fox in the snow\n")
    args = ["--config", T2V, "-p", str(prompts), *SMALL, "--save_state_every", "1"]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "damaged"
    with monkeypatch.context() as patch:
        stop_after(6, patch)
        videocrafter_main.main([*args, "--output_dir", str(out)])
    (state,) = out.rglob("state.pt")
    state.write_bytes(state.read_bytes()[:100])  # truncated
    before = outputs(out)
    capsys.readouterr()
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: the saved state "), err
    for words in ("state.pt is truncated or corrupt", "Nothing was deleted", "saved frame(s) are PNG files",
                  ".partial.gif plays the frames", "--overwrite instead of --resume"):  # fmt: skip
        assert words in err, err
    assert "Traceback" not in err and "Errno" not in err.split("(", 1)[0]
    assert outputs(out) == before  # the saved frames and the partial video are kept
    # Without --resume the saved run is named, not thrown away; --overwrite starts afresh.
    assert videocrafter_main.main([*args, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "an interrupted run of this command is saved in" in err and "Add --resume" in err, err
    assert outputs(out) == before
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--overwrite"]) == 0
    assert outputs(out) == outputs(tmp_path / "whole")


def test_a_state_without_its_base_clip_is_refused(tmp_path, monkeypatch, capsys) -> None:
    prompts = prompt_file(tmp_path, "a red fox in the snow\n")
    out = tmp_path / "o"
    args = ["--config", T2V, "-p", str(prompts), *SMALL, "--save_state_every", "1", "--output_dir", str(out)]
    with monkeypatch.context() as patch:
        stop_after(6, patch)
        videocrafter_main.main(args)
    (origin,) = out.rglob("origin.gif")
    origin.unlink()
    before = outputs(out)
    capsys.readouterr()
    assert videocrafter_main.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "origin.gif, the base clip of the saved run, is missing" in err and "Nothing was deleted" in err, (
        err
    )
    assert outputs(out) == before


@pytest.mark.parametrize(
    ("change", "named"),
    [(["--seed", "7"], "seed"), (["--mode", "t2v_unilatent"], "mode"), (["-l", "7"], "length")],
    ids=["seed", "mode", "length"],
)
def test_a_state_of_other_arguments_is_refused(tmp_path, monkeypatch, capsys, change, named: str) -> None:
    prompts = prompt_file(tmp_path, "a red fox in the snow\n")
    args = [
        "--config",
        T2V,
        "-p",
        str(prompts),
        *SMALL,
        "--save_state_every",
        "1",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with monkeypatch.context() as patch:
        stop_after(6, patch)
        videocrafter_main.main(args)
    before = outputs(tmp_path / "o")
    capsys.readouterr()
    assert videocrafter_main.main([*args, *change, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "other arguments" in err and f"{named}:" in err and "Traceback" not in err
    assert outputs(tmp_path / "o") == before  # nothing touched


def test_finished_prompts_are_not_redone(tmp_path, monkeypatch, caplog) -> None:
    import logging

    prompts = prompt_file(tmp_path, "a red fox in the snow\na blue cube\n")
    args = [
        "--config",
        T2V,
        "-p",
        str(prompts),
        *SMALL,
        "--save_state_every",
        "1",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with monkeypatch.context() as patch:
        stop_after(14, patch)  # the first video (10 iterations) completes, the second stops
        assert videocrafter_main.main(args) == 130
    first = tmp_path / "o" / "a_red_fox_in_the_snow" / "run.gif"
    done = first.read_bytes()
    caplog.set_level(logging.INFO)
    assert videocrafter_main.main([*args, "--resume"]) == 0
    assert any("complete already, skipped" in r.getMessage() for r in caplog.records)
    assert first.read_bytes() == done and (tmp_path / "o" / "a_blue_cube" / "run.gif").is_file()


def test_state_saving_rule() -> None:
    class Store:
        saves: list[int] = []

        def save(self, state) -> None:
            self.saves.append(state.frames_emitted)

    class State:
        frames_emitted = 0
        iteration = 0

    store, state = Store(), State()
    saver = StateSaver(store, every_frames=3, every_seconds=60.0)  # type: ignore[arg-type]
    for frames in [0, 1, 2, 3, 3, 4, 5, 6]:
        state.frames_emitted = frames
        saver.after_step(state)  # type: ignore[arg-type]
    assert store.saves == [3, 6]
    timed = StateSaver(Store(), every_frames=None, every_seconds=0.0)  # type: ignore[arg-type]
    timed.after_step(state)  # type: ignore[arg-type]
    assert timed.store.saves[-1] == 6
    assert StateStore(Path("x.gif.state"), {}).state_file == Path("x.gif.state/state.pt")


# --------------------------------------------------------------------------- real signals
def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "videocrafter_main.py", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sig", "code"),
    # SIGINT has the same handler as SIGTERM (cli.run.StopRequest installs one for both); its exit
    # code, 130, is checked in-process above (stop_after), so a real SIGINT would only cost time.
    [(signal.SIGTERM, 143), (signal.SIGKILL, -9)],
    ids=["TERM", "KILL"],
)
def test_signals_then_resume(tmp_path, uninterrupted, sig: int, code: int) -> None:
    prompts = prompt_file(tmp_path.parent, "a red fox in the snow\n")
    # 24 iterations at 64x64 (~0.1 s each here): the signal comes after 4 frames, mid-run. An
    # explicit window batch spares each process the memory measurement that picks one (seconds).
    args = [
        "--config", T2V, "-p", str(prompts), "--random_init", "--video_length", "4", "-n", "2", "-l", "20",
        "--height", "64", "--width", "64", "--save_state_every", "2", "--no_progress", "-ex", "run",
        "--window_batch", "4",
    ]  # fmt: skip
    expected = uninterrupted("signals", args)
    out = tmp_path / "signalled"
    frames = out / "a_red_fox_in_the_snow" / "run.gif.state" / "frames"
    proc = _start([*args, "--output_dir", str(out)])
    deadline = time.monotonic() + 240
    while len(list(frames.glob("*.png"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err[-2000:]
    if sig != signal.SIGKILL:
        assert "state saved in" in err and "--resume" in err
        assert (out / "a_red_fox_in_the_snow" / "run.partial.gif").is_file()
    assert videocrafter_main.main([*args, "--output_dir", str(out), "--resume"]) == 0
    assert outputs(out) == expected
