"""The 2D KL autoencoder against the published model's keys and golden decodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lvdm.models.autoencoder import AutoencoderKL, DiagonalGaussian
from tests.conftest import tiny_t2v_weights

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "reference"
PREFIX = "first_stage_model."
SCALE_FACTOR = 0.18215


@pytest.fixture(scope="module")
def reference() -> Path:
    # Missing reference data is an error, not a reason to skip: these tests are the proof of fidelity.
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}: the checkout is incomplete")
    return REFERENCE


def first_stage_params(config_name: str) -> dict:
    cfg = OmegaConf.load(REPO / "configs" / config_name)
    return OmegaConf.to_container(cfg.model.params.first_stage_config.params, resolve=True)


def test_tiny_decode_matches_reference(reference: Path) -> None:
    model = AutoencoderKL(**first_stage_params("tiny_t2v.yaml")).eval()
    full = tiny_t2v_weights()
    state = {k[len(PREFIX) :]: v for k, v in full.items() if k.startswith(PREFIX)}
    model.load_state_dict(state, strict=True)

    case = load_file(reference / "tiny_t2v" / "decode.safetensors")
    z, video = case["z"], case["video"]  # (b, c, t, h, w), (b, 3, t, H, W)
    b, c, t, h, w = z.shape
    frames = (z / SCALE_FACTOR).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    with torch.no_grad():
        out = model.decode(frames)
    out = out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)

    assert out.shape == video.shape
    err = (out - video).abs().max().item()
    assert err < 1e-4, f"max abs error {err:.3e}"


@pytest.mark.parametrize(
    ("config_name", "checkpoint"),
    [
        ("inference_t2v_512_v2.0.yaml", "videocrafter2_t2v_512"),
        ("inference_i2v_512_v1.0.yaml", "videocrafter1_i2v_512"),
    ],
)
def test_real_size_keys_and_shapes_match_manifest(reference: Path, config_name: str, checkpoint: str) -> None:
    with torch.device("meta"):
        model = AutoencoderKL(**first_stage_params(config_name))
    manifest = json.loads((reference / "checkpoint_manifest.json").read_text())[checkpoint]
    expected = {
        k[len(PREFIX) :]: tuple(shape) for k, (shape, _dtype) in manifest.items() if k.startswith(PREFIX)
    }
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    assert sorted(got.keys() - expected.keys()) == []
    assert sorted(expected.keys() - got.keys()) == []
    assert got == expected


def test_encode_round_trip_shapes() -> None:
    torch.manual_seed(0)
    params = first_stage_params("tiny_t2v.yaml")
    model = AutoencoderKL(**params).eval()
    embed_dim = params["embed_dim"]
    x = torch.rand(2, 3, 32, 48) * 2 - 1

    with torch.no_grad():
        posterior = model.encode(x)
        assert isinstance(posterior, DiagonalGaussian)
        assert posterior.mean.shape == (2, embed_dim, 4, 6)
        assert posterior.logvar.shape == (2, embed_dim, 4, 6)
        assert posterior.std.shape == (2, embed_dim, 4, 6)
        assert torch.equal(posterior.mode(), posterior.mean)

        generator = torch.Generator().manual_seed(1)
        z = posterior.sample(generator)
        assert z.shape == (2, embed_dim, 4, 6)
        assert torch.equal(z, posterior.sample(torch.Generator().manual_seed(1)))
        recon = model.decode(z)

    assert recon.shape == x.shape
    for tensor in (posterior.mean, posterior.std, z, recon):
        assert torch.isfinite(tensor).all()


def test_logvar_is_clamped() -> None:
    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 100.0)], dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.max().item() == 20.0
    posterior = DiagonalGaussian(-moments)
    assert posterior.logvar.min().item() == -30.0


def test_attention_levels_supported() -> None:
    # attn_resolutions non-empty adds `attn.{j}` blocks per level (none of the released models do).
    params = first_stage_params("tiny_t2v.yaml")
    params["ddconfig"]["attn_resolutions"] = [16]
    model = AutoencoderKL(**params).eval()
    keys = model.state_dict().keys()
    assert "encoder.down.2.attn.0.q.weight" in keys
    assert "decoder.up.2.attn.1.proj_out.weight" in keys
    with torch.no_grad():
        out = model.decode(torch.randn(1, 4, 8, 8))
    assert out.shape == (1, 3, 64, 64)


def test_ckpt_path_is_refused() -> None:
    params = first_stage_params("tiny_t2v.yaml")
    with pytest.raises(ValueError, match="ckpt_path"):
        AutoencoderKL(**params, ckpt_path="model.ckpt")
