"""Download the VideoCrafter checkpoints from the Hugging Face Hub and verify them.

    python scripts/download_checkpoints.py                 # VideoCrafter2 t2v + VideoCrafter1 i2v (~10 GB)
    python scripts/download_checkpoints.py --which t2v     # VideoCrafter2 text-to-video only
    python scripts/download_checkpoints.py --which dynamicrafter_512   # one of the models below
    python scripts/download_checkpoints.py --which all     # every model below
    python scripts/download_checkpoints.py --verify_only   # check what is already there

Files land where the configs expect them:

    videocrafter_models/base_512_v2/model.ckpt       VideoCrafter2 text-to-video
    videocrafter_models/Image2Video_512/model.ckpt   VideoCrafter1 image-to-video
    videocrafter_models/base_512_v1/model.ckpt       VideoCrafter1 text-to-video 320x512
    videocrafter_models/base_1024_v1/model.ckpt      VideoCrafter1 text-to-video 576x1024
    videocrafter_models/dynamicrafter_256_v1/model.ckpt    DynamiCrafter 256x256
    videocrafter_models/dynamicrafter_512_v1/model.ckpt    DynamiCrafter 320x512
    videocrafter_models/dynamicrafter_1024_v1/model.ckpt   DynamiCrafter 576x1024
    videocrafter_models/wan2.1_t2v_1.3b/    Wan2.1 text-to-video 1.3B, a diffusers-format folder
    videocrafter_models/wan2.1_t2v_14b/     Wan2.1 text-to-video 14B, a diffusers-format folder

A diffusers-format folder (--ckpt_path of configs/wan2.1_t2v_*.yaml) is every file of the Hub
repository's model_index.json, transformer/, vae/, text_encoder/, tokenizer/ and scheduler/, each
fetched and verified as a checkpoint is.

Downloads resume: huggingface_hub keeps the partial file in <folder>/.cache/huggingface/download/
and continues it on the next run. A file is accepted only when its size and sha256 match the
Hub's metadata; an existing complete file is verified and skipped.

What the Hub says about each file (size, sha256) is recorded next to it, in
``model.ckpt.download.json``: if the file is later found damaged (a truncated copy), the
checkpoint loader's error gives the size it should have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from tqdm import tqdm

# Run from anywhere without installing the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.cli_help import DefaultsHelpFormatter  # noqa: E402

logger = logging.getLogger("download_checkpoints")


@dataclass(frozen=True)
class Checkpoint:
    """One downloadable checkpoint."""

    name: str
    repo_id: str
    filename: str
    folder: str  # under --root
    # A diffusers-format folder: these sub-folders of the repository (and ``filename``, its
    # model_index.json), listed on the Hub when downloading. Empty: the one file ``filename``.
    parts: tuple[str, ...] = ()

    @property
    def page_url(self) -> str:
        if self.parts:
            return f"https://huggingface.co/{self.repo_id}/tree/main"
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.filename}"


DIFFUSERS_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


CHECKPOINTS = {
    "t2v": Checkpoint(
        "VideoCrafter2 text-to-video", "VideoCrafter/VideoCrafter2", "model.ckpt", "base_512_v2"
    ),
    "i2v": Checkpoint(
        "VideoCrafter1 image-to-video", "VideoCrafter/Image2Video-512", "model.ckpt", "Image2Video_512"
    ),
    "t2v_v1_512": Checkpoint(
        "VideoCrafter1 text-to-video 512", "VideoCrafter/Text2Video-512", "model.ckpt", "base_512_v1"
    ),
    "t2v_v1_1024": Checkpoint(
        "VideoCrafter1 text-to-video 1024", "VideoCrafter/Text2Video-1024", "model.ckpt", "base_1024_v1"
    ),
    "dynamicrafter_256": Checkpoint(
        "DynamiCrafter 256 image-to-video", "Doubiiu/DynamiCrafter", "model.ckpt", "dynamicrafter_256_v1"
    ),
    "dynamicrafter_512": Checkpoint(
        "DynamiCrafter 512 image-to-video", "Doubiiu/DynamiCrafter_512", "model.ckpt", "dynamicrafter_512_v1"
    ),
    "dynamicrafter_1024": Checkpoint(
        "DynamiCrafter 1024 image-to-video",
        "Doubiiu/DynamiCrafter_1024",
        "model.ckpt",
        "dynamicrafter_1024_v1",
    ),
    "wan2.1_t2v_1.3b": Checkpoint(
        "Wan2.1 text-to-video 1.3B (diffusers)",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "model_index.json",
        "wan2.1_t2v_1.3b",
        DIFFUSERS_PARTS,
    ),
    "wan2.1_t2v_14b": Checkpoint(
        "Wan2.1 text-to-video 14B (diffusers)",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "model_index.json",
        "wan2.1_t2v_14b",
        DIFFUSERS_PARTS,
    ),
}
# Groups of --which: the default keeps what the script always fetched (the two VideoCrafter models).
GROUPS = {
    "videocrafter": ("t2v", "i2v"),
    "dynamicrafter": ("dynamicrafter_256", "dynamicrafter_512", "dynamicrafter_1024"),
    "wan": ("wan2.1_t2v_1.3b", "wan2.1_t2v_14b"),
    "all": tuple(CHECKPOINTS),
}
CHOICES = (*CHECKPOINTS, *GROUPS)
CHUNK = 8 * 1024 * 1024
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class VerificationError(RuntimeError):
    """A local file that does not match the Hub's metadata."""


