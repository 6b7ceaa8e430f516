"""Golden tensors of the PUBLISHED DynamiCrafter code on configs/tiny_dynamicrafter.yaml (CPU, fp32).

Writes ``tests/fixtures/tiny_dynamicrafter/*.safetensors`` and ``meta.json``; the folder's
README.md documents every tensor. Nothing of the project's model code is imported: the model,
its U-Net, encoders, Resampler and DDIM arrays all come from the published checkout.

How to run (not part of CI; needs the published code and kornia):

    mkdir -p /tmp/dc && git -C <clone of Doubiiu/DynamiCrafter> archive HEAD lvdm utils | tar -x -C /tmp/dc
    python3 -m venv /tmp/refvenv
    echo <project venv>/lib/python3.11/site-packages > /tmp/refvenv/lib/python3.11/site-packages/main.pth
    /tmp/refvenv/bin/pip install kornia
    /tmp/refvenv/bin/python tools/reference/make_dynamicrafter_goldens.py --published /tmp/dc

Run it BY PATH (not ``-m``): the published package is also called ``lvdm`` and must be the only
one imported (``_published.use_checkout`` checks). Run-time patches are listed in
``_published.py``; on top of them this script gives the published U-Net one timestep per frame
(``per_frame_timesteps``), which its forward does not take (it repeats one embedding per clip).

Choices (the published code has no FIFO loop for DynamiCrafter; see README.md of the fixture):
guidance as its ``image_guided_synthesis``: unconditional = empty-prompt text + the Resampler
tokens of an all-zero image, and the image latent stays concatenated in the unconditional call
(the image is NOT dropped from the channels); v-space guidance ``v_u + s·(v_c − v_u)``, then
optionally ``rescale_noise_cfg`` over the whole window; DDIM ``uniform_trailing`` (its 512/1024
scripts' setting) so that the noisiest index is t = 999 with ᾱ = 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _published import PublishedCodeError, cpu_ddim_sampler, instantiate, prepare_embedders, use_checkout
from fixture_weights import SCHEME, fixture_state_dict
from tqdm import tqdm

log = logging.getLogger("make_dynamicrafter_goldens")
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a kitten walking on a sunny lawn, high quality.", ""]
F, N, STEPS, NEW_LENGTH = 8, 2, 16, 4
GUIDANCE, GUIDANCE_RESCALE, ETA, FS = 7.5, 0.7, 1.0, 24
SPACING = "uniform_trailing"
FIFO_T_INDICES = [1, 3, 5, 7, 9, 11, 13, 15]  # one DDIM index per frame; 15 is t = 999 (ᾱ = 0)
CLIP_INDEX = 10


class Draws:
    """Standard-normal draws from one generator, recorded in order with their purpose."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.values: list[torch.Tensor] = []
        self.log: list[list[Any]] = []

    def __call__(self, purpose: str, step: int, window: int | None, shape: list[int]) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator, dtype=torch.float32)
        self.values.append(noise.flatten())
        self.log.append([purpose, step, window, shape])
        return noise

    def stream(self) -> torch.Tensor:
        return torch.cat(self.values)


