"""The CUDA runtime seam: the emulation is as strict as PyTorch, and the command line's CUDA
calls go through it (binding ``--device cuda`` to its GPU crashed before the model loaded)."""

from __future__ import annotations

import pytest
import torch

import lvdm.build
import videocrafter_main
from infra.cuda_runtime import GPUS, CudaRuntime, EmulatedCuda, bind_device, cuda, emulated, gpu_spec
from tests.conftest import REPO

T2V = str(REPO / "configs" / "tiny_t2v.yaml")


@pytest.mark.parametrize("argument", [torch.device("cuda"), "cuda", torch.device("cpu")])
def test_set_device_refuses_what_pytorch_refuses_with_its_message(argument) -> None:
    with pytest.raises(ValueError) as real:
        torch.cuda.set_device(argument)  # refused before CUDA is touched: no GPU needed
    with emulated("rtx4090") as gpu, pytest.raises(ValueError) as fake:
        gpu.set_device(argument)
    assert str(fake.value) == str(real.value)


def test_an_index_past_the_gpus_is_an_invalid_ordinal_and_the_calls_are_recorded() -> None:
    with emulated("a100-80gb", count=2) as gpu:
        gpu.set_device(1)
        assert gpu.mem_get_info(torch.device("cuda")) == (80 * 2**30 - 512 * 2**20, 80 * 2**30)
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            gpu.set_device(2)
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            gpu.synchronize("cuda:2")
        gpu.allocate(3 * 2**30)
        assert gpu.max_memory_allocated() == 3 * 2**30
        assert gpu.mem_get_info(1)[0] == 77 * 2**30 - 512 * 2**20
    assert [(c.name, c.device) for c in gpu.calls[:2]] == [("set_device", 1), ("mem_get_info", 1)]
    assert type(cuda()) is CudaRuntime  # restored after the block


def test_the_named_gpus() -> None:
    facts = {k: (round(s.total_memory / 2**30), s.sm) for k, s in GPUS.items()}
    assert facts == {
        "rtx4090": (24, "sm_89"),
        "a100-40gb": (40, "sm_80"),
        "a100-80gb": (80, "sm_80"),
        "h100": (80, "sm_90"),
        "l4": (24, "sm_89"),
        "t4": (16, "sm_75"),
        "v100": (32, "sm_70"),
    }
    assert [k for k, s in GPUS.items() if not s.fused_bf16_attention] == ["t4", "v100"]
    assert gpu_spec("RTX4090") is GPUS["rtx4090"] and gpu_spec("a100_40gb") is GPUS["a100-40gb"]
    with pytest.raises(KeyError, match="one of rtx4090"):
        gpu_spec("gtx1080")


def test_bind_device_gives_cuda_its_index_and_autotunes_cudnn() -> None:
    with emulated("l4") as gpu:
        assert bind_device("cuda") == torch.device("cuda", 0)
        assert bind_device("cpu") == torch.device("cpu")
    assert gpu.names() == ["set_device", "set_cudnn_benchmark"] and gpu.cudnn_benchmark
    assert isinstance(gpu, EmulatedCuda)


def test_the_command_line_on_cuda_binds_its_gpu_before_loading_the_model(tmp_path, monkeypatch) -> None:
    """``--device cuda`` (and no --device on a GPU machine) stopped with PyTorch's ValueError on
    ``set_device(torch.device("cuda"))``; the model load comes after it."""

    class Loaded(Exception):
        pass

    def load(*_args, **kwargs):
        raise Loaded(kwargs["device"])

    monkeypatch.setattr(lvdm.build, "load_model", load)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    args = ["--config", T2V, "--random_init", "-p", str(prompts), "--output_dir", str(tmp_path / "o")]
    for device in ([], ["--device", "cuda"]):
        with emulated("rtx4090") as gpu, pytest.raises(Loaded, match="^cuda"):
            videocrafter_main.main([*args, *device, "--no_progress"])
        assert ("set_device", 0) in [(c.name, c.device) for c in gpu.calls]
