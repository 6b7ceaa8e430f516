"""Golden tensors of the PUBLISHED FIFO-Diffusion fork of VideoCrafter on a tiny config (CPU, fp32).

Writes ``tests/fixtures/reference/tiny_t2v/*.safetensors`` and ``meta.json`` in the format that
``tools/reference`` (``ReferenceSuite``) and ``scripts/check_reference.py`` read; the folder's
README.md documents every tensor. Nothing of the project's model code is imported: the model,
U-Net (with its Q-caches), encoders, Resampler, DDIM sampler and FIFO helpers all come from the
published checkout. Weights are ``fixture_weights.py``'s function of the key names, so the
fixture stores no state_dict.

How to run (not part of CI; needs the published code and kornia):

    mkdir -p /tmp/fork && git -C <clone of YCmove/FIFO-Diffusion_public> archive HEAD lvdm utils scripts \\
        | tar -x -C /tmp/fork
    python3 -m venv /tmp/refvenv
    echo <project venv>/lib/python3.11/site-packages > /tmp/refvenv/lib/python3.11/site-packages/main.pth
    /tmp/refvenv/bin/pip install kornia
    /tmp/refvenv/bin/python tools/reference/make_videocrafter_goldens.py --published /tmp/fork

Run it BY PATH (not ``-m``): the published package is also called ``lvdm`` (``_published``
checks). On top of the patches listed in ``_published.py``: xformers' attention is computed by
``_published.cpu_memory_efficient_attention`` (the fork calls it unconditionally), ``decord`` is a
stand-in (imported by the fork's helpers, unused here), and the fork's Q-cache weight, a local
constant 1.0 in its U-Net forward, is replaced by the case's weight through a forward pre-hook on
each decoder block (``qcache_weight``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from _published import (
    PublishedCodeError,
    cpu_ddim_sampler,
    cpu_memory_efficient_attention,
    instantiate,
    prepare_embedders,
    stand_in,
    use_checkout,
)
from fixture_weights import SCHEME, module_fixture_weights, parameters_digest

log = logging.getLogger("make_videocrafter_goldens")
REAL_RANDN = torch.randn
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a person swimming in ocean, high quality, 4K resolution.", ""]
F, N, STEPS, NEW_LENGTH, FPS, GUIDANCE = 8, 2, 16, 4, 8, 12.0
UNET_RUNS = [  # (mode, timesteps, Q-cache weight)
    ("t2v", "t_fifo", 1.0),
    ("t2v", "t_base", 1.0),
    ("t2v_TTqcache_attn1", "t_fifo", 1.0),
    ("t2v_TTqcache_attn1", "t_fifo", 0.9),
    ("t2v_TTqcache_attn2", "t_fifo", 0.9),
    ("t2v_STqcache_attn1", "t_fifo", 0.9),
    ("t2v_STqcache_attn2", "t_fifo", 0.5),
]
SCHEDULES = [(16, 1.0), (40, 0.5), (64, 0.0), (64, 1.0)]
BASE_INDEX, FIFO_INDICES = 10, [0, 2, 4, 6, 8, 10, 12, 14]
FIFO_RUNS = [  # (name, mode, Q-cache weight, lookahead, noise seed)
    ("t2v", "t2v", 1.0, True, 2025),
    ("t2v_TTqcache_attn1_vt0.9", "t2v_TTqcache_attn1", 0.9, True, 2026),
    ("t2v_unilatent", "t2v_unilatent", 1.0, True, 2027),
    ("t2v_no_lookahead", "t2v", 1.0, False, 2028),
]
RESAMPLER = {
    "dim": 64,
    "depth": 2,
    "dim_head": 16,
    "heads": 4,
    "num_queries": 16,
    "embedding_dim": 48,
    "output_dim": 32,
    "ff_mult": 4,
}


@contextmanager
def qcache_weight(unet: torch.nn.Module, weight: float) -> Iterator[None]:
    """Give every decoder block's query cache ``weight`` instead of the fork's constant 1.0."""

    def swap(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
        caches = kwargs.get("caches")
        if caches and caches != (None, None):
            kwargs["caches"] = tuple((c[0], weight) if c[0] is not None else c for c in caches)
        return args, kwargs

    handles = [b.register_forward_pre_hook(swap, with_kwargs=True) for b in unet.output_blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Recorder:
    """Every ``torch.randn``/``torch.randn_like`` the published helpers call, drawn from one seeded
    generator and logged as [purpose, iteration_or_slot, window_or_null, shape]."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.values: list[torch.Tensor] = []
        self.log: list[list[Any]] = []
        self.label: list[Any] = ["none", None, None]
        self.slots: Iterator[int] | None = None  # set while the queue is built: one draw per slot

    def draw(self, shape: Any) -> torch.Tensor:
        noise = REAL_RANDN(tuple(shape), generator=self.generator, dtype=torch.float32)
        self.values.append(noise.flatten())
        label = ["queue_init", next(self.slots), None] if self.slots is not None else self.label
        self.log.append([*label, list(noise.shape)])
        return noise

    @contextmanager
    def active(self) -> Iterator[None]:
        randn, randn_like = torch.randn, torch.randn_like

        def fake_randn(*size: Any, **_kwargs: Any) -> torch.Tensor:
            return self.draw(size[0] if len(size) == 1 and not isinstance(size[0], int) else size)

        def fake_randn_like(tensor: torch.Tensor, **_kwargs: Any) -> torch.Tensor:
            return self.draw(tensor.shape)

        torch.randn, torch.randn_like = fake_randn, fake_randn_like
        try:
            yield
        finally:
            torch.randn, torch.randn_like = randn, randn_like


