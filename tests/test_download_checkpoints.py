"""scripts/download_checkpoints.py without network: arguments, plan, verification, offline errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dl() -> ModuleType:
    return load_script("scripts/download_checkpoints.py")


@pytest.fixture(autouse=True)
def no_network(dl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real Hub call is a test bug."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(dl, "get_hf_file_metadata", refuse)
    monkeypatch.setattr(dl, "hf_hub_download", refuse)


def _fake_file(path: Path, content: bytes = b"fake checkpoint bytes") -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return len(content), hashlib.sha256(content).hexdigest()


def test_defaults_and_choices(dl: ModuleType) -> None:
    args = dl.parse_args([])
    assert (args.which, args.root, args.force, args.verify_only) == (
        "videocrafter",
        Path("videocrafter_models"),
        False,
        False,
    )
    args = dl.parse_args(["--which", "i2v", "--root", "/m", "--verify-only"])
    assert (args.which, args.root, args.verify_only) == ("i2v", Path("/m"), True)
    with pytest.raises(SystemExit):
        dl.parse_args(["--which", "v2v"])
    with pytest.raises(SystemExit):
        dl.parse_args(["--force", "--verify-only"])


def test_plan(dl: ModuleType) -> None:
    t2v = ("VideoCrafter/VideoCrafter2", "model.ckpt", Path("videocrafter_models/base_512_v2/model.ckpt"))
    i2v = (
        "VideoCrafter/Image2Video-512",
        "model.ckpt",
        Path("videocrafter_models/Image2Video_512/model.ckpt"),
    )
    assert dl.plan(dl.parse_args(["--which", "t2v"])) == [t2v]
    assert dl.plan(dl.parse_args(["--which", "i2v"])) == [i2v]
    assert dl.plan(dl.parse_args([])) == [t2v, i2v]
    assert dl.plan(dl.parse_args(["--which", "dynamicrafter_512"])) == [
        (
            "Doubiiu/DynamiCrafter_512",
            "model.ckpt",
            Path("videocrafter_models/dynamicrafter_512_v1/model.ckpt"),
        )
    ]
    assert [p[0] for p in dl.plan(dl.parse_args(["--which", "dynamicrafter"]))] == [
        "Doubiiu/DynamiCrafter",
        "Doubiiu/DynamiCrafter_512",
        "Doubiiu/DynamiCrafter_1024",
    ]
    assert len(dl.plan(dl.parse_args(["--which", "all"]))) == len(dl.CHECKPOINTS) == 9
    assert dl.plan(dl.parse_args(["--which", "t2v", "--root", "/data/m"]))[0][2] == Path(
        "/data/m/base_512_v2/model.ckpt"
    )


def test_wan_folders_are_listed_on_the_hub(dl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A diffusers folder is its model_index.json and the files of its parts, each fetched and
    verified like a checkpoint, under the folder the Wan configs' --ckpt_path names."""
    import huggingface_hub

    listed = ["README.md", "model_index.json", "assets/x.png", "vae/config.json", "transformer/a.safetensors"]
    listed += [
        "text_encoder/model-00001-of-00005.safetensors",
        "tokenizer/tokenizer.json",
        "scheduler/x.json",
    ]

    class Api:
        def list_repo_files(self, repo_id: str, revision: str | None = None) -> list[str]:
            assert repo_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
            return listed

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    files = dl.files_to_fetch(dl.parse_args(["--which", "wan2.1_t2v_1.3b", "--root", "/m"]))
    assert [f[1] for f in files] == [
        "model_index.json",
        "scheduler/x.json",
        "text_encoder/model-00001-of-00005.safetensors",
        "tokenizer/tokenizer.json",
        "transformer/a.safetensors",
        "vae/config.json",
    ]
    assert files[4][2] == Path("/m/wan2.1_t2v_1.3b/transformer/a.safetensors")
    assert "Wan-AI/Wan2.1-T2V-14B-Diffusers" in dl.manual_instructions()
    assert [c.repo_id for c in dl.selected("wan")] == [
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    ]