class NetworkError(RuntimeError):
    """The Hub could not be reached."""


@dataclass(frozen=True)
class RemoteFile:
    """What the Hub says about a file: size in bytes and sha256 (``None`` when unknown)."""

    size: int | None
    sha256: str | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Download the VideoCrafter checkpoints from the Hugging Face Hub into the folders the configs "
            "expect, resuming partial downloads and verifying size and sha256 against the Hub."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--which",
        choices=CHOICES,
        default="videocrafter",
        help=(
            "t2v = VideoCrafter2 text-to-video, i2v = VideoCrafter1 image-to-video, t2v_v1_512/t2v_v1_1024 = "
            "VideoCrafter1 text-to-video, dynamicrafter_256/512/1024 = DynamiCrafter image-to-video, "
            "wan2.1_t2v_1.3b/14b = Wan2.1 text-to-video (diffusers folders); videocrafter = t2v + i2v, "
            "dynamicrafter = the three DynamiCrafter models, wan = both Wan models, all = every one"
        ),
    )
    parser.add_argument(
        "--root", type=Path, default=Path("videocrafter_models"), help="folder holding the models"
    )
    parser.add_argument(
        "--revision", default=None, help="Hub revision (branch, tag or commit; default: main)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--force", action="store_true", help="download again even if a verified file is present"
    )
    group.add_argument(
        "--verify_only",
        "--verify-only",  # the hyphenated spelling, accepted as an alias
        dest="verify_only",
        action="store_true",
        help="download nothing; check the files that are there (exit status 1 if any is missing or wrong)",
    )
    return parser.parse_args(argv)


def selected(which: str) -> list[Checkpoint]:
    """The checkpoints for ``--which``."""
    return [CHECKPOINTS[name] for name in GROUPS.get(which, (which,))]