class Published:
    """The fork's tiny LatentDiffusion with fixture weights, and its samplers."""

    def __init__(self, config: Path) -> None:
        import open_clip
        from omegaconf import OmegaConf

        open_clip.add_model_config(str(REPO / "configs" / "openclip"))
        self.cfg = OmegaConf.load(config)
        self.cfg.model.params.cond_stage_config.params.version = None  # no pretrained download
        self.model = instantiate(self.cfg.model).eval()
        prepare_embedders(self.model)
        state = self.model.state_dict()
        buffers = {name for name, _ in self.model.named_buffers()}
        self.buffer_keys = sorted(k for k in state if k in buffers)
        self.weights = module_fixture_weights(self.model)
        self.model.load_state_dict(self.weights, strict=True)
        self.ddim = importlib.import_module("lvdm.models.samplers.ddim")
        cpu_ddim_sampler(self.ddim.DDIMSampler)
        self.funcs = importlib.import_module("scripts.evaluation.funcs")

    def sampler(self, steps: int, eta: float) -> Any:
        sampler = self.ddim.DDIMSampler(self.model)
        sampler.make_schedule(ddim_num_steps=steps, ddim_eta=eta, verbose=False)
        return sampler

    def eps(self, x: torch.Tensor, t: torch.Tensor, mode: str, context: torch.Tensor, weight: float):
        cond = {"c_crossattn": [context], "fps": torch.tensor([FPS])}
        with qcache_weight(self.model.model.diffusion_model, weight):
            return self.model.apply_model(x, t, mode, cond)


def conds(context: torch.Tensor, uncond: torch.Tensor) -> tuple[dict, dict]:
    fps = torch.tensor([FPS])
    return {"c_crossattn": [context], "fps": fps}, {"c_crossattn": [uncond], "fps": fps}


