"""Checkpoint formats round-trip; every bad checkpoint gets a clear error and loads nothing.

Also: Lightning-style checkpoints with pickled objects besides the state_dict load without
running code from the file; damaged, truncated and foreign files are named as such (with sizes
and the command that downloads them again); a checkpoint for another config names the configs
it fits; the lazy check (keys and shapes only) reads no tensor data.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from infra.memory import current_rss_bytes
from lvdm.build import build_model, check_checkpoint, configs_fitting, load_model
from lvdm.checkpoint import CheckpointError, check_state_dict, read_state_dict, read_state_dict_meta
from tests.conftest import REPO

T2V = REPO / "configs" / "tiny_t2v.yaml"
I2V = REPO / "configs" / "tiny_i2v.yaml"
T2V_FULL = REPO / "configs" / "inference_t2v_512_v2.0.yaml"
I2V_FULL = REPO / "configs" / "inference_i2v_512_v1.0.yaml"


@pytest.fixture(scope="module")
def t2v_state() -> dict:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in build_model(T2V).state_dict().items()}


def _assert_loaded(model, state: dict) -> None:
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def sparse_checkpoint(path: Path, shapes: dict[str, tuple[list[int], str]]) -> Path:
    """A Lightning-style zip checkpoint with these keys, shapes and dtypes, whose tensor data is
    a hole in a sparse file: gigabytes long, a few KB on disk, written in milliseconds."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        state = {k: torch.empty(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in shapes.items()}
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["lightning", "plain", "safetensors", "deepspeed", "legacy"])
def test_round_trip(fmt: str, t2v_state: dict, tmp_path) -> None:
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in t2v_state.items()}, path)
    else:
        path = tmp_path / "model.ckpt"
        payload = {
            "lightning": {"state_dict": t2v_state, "epoch": 3, "global_step": 10},
            "plain": t2v_state,
            "legacy": {"state_dict": t2v_state},
            "deepspeed": {"module": {f"_forward_module.{k}": v for k, v in t2v_state.items()}},
        }[fmt]
        torch.save(payload, path, _use_new_zipfile_serialization=fmt != "legacy")
    model = load_model(T2V, path)
    _assert_loaded(model, t2v_state)


def test_format_is_read_from_the_content_not_the_name(t2v_state: dict, tmp_path) -> None:
    torch_file, st_file = tmp_path / "really_torch.safetensors", tmp_path / "really_safetensors.ckpt"
    torch.save({"state_dict": t2v_state}, torch_file)
    save_file({k: v.contiguous() for k, v in t2v_state.items()}, st_file)
    for path in (torch_file, st_file):
        state = read_state_dict(path)
        assert state.keys() == t2v_state.keys() and all(
            torch.equal(state[k], v) for k, v in t2v_state.items()
        )


# --------------------------------------------------------------------------- pickled objects
class TrainingCallback:
    """A class of the training code, as Lightning pickles callback states."""

    def __init__(self) -> None:
        self.best = np.float64(0.25)
        self.monitor = "val/loss"


class AttributeDict(dict):
    """Lightning's hyper-parameter dict is a dict subclass (PyTorch's unpickler takes none)."""


def lightning_payload(state: dict) -> dict:
    return {
        "state_dict": state,
        "epoch": 3,
        "global_step": 12000,
        "pytorch-lightning_version": "1.9.0",
        "hyper_parameters": OmegaConf.create({"model": {"base_learning_rate": 6e-5, "scale_factor": 0.18}}),
        "datamodule_hyper_parameters": OmegaConf.create([{"video_length": 16}, {"resolution": [320, 512]}]),
        "hparams": AttributeDict(lr=1e-4, ckpt=pathlib.Path("/data/ckpts/epoch=3.ckpt")),
        "args": argparse.Namespace(seed=123, logdir=pathlib.PurePosixPath("/logs")),
        "loops": {"fit_loop": {"epoch_progress": {"current": np.int64(3)}, "mean": np.array([0.5, 0.25])}},
        "callbacks": {TrainingCallback: TrainingCallback(), "counts": collections.defaultdict(int, a=1)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 6e-5}]}],
        "lr_schedulers": [collections.OrderedDict(last_epoch=3)],
    }


