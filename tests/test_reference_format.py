"""check_reference works for any fixture folder of the reference format, image cross-attention too.

The folder here is written from this project's own tiny image-to-video model, so it checks
the format handling (93-token contexts, optional files, per-frame timesteps), not the numbers:
those are pinned by tests/test_reference.py against the published fork's outputs.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fifo.ddim import ddim_step
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.options import parse_mode
from fifo.schedule import DDIMSchedule
from fifo.tricks.qcache import set_qcache
from lvdm.build import build_model
from tests.conftest import REPO
from tools.reference import ReferenceSuite


@pytest.fixture(scope="module")
def i2v_fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_i2v_fixture")
    shutil.copy(REPO / "configs" / "tiny_i2v.yaml", folder / "config.yaml")
    shutil.copy(REPO / "configs" / "openclip" / "fifo-tiny-clip.json", folder / "fifo-tiny-clip.json")
    torch.manual_seed(0)
    model = build_model(folder / "config.yaml").eval()
    with torch.no_grad():
        for p in model.parameters():  # wake the zero-initialised layers
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "state_dict.safetensors")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, 8, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    prompts = ["a lighthouse at dusk", ""]
    meta = {
        "fps": 8,
        "prompts": prompts,
        "runs": [
            {"output": "eps__i2v__t_fifo__vt1.0", "mode": "i2v", "timesteps": "t_fifo", "qcache_weight": 1.0},
            {
                "output": "eps__i2v_STqcache_attn2__t_fifo__vt0.5",
                "mode": "i2v_STqcache_attn2",
                "timesteps": "t_fifo",
                "qcache_weight": 0.5,
            },
        ],
        "sampler": {
            "base": {"ddim_steps": 16, "eta": 0.0, "index": 10, "guidance": 12.0, "mode": "i2v"},
            "fifo": {"ddim_steps": 16, "eta": 0.0, "guidance": 12.0},
        },
    }
    with torch.no_grad():
        text = model.get_learned_conditioning(prompts)
        tokens = model.get_image_embeds(image)
        zero_tokens = model.get_image_embeds(torch.zeros(1, 3, 224, 224))
        context = torch.cat([text[:1], tokens], dim=1)  # (1, 77 + 16, 32)
        uncond = torch.cat([text[1:], zero_tokens], dim=1)
        t_fifo = torch.arange(0, 1000, 125)[:8]
        cases = {"x": x, "t_fifo": t_fifo, "t_base": torch.tensor([666]), "context": context}
        for run in meta["runs"]:
            set_qcache(model.unet, parse_mode(run["mode"], run["qcache_weight"]).qcache)
            cases[run["output"]] = model.apply_model(x, t_fifo[None], context, fps=8)
        set_qcache(model.unet, None)
        guided = CFGDenoiser(ModelDenoiser(model, fps=8), 12.0, batch_branches=False)
        sched = DDIMSchedule.from_model(model, 16, 0.0)
        t = torch.full((1,), int(sched.timesteps[10]))
        x_prev, x0 = ddim_step(x, guided(x, t, context, uncond), sched, 10, use_scale=True)
        indices = torch.arange(0, 16, 2)
        f_prev, f_x0 = ddim_step(
            x, guided(x, sched.timesteps[indices][None], context, uncond), sched, indices
        )
    save_file({"text_emb": text}, folder / "text.safetensors")
    save_file({k: v.contiguous() for k, v in cases.items()}, folder / "unet_cases.safetensors")
    sampler = {
        "uncond_context": uncond,
        "base_x_prev": x_prev,
        "base_pred_x0": x0,
        "fifo_indices": indices,
        "fifo_timesteps": sched.timesteps[indices],
        "fifo_x_prev__i2v__vt1.0": f_prev,
        "fifo_pred_x0__i2v__vt1.0": f_x0,
    }
    save_file({k: v.contiguous() for k, v in sampler.items()}, folder / "sampler.safetensors")
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_image_cross_attention_fixture_passes(i2v_fixture) -> None:
    results = list(ReferenceSuite(i2v_fixture).cases())
    names = {r.name for r in results}
    assert (
        "unet eps__i2v_STqcache_attn2__t_fifo__vt0.5" in names and "sampler fifo_x_prev i2v__vt1.0" in names
    )
    assert all(r.passed for r in results), [(r.name, r.scaled_error) for r in results if not r.passed]


def test_a_wrong_reference_value_fails(i2v_fixture, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(i2v_fixture, broken)
    cases = load_file(broken / "unet_cases.safetensors")
    cases["eps__i2v__t_fifo__vt1.0"] = cases["eps__i2v__t_fifo__vt1.0"] + 1e-3
    save_file(cases, broken / "unet_cases.safetensors")
    failed = [r.name for r in ReferenceSuite(broken).cases() if not r.passed]
    assert failed == ["unet eps__i2v__t_fifo__vt1.0"]