def trace(pub: Published, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> dict:
    """Outputs of the published modules for the case eps__t2v__t_fifo__vt1.0."""
    unet = pub.model.model.diffusion_model
    names = [f"input_blocks.{i}" for i in range(len(unet.input_blocks))]
    names += ["init_attn", "middle_block", "time_embed", "fps_embedding"]
    names += [f"output_blocks.{i}" for i in range(len(unet.output_blocks))]
    modules = dict(unet.named_modules())
    out: dict[str, torch.Tensor] = {}

    def keep(name: str):  # cloned at once: the fork adds the fps embedding to time_embed's output in place
        return lambda _m, _i, result: out.__setitem__(
            name, (result[0] if isinstance(result, tuple) else result).clone()
        )

    handles = [modules[name].register_forward_hook(keep(name)) for name in names]
    try:
        pub.eps(x, t, "t2v", context, 1.0)
    finally:
        for handle in handles:
            handle.remove()
    embed = importlib.import_module("lvdm.models.utils_diffusion").timestep_embedding
    out["timestep_embedding"] = embed(t, unet.model_channels, repeat_only=False)
    return out


def fifo_run(
    pub: Published, base: torch.Tensor, context, uncond, run: tuple
) -> tuple[torch.Tensor, Recorder]:
    """The fork's FIFO loop order around its prepare_latents, fifo_onestep and shift_latents."""
    name, mode, weight, lookahead, seed = run
    sampler = pub.sampler(STEPS, 1.0)
    rec = Recorder(seed)
    args = SimpleNamespace(
        num_inference_steps=STEPS, video_length=F, lookahead_denoising=lookahead, mode=mode
    )
    cond, uc = conds(context, uncond)
    with tempfile.TemporaryDirectory() as latents_dir:
        torch.save(base, f"{latents_dir}/{STEPS}.pt")  # where the fork's helper reads the base clip
        rec.slots = iter(range(F // 2 + STEPS))
        with rec.active():
            latents = pub.funcs.prepare_latents(args, latents_dir, sampler)
        rec.slots = None
    timesteps, indices = sampler.ddim_timesteps, np.arange(STEPS)
    if lookahead:
        timesteps = np.concatenate([np.full((F // 2,), timesteps[0]), timesteps])
        indices = np.concatenate([np.full((F // 2,), 0), indices])
    windows = list(reversed(range(2 * N if lookahead else N)))
    frames = []
    out_slot = F // 2 if lookahead else 0
    for i in range(NEW_LENGTH + STEPS - F):
        for r in windows:
            start = r * (F // 2) if lookahead else r * F
            rec.label = ["ddim", i, r]
            with rec.active(), qcache_weight(pub.model.model.diffusion_model, weight):
                out, _ = sampler.fifo_onestep(
                    cond=cond,
                    shape=[1, 4, F, *base.shape[-2:]],
                    mode=mode,
                    latents=latents[:, :, start : start + F].clone(),
                    timesteps=timesteps[start : start + F],
                    indices=indices[start : start + F],
                    unconditional_guidance_scale=GUIDANCE,
                    unconditional_conditioning=uc,
                )
            if lookahead:
                latents[:, :, start + F // 2 : start + F] = out[:, :, -(F // 2) :]
            else:
                latents[:, :, start : start + F] = out
        frames.append(latents[:, :, out_slot : out_slot + 1].clone())
        rec.label = ["tail", i, None]
        with rec.active():
            latents = pub.funcs.shift_latents(latents, latents[:, :, [out_slot]].clone())
    log.info("FIFO run %s: %d draws", name, len(rec.log))
    return torch.cat(frames, dim=2), rec


def _check_regenerates(rec: Recorder, seed: int) -> None:
    """The recorded stream is what a fresh generator with ``seed`` draws, shape by shape."""
    generator = torch.Generator("cpu").manual_seed(seed)
    for values, entry in zip(rec.values, rec.log, strict=True):
        if not torch.equal(values, REAL_RANDN(tuple(entry[3]), generator=generator).flatten()):
            raise RuntimeError(f"draw {entry} does not regenerate from seed {seed}")


@torch.no_grad()
def make(published: Path, out: Path, config: Path, threads: int) -> None:
    from safetensors.torch import save_file

    cpu_memory_efficient_attention()
    sys.modules.setdefault("decord", stand_in("decord"))
    use_checkout(published)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pub = Published(config)
    model = pub.model
    gen = torch.Generator("cpu").manual_seed(2024)
    files: dict[str, dict[str, torch.Tensor]] = {}

    text = model.get_learned_conditioning(PROMPTS)
    files["text"] = {"text_emb": text}
    context, uncond = text[:1].clone(), text[1:].clone()

    x = torch.randn(1, 4, F, 16, 16, generator=gen)
    sampler16 = pub.sampler(STEPS, 0.0)
    t_fifo = torch.as_tensor(sampler16.ddim_timesteps[FIFO_INDICES].copy(), dtype=torch.long)
    t_base = torch.as_tensor(sampler16.ddim_timesteps[BASE_INDEX : BASE_INDEX + 1].copy(), dtype=torch.long)
    unet = {"x": x, "t_fifo": t_fifo, "t_base": t_base, "context": context}
    runs_meta = []
    for mode, key, weight in UNET_RUNS:
        name = f"eps__{mode}__{key}__vt{weight}"
        unet[name] = pub.eps(x, unet[key], mode, context, weight)
        runs_meta.append({"output": name, "mode": mode, "timesteps": key, "qcache_weight": weight})
    files["unet_cases"] = unet
    files["trace"] = trace(pub, x, t_fifo, context)

    z = torch.randn(1, 4, 2, 16, 16, generator=gen)
    files["decode"] = {"z": z, "video": model.decode_first_stage_2DAE(z)}

    schedule = {}
    for steps, eta in SCHEDULES:
        s = pub.sampler(steps, eta)
        for field in ("timesteps", "alphas", "alphas_prev", "sigmas", "scale_arr", "scale_arr_prev"):
            value = getattr(s, f"ddim_{field}")
            schedule[f"s{steps}_eta{eta}.ddim_{field}"] = torch.as_tensor(value).clone()
    files["schedule"] = schedule

    cond, uc = conds(context, uncond)
    base_prev, base_x0 = sampler16.p_sample_ddim(
        x, cond, t_base, "t2v", index=BASE_INDEX, unconditional_guidance_scale=GUIDANCE,
        unconditional_conditioning=uc,
    )  # fmt: skip
    sampler_file = {"base_x_prev": base_prev, "base_pred_x0": base_x0, "uncond_context": uncond}
    sampler_file["fifo_indices"] = torch.tensor(FIFO_INDICES)
    sampler_file["fifo_timesteps"] = t_fifo
    for mode, weight in (("t2v", 1.0), ("t2v_TTqcache_attn1", 0.9)):
        with qcache_weight(model.model.diffusion_model, weight):
            prev, x0 = sampler16.fifo_onestep(
                cond=cond, shape=list(x.shape), mode=mode, latents=x.clone(),
                timesteps=t_fifo.numpy(), indices=np.array(FIFO_INDICES),
                unconditional_guidance_scale=GUIDANCE, unconditional_conditioning=uc,
            )  # fmt: skip
        sampler_file[f"fifo_x_prev__{mode}__vt{weight}"] = prev
        sampler_file[f"fifo_pred_x0__{mode}__vt{weight}"] = x0
    files["sampler"] = sampler_file

    condition = importlib.import_module("lvdm.modules.encoders.condition")
    embedder = condition.FrozenOpenCLIPImageEmbedderV2(arch="fifo-tiny-clip", version=None).eval()
    prepare_embedders(SimpleNamespace(embedder=embedder))
    embedder.load_state_dict(module_fixture_weights(embedder, "embedder."), strict=True)
    image = torch.rand(2, 3, 224, 224, generator=gen) * 2 - 1
    files["image_embed"] = {"image": image, "tokens": embedder(image)}

    resampler_class = importlib.import_module("lvdm.modules.encoders.ip_resampler").Resampler
    resampler = resampler_class(**RESAMPLER).eval()
    resampler.load_state_dict(module_fixture_weights(resampler, "image_proj_model."), strict=True)
    rinput = torch.randn(1, 50, 48, generator=gen)
    files["resampler"] = {"input": rinput, "output": resampler(rinput)}

    base = torch.randn(1, 4, F, 16, 16, generator=gen)
    fifo_file = {"base_latents": base, "context": context, "uncond_context": uncond}
    fifo_meta = []
    for run in FIFO_RUNS:
        frames, rec = fifo_run(pub, base, context, uncond, run)
        fifo_file[f"fifo_run__{run[0]}__frames"] = frames
        # The noise is not stored: the reader redraws it from the seed, one randn per logged shape.
        _check_regenerates(rec, run[4])
        keys = ("name", "mode", "qcache_weight", "lookahead", "noise_seed")
        fifo_meta.append({**dict(zip(keys, run, strict=True)), "draws": rec.log})
    files["fifo_run"] = fifo_file

    out.mkdir(parents=True, exist_ok=True)
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    if config != out / "config.yaml":
        (out / "config.yaml").write_text(config.read_text())
    meta = _meta(pub, config, runs_meta, fifo_meta, t_base, t_fifo)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %s", out)


def _meta(pub: Published, config: Path, runs: list, fifo: list, t_base, t_fifo) -> dict:
    import kornia
    import open_clip

    return {
        "source": "YCmove/FIFO-Diffusion_public (published fork of FIFO-Diffusion on VideoCrafter)",
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "kornia": kornia.__version__,
        },
        "config": config.name,
        "weights": {
            "scheme": SCHEME,
            "module": "tools/reference/fixture_weights.py",
            "buffers_kept": pub.buffer_keys,
            "num_keys": len(pub.weights),
            "params_sha256": parameters_digest(pub.model, pub.weights),
        },
        "fps": FPS,
        "prompts": PROMPTS,
        "runs": runs,
        "resampler_kwargs": RESAMPLER,
        "resampler_weights_prefix": "image_proj_model.",
        "image_embed": {
            "arch": "fifo-tiny-clip",
            "input_range": [-1, 1],
            "size": 224,
            "weights_prefix": "embedder.",
        },
        "sampler": {
            "base": {
                "ddim_steps": STEPS,
                "eta": 0.0,
                "index": BASE_INDEX,
                "timestep": int(t_base[0]),
                "guidance": GUIDANCE,
                "mode": "t2v",
            },
            "fifo": {
                "ddim_steps": STEPS,
                "eta": 0.0,
                "guidance": GUIDANCE,
                "indices": FIFO_INDICES,
                "timesteps": t_fifo.tolist(),
            },
        },  # fmt: skip
        "fifo_run": {
            "video_length": F,
            "num_partitions": N,
            "ddim_steps": STEPS,
            "new_video_length": NEW_LENGTH,
            "iterations": NEW_LENGTH + STEPS - F,
            "guidance": GUIDANCE,
            "eta": 1.0,
            "fps": FPS,
            "uncond": "stored uncond_context (empty-prompt text_emb[1])",
            "noise": "not stored: per run, torch.Generator('cpu').manual_seed(noise_seed), then one "
            "torch.randn(shape, generator=...) (float32) per entry of draws, in order",
            "runs": fifo,
        },
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the fork logs every layer at INFO
    log.setLevel(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--published", required=True, type=Path, help="checkout of the fork (lvdm/, utils/, scripts/)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "reference" / "tiny_t2v")
    parser.add_argument(
        "--config", type=Path, default=REPO / "tests" / "fixtures" / "reference" / "tiny_t2v" / "config.yaml"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    try:
        make(args.published, args.out, args.config.resolve(), args.threads)
    except PublishedCodeError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
