"""The DynamiCrafter goldens and the family's checkpoint manifests are complete and self-consistent.

These check the fixtures themselves (files, documented shapes, the arithmetic their README states,
the weight scheme), not the project's model: the comparison with our implementation lives with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import REPO
from tools.reference.fixture_weights import fixture_state_dict, fixture_tensor, key_seed

FIXTURE = REPO / "tests" / "fixtures" / "tiny_dynamicrafter"
MANIFESTS = REPO / "tests" / "fixtures" / "checkpoint_manifests_family.json"
LATENT = (1, 4, 8, 16, 16)

# file -> tensor -> shape, as README.md documents them.
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "text": {"text_emb": (2, 77, 32)},
    "autoencoder": {
        "image": (1, 3, 128, 128),
        "posterior_mean": (1, 4, 16, 16),
        "posterior_std": (1, 4, 16, 16),
        "posterior_noise": (1, 4, 16, 16),
        "image_latent": (1, 4, 1, 16, 16),
        "decode_z": (1, 4, 2, 16, 16),
        "decode_video": (1, 3, 2, 128, 128),
    },
    "image_embed": {
        "image": (1, 3, 128, 128),
        "clip_input": (1, 3, 224, 224),
        "clip_tokens": (1, 50, 64),
        "image_tokens": (1, 128, 32),
        "uncond_clip_tokens": (1, 50, 64),
        "uncond_image_tokens": (1, 128, 32),
        "context": (1, 205, 32),
        "uncond_context": (1, 205, 32),
    },
    "schedule": {
        "alphas_cumprod": (1000,),
        "scale_arr": (1400,),
        **{k: (16,) for k in ("ddim_timesteps", "ddim_alphas", "ddim_alphas_prev", "ddim_sigmas")},
        **{k: (16,) for k in ("ddim_scale_arr", "ddim_scale_arr_prev")},
    },
    "unet_cases": {
        "x": LATENT,
        "t_fifo": (8,),
        "t_clip": (1,),
        "fs": (1,),
        "context": (1, 205, 32),
        "uncond_context": (1, 205, 32),
        "c_concat": LATENT,
        **{k: LATENT for k in ("v__t_fifo", "v__t_fifo__uncond", "v__t_fifo__fs10", "v__t_clip")},
    },
    "sampler": {
        "x": LATENT,
        "noise": LATENT,
        **{
            f"step__gr{gr}__{name}": LATENT
            for gr in (0.0, 0.7)
            for name in ("v_cond", "v_uncond", "v", "eps", "x0", "x0_rescaled", "x_prev")
        },
    },
}
RUNS = {"lookahead_gr0.7": 416, "lookahead_gr0.0": 416, "no_lookahead_gr0.7": 220}


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "meta.json").read_text())


def _load(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / f"{name}.safetensors")


def test_files_present_and_small() -> None:
    expected = {f"{name}.safetensors" for name in (*SHAPES, "fifo_run", "weights_probe")} | {
        "meta.json",
        "README.md",
    }
    present = {p.name for p in FIXTURE.iterdir()}
    assert expected <= present, sorted(expected - present)
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 10 * 2**20


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_as_documented(name: str) -> None:
    tensors = _load(name)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == SHAPES[name]
    assert all(torch.isfinite(v).all() for v in tensors.values())


def test_zero_terminal_snr_schedule(meta: dict) -> None:
    s = _load("schedule")
    assert s["alphas_cumprod"][-1] == 0 and s["ddim_alphas"][-1] == 0
    assert s["ddim_timesteps"].tolist() == [
        61,
        124,
        187,
        249,
        311,
        374,
        437,
        499,
        561,
        624,
        687,
        749,
        811,
        874,
        937,
        999,
    ]
    assert torch.equal(s["ddim_alphas"], s["alphas_cumprod"][s["ddim_timesteps"]])
    assert torch.equal(s["ddim_scale_arr"], s["scale_arr"][s["ddim_timesteps"]])
    assert torch.equal(s["ddim_scale_arr_prev"][1:], s["ddim_scale_arr"][:-1])
    expected_scale = torch.cat([torch.linspace(1.0, 0.7, 400, dtype=torch.float64), torch.full((1000,), 0.7)])
    assert torch.allclose(s["scale_arr"].double(), expected_scale, atol=1e-6)
    assert torch.isfinite(s["ddim_sigmas"]).all() and (s["ddim_sigmas"] > 0).all()
    unet = _load("unet_cases")
    assert unet["t_fifo"].tolist() == s["ddim_timesteps"][meta["fifo_t_indices"]].tolist() == meta["t_fifo"]
    assert unet["t_fifo"][-1] == 999  # the ᾱ = 0 end is among the per-frame timesteps


@pytest.mark.parametrize("gr", [0.0, 0.7])
def test_step_arithmetic_matches_the_readme(gr: float, meta: dict) -> None:
    """eps / x0 from v at each frame's own timestep, dynamic rescale, the DDIM update."""
    s, step = _load("schedule"), _load("sampler")
    x = step["x"].double()
    out = {k.split("__")[-1]: v.double() for k, v in step.items() if k.startswith(f"step__gr{gr}__")}
    guided = out["v_uncond"] + meta["guidance"] * (out["v_cond"] - out["v_uncond"])
    if gr == 0.0:
        assert torch.allclose(out["v"], guided, atol=1e-5)
    else:  # rescaled towards v_cond's std over the whole window
        assert not torch.allclose(out["v"], guided, atol=1e-3)
        assert out["v"].std().item() == pytest.approx(
            gr * out["v_cond"].std().item() + (1 - gr) * guided.std().item(), rel=1e-4
        )
    idx = torch.tensor(meta["fifo_t_indices"])
    alpha = s["ddim_alphas"].double()[idx].view(1, 1, -1, 1, 1)
    eps = alpha.sqrt() * out["v"] + (1 - alpha).sqrt() * x
    x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * out["v"]
    assert torch.allclose(out["eps"], eps, atol=1e-5) and torch.allclose(out["x0"], x0, atol=1e-5)
    assert torch.equal(out["eps"][:, :, -1], step["x"][:, :, -1].double())  # ᾱ = 0: eps = x, x0 = −v
    rescale = (s["ddim_scale_arr_prev"].double() / s["ddim_scale_arr"].double())[idx].view(1, 1, -1, 1, 1)
    assert torch.allclose(out["x0_rescaled"], out["x0"] * rescale, atol=1e-5)
    # The published step makes each entry a float32 scalar: at the ᾱ = 0 index 1 − ᾱ_prev − σ²
    # is then 2^-24, not 0, and the update keeps 2.44e-4·eps (float64 would give 0: ~1e-3 off).
    prev = s["ddim_alphas_prev"].float()[idx].view(1, 1, -1, 1, 1)
    sigma = s["ddim_sigmas"].float()[idx].view(1, 1, -1, 1, 1)
    direction = (1.0 - prev - sigma**2).sqrt()
    assert direction[0, 0, -1].item() == 2.0**-12
    x_prev = prev.sqrt() * step[f"step__gr{gr}__x0_rescaled"] + direction * step[f"step__gr{gr}__eps"]
    x_prev = x_prev + sigma * step["noise"]
    assert torch.allclose(step[f"step__gr{gr}__x_prev"], x_prev, atol=1e-5)
    exact = 1 - s["ddim_alphas_prev"][-1] - s["ddim_sigmas"][-1] ** 2  # float64 arrays
    assert abs(exact.item()) < 1e-15