def test_lightning_checkpoint_with_pickled_objects_loads(t2v_state: dict, tmp_path, caplog) -> None:
    path = tmp_path / "model.ckpt"
    torch.save(lightning_payload(t2v_state), path)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(path, weights_only=True)  # what this is about: PyTorch's safe loader refuses it
    with caplog.at_level(logging.INFO, logger="lvdm.checkpoint"):
        model = load_model(T2V, path)
    _assert_loaded(model, t2v_state)
    # The classes of the training code were replaced by inert placeholders, and said so.
    assert "tests.test_checkpoint.TrainingCallback" in caplog.text
    assert "tests.test_checkpoint.AttributeDict" in caplog.text
    assert "only the state_dict is used" in caplog.text


@pytest.mark.filterwarnings("ignore")
def test_checkpoint_written_by_lightning_loads(t2v_state: dict, tmp_path) -> None:
    """A checkpoint as PyTorch Lightning writes it (hyper-parameters saved from an OmegaConf
    config, an argparse.Namespace and a path; loops, callbacks, optimizer and scheduler states),
    with the tiny model's weights as its state_dict."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self, model_config, args, logdir) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _index):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
            return [optimizer], [torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)]

    module = Module(
        OmegaConf.create({"base_learning_rate": 6e-5, "unet": {"channel_mult": [1, 2]}}),
        argparse.Namespace(seed=123),
        pathlib.Path(tmp_path / "logs"),
    )
    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", default_root_dir=tmp_path / "pl",
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))
    checkpoint = trainer._checkpoint_connector.dump_checkpoint()  # what trainer.save_checkpoint writes
    checkpoint["state_dict"] = t2v_state
    path = tmp_path / "model.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(path, weights_only=True)
    _assert_loaded(load_model(T2V, path), t2v_state)


def test_harmless_objects_load_through_pytorchs_own_unpickler(t2v_state: dict, tmp_path, caplog) -> None:
    path = tmp_path / "model.ckpt"
    payload = {
        "state_dict": t2v_state,
        "hyper_parameters": OmegaConf.create({"lr": 1e-4, "layers": [1, 2]}),
        "args": argparse.Namespace(seed=1, out=pathlib.Path("/x")),
        "loss": np.float32(0.5),
        "history": np.arange(4),
    }
    torch.save(payload, path)
    with caplog.at_level(logging.DEBUG, logger="lvdm.checkpoint"):
        state = read_state_dict(path)
    assert all(torch.equal(state[k], v) for k, v in t2v_state.items())
    # The allow-list covers these: no second pass, no placeholders.
    assert "placeholders" not in caplog.text and "skipped" not in caplog.text


def _write_marker(path: str) -> str:
    """What a malicious checkpoint would run: a file appears."""
    Path(path).write_text("ran")
    return path


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class CallsAFunction:
    """Calls an importable, not obviously dangerous function on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