def plan(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    """``(repo_id, filename, destination)`` for every checkpoint selected by ``args`` (a
    diffusers folder by its model_index.json; :func:`folder_files` lists the rest)."""
    return [(c.repo_id, c.filename, Path(args.root) / c.folder / c.filename) for c in selected(args.which)]


def folder_files(checkpoint: Checkpoint, revision: str | None) -> list[str]:
    """The files of a diffusers folder on the Hub: its model_index.json and every file of its parts.

    Raises:
        NetworkError: the Hub cannot be reached.
        RuntimeError: any other Hub error.
    """
    from huggingface_hub import HfApi

    try:
        names = HfApi().list_repo_files(checkpoint.repo_id, revision=revision)
    except (HfHubHTTPError, OSError, ConnectionError, TimeoutError) as err:
        raise _hub_error(err, checkpoint.repo_id, checkpoint.filename) from err
    except Exception as err:  # httpx2 transport errors are not OSErrors
        if _is_network_error(err):
            raise _hub_error(err, checkpoint.repo_id, checkpoint.filename) from err
        raise
    keep = [n for n in names if n.split("/", 1)[0] in checkpoint.parts and "/" in n]
    return [checkpoint.filename, *sorted(keep)]


def files_to_fetch(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    """:func:`plan` with each diffusers folder's files listed (asks the Hub for those)."""
    out = []
    for c in selected(args.which):
        names = folder_files(c, args.revision) if c.parts else [c.filename]
        out += [(c.repo_id, name, Path(args.root) / c.folder / name) for name in names]
    return out


def manual_instructions(root: Path = Path("videocrafter_models"), which: str = "all") -> str:
    """Where to get the files of ``--which`` by hand and where to put them."""
    lines = ["Download them by hand from the Hub and place them like this:"]
    for c in selected(which):
        where = root / c.folder / ("" if c.parts else c.filename)
        what = f" (model_index.json and {', '.join(c.parts)}/)" if c.parts else ""
        lines.append(f"  {c.name}: {c.page_url}{what}\n    -> {where}")
    return "\n".join(lines)


def _is_network_error(err: BaseException) -> bool:
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    try:
        import httpx2  # the HTTP client huggingface_hub 2.x uses
    except ImportError:  # pragma: no cover - other huggingface_hub versions
        return False
    return isinstance(err, httpx2.TransportError)


def _hub_error(err: BaseException, repo_id: str, filename: str) -> RuntimeError:
    """Turn a huggingface_hub exception into an error with a message that says what to do."""
    if _is_network_error(err):
        return NetworkError(
            f"cannot reach the Hugging Face Hub for {repo_id}/{filename} (no network?): {err}"
        )
    if isinstance(err, (GatedRepoError, RepositoryNotFoundError)):
        return RuntimeError(
            f"{repo_id} is not accessible ({type(err).__name__}); check the repository name, or log in with "
            "`hf auth login` if it needs a token"
        )
    return RuntimeError(f"the Hub answered with an error for {repo_id}/{filename}: {err}")


def remote_file(repo_id: str, filename: str, revision: str | None = None) -> RemoteFile:
    """Size and sha256 of a file on the Hub (a HEAD request, no download).

    For LFS files (checkpoints) the Hub's etag is the file's sha256; for other files it is a git
    hash and no sha256 is returned.

    Raises:
        NetworkError: the Hub cannot be reached.
        RuntimeError: any other Hub error.
    """
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except (HfHubHTTPError, OSError, ConnectionError, TimeoutError) as err:
        raise _hub_error(err, repo_id, filename) from err
    except Exception as err:  # httpx2 transport errors are not OSErrors
        if _is_network_error(err):
            raise _hub_error(err, repo_id, filename) from err
        raise
    etag = (meta.etag or "").lower()
    return RemoteFile(size=meta.size, sha256=etag if SHA256_RE.fullmatch(etag) else None)


def sha256_file(path: Path, progress: bool = True) -> str:
    """Hex sha256 of a file, read in chunks (with a progress bar for big files)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fp,
        tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress) as bar,
    ):
        while chunk := fp.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# Read by lvdm.checkpoint (SIDECAR_SUFFIX there): keep the two in step.
SIDECAR_SUFFIX = ".download.json"


def sidecar_path(path: Path) -> Path:
    """Where the Hub's size and sha256 of ``path`` are recorded."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def record_remote_file(
    path: Path, repo_id: str, filename: str, revision: str | None, expected: RemoteFile
) -> None:
    """Record the Hub's size and sha256 of ``path`` next to it (nothing when the size is unknown)."""
    if expected.size is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "repo_id": repo_id,
        "filename": filename,
        "revision": revision or "main",
        "size": expected.size,
        "sha256": expected.sha256,
    }
    sidecar_path(path).write_text(json.dumps(record, indent=2) + "\n")