def test_conditions_are_assembled_as_documented() -> None:
    text, image, unet, ae = _load("text"), _load("image_embed"), _load("unet_cases"), _load("autoencoder")
    assert torch.equal(image["context"], torch.cat([text["text_emb"][:1], image["image_tokens"]], dim=1))
    assert torch.equal(
        image["uncond_context"], torch.cat([text["text_emb"][1:], image["uncond_image_tokens"]], 1)
    )
    assert torch.equal(unet["context"], image["context"])
    assert torch.equal(unet["c_concat"], ae["image_latent"].expand(LATENT))
    replay = 0.18215 * (ae["posterior_mean"] + ae["posterior_std"] * ae["posterior_noise"])
    assert torch.allclose(ae["image_latent"][:, :, 0], replay, atol=1e-6)
    assert not torch.allclose(unet["v__t_fifo"], unet["v__t_fifo__fs10"])  # fs takes part


def test_fifo_runs_record_every_draw(meta: dict) -> None:
    runs = _load("fifo_run")
    assert tuple(runs["base_latents"].shape) == LATENT
    assert [r["name"] for r in meta["fifo_run"]["runs"]] == list(RUNS)
    for run in meta["fifo_run"]["runs"]:
        name, draws = run["name"], run["draws"]
        assert len(draws) == RUNS[name]
        numel = sum(int(torch.tensor(shape).prod()) for *_, shape in draws)
        assert runs[f"fifo_run__{name}__noise"].shape == (numel,)
        frames = runs[f"fifo_run__{name}__frames"]
        assert tuple(frames.shape) == (1, 4, meta["fifo_run"]["iterations"], 16, 16)
        assert torch.isfinite(frames).all()
        purposes = [d[0] for d in draws]
        queue = 20 if run["lookahead"] else 16
        assert purposes[:queue] == ["queue_init"] * queue and purposes[-1] == "tail"
        assert purposes.count("tail") == meta["fifo_run"]["iterations"]


