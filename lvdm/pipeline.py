"""One prompt → one long video: base clip, FIFO queue, frames streamed to the writer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from lvdm.models.ddpm3d import LatentDiffusion
from lvdm.models.samplers.ddim import sample_ddim
from lvdm.models.samplers.fifo import (
    FifoGeometry,
    Window,
    fifo_step,
    initial_queue,
    shift_queue,
    window_noise,
)
from lvdm.modules.networks.openaimodel3d import Downsample as UNetDownsample
from lvdm.options import ModeOptions
from lvdm.perf import FastPathPlan, ShardedDenoiser, auto_window_batch, plan_fast_path
from lvdm.prompts import PromptJob
from tools.video_io import VideoWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and output settings shared by all prompts of a run."""

    video_length: int = 16
    num_partitions: int = 4
    new_video_length: int = 100
    height: int = 320
    width: int = 512
    fps: int = 8
    guidance: float = 12.0
    eta: float = 1.0
    lookahead: bool = True
    seed: int = 321
    save_frames: bool = False
    use_mp4: bool = False
    output_fps: int = 10
    batched: bool = True
    window_batch: int | None = None
    dtype: str = "fp32"
    progress: bool = True


@dataclass(frozen=True)
class GenerationResult:
    prompt: str
    video_path: Path
    frames: int
    seconds: float
    base_clip_cached: bool


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """(1, 3, t, H, W) in [-1, 1] → (t, H, W, 3) uint8."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def load_image(path: Path, height: int, width: int) -> Tensor:
    """An input image as (1, 3, height, width) in [-1, 1]: resize the short side, centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(height / im.height, width / im.width)
        size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
        im = im.resize(size, Image.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        im = im.crop((left, top, left + width, top + height))
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
    return (arr / 127.5 - 1.0).permute(2, 0, 1)[None]


def fifo_seed(seed: int) -> int:
    """Seed of the FIFO stage's noise, derived from ``--seed`` (independent of the base clip's)."""
    digest = hashlib.sha256(f"fifo:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class FifoGenerator:
    """Generates long videos for prompt jobs with one loaded model.

    Args:
        model: the loaded model (its device is used).
        mode: the parsed ``--mode``.
        settings: sampling/output settings.
        model_id: fingerprint of the weights (``lvdm.build.model_identity``), for the cache.
    """

    def __init__(
        self, model: LatentDiffusion, mode: ModeOptions, settings: GenerationSettings, model_id: str
    ) -> None:
        if mode.uses_image_model and not model.has_image_embedder:
            raise ValueError(
                f"mode {mode.main!r} needs the image-to-video model (with a CLIP image embedder); "
                "use --config configs/inference_i2v_512_v1.0.yaml (or configs/tiny_i2v.yaml)"
            )
        self.model, self.mode, self.settings, self.model_id = model, mode, settings, model_id
        self.geometry = FifoGeometry(settings.video_length, settings.num_partitions, settings.lookahead)
        self.device = model.device
        scale = model.vae_scale
        if settings.height % scale or settings.width % scale:
            raise ValueError(
                f"--height and --width must be multiples of {scale}, got {settings.height}x{settings.width}"
            )
        # The U-Net halves the latent at every Downsample and doubles it back: each latent side
        # must divide by 2**downsamples, or the skip connections do not line up.
        unet_factor = 2 ** sum(isinstance(m, UNetDownsample) for m in model.unet.modules())
        if (settings.height // scale) % unet_factor or (settings.width // scale) % unet_factor:
            multiple = scale * unet_factor
            raise ValueError(
                f"--height and --width must be multiples of {multiple} for this model "
                f"(autoencoder ×{scale}, U-Net ×{unet_factor}), got {settings.height}x{settings.width}"
            )
        self.latent_hw = (settings.height // scale, settings.width // scale)
        model.unet.set_qcache(mode.qcache)
        self.window_batch = settings.window_batch
        if self.window_batch is None and settings.batched:
            # Auto: as many windows per U-Net call as free device memory allows (all on CPU).
            dtype_bytes = 2 if settings.dtype in ("fp16", "bf16") else 4
            self.window_batch = auto_window_batch(
                model,
                self.geometry,
                self.latent_hw,
                self.device,
                dtype_bytes,
                guidance=settings.guidance != 1.0,
            )
            logger.info("window batch: %s", "all windows" if self.window_batch is None else self.window_batch)
        # How a batched call runs on this device (on CPU: parallel slices, transformer chunks).
        # The sequential reference path runs the U-Net as published.
        self.plan = plan_fast_path(self.device) if settings.batched else FastPathPlan()
        model.unet.set_execution(self.plan.unet)
        self._sharded = ShardedDenoiser(self._denoise_once, self.plan.shards)
        if settings.batched:
            logger.info("fast path plan: %s", self.plan)
        else:
            logger.info("sequential path: one window and one guidance branch per call, layers as published")
        self.schedule = model.ddim_schedule(self.geometry.steps, settings.eta)
        # The unconditional context never changes: empty text (+ zero-image tokens, as published).
        self.uncond_context = model.get_learned_conditioning([""])
        if model.has_image_embedder:
            zeros = torch.zeros(1, 3, 224, 224, device=self.device)
            self.uncond_context = torch.cat([self.uncond_context, model.get_image_embeds(zeros)], dim=1)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.settings.dtype)
        if dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                yield

    def _denoise_once(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        with self._autocast():
            return self.model.apply_model(x, t, context, fps=self.settings.fps).float()

    def _denoise(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """The sampler's denoiser: one U-Net call, or parallel slices of it (see ``plan``)."""
        return self._sharded(x, t, context)

    def close(self) -> None:
        """Release the worker threads of the parallel slices (if any were started)."""
        self._sharded.close()

    def _decode(self, z: Tensor) -> Tensor:
        with self._autocast():
            return self.model.decode_first_stage_2DAE(z).float()

    def _image_tokens(self, images: Tensor) -> Tensor:
        return self.model.get_image_embeds(images.to(self.device))

    def cache_key(self, job: PromptJob) -> dict:
        """Everything that changes the base clip's noise and latent."""
        s = self.settings
        image_digest = hashlib.sha256(job.image.read_bytes()).hexdigest() if job.image else None
        return {
            "model": self.model_id,
            "prompt": job.prompt,
            "image": image_digest,
            "seed": s.seed,
            "size": [s.height, s.width],
            "video_length": s.video_length,
            "steps": self.geometry.steps,
            "eta": s.eta,
            "guidance": s.guidance,
            "fps": s.fps,
            "dtype": s.dtype,
            "mode_main": self.mode.main,
        }

    # ------------------------------------------------------------------ stages
    def base_clip(
        self, job: PromptJob, cond: Tensor, cache_dir: Path, gen: torch.Generator
    ) -> tuple[Tensor, bool]:
        """Sample (or reuse) the base clip: clean latents (1, c, f, h, w)."""
        key = self.cache_key(job)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        cache_file = cache_dir / f"{digest}.pt"
        shape = (1, self.model.channels, self.settings.video_length, *self.latent_hw)
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged cache file is recomputed, never fatal
                logger.warning("base clip: ignoring unreadable cache file %s (%s)", cache_file, err)
                cached = {}
            if isinstance(cached, dict) and cached.get("key") == key:
                logger.info("base clip: reusing cached latents %s", cache_file)
                return cached["latents"].to(self.device), True
        x_T = torch.randn(shape, generator=gen, device=self.device)
        latents = sample_ddim(
            self._denoise,
            x_T,
            self.schedule,
            cond,
            self.uncond_context,
            self.settings.guidance,
            use_scale=self.model.use_scale,
            generator=gen,
            progress=self.settings.progress,
        )
        _atomic_save({"key": key, "x_T": x_T.cpu(), "latents": latents.cpu()}, cache_file)
        return latents, False

    def run(
        self, job: PromptJob, output_root: Path, experiment: str, cache_dir: Path | None = None
    ) -> GenerationResult:
        """Generate one video under ``output_root/<prompt folder>/``; base latents cached in ``cache_dir``."""
        start = time.perf_counter()
        s, geo = self.settings, self.geometry
        length = job.story_length if job.is_story else s.new_video_length
        # Two random streams: the base clip's (skipped on a cache hit) and the FIFO queue's, so a
        # cached base clip gives the same video as a freshly sampled one.
        base_gen = torch.Generator(device=self.device).manual_seed(s.seed)
        gen = torch.Generator(device=self.device).manual_seed(fifo_seed(s.seed))
        prompt_dir = output_root / job.folder_name
        exp_dir = prompt_dir / experiment

        prompts = [sc.prompt for sc in job.scenes] if job.is_story else [job.prompt]
        texts = self.model.get_learned_conditioning(prompts)  # (scenes, 77, d)
        image_tokens = None
        if self.mode.main == "i2v":
            image_tokens = self._image_tokens(load_image(job.image, s.height, s.width))

        def with_image(text: Tensor) -> Tensor:
            if image_tokens is None:
                return text
            return torch.cat([text, image_tokens.expand(text.shape[0], -1, -1)], dim=1)

        # The base clip is conditioned on the text (+ the input image for i2v).
        base, cached = self.base_clip(
            job, with_image(texts[:1]), cache_dir or output_root / "latents", base_gen
        )
        base_video = self._decode(base)
        with VideoWriter(exp_dir / "origin.gif", fps=s.output_fps) as origin:
            for frame in to_uint8_frames(base_video):
                origin.write(frame)
        if self.mode.seeds_image:
            image_tokens = self._image_tokens(base_video[:, :, 0])

        suffix = ".mp4" if s.use_mp4 else ".gif"
        video_path = prompt_dir / f"{experiment}{suffix}"
        queue = initial_queue(base, geo, self.schedule, self.mode.unilatent, gen)
        windows = geo.windows()
        skip = geo.discarded_frames()
        written = 0
        with VideoWriter(video_path, fps=s.output_fps) as writer:
            for it in tqdm(range(geo.num_iterations(length)), desc="FIFO", disable=not s.progress):
                contexts = with_image(self.window_texts(texts, job, it, windows, length))
                noise = window_noise(geo, queue, self.schedule, gen)
                queue = fifo_step(
                    self._denoise,
                    queue,
                    geo,
                    self.schedule,
                    contexts,
                    self.uncond_context,
                    s.guidance,
                    noise,
                    batched=s.batched,
                    window_batch=self.window_batch,
                )
                clean = queue[:, :, geo.output_slot : geo.output_slot + 1]
                keep = it >= skip
                if keep or self.mode.reseeds_each_frame:
                    frame_video = self._decode(clean)
                    if self.mode.reseeds_each_frame:
                        # Replace (never append) the image tokens with the newest frame's.
                        image_tokens = self._image_tokens(frame_video[:, :, 0])
                    if keep:
                        frame = to_uint8_frames(frame_video)[0]
                        writer.write(frame)
                        if s.save_frames:
                            frames_dir = exp_dir / "fifo"
                            frames_dir.mkdir(parents=True, exist_ok=True)
                            Image.fromarray(frame).save(frames_dir / f"{written:04d}.png")
                        written += 1
                queue = shift_queue(queue, gen)
        seconds = time.perf_counter() - start
        return GenerationResult(job.prompt, video_path, written, seconds, cached)

    def window_texts(
        self, texts: Tensor, job: PromptJob, iteration: int, windows: list[Window], length: int
    ) -> Tensor:
        """Text condition of each window, (W, 77, d).

        A story assigns each window the scene of the output frame its middle slot will become.
        """
        if not job.is_story:
            return texts[:1].expand(len(windows), -1, -1)
        bounds = np.cumsum([sc.frames for sc in job.scenes])
        geo = self.geometry
        picks = []
        for w in windows:
            frame = iteration + (w.start + w.end) // 2 - geo.output_slot - geo.discarded_frames()
            frame = min(max(frame, 0), length - 1)
            picks.append(int(np.searchsorted(bounds, frame, side="right")))
        return texts[torch.tensor(picks, device=texts.device)]


def settings_summary(settings: GenerationSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
