"""FIFO on the tiny random Wan2.1 model: the flow queue's diagonal step, the command line's video,
stories, resume, two ranks, and what Wan refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import videocrafter_main  # noqa: E402
from fifo.flow import FlowSchedule  # noqa: E402
from fifo.geometry import FifoGeometry  # noqa: E402
from fifo.noise import NoiseSource  # noqa: E402
from fifo.options import GenerationSettings, ModeOptions  # noqa: E402
from fifo.outputs import OutputLayout
from fifo.prompts import PromptJob, Scene  # noqa: E402
from fifo.resume import ResumeOptions, RunInterrupted  # noqa: E402
from fifo.step import fifo_step, initial_queue, shift_queue  # noqa: E402
from fifo.wan import latent_conditioning, latent_frames  # noqa: E402
from fifo.wan_generator import WanGenerator  # noqa: E402
from infra.video_io import read_video as read_video_frames  # noqa: E402
from lvdm.build import load_model  # noqa: E402
from tests.conftest import torchrun  # noqa: E402

CONFIG = "configs/tiny_wan_t2v.yaml"
FOLDER = "a_person_swimming_in_ocean_high_quality_4K_resolution"


@pytest.fixture(scope="module")
def model(one_thread):
    return load_model(CONFIG, None, random_init=True, seed=0)


def test_lengths_in_latent_frames() -> None:
    assert [latent_frames(n) for n in (1, 2, 5, 6, 24, 25)] == [1, 2, 2, 3, 7, 7]
    texts = torch.arange(3.0).reshape(3, 1, 1)
    cond = latent_conditioning(texts, (5, 8, 11), 24)
    # video frames [0, 5) → latents 0-1, [5, 13) → 2-3, [13, 24) → 4-6 (by each latent's first frame)
    assert cond.length == 7 and cond.scene_frames == (2, 2, 3)


def test_each_frame_advances_one_flow_step_per_iteration() -> None:
    """The windows see each slot's own timestep; after an iteration and the shift, every slot holds
    the latent one level lower (a stand-in velocity that is the same everywhere shows it)."""
    geometry = FifoGeometry(video_length=4, num_partitions=3, lookahead=True)
    schedule = FlowSchedule.create(geometry.steps, 3.0)
    seen = []

    def denoise(x, t, cond, uncond):
        seen.append(t.clone())
        return torch.ones_like(x)  # v = ε − x₀ with ε = 1, x₀ = 0

    base = torch.zeros(1, 2, 4, 2, 2)
    noise = NoiseSource.seeded(0, torch.device("cpu"))
    queue = initial_queue(base, geometry, schedule, False, noise)
    queue = torch.ones_like(queue) * torch.from_numpy(
        np.concatenate([np.zeros(geometry.lead), schedule.sigma_values])
    ).float().reshape(1, 1, -1, 1, 1)  # x_σ = σ·1 at each slot's level
    contexts = torch.zeros(len(geometry.windows()), 1, 1)
    after = fifo_step(denoise, queue, geometry, schedule, contexts, None)
    slots = geometry.slot_indices()
    expected_t = torch.stack([schedule.timesteps[slots[w.start : w.end]] for w in geometry.windows()])
    assert torch.equal(torch.cat(seen), expected_t)  # (windows, f): each frame its own timestep
    written = after[0, 0, :, 0, 0].numpy()
    expected = np.concatenate([np.zeros(geometry.lead), schedule.sigmas_prev.numpy()])
    np.testing.assert_allclose(written[geometry.lead :], expected[geometry.lead :], atol=1e-6)
    shifted = shift_queue(after, torch.ones(1, 2, 1, 2, 2))
    # after the shift, slot s (past the lead) is at the level of schedule index s - lead
    np.testing.assert_allclose(
        shifted[0, 0, geometry.lead : -1, 0, 0].numpy(), schedule.sigma_values[:-1], atol=1e-6
    )


def _settings(**kw) -> GenerationSettings:
    base = dict(
        video_length=4, num_partitions=2, new_video_length=9, height=64, width=64, progress=False, seed=7
    )
    return GenerationSettings(**(base | kw))


def test_batched_windows_are_the_sequential_ones(model, tmp_path) -> None:
    """All windows and both guidance branches in one call give the one-by-one video (the frames as
    they leave the decoder: a GIF palette could turn a rounding difference into a colour step)."""
    job = PromptJob("a red fox", 1)
    frames = {}
    for batched in (True, False):
        gen = WanGenerator(model, ModeOptions(), _settings(batched=batched), "tiny")
        frames[batched] = np.stack(
            list(gen.stream(job, OutputLayout(tmp_path / str(batched), "x", tmp_path / "cache")))
        )
    assert frames[True].shape == (9, 64, 64, 3)
    assert np.abs(frames[True].astype(int) - frames[False].astype(int)).max() <= 1


def test_resume_is_byte_identical(model, tmp_path) -> None:
    """Stopped after a few iterations (state and decoder cache saved), then resumed: the same file."""
    job = PromptJob("a red fox", 1)
    settings = _settings(new_video_length=13)
    whole = WanGenerator(model, ModeOptions(), settings, "tiny").run(
        job, OutputLayout(tmp_path / "A", "x", tmp_path / "c")
    )
    calls = iter(range(100))
    stop = ResumeOptions(save_every_frames=2, stop_requested=lambda: next(calls) == 4)
    with pytest.raises(RunInterrupted) as stopped:
        WanGenerator(model, ModeOptions(), settings, "tiny").run(
            job, OutputLayout(tmp_path / "B", "x", tmp_path / "c"), stop
        )
    assert 0 < stopped.value.frames < 13
    resumed = WanGenerator(model, ModeOptions(), settings, "tiny").run(
        job,
        OutputLayout(tmp_path / "B", "x", tmp_path / "c"),
        ResumeOptions(resume=True, save_every_frames=2),
    )
    assert resumed.frames == whole.frames == 13
    assert resumed.video_path.read_bytes() == whole.video_path.read_bytes()
    assert not (tmp_path / "B" / job.folder_name / "x.gif.state").exists()


def test_story_gives_each_window_its_scene(model, tmp_path) -> None:
    job = PromptJob("story", 1, scenes=(Scene(5, "a red fox"), Scene(8, "a blue sea")))
    gen = WanGenerator(model, ModeOptions(), _settings(), "tiny")
    seen = []
    velocity = model.velocity

    def recording(x, t, context, context_branches=1):
        seen.append(context[: x.shape[0]].clone())
        return velocity(x, t, context, context_branches)

    gen.sampler.denoise.denoiser = recording
    result = gen.run(job, OutputLayout(tmp_path, "story", tmp_path / "cache"))
    assert result.frames == 13
    texts = model.encode_text(["a red fox", "a blue sea"])
    used = {int(torch.argmin(torch.stack([(c - t).abs().sum() for t in texts]))) for b in seen for c in b}
    assert used == {0, 1}


def test_command_line_writes_the_video(tmp_path) -> None:
    """The done-when command: 24 video frames from 7 latent frames, the base clip's 13 in origin.gif."""
    args = ["--config", CONFIG, "--random_init", "-p", "prompts/demo.txt", "-l", "24", "--no_progress"]
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path)]) == 0
    video = read_video_frames(tmp_path / FOLDER / "t2v_l24.gif")
    assert video.shape == (24, 64, 64, 3)
    assert read_video_frames(tmp_path / FOLDER / "t2v_l24" / "origin.gif").shape[0] == 13


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "t2v_qcache"], "temporal transformers"),
        (["--mode", "t2v_tailcoh"], "σ = 1"),
        (["--mode", "t2v_sacfa_srg", "--subject", "person"], "resolution"),
        (["--compile"], "--compile does not apply"),
        (["--attention", "xformers"], "diffusers' own attention"),
        (["--rng", "published"], "--rng published"),
        (["--height", "72"], "multiples of 16"),
    ],
)
def test_what_wan_refuses(tmp_path, capsys, extra, message) -> None:
    args = ["--config", CONFIG, "--random_init", "-p", "prompts/demo.txt", "--output_dir", str(tmp_path)]
    assert videocrafter_main.main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_two_ranks_write_the_one_process_video(tmp_path) -> None:
    args = ["--config", CONFIG, "--random_init", "-p", "prompts/demo.txt", "-l", "5", "-n", "2"]
    args += ["--no_progress", "-ex", "run"]
    proc = torchrun(
        2, "videocrafter_main.py", *args, "--parallel", "windows", "--output_dir", str(tmp_path / "A")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks share every video's 4 windows" in proc.stderr
    assert videocrafter_main.main([*args, "--output_dir", str(tmp_path / "B")]) == 0
    one = read_video_frames(tmp_path / "B" / FOLDER / "run.gif")
    two = read_video_frames(tmp_path / "A" / FOLDER / "run.gif")
    assert one.shape == two.shape == (5, 64, 64, 3)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


def test_guidance_defaults_to_wans_own(tmp_path) -> None:
    """Without --unconditional_guidance_scale Wan samples at its own 5.0, the U-Nets at 12.0."""
    from cli.parser import build_parser
    from cli.request import build_request

    def guidance(config: str, *extra: str) -> float:
        args = build_parser().parse_args(
            [
                "--config",
                config,
                "--random_init",
                "-p",
                "prompts/demo.txt",
                "--output_dir",
                str(tmp_path),
                *extra,
            ]
        )
        return build_request(args).settings.guidance

    assert guidance(CONFIG) == 5.0
    assert guidance("configs/tiny_t2v.yaml") == 12.0
    assert guidance(CONFIG, "--unconditional_guidance_scale", "7") == 7.0


def test_python_api_refuses_another_attention_kernel_for_wan_before_loading(monkeypatch) -> None:
    """The transformer runs diffusers' attention: ``attention="math"`` is the library's own error,
    raised before any weight is built."""
    import fifo.pipeline
    from fifo.pipeline import FifoPipeline
    from infra.errors import SettingsError

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the attention was checked")

    monkeypatch.setattr(fifo.pipeline, "load_model", not_loaded)
    with pytest.raises(SettingsError, match="diffusers' own attention"):
        FifoPipeline.from_config(CONFIG, random_init=True, attention="math")


def test_python_api_runs_wan(model, tmp_path) -> None:
    """FifoPipeline takes a Wan2.1 config (Wan's guidance default, lengths in video frames) and
    yields the frames the generator writes."""
    from PIL import Image

    from fifo.pipeline import FifoPipeline

    pipe = FifoPipeline.from_config(CONFIG, random_init=True, seed=0)  # the fixture's weights
    assert pipe.defaults.guidance == 5.0
    video = pipe.generate(
        "a red fox", length=5, num_partitions=2, progress=False, output_dir=tmp_path / "api"
    )
    assert video.shape == (5, 64, 64, 3)
    settings = _settings(new_video_length=5, seed=0, guidance=5.0, save_frames=True)
    WanGenerator(model, ModeOptions(), settings, "tiny").run(
        PromptJob("a red fox", 1), OutputLayout(tmp_path, "x", tmp_path / "c")
    )
    pngs = sorted(tmp_path.glob("*/x/fifo/*.png"))
    assert np.array_equal(video, np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]))
