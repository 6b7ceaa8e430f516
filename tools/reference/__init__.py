"""Check the project's code against a reference fixture folder (format of tests/fixtures/reference/tiny_t2v).

A folder holds its weights in one of two ways: a stored ``state_dict.safetensors`` (and the image
tower's and Resampler's parameters under ``param.`` in their case files), or none at all, with
``meta.json["weights"]`` naming the deterministic scheme of ``tools/reference/fixture_weights.py``
and the sha256 of the parameters it gives (checked as the case ``weights``).

Every case runs through the same code the generator uses: the config is built with
``lvdm.build``, weights are loaded strictly, the U-Net runs with Q-cache processors from a
parsed mode (``fifo.tricks.qcache``), and the sampler cases use ``fifo.ddim`` and
``fifo.guidance``.

The reported error of a case is the max absolute difference, divided by the reference's
largest magnitude when that exceeds 1 (intermediate activations reach ~10, where fp32
summation order alone moves the last digits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from fifo.conditioning import VideoConditioning
from fifo.ddim import ddim_step
from fifo.geometry import FifoGeometry
from fifo.guidance import CFGDenoiser, ModelDenoiser
from fifo.noise import NoiseOrder, NoiseSource, NoiseStreamError, RecordedStream
from fifo.options import parse_mode
from fifo.sampler import FifoSampler
from fifo.schedule import DDIMSchedule
from fifo.tricks.qcache import set_qcache
from infra.errors import MissingInputError
from lvdm.build import build_model
from lvdm.checkpoint import load_weights
from lvdm.models.ddpm3d import LatentDiffusion
from lvdm.modules.encoders.condition import FrozenOpenCLIPImageEmbedderV2
from lvdm.modules.encoders.resampler import Resampler
from tools.reference.fixture_weights import module_fixture_weights, parameters_digest

TOLERANCE = 1e-4


@dataclass(frozen=True)
class CaseResult:
    name: str
    max_abs_error: float
    scaled_error: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.scaled_error <= TOLERANCE


def compare(name: str, ours: Tensor, ref: Tensor, note: str = "") -> CaseResult:
    if tuple(ours.shape) != tuple(ref.shape):
        return CaseResult(
            name, float("inf"), float("inf"), f"shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        )
    err = (ours.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.double().abs().max().item())
    return CaseResult(name, err, err / scale, note)


def fifo_run_noise(data: dict[str, Tensor], run: dict) -> Tensor:
    """Every standard-normal number a recorded FIFO run drew, in draw order (1-D, float32).

    Stored as ``fifo_run__{name}__noise`` in older folders; otherwise regenerated the way the
    recording drew it: one ``torch.randn(shape)`` per entry of ``run["draws"]``, in order, from a
    CPU generator seeded with ``run["noise_seed"]``."""
    stored = data.get(f"fifo_run__{run['name']}__noise")
    if stored is not None:
        return stored
    generator = torch.Generator("cpu").manual_seed(int(run["noise_seed"]))
    draws = [torch.randn(tuple(d[3]), generator=generator, dtype=torch.float32) for d in run["draws"]]
    return torch.cat([d.flatten() for d in draws])


def _params(tensors: dict[str, Tensor], prefix: str = "param.") -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class ReferenceSuite:
    """The fixture folder and the model built from its config, with the fixture's weights."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / "config.yaml").is_file():
            raise MissingInputError(f"{self.folder} is not a reference fixture folder (no config.yaml)")
        if not (self.folder / "meta.json").is_file():
            raise MissingInputError(f"{self.folder}: the reference fixture has no meta.json")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.model: LatentDiffusion = build_model(self.folder / "config.yaml").eval()
        stored = self.folder / "state_dict.safetensors"
        if stored.is_file():
            load_weights(self.model, load_file(stored), stored.name)
            self.weights_sha256 = None
        else:
            self.weights_sha256 = self._load_fixture_weights()
        self.fps = int(self.meta.get("fps", 8))

    def _load_fixture_weights(self) -> str:
        """Load the scheme's weights (buffers as this model computes them); their parameters' sha256."""
        if "weights" not in self.meta:
            raise MissingInputError(
                f"{self.folder}: the reference fixture has neither state_dict.safetensors nor "
                "meta.json['weights'] (the scheme its weights are computed with)"
            )
        weights = module_fixture_weights(self.model)
        load_weights(self.model, weights, "fixture weights")
        return parameters_digest(self.model, weights)

    @staticmethod
    def _module_weights(module: torch.nn.Module, data: dict[str, Tensor], prefix: str | None):
        """Stored ``param.`` tensors, else the scheme's weights keyed by ``prefix`` + the module's keys."""
        stored = _params(data)
        return stored if stored or prefix is None else module_fixture_weights(module, prefix)

    def weights_cases(self) -> Iterator[CaseResult]:
        if self.weights_sha256 is not None:
            recorded = self.meta["weights"].get("params_sha256")
            same = recorded == self.weights_sha256
            note = "" if same else f"sha256 {self.weights_sha256[:12]}… vs recorded {str(recorded)[:12]}…"
            yield CaseResult("weights", 0.0 if same else float("inf"), 0.0 if same else float("inf"), note)

    def _file(self, name: str) -> dict[str, Tensor] | None:
        path = self.folder / f"{name}.safetensors"
        return load_file(path) if path.is_file() else None

    def _guided(self, scale: float) -> CFGDenoiser:
        """Guidance with one U-Net call per branch, as the published sampler runs it."""
        return CFGDenoiser(ModelDenoiser(self.model, self.fps), scale, batch_branches=False)

    def cases(self) -> Iterator[CaseResult]:
        """Run every case the folder provides."""
        with torch.no_grad():
            yield from self.weights_cases()
            yield from self.text_cases()
            yield from self.unet_cases()
            yield from self.trace_cases()
            yield from self.decode_cases()
            yield from self.schedule_cases()
            yield from self.sampler_cases()
            yield from self.image_embed_cases()
            yield from self.resampler_cases()
            yield from self.fifo_run_cases()
        set_qcache(self.model.unet, None)

    def text_cases(self) -> Iterator[CaseResult]:
        data = self._file("text")
        if data is not None:
            yield compare("text", self.model.get_learned_conditioning(self.meta["prompts"]), data["text_emb"])

    def _timesteps(self, cases: dict[str, Tensor], key: str) -> Tensor:
        t = cases[key]
        # One timestep per frame (FIFO) is (b, t) for the U-Net; fixtures store it as (t,).
        return t[None] if t.numel() == cases["x"].shape[2] and key != "t_base" else t

    def unet_cases(self) -> Iterator[CaseResult]:
        cases = self._file("unet_cases")
        if cases is None:
            return
        for run in self.meta.get("runs", []):
            set_qcache(self.model.unet, parse_mode(run["mode"], run["qcache_weight"]).qcache)
            t = self._timesteps(cases, run["timesteps"])
            eps = self.model.apply_model(cases["x"], t, cases["context"], fps=self.fps)
            yield compare(f"unet {run['output']}", eps, cases[run["output"]])
        set_qcache(self.model.unet, None)

    def trace_cases(self) -> Iterator[CaseResult]:
        trace, cases = self._file("trace"), self._file("unet_cases")
        if trace is None or cases is None:
            return
        from lvdm.modules.networks.openaimodel3d import timestep_embedding

        unet = self.model.unet
        outputs: dict[str, Tensor] = {}
        hooks = [
            module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
            for name, module in unet.named_modules()
            if name in trace
        ]
        try:
            t = self._timesteps(cases, "t_fifo")
            unet(cases["x"], t, cases["context"], fps=self.fps)
        finally:
            for h in hooks:
                h.remove()
        outputs["timestep_embedding"] = timestep_embedding(t.reshape(-1), unet.model_channels)
        order = {name: i for i, (name, _) in enumerate(unet.named_modules())}
        for name in sorted(trace, key=lambda n: order.get(n, -1)):
            if name in outputs:
                yield compare(f"trace {name}", outputs[name], trace[name])
            else:
                yield CaseResult(f"trace {name}", float("inf"), float("inf"), "no such module output")

    def decode_cases(self) -> Iterator[CaseResult]:
        data = self._file("decode")
        if data is not None:
            yield compare("decode", self.model.decode_first_stage_2DAE(data["z"]), data["video"])

    def schedule_cases(self) -> Iterator[CaseResult]:
        data = self._file("schedule")
        if data is None:
            return
        for key in sorted(k for k in data if k.endswith(".ddim_timesteps")):
            prefix = key.removesuffix(".ddim_timesteps")
            steps, eta = prefix.removeprefix("s").split("_eta")
            sched = DDIMSchedule.create(
                self.model.alphas_cumprod, int(steps), float(eta), getattr(self.model, "scale_arr", None)
            )
            fields = {
                "ddim_timesteps": sched.timesteps,
                "ddim_alphas": sched.alphas,
                "ddim_alphas_prev": sched.alphas_prev,
                "ddim_sigmas": sched.sigmas,
                "ddim_scale_arr": sched.scale_arr,
                "ddim_scale_arr_prev": sched.scale_arr_prev,
            }
            worst = max(
                (
                    compare(prefix, ours, data[f"{prefix}.{field}"])
                    for field, ours in fields.items()
                    if ours is not None
                ),
                key=lambda r: r.scaled_error,
            )
            yield CaseResult(f"schedule {prefix}", worst.max_abs_error, worst.scaled_error, worst.note)

    def sampler_cases(self) -> Iterator[CaseResult]:
        data, cases = self._file("sampler"), self._file("unet_cases")
        if data is None or cases is None:
            return
        x, cond, uncond = cases["x"], cases["context"], data["uncond_context"]
        base = self.meta["sampler"]["base"]
        sched = DDIMSchedule.from_model(self.model, base["ddim_steps"], base["eta"])
        set_qcache(self.model.unet, parse_mode(base.get("mode", "t2v")).qcache)
        t = torch.full((x.shape[0],), int(sched.timesteps[base["index"]]), dtype=torch.long)
        eps = self._guided(base["guidance"])(x, t, cond, uncond)
        x_prev, pred_x0 = ddim_step(x, eps, sched, base["index"], None, use_scale=self.model.use_scale)
        yield compare("sampler base_x_prev", x_prev, data["base_x_prev"])
        yield compare("sampler base_pred_x0", pred_x0, data["base_pred_x0"])

        fifo = self.meta["sampler"]["fifo"]
        sched = DDIMSchedule.from_model(self.model, fifo["ddim_steps"], fifo["eta"])
        indices = data["fifo_indices"]
        t = data["fifo_timesteps"][None]
        for key in sorted(k for k in data if k.startswith("fifo_x_prev__")):
            tag = key.removeprefix("fifo_x_prev__")
            mode, weight = tag.rsplit("__vt", 1)
            set_qcache(self.model.unet, parse_mode(mode, float(weight)).qcache)
            eps = self._guided(fifo["guidance"])(x, t, cond, uncond)
            x_prev, pred_x0 = ddim_step(x, eps, sched, indices, None, use_scale=False)
            yield compare(f"sampler fifo_x_prev {tag}", x_prev, data[key])
            yield compare(f"sampler fifo_pred_x0 {tag}", pred_x0, data[f"fifo_pred_x0__{tag}"])
        set_qcache(self.model.unet, None)

    def image_embed_cases(self) -> Iterator[CaseResult]:
        data = self._file("image_embed")
        if data is None:
            return
        spec = self.meta.get("image_embed", {})
        embedder = FrozenOpenCLIPImageEmbedderV2(arch=spec.get("arch", "ViT-H-14")).eval()
        embedder.load_state_dict(
            self._module_weights(embedder, data, spec.get("weights_prefix")), strict=True
        )
        yield compare("image_embed", embedder(data["image"]), data["tokens"])

    def resampler_cases(self) -> Iterator[CaseResult]:
        data = self._file("resampler")
        if data is None:
            return
        resampler = Resampler(**self.meta["resampler_kwargs"]).eval()
        prefix = self.meta.get("resampler_weights_prefix")
        resampler.load_state_dict(self._module_weights(resampler, data, prefix), strict=True)
        yield compare("resampler", resampler(data["input"]), data["output"])

    def fifo_run_cases(self) -> Iterator[CaseResult]:
        """Whole FIFO runs of the published loop, replayed through this project's loop.

        Each run's recorded noise is replayed strictly in the published draw order (a draw of
        another shape, or a recording not fully consumed, fails the case); every dequeued
        latent of every iteration is compared, and the worst frame is reported.
        """
        data = self._file("fifo_run")
        spec = self.meta.get("fifo_run")
        if data is None or spec is None:
            return
        for run in spec["runs"]:
            yield self._fifo_run(run, spec, data)

    def _fifo_run(self, run: dict, spec: dict, data: dict[str, Tensor]) -> CaseResult:
        name = f"fifo_run {run['name']}"
        mode = parse_mode(run["mode"], run["qcache_weight"])
        geometry = FifoGeometry(spec["video_length"], spec["num_partitions"], run["lookahead"])
        if geometry.steps != spec["ddim_steps"]:
            return CaseResult(
                name, float("inf"), float("inf"), "ddim_steps is not video_length × num_partitions"
            )
        set_qcache(self.model.unet, mode.qcache)
        # The batched path users run: all windows and both guidance branches in one U-Net call
        # (the same as the published one-call-per-window path up to rounding, test_fifo_equivalence.py).
        sampler = FifoSampler(
            self.model,
            mode,
            CFGDenoiser(ModelDenoiser(self.model, spec["fps"]), spec["guidance"]),
            DDIMSchedule.from_model(self.model, geometry.steps, spec["eta"]),
            geometry,
            data["uncond_context"],
            window_batch=None,
        )
        stream = RecordedStream(fifo_run_noise(data, run), shapes=[tuple(d[3]) for d in run["draws"]])
        expected = data[f"fifo_run__{run['name']}__frames"]
        conditioning = VideoConditioning(data["context"], (), spec["new_video_length"])
        worst = CaseResult(name, 0.0, 0.0)
        try:
            state = sampler.initial_state(data["base_latents"], NoiseSource(stream, NoiseOrder.PUBLISHED))
            iterations = 0
            for out in sampler.steps(state, conditioning):
                frame = compare(name, out.latent, expected[:, :, out.iteration : out.iteration + 1])
                if frame.scaled_error > worst.scaled_error or not frame.passed:
                    worst = frame
                iterations += 1
            stream.check_consumed()
        except NoiseStreamError as err:
            return CaseResult(name, float("inf"), float("inf"), f"noise replay: {err}")
        finally:
            set_qcache(self.model.unet, None)
        if iterations != expected.shape[2]:
            return CaseResult(
                name, float("inf"), float("inf"), f"{iterations} iterations, expected {expected.shape[2]}"
            )
        return CaseResult(
            name, worst.max_abs_error, worst.scaled_error, f"{iterations} frames, strict noise replay"
        )