def test_weight_scheme_reproduces_the_probes(meta: dict) -> None:
    probes = _load("weights_probe")
    assert len(probes) == meta["weights"]["num_keys"] - len(meta["weights"]["buffers_kept"])
    # Shapes are not stored in the probe: recompute a few keys whose shape the config fixes.
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (32, 8, 3, 3),
        "image_proj_model.latents": (1, 128, 64),
        "cond_stage_model.model.token_embedding.weight": (49408, 32),
        "model.diffusion_model.out.2.bias": (4,),
        "first_stage_model.decoder.norm_out.weight": (32,),
    }
    for key, shape in shapes.items():
        assert torch.equal(fixture_tensor(key, shape).flatten()[:16], probes[key]), key
    assert key_seed("a") != key_seed("b")
    kept = fixture_state_dict({"w": (2, 3), "buf": (3,)}, {"buf": torch.zeros(3)})
    assert torch.equal(kept["buf"], torch.zeros(3)) and kept["w"].abs().min() > 0


def test_tiny_config_has_the_512_structure() -> None:
    """Every switch of the published 512 config is the same in the tiny one; only sizes differ."""
    sizes = {"image_size", "model_channels", "channel_mult", "num_head_channels", "context_dim", "temporal_length",
             "ch", "ch_mult", "num_res_blocks", "resolution", "dim", "depth", "dim_head", "heads",
             "embedding_dim", "output_dim", "video_length", "use_checkpoint", "arch", "version"}  # fmt: skip

    def leaves(node: object, path: str = "") -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in leaves(value, f"{path}.{key}").items()}
        return {path: node}

    def load(name: str) -> dict[str, object]:
        tree = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / name))
        return {k: v for k, v in leaves(tree).items() if k.rsplit(".", 1)[-1] not in sizes}

    tiny, full = load("tiny_dynamicrafter.yaml"), load("dynamicrafter_512_v1.0.yaml")
    assert tiny == full


@pytest.fixture(scope="module")
def manifests() -> dict:
    return json.loads(MANIFESTS.read_text())


def test_manifests_cover_the_family(manifests: dict) -> None:
    assert sorted(manifests) == [
        "dynamicrafter_1024", "dynamicrafter_256", "dynamicrafter_512",
        "videocrafter1_t2v_1024", "videocrafter1_t2v_512",
    ]  # fmt: skip
    dc512, dc256 = manifests["dynamicrafter_512"], manifests["dynamicrafter_256"]
    assert dc512["model.diffusion_model.input_blocks.0.0.weight"] == [[320, 8, 3, 3], "float32"]
    assert dc512["image_proj_model.latents"] == [[1, 256, 1024], "float32"]  # 16 queries x 16 frames
    assert dc512["image_proj_model.proj_in.weight"] == [[1024, 1280], "float32"]  # ViT-H tokens
    assert dc512["scale_arr"] == [[1400], "float32"]
    assert "model.diffusion_model.fps_embedding.0.weight" in dc512
    # 1024 is the 512 architecture; 256 adds the learnable image-attention scales, no scale_arr.
    assert manifests["dynamicrafter_1024"] == dc512
    alphas = sorted(set(dc256) - set(dc512))
    assert alphas and all(k.endswith(".alpha") for k in alphas) and set(dc512) - set(dc256) == {"scale_arr"}
    vc512, vc1024 = manifests["videocrafter1_t2v_512"], manifests["videocrafter1_t2v_1024"]
    assert any("relative_position_k.embeddings_table" in k for k in vc512)
    assert not any(".temopral_conv." in k or "temporal_conv" in k for k in vc512)
    assert "model.diffusion_model.fps_embedding.0.weight" not in vc512
    assert set(vc1024) - set(vc512) >= {"model.diffusion_model.fps_embedding.0.weight", "scale_arr"}


def test_manifest_configs_are_in_the_project() -> None:
    for config in ("dynamicrafter_256_v1.0", "dynamicrafter_512_v1.0", "dynamicrafter_1024_v1.0",
                   "inference_t2v_512_v1.0", "inference_t2v_1024_v1.0"):  # fmt: skip
        assert (REPO / "configs" / f"{config}.yaml").is_file()
    assert Path(REPO / "tools" / "reference" / "make_family_manifests.py").is_file()


def test_dynamicrafter_is_the_videocrafter1_i2v_layout_plus_two_shapes(
    manifests: dict, manifest: dict
) -> None:
    """Cross-check with the real VideoCrafter1 i2v checkpoint's manifest: same keys; the U-Net's
    input convolution takes 8 channels (hybrid) and the Resampler has 16 queries per frame."""
    dc512, vc1_i2v = manifests["dynamicrafter_512"], manifest["videocrafter1_i2v_512"]
    assert set(dc512) == set(vc1_i2v)
    differ = {k: (dc512[k][0], vc1_i2v[k][0]) for k in dc512 if dc512[k] != vc1_i2v[k]}
    assert differ == {
        "model.diffusion_model.input_blocks.0.0.weight": ([320, 8, 3, 3], [320, 4, 3, 3]),
        "image_proj_model.latents": ([1, 256, 1024], [1, 16, 1024]),
    }