@contextmanager
def per_frame_timesteps(unet: torch.nn.Module, timesteps: torch.Tensor, fs: torch.Tensor, batch: int):
    """Feed every block the embedding of each frame's own timestep, (b·t, d), frames within batch.

    The published forward embeds one timestep per clip and repeats it over the t frames; the
    embedding it hands to each block is replaced by ``time_embed(timestep_embedding(t_k))`` +
    the clip's fs embedding, computed with the published modules and function.
    """
    embed = importlib.import_module("lvdm.models.utils_diffusion").timestep_embedding
    frames = timesteps.numel()
    emb = unet.time_embed(embed(timesteps.repeat(batch), unet.model_channels))
    if unet.fs_condition:
        emb = emb + unet.fps_embedding(embed(fs, unet.model_channels)).repeat_interleave(frames, dim=0)

    def swap(module: torch.nn.Module, args: tuple) -> tuple:
        if args[1].shape != emb.shape:
            raise RuntimeError(f"block embedding {tuple(args[1].shape)} is not {tuple(emb.shape)}")
        return (args[0], emb, *args[2:])

    blocks = [*unet.input_blocks, unet.init_attn, unet.middle_block, *unet.output_blocks]
    handles = [block.register_forward_pre_hook(swap) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Published:
    """The published tiny model with fixture weights, its DDIM sampler and the golden cases."""

    def __init__(self, config: Path) -> None:
        import open_clip
        from omegaconf import OmegaConf

        open_clip.add_model_config(str(REPO / "configs" / "openclip"))
        cfg = OmegaConf.load(config)
        params = cfg.model.params
        if "cond_img_config" in params:  # the fork's key; the published class takes img_cond_stage_config
            params.img_cond_stage_config = params.pop("cond_img_config")
        self.model = instantiate(cfg.model).eval()
        prepare_embedders(self.model)
        state = self.model.state_dict()
        buffers = {name for name, _ in self.model.named_buffers()}
        self.buffer_keys = sorted(k for k in state if k in buffers)
        weights = fixture_state_dict(
            {k: v.shape for k, v in state.items()}, {k: state[k] for k in self.buffer_keys}
        )
        self.model.load_state_dict(weights, strict=True)
        self.weights = weights
        sampler_module = importlib.import_module("lvdm.models.samplers.ddim")
        cpu_ddim_sampler(sampler_module.DDIMSampler)
        self.sampler = sampler_module.DDIMSampler(self.model)
        self.sampler.make_schedule(ddim_num_steps=STEPS, ddim_discretize=SPACING, ddim_eta=ETA, verbose=False)
        self.rescale_noise_cfg = importlib.import_module("lvdm.models.utils_diffusion").rescale_noise_cfg
        self.timesteps = torch.as_tensor(self.sampler.ddim_timesteps.copy(), dtype=torch.long)

    def unet(self, x: torch.Tensor, t: torch.Tensor, cond: dict, fs: torch.Tensor) -> torch.Tensor:
        """v prediction (b, 4, t, h, w); ``t`` one timestep per frame, (t,), or per clip, (b,)."""
        b, frames = x.shape[0], x.shape[2]
        if t.numel() == frames and frames != b:
            with per_frame_timesteps(self.model.model.diffusion_model, t, fs, b):
                return self.model.apply_model(x, t[:1].repeat(b), cond, fs=fs)
        return self.model.apply_model(x, t, cond, fs=fs)

    def scalar(self, array: Any, index: int) -> torch.Tensor:
        """One schedule entry as the published p_sample_ddim makes it: torch.full(..., fp32)."""
        return torch.full((1, 1, 1, 1, 1), float(array[index]))

    def step(
        self,
        x: torch.Tensor,
        indices: list[int],
        cond: dict,
        uncond: dict,
        fs: torch.Tensor,
        noise: torch.Tensor,
        guidance_rescale: float,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step of a window, frame k at schedule index ``indices[k]`` (eta of the schedule)."""
        t = self.timesteps[indices]
        v_cond = self.unet(x, t, cond, fs)
        v_uncond = self.unet(x, t, uncond, fs)
        v = v_uncond + GUIDANCE * (v_cond - v_uncond)
        if guidance_rescale > 0:
            v = self.rescale_noise_cfg(v, v_cond, guidance_rescale=guidance_rescale)
        out = {k: [] for k in ("eps", "x0", "x0_rescaled", "x_prev")}
        s = self.sampler
        for k, index in enumerate(indices):
            xk, vk, tk = x[:, :, k : k + 1], v[:, :, k : k + 1], t[k : k + 1]
            eps = self.model.predict_eps_from_z_and_v(xk, tk, vk)
            x0 = self.model.predict_start_from_z_and_v(xk, tk, vk)
            rescaled = x0 * (self.scalar(s.ddim_scale_arr_prev, index) / self.scalar(s.ddim_scale_arr, index))
            a_prev, sigma = self.scalar(s.ddim_alphas_prev, index), self.scalar(s.ddim_sigmas, index)
            x_prev = (
                a_prev.sqrt() * rescaled
                + (1.0 - a_prev - sigma**2).sqrt() * eps
                + sigma * noise[:, :, k : k + 1]
            )
            for name, value in zip(out, (eps, x0, rescaled, x_prev), strict=True):
                out[name].append(value)
        result = {name: torch.cat(values, dim=2) for name, values in out.items()}
        return {"v_cond": v_cond, "v_uncond": v_uncond, "v": v, **result}


def conditions(pub: Published, image: torch.Tensor, image_latent: torch.Tensor, text: torch.Tensor) -> tuple:
    """(cond, uncond, tensors) as the published image_guided_synthesis builds them."""
    model = pub.model
    clip_tokens = model.embedder(image)
    image_tokens = model.image_proj_model(clip_tokens)
    uncond_clip_tokens = model.embedder(torch.zeros_like(image))
    uncond_image_tokens = model.image_proj_model(uncond_clip_tokens)
    concat = image_latent.repeat(1, 1, F, 1, 1)
    cond = {"c_crossattn": [torch.cat([text[:1], image_tokens], dim=1)], "c_concat": [concat]}
    uncond = {"c_crossattn": [torch.cat([text[1:], uncond_image_tokens], dim=1)], "c_concat": [concat]}
    tensors = {
        "clip_tokens": clip_tokens,
        "image_tokens": image_tokens,
        "uncond_clip_tokens": uncond_clip_tokens,
        "uncond_image_tokens": uncond_image_tokens,
        "context": cond["c_crossattn"][0],
        "uncond_context": uncond["c_crossattn"][0],
    }
    return cond, uncond, tensors


def fifo_run(
    pub: Published,
    base: torch.Tensor,
    cond: dict,
    uncond: dict,
    fs: torch.Tensor,
    lookahead: bool,
    guidance_rescale: float,
    seed: int,
) -> tuple[torch.Tensor, Draws]:
    """A plain sequential FIFO loop around the published U-Net and DDIM arithmetic."""
    draws = Draws(seed)
    lead = F // 2 if lookahead else 0
    length = lead + STEPS
    slot_index = [max(0, s - lead) for s in range(length)]
    alphas = pub.sampler.ddim_alphas
    shape = [1, 4, 1, *base.shape[-2:]]
    slots = []
    for s in range(length):
        i = slot_index[s]
        frame = max(0, i - (STEPS - F))
        a = torch.full((1, 1, 1, 1, 1), float(alphas[i]))
        slots.append(
            a.sqrt() * base[:, :, frame : frame + 1] + (1 - a).sqrt() * draws("queue_init", s, None, shape)
        )
    queue = torch.cat(slots, dim=2)
    if lookahead:
        windows = [(r * F // 2, r * F // 2 + F // 2) for r in reversed(range(2 * N))]
    else:
        windows = [(r * F, r * F) for r in reversed(range(N))]
    iterations = NEW_LENGTH + STEPS - F
    frames = []
    for it in tqdm(range(iterations), desc=f"FIFO lookahead={lookahead} rescale={guidance_rescale}"):
        for start, write in windows:
            r = start // (F // 2) if lookahead else start // F
            noise = torch.cat([draws("ddim", it, r, shape) for _ in range(F)], dim=2)
            out = pub.step(
                queue[:, :, start : start + F],
                slot_index[start : start + F],
                cond,
                uncond,
                fs,
                noise,
                guidance_rescale,
            )
            queue[:, :, write : start + F] = out["x_prev"][:, :, write - start :]
        frames.append(queue[:, :, lead : lead + 1].clone())
        tail = draws("tail", it, None, [1, 4, *base.shape[-2:]])
        queue = torch.cat([queue[:, :, 1:], tail[:, :, None]], dim=2)
    return torch.cat(frames, dim=2), draws


@torch.no_grad()
def make(published: Path, out: Path, config: Path, threads: int) -> None:
    from safetensors.torch import save_file

    use_checkout(published)
    torch.set_num_threads(threads)  # one thread: same sums on any machine, no spinning on a busy one
    torch.manual_seed(0)
    pub = Published(config)
    log.info("built the published model from %s", config)
    model = pub.model
    files: dict[str, dict[str, torch.Tensor]] = {}
    checks: dict[str, float] = {}
    gen = torch.Generator("cpu").manual_seed(2024)

    # Probes of the weights: lets a reader check that its recomputation of the scheme matches.
    files["weights_probe"] = {
        k: v.flatten()[:16].clone() for k, v in pub.weights.items() if k not in pub.buffer_keys
    }

    text = model.get_learned_conditioning(PROMPTS)
    image = torch.rand(1, 3, 128, 128, generator=gen) * 2 - 1
    files["text"] = {"text_emb": text}

    # Image latent (hybrid condition): the published encode_first_stage samples the posterior;
    # record mean, std and the noise so the sample can be replayed.
    posterior = model.first_stage_model.encode(image)
    latent_noise = torch.randn(posterior.mean.shape, generator=gen)
    image_latent = (model.scale_factor * (posterior.mean + posterior.std * latent_noise))[:, :, None]
    torch.manual_seed(7)
    sampled = model.encode_first_stage(image[:, :, None])
    torch.manual_seed(7)
    check_noise = torch.randn(posterior.mean.shape)
    checks["encode_first_stage_vs_replay"] = (
        (sampled - model.scale_factor * (posterior.mean + posterior.std * check_noise)[:, :, None])
        .abs()
        .max()
        .item()
    )
    z_decode = torch.randn(1, 4, 2, 16, 16, generator=gen)
    files["autoencoder"] = {
        "image": image,
        "posterior_mean": posterior.mean,
        "posterior_std": posterior.std,
        "posterior_noise": latent_noise,
        "image_latent": image_latent,
        "decode_z": z_decode,
        "decode_video": model.decode_first_stage(z_decode),
    }

    cond, uncond, tensors = conditions(pub, image, image_latent, text)
    files["image_embed"] = {"image": image, "clip_input": model.embedder.preprocess(image), **tensors}

    s = pub.sampler
    files["schedule"] = {
        "alphas_cumprod": model.alphas_cumprod.clone(),
        "scale_arr": model.scale_arr.clone(),
        "ddim_timesteps": pub.timesteps,
        **{
            name: torch.as_tensor(getattr(s, name)).clone()
            for name in (
                "ddim_alphas",
                "ddim_alphas_prev",
                "ddim_sigmas",
                "ddim_scale_arr",
                "ddim_scale_arr_prev",
            )
        },
    }

    fs = torch.tensor([FS], dtype=torch.long)
    x = torch.randn(1, 4, F, 16, 16, generator=gen)
    t_fifo = pub.timesteps[FIFO_T_INDICES]
    t_clip = pub.timesteps[CLIP_INDEX : CLIP_INDEX + 1]
    unet = {
        "x": x,
        "t_fifo": t_fifo,
        "t_clip": t_clip,
        "fs": fs,
        "context": cond["c_crossattn"][0],
        "uncond_context": uncond["c_crossattn"][0],
        "c_concat": cond["c_concat"][0],
    }
    unet["v__t_fifo"] = pub.unet(x, t_fifo, cond, fs)
    unet["v__t_fifo__uncond"] = pub.unet(x, t_fifo, uncond, fs)
    unet["v__t_fifo__fs10"] = pub.unet(x, t_fifo, cond, torch.tensor([10]))
    unet["v__t_clip"] = pub.unet(x, t_clip, cond, fs)
    files["unet_cases"] = unet
    checks["per_frame_hook_vs_published_one_timestep"] = (
        (pub.unet(x, t_clip.repeat(F), cond, fs) - unet["v__t_clip"]).abs().max().item()
    )
    checks["repeat_evaluation"] = (pub.unet(x, t_fifo, cond, fs) - unet["v__t_fifo"]).abs().max().item()
    both = {k: [torch.cat([cond[k][0], uncond[k][0]])] for k in cond}
    batched = pub.unet(x.repeat(2, 1, 1, 1, 1), t_fifo, both, fs.repeat(2))
    checks["batched_cond_uncond_vs_separate"] = max(
        (batched[:1] - unet["v__t_fifo"]).abs().max().item(),
        (batched[1:] - unet["v__t_fifo__uncond"]).abs().max().item(),
    )

    step_noise = torch.randn(1, 4, F, 16, 16, generator=gen)
    sampler_file = {"x": x, "noise": step_noise}
    for rescale in (0.0, GUIDANCE_RESCALE):
        step_out = pub.step(x, FIFO_T_INDICES, cond, uncond, fs, step_noise, rescale)
        for name, value in step_out.items():
            sampler_file[f"step__gr{rescale}__{name}"] = value
    # The same arithmetic against the published p_sample_ddim where all frames share one index.
    torch.manual_seed(11)
    published_prev, published_x0 = s.p_sample_ddim(
        x,
        cond,
        t_clip,
        index=CLIP_INDEX,
        unconditional_guidance_scale=GUIDANCE,
        unconditional_conditioning=uncond,
        fs=fs,
        guidance_rescale=GUIDANCE_RESCALE,
    )
    torch.manual_seed(11)
    mine = pub.step(x, [CLIP_INDEX] * F, cond, uncond, fs, torch.randn(x.shape) * 1.0, GUIDANCE_RESCALE)
    checks["step_vs_published_p_sample_ddim"] = max(
        (mine["x_prev"] - published_prev).abs().max().item(),
        (mine["x0_rescaled"] - published_x0).abs().max().item(),
    )
    files["sampler"] = sampler_file

    base = torch.randn(1, 4, F, 16, 16, generator=gen)
    runs_meta, fifo_file = [], {"base_latents": base}
    for name, lookahead, rescale, seed in (
        ("lookahead_gr0.7", True, GUIDANCE_RESCALE, 2025),
        ("lookahead_gr0.0", True, 0.0, 2026),
        ("no_lookahead_gr0.7", False, GUIDANCE_RESCALE, 2027),
    ):
        log.info("FIFO run %s", name)
        frames, draws = fifo_run(pub, base, cond, uncond, fs, lookahead, rescale, seed)
        fifo_file[f"fifo_run__{name}__frames"] = frames
        fifo_file[f"fifo_run__{name}__noise"] = draws.stream()
        runs_meta.append(
            {
                "name": name,
                "lookahead": lookahead,
                "guidance_rescale": rescale,
                "noise_seed": seed,
                "draws": draws.log,
            }
        )
        checks[f"fifo_run__{name}__finite"] = float(torch.isfinite(frames).all().item())
        checks[f"fifo_run__{name}__max_abs"] = frames.abs().max().item()
    files["fifo_run"] = fifo_file

    out.mkdir(parents=True, exist_ok=True)
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    import kornia
    import open_clip

    meta = {
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "kornia": kornia.__version__,
        },
        "weights": {
            "scheme": SCHEME,
            "module": "tools/reference/fixture_weights.py",
            "buffers_kept": pub.buffer_keys,
            "num_keys": len(pub.weights),
        },
        "prompts": PROMPTS,
        "fs": FS,
        "guidance": GUIDANCE,
        "guidance_rescale": GUIDANCE_RESCALE,
        "eta": ETA,
        "ddim_steps": STEPS,
        "timestep_spacing": SPACING,
        "fifo_t_indices": FIFO_T_INDICES,
        "t_fifo": t_fifo.tolist(),
        "clip_index": CLIP_INDEX,
        "t_clip": t_clip.tolist(),
        "fifo_run": {
            "video_length": F,
            "num_partitions": N,
            "ddim_steps": STEPS,
            "new_video_length": NEW_LENGTH,
            "iterations": NEW_LENGTH + STEPS - F,
            "runs": runs_meta,
        },
        "checks": checks,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("checks: %s", json.dumps(checks, indent=1))
    log.info("wrote %s", out)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--published", required=True, type=Path, help="checkout of Doubiiu/DynamiCrafter (lvdm/, utils/)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "tiny_dynamicrafter")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny_dynamicrafter.yaml")
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