@pytest.mark.parametrize("payload", [RunsShell, RunsExec])
def test_pickled_code_is_refused_and_never_runs(payload, t2v_state: dict, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": t2v_state, "callbacks": {"evil": payload(marker)}}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(T2V, path)
    msg = str(err.value)
    assert "pickled code" in msg and ("system" in msg or "exec" in msg) and "nothing from it ran" in msg
    assert "re-save its state_dict" in msg
    assert not marker.exists()


def test_unknown_callables_become_inert_placeholders(t2v_state: dict, tmp_path, caplog) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": t2v_state, "callbacks": [CallsAFunction(marker)]}, path)
    with caplog.at_level(logging.INFO, logger="lvdm.checkpoint"):
        state = read_state_dict(path)
    assert not marker.exists()  # the function was named by the pickle, never called
    assert all(torch.equal(state[k], v) for k, v in t2v_state.items())
    assert "tests.test_checkpoint._write_marker" in caplog.text


def test_pickled_builtin_is_refused(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(CheckpointError, match="pickled code: it names builtins.print"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archive_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive .* holds code"):
        read_state_dict(path)


# --------------------------------------------------------------------------- missing, damaged, foreign
def test_missing_checkpoint_says_where_to_download(tmp_path) -> None:
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "videocrafter_models" / "base_512_v2" / "model.ckpt")
    msg = str(err.value)
    assert "not found" in msg and "huggingface.co/VideoCrafter" in msg and "base_512_v2/model.ckpt" in msg


def test_missing_checkpoint_with_a_partial_download(tmp_path) -> None:
    folder = tmp_path / "videocrafter_models" / "base_512_v2"
    partial = folder / ".cache" / "huggingface" / "download"
    partial.mkdir(parents=True)
    (partial / "abc.incomplete").write_bytes(b"x" * 10)
    with pytest.raises(
        CheckpointError, match="partial download .* run `python scripts/download_checkpoints.py` again"
    ):
        read_state_dict(folder / "model.ckpt")


def _first_half(source: Path, target: Path) -> int:
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: len(data) // 2])
    return len(data)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_download_is_called_incomplete(fmt: str, t2v_state: dict, tmp_path) -> None:
    whole = tmp_path / "whole"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in t2v_state.items()}, whole)
    else:
        torch.save({"state_dict": t2v_state}, whole, _use_new_zipfile_serialization=fmt == "zip")
    path = tmp_path / "model.ckpt"
    full = _first_half(whole, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "damaged or incomplete" in msg and f"{full // 2:,} bytes" in msg
    assert "Download or copy it again" in msg and "mmap" not in msg and "not a PyTorch checkpoint" not in msg
    if fmt == "safetensors":  # its header gives the full size
        assert f"the complete file has {full:,}" in msg


def test_truncated_published_checkpoint_names_the_download_command(t2v_state: dict, tmp_path) -> None:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": t2v_state}, whole)
    path = tmp_path / "videocrafter_models" / "Image2Video_512" / "model.ckpt"
    full = _first_half(whole, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "damaged or incomplete" in msg and f"it has {full // 2:,} bytes" in msg
    assert "`python scripts/download_checkpoints.py --which i2v --force`" in msg
    assert "the complete size is not recorded here" in msg and "--verify-only" in msg
    # With the record the download script leaves next to the file, the expected size is given.
    record = {
        "repo_id": "VideoCrafter/Image2Video-512",
        "filename": "model.ckpt",
        "size": full,
        "sha256": None,
    }
    path.with_name("model.ckpt.download.json").write_text(json.dumps(record))
    with pytest.raises(
        CheckpointError, match=f"the complete file has {full:,} \\(as model.ckpt.download.json"
    ):
        read_state_dict(path)


def test_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "is not a checkpoint" in msg and "4,096 bytes" in msg and "--ckpt_path" in msg
    assert "mmap" not in msg and "_use_new_zipfile_serialization" not in msg
    torch.save({"epoch": 1}, path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        read_state_dict(path)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a checkpoint.*safetensors"):
        read_state_dict(bad)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="damaged or incomplete .*the file is empty"):
        read_state_dict(path)


def test_web_page_and_lfs_pointer_are_named(tmp_path) -> None:
    path = tmp_path / "videocrafter_models" / "base_512_v2" / "model.ckpt"
    path.parent.mkdir(parents=True)
    path.write_text("<!DOCTYPE html>\n<html><head><title>model.ckpt · VideoCrafter</title></head></html>")
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "web page" in msg and "resolve/main/model.ckpt" in msg and "--which t2v" in msg
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5000000000\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer .*git lfs pull"):
        read_state_dict(path)


# --------------------------------------------------------------------------- config mismatch
def test_text_to_video_checkpoint_with_image_config(t2v_state: dict, tmp_path) -> None:
    path = tmp_path / "t2v.safetensors"
    save_file({k: v.contiguous() for k, v in t2v_state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(I2V, path)
    msg = str(err.value)
    assert "missing keys" in msg and "embedder.model" in msg and "image_proj_model" in msg
    # A tiny checkpoint: the hint names the tiny config it fits, not the full-size ones.
    assert "fits --config configs/tiny_t2v.yaml" in msg and "inference_" not in msg


def test_image_checkpoint_with_text_config(tmp_path) -> None:
    torch.manual_seed(0)
    state = build_model(I2V).state_dict()
    path = tmp_path / "i2v.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    for config in (T2V, T2V_FULL):
        with pytest.raises(CheckpointError) as err:
            load_model(config, path)
        msg = str(err.value)
        assert (
            "unexpected keys" in msg
            and "fits --config configs/tiny_i2v.yaml" in msg
            and "inference_" not in msg
        )


def test_checkpoint_that_fits_no_config_names_none(t2v_state: dict, tmp_path) -> None:
    state = dict(t2v_state)
    key = "model.diffusion_model.out.2.weight"
    state[key] = torch.zeros(8, *state[key].shape[1:])
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(T2V_FULL, path)
    msg = str(err.value)
    assert "text-to-video checkpoint" in msg and "no config in configs/ has its keys and shapes" in msg
    assert "inference_" not in msg and "--config configs/" not in msg


def test_a_config_next_to_the_given_one_is_found(t2v_state: dict, tmp_path) -> None:
    folder = tmp_path / "my_configs"
    folder.mkdir()
    (folder / "mine.yaml").write_text(T2V.read_text())
    (folder / "notes.yaml").write_text("just: notes\n")  # not a model config: skipped quietly
    (folder / "other.yaml").write_text(I2V.read_text())
    shapes = {k: tuple(v.shape) for k, v in t2v_state.items()}
    assert configs_fitting(shapes, folder / "other.yaml") == [
        "configs/tiny_t2v.yaml",
        str(folder / "mine.yaml"),
    ]


def test_full_size_checkpoint_hint_names_the_published_config(manifest: dict) -> None:
    """The published checkpoints' keys and shapes (the reference manifest) against the other
    full-size config: the hint names the config they fit."""
    i2v = {
        k: torch.empty(shape, device="meta") for k, (shape, _) in manifest["videocrafter1_i2v_512"].items()
    }
    with torch.device("meta"):
        t2v_model = build_model(T2V_FULL)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(t2v_model, i2v, "videocrafter_models/Image2Video_512/model.ckpt", T2V_FULL)
    assert "fits --config configs/inference_i2v_512_v1.0.yaml" in str(err.value)


def test_shape_mismatch_names_keys_and_both_shapes(t2v_state: dict, tmp_path) -> None:
    state = dict(t2v_state)
    key = "model.diffusion_model.out.2.weight"
    state[key] = torch.zeros(8, *state[key].shape[1:])
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(T2V, path)
    msg = str(err.value)
    assert key in msg and "(8, 32, 3, 3)" in msg and "(4, 32, 3, 3)" in msg


def test_failed_load_leaves_model_untouched(t2v_state: dict) -> None:
    from lvdm.checkpoint import load_weights

    model = build_model(T2V)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(t2v_state)
    broken.pop("betas")
    with pytest.raises(CheckpointError):
        load_weights(model, broken)
    _assert_loaded(model, before)


def test_missing_config_and_bad_target(tmp_path) -> None:
    from lvdm.utils import ConfigError

    with pytest.raises(ConfigError, match="config not found"):
        build_model(tmp_path / "nope.yaml")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  target: lvdm.models.ddpm3d.NoSuchModel\n")
    with pytest.raises(ConfigError, match="known targets"):
        build_model(cfg)
    cfg.write_text("model:\n  target: os.system\n  params: {command: 'true'}\n")
    with pytest.raises(ConfigError, match="outside this package"):
        build_model(cfg)


# --------------------------------------------------------------------------- lazy check
@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
def test_lazy_read_gives_keys_shapes_and_dtypes(fmt: str, t2v_state: dict, tmp_path) -> None:
    state = {**t2v_state, "extra.half": torch.ones(3, 2, dtype=torch.float16)}
    path = tmp_path / f"model.{fmt}"
    if fmt == "zip":
        torch.save(lightning_payload(state), path)  # through the placeholder pass too
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    meta = read_state_dict_meta(path)
    assert meta.keys() == state.keys()
    assert all(v.is_meta and v.shape == state[k].shape and v.dtype == state[k].dtype for k, v in meta.items())


@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
def test_lazy_read_reads_no_tensor_data(fmt: str, tmp_path) -> None:
    """A 2 GiB checkpoint (a sparse file: its data is a hole) is checked with a few MB of memory."""
    shapes = {"model.big": ([512, 1024, 1024], "float32"), "model.small": ([4], "float16")}
    if fmt == "zip":
        path = sparse_checkpoint(tmp_path / "model.ckpt", shapes)
    else:
        header = {"model.big": {"dtype": "F32", "shape": [512, 1024, 1024], "data_offsets": [0, 2**31]}}
        header["model.small"] = {"dtype": "F16", "shape": [4], "data_offsets": [2**31, 2**31 + 8]}
        raw = json.dumps(header).encode()
        path = tmp_path / "model.safetensors"
        with open(path, "wb") as fp:
            fp.write(len(raw).to_bytes(8, "little") + raw)
            fp.truncate(8 + len(raw) + 2**31 + 8)
    assert path.stat().st_size > 2**31
    before = current_rss_bytes()
    meta = read_state_dict_meta(path)
    assert current_rss_bytes() - before < 64 * 2**20
    assert meta["model.big"].shape == (512, 1024, 1024) and meta["model.small"].dtype == torch.float16


def test_lazy_read_has_the_same_errors(t2v_state: dict, tmp_path) -> None:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": t2v_state}, whole)
    path = tmp_path / "model.ckpt"
    _first_half(whole, path)
    for read in (read_state_dict, read_state_dict_meta):
        with pytest.raises(CheckpointError, match="damaged or incomplete"):
            read(path)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": t2v_state, "x": RunsShell(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled code"):
        read_state_dict_meta(path)
    assert not marker.exists()


def test_full_size_published_checkpoint_is_checked_lazily(manifest: dict, tmp_path) -> None:
    """The real checkpoint's keys and shapes in a 7 GB (sparse) file: read lazily and checked
    against the full-size model built on the meta device, in seconds."""
    path = sparse_checkpoint(tmp_path / "model.ckpt", manifest["videocrafter2_t2v_512"])
    assert path.stat().st_size > 7e9
    shapes = read_state_dict_meta(path)
    with torch.device("meta"):
        model = build_model(T2V_FULL)
    check_state_dict(model, shapes)  # fits
    with torch.device("meta"):
        i2v = build_model(I2V_FULL)
    with pytest.raises(CheckpointError, match="fits --config configs/inference_t2v_512_v2.0.yaml"):
        check_checkpoint(i2v, shapes, path, I2V_FULL)


# --------------------------------------------------------------------------- --dry_run
def _cli(capsys, *args) -> tuple[int, str]:
    import videocrafter_main

    rc = videocrafter_main.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _error_line(stderr: str) -> str:
    """The ``error:`` message (to its end) in a run's stderr."""
    return stderr[stderr.index("error: ") :].strip()


@pytest.fixture
def run_args(tmp_path) -> list:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox running through snow\n")
    return [
        "-p",
        prompts,
        "--video_length",
        "4",
        "-n",
        "1",
        "-l",
        "3",
        "--no_progress",
        "--output_dir",
        tmp_path / "out",
    ]


def test_dry_run_checks_the_checkpoint_without_reading_its_weights(
    t2v_state: dict, tmp_path, run_args, capsys, monkeypatch, caplog
) -> None:
    import lvdm.build
    import lvdm.checkpoint

    path = tmp_path / "t2v.ckpt"
    torch.save(lightning_payload(t2v_state), path)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the dry run read the checkpoint's weights")

    monkeypatch.setattr(lvdm.checkpoint, "read_state_dict", refuse)
    monkeypatch.setattr(lvdm.build, "read_state_dict", refuse)
    with caplog.at_level(logging.INFO):
        rc, err = _cli(capsys, "--config", T2V, "--ckpt_path", path, "--dry_run", *run_args)
    assert rc == 0, err
    assert f"checkpoint {path}: {len(t2v_state)} tensors fit the model" in caplog.text
    assert "plan: time to the first step" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem", ["other_config", "truncated", "pickled_code"])
def test_dry_run_checkpoint_errors_are_the_real_runs(
    problem: str, t2v_state: dict, tmp_path, run_args, capsys
) -> None:
    path = tmp_path / "t2v.ckpt"
    marker = tmp_path / "pwned"
    config = T2V
    if problem == "other_config":
        torch.save({"state_dict": t2v_state}, path)
        config = I2V
    elif problem == "truncated":
        torch.save({"state_dict": t2v_state}, tmp_path / "whole.ckpt")
        _first_half(tmp_path / "whole.ckpt", path)
    else:
        torch.save({"state_dict": t2v_state, "x": RunsShell(marker)}, path)
    rc_dry, err_dry = _cli(capsys, "--config", config, "--ckpt_path", path, "--dry_run", *run_args)
    rc_real, err_real = _cli(capsys, "--config", config, "--ckpt_path", path, *run_args)
    assert rc_dry == rc_real == 2
    assert _error_line(err_dry) == _error_line(err_real)
    expected = {
        "other_config": "fits --config configs/tiny_t2v.yaml",
        "truncated": "damaged or incomplete",
        "pickled_code": "pickled code",
    }[problem]
    assert expected in err_dry and "plan:" not in err_dry
    assert not (tmp_path / "out").exists() and not marker.exists()


def test_full_size_dry_run_with_the_other_models_checkpoint(
    manifest: dict, tmp_path, run_args, capsys
) -> None:
    """The image-to-video checkpoint's keys and shapes (a sparse 10 GB file) with the text-to-video
    config on fake CUDA: refused before the plan, in seconds, naming the config it fits."""
    path = sparse_checkpoint(tmp_path / "model.ckpt", manifest["videocrafter1_i2v_512"])
    rc, err = _cli(
        capsys, "--config", T2V_FULL, "--ckpt_path", path, "--dry_run", "--device", "cuda", "--dtype", "fp16",
        "-p", REPO / "prompts" / "demo.txt", "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert rc == 2
    assert "unexpected keys by group: embedder.model" in err
    assert "fits --config configs/inference_i2v_512_v1.0.yaml" in err and "plan:" not in err