def test_verify_file(dl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    size, sha = _fake_file(path)
    dl.verify_file(path, dl.RemoteFile(size, sha), progress=False)
    dl.verify_file(path, dl.RemoteFile(size, None), progress=False)  # no sha256 known: size only
    with pytest.raises(dl.VerificationError, match=r"incomplete download.*Delete .*model\.ckpt"):
        dl.verify_file(path, dl.RemoteFile(size + 10, sha), progress=False)
    with pytest.raises(dl.VerificationError, match=r"sha256.*Delete"):
        dl.verify_file(path, dl.RemoteFile(size, "0" * 64), progress=False)
    with pytest.raises(dl.VerificationError, match="does not exist"):
        dl.verify_file(tmp_path / "nope.ckpt", dl.RemoteFile(size, sha), progress=False)


def test_remote_file_reads_sha256_from_etag(dl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    sha = "ab" * 32
    calls = []

    def fake_metadata(url: str) -> SimpleNamespace:
        calls.append(url)
        return SimpleNamespace(size=123, etag=sha.upper())

    monkeypatch.setattr(dl, "get_hf_file_metadata", fake_metadata)
    assert dl.remote_file("VideoCrafter/VideoCrafter2", "model.ckpt") == dl.RemoteFile(123, sha)
    assert calls == ["https://huggingface.co/VideoCrafter/VideoCrafter2/resolve/main/model.ckpt"]
    # A non-LFS file's etag is a git hash, not a sha256.
    monkeypatch.setattr(dl, "get_hf_file_metadata", lambda url: SimpleNamespace(size=5, etag="a" * 40))
    assert dl.remote_file("r/x", "small.json") == dl.RemoteFile(5, None)


def test_remote_file_offline(dl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2

    for error in (httpx2.ConnectError("Name or service not known"), ConnectionError("down")):

        def offline(url: str, error: Exception = error) -> None:
            raise error

        monkeypatch.setattr(dl, "get_hf_file_metadata", offline)
        with pytest.raises(dl.NetworkError, match="no network"):
            dl.remote_file("VideoCrafter/VideoCrafter2", "model.ckpt")


def test_process_existing_file(dl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "base_512_v2" / "model.ckpt"
    size, sha = _fake_file(dest)
    args = dl.parse_args(["--root", str(tmp_path), "--which", "t2v"])
    monkeypatch.setattr(dl, "remote_file", lambda *a: dl.RemoteFile(size, sha))
    ok, message = dl.process("VideoCrafter/VideoCrafter2", "model.ckpt", dest, args, progress=False)
    assert ok and message.startswith("verified")  # skipped, nothing downloaded
    monkeypatch.setattr(dl, "remote_file", lambda *a: dl.RemoteFile(size * 2, sha))
    with pytest.raises(dl.VerificationError, match="Delete"):
        dl.process("VideoCrafter/VideoCrafter2", "model.ckpt", dest, args, progress=False)


def test_process_offline(dl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a: object) -> None:
        raise dl.NetworkError("cannot reach the Hugging Face Hub (no network?)")

    monkeypatch.setattr(dl, "remote_file", offline)
    dest = tmp_path / "base_512_v2" / "model.ckpt"
    verify = dl.parse_args(["--root", str(tmp_path), "--verify-only"])
    assert dl.process("r", "model.ckpt", dest, verify) == (False, f"missing: {dest}")
    _fake_file(dest)
    ok, message = dl.process("r", "model.ckpt", dest, dl.parse_args(["--root", str(tmp_path)]))
    assert ok and "NOT verified" in message
    with pytest.raises(dl.NetworkError):  # --verify-only cannot pass without the Hub
        dl.process("r", "model.ckpt", dest, verify)


def test_process_downloads_and_verifies(
    dl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"downloaded checkpoint"
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append((repo_id, filename, kwargs))
        target = Path(kwargs["local_dir"]) / filename
        target.write_bytes(content)
        return str(target)

    monkeypatch.setattr(dl, "hf_hub_download", fake_download)
    monkeypatch.setattr(
        dl, "remote_file", lambda *a: dl.RemoteFile(len(content), hashlib.sha256(content).hexdigest())
    )
    args = dl.parse_args(["--root", str(tmp_path), "--which", "i2v"])
    ((repo_id, filename, dest),) = dl.plan(args)
    ok, message = dl.process(repo_id, filename, dest, args, progress=False)
    assert ok and message.startswith("downloaded and verified") and dest.read_bytes() == content
    assert calls[0][:2] == ("VideoCrafter/Image2Video-512", "model.ckpt")
    assert Path(calls[0][2]["local_dir"]) == tmp_path / "Image2Video_512"
    # A corrupted download is reported, not accepted.
    monkeypatch.setattr(dl, "remote_file", lambda *a: dl.RemoteFile(len(content), "0" * 64))
    dest.unlink()
    with pytest.raises(dl.VerificationError):
        dl.process(repo_id, filename, dest, args, progress=False)


def test_main_offline_explains_manual_download(
    dl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(url: str) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(dl, "get_hf_file_metadata", offline)
    assert dl.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "https://huggingface.co/VideoCrafter/VideoCrafter2/blob/main/model.ckpt" in err
    assert "https://huggingface.co/VideoCrafter/Image2Video-512/blob/main/model.ckpt" in err
    assert str(tmp_path / "base_512_v2" / "model.ckpt") in err
    assert not any(tmp_path.iterdir())  # nothing created when offline


def test_hub_size_is_recorded_for_the_checkpoint_loader(
    dl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub's size and sha256 are written next to the file: a later truncated copy is reported
    by the checkpoint loader with the size it should have."""
    import json

    from lvdm.checkpoint import SIDECAR_SUFFIX, CheckpointError, read_state_dict

    assert dl.SIDECAR_SUFFIX == SIDECAR_SUFFIX
    content = b"PK\x03\x04" + b"\x00" * 60  # the start of a zip, then nothing: a cut-off download
    sha = hashlib.sha256(content).hexdigest()
    monkeypatch.setattr(dl, "remote_file", lambda *a: dl.RemoteFile(5_000_000_000, sha))
    args = dl.parse_args(["--root", str(tmp_path), "--which", "t2v"])
    ((repo_id, filename, dest),) = dl.plan(args)
    _fake_file(dest, content)
    with pytest.raises(dl.VerificationError, match="incomplete download"):
        dl.process(repo_id, filename, dest, args, progress=False)
    record = json.loads(dl.sidecar_path(dest).read_text())
    assert record == {
        "repo_id": "VideoCrafter/VideoCrafter2", "filename": "model.ckpt", "revision": "main",
        "size": 5_000_000_000, "sha256": sha,
    }  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        read_state_dict(dest)
    msg = str(err.value)
    assert "damaged or incomplete" in msg and "it has 64 bytes, the complete file has 5,000,000,000" in msg
    assert "--which t2v --force" in msg
    # --verify-only writes nothing.
    dl.sidecar_path(dest).unlink()
    with pytest.raises(dl.VerificationError):
        dl.process(
            repo_id, filename, dest, dl.parse_args(["--root", str(tmp_path), "--verify-only"]), progress=False
        )
    assert not dl.sidecar_path(dest).exists()