def verify_file(path: Path, expected: RemoteFile, progress: bool = True) -> None:
    """Check a local file against the Hub's size and sha256.

    Raises:
        VerificationError: missing file, or a size / sha256 mismatch; the message says to delete
            the file and run the script again.
    """
    fix = f"Delete {path} and run `python scripts/download_checkpoints.py` again (or pass --force)."
    if not path.is_file():
        raise VerificationError(f"{path} does not exist")
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise VerificationError(
            f"{path} has {size:,} bytes but the Hub's file has {expected.size:,} "
            f"({'incomplete download' if size < expected.size else 'not the same file'}). {fix}"
        )
    if expected.sha256 is None:
        logger.warning("%s: the Hub gives no sha256 for this file; only its size was checked", path)
        return
    actual = sha256_file(path, progress)
    if actual != expected.sha256:
        raise VerificationError(
            f"{path} is corrupt or a different file: sha256 {actual} but the Hub's file has {expected.sha256}. {fix}"
        )


def download(
    repo_id: str, filename: str, destination: Path, revision: str | None = None, force: bool = False
) -> Path:
    """Download (resuming a partial download) and place the file at ``destination``.

    The partial file lives in ``<destination folder>/.cache/huggingface/download/`` until it is complete.

    Raises:
        NetworkError: the Hub cannot be reached.
        RuntimeError: any other Hub error.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(
            hf_hub_download(
                repo_id, filename, revision=revision, local_dir=destination.parent, force_download=force
            )
        )
    except (HfHubHTTPError, OSError, ConnectionError, TimeoutError) as err:
        raise _hub_error(err, repo_id, filename) from err
    except Exception as err:
        if _is_network_error(err):
            raise _hub_error(err, repo_id, filename) from err
        raise
    if path.resolve() != destination.resolve():
        os.replace(path, destination)  # the file is complete: move it into place in one step
    return destination


def process(
    repo_id: str, filename: str, destination: Path, args: argparse.Namespace, progress: bool = True
) -> tuple[bool, str]:
    """Download and/or verify one checkpoint. Returns ``(ok, status message)``."""
    exists = destination.is_file()
    if args.verify_only and not exists:
        return False, f"missing: {destination}"
    # One quick HEAD request first: it fails fast when offline (the download itself retries for ~30 s).
    try:
        expected = remote_file(repo_id, filename, args.revision)
    except NetworkError as err:
        if exists and not args.verify_only and not args.force:
            logger.warning("%s", err)
            return True, f"present, NOT verified (Hub unreachable): {destination}"
        raise
    if not args.verify_only:  # --verify_only writes nothing
        record_remote_file(destination, repo_id, filename, args.revision, expected)
    if exists and not args.force:
        verify_file(destination, expected, progress)
        return True, f"verified: {destination}"
    logger.info("downloading %s/%s -> %s", repo_id, filename, destination)
    download(repo_id, filename, destination, args.revision, force=args.force)
    verify_file(destination, expected, progress)
    return True, f"downloaded and verified: {destination}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # huggingface_hub prints through its own handler; propagating too would print everything twice.
    logging.getLogger("huggingface_hub").propagate = False
    results = []
    offline = False
    try:
        files = files_to_fetch(args)
    except (NetworkError, RuntimeError) as err:
        print(f"FAILED: {err}")
        files, results, offline = [], [False], isinstance(err, NetworkError)
    for repo_id, filename, destination in files:
        try:
            ok, message = process(repo_id, filename, destination, args)
        except VerificationError as err:
            ok, message = False, f"FAILED verification: {err}"
        except NetworkError as err:
            ok, message, offline = False, f"FAILED: {err}", True
        except RuntimeError as err:
            ok, message = False, f"FAILED: {err}"
        results.append(ok)
        print(message)
    if offline:
        print(
            "\nNo connection to https://huggingface.co. " + manual_instructions(args.root, args.which),
            file=sys.stderr,
        )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
