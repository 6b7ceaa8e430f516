"""Install this project on an air-gapped GPU node: the wheels it lacks, downloaded here, and the
command that installs them there without touching its PyTorch.

    # on the node:   python -m pip freeze > node-freeze.txt      (copy the file here)
    python scripts/prepare_device.py --freeze node-freeze.txt --python 3.12
    python scripts/prepare_device.py --python 3.11 --platform manylinux_2_28_aarch64 --dry_run

A GPU node often has a PyTorch built for its CUDA driver and no access to a package index.
This script takes the project's pinned packages (``constraints.txt`` less PyTorch and its
CUDA libraries, which stay the node's own, and the test and lint tools), follows their
dependencies as installed here, drops what the node has already (the node's ``pip freeze``, given
with ``--freeze``), and downloads the rest as binary wheels for the node's Python and platform at
the versions installed here, into ``--dest``. It prints (and writes to ``DEST/COMMAND.txt``) the
one command to run on the node: ``pip install --no-index --no-deps`` of exactly those wheels, so
that nothing is fetched and nothing the node has (its torch above all) is replaced.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.cli_help import DefaultsHelpFormatter  # noqa: E402

logger = logging.getLogger("prepare_device")

# The node's own PyTorch build and the CUDA libraries it came with stay as they are; test, lint and
# manual tools do not run there.
NODE_OWN = {
    "torch",
    "torchvision",
    "torchaudio",
    "triton",
    "pytest",
    "pytest-xdist",
    "ruff",
    "mkdocs",
    "mkdocs-material",
}
NODE_OWN_PREFIXES = ("nvidia-",)  # nvidia-cublas-cu12, nvidia-cudnn-cu12, ... (torch's CUDA wheels)
DEFAULT_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_' and '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_node_own(name: str) -> bool:
    return name in NODE_OWN or name.startswith(NODE_OWN_PREFIXES)


def requirement_names(requirements: Path) -> list[str]:
    """Names in a requirements file (pins and comments dropped)."""
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(canonical(re.split(r"[<>=!~\[; @]", line, maxsplit=1)[0]))
    return names


def freeze_names(text: str) -> set[str]:
    """The packages of a ``pip freeze`` output (``name==version``, ``name @ URL``; editable and
    option lines skipped)."""
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[<>=!~\[; @]", line, maxsplit=1)[0]))
    return names


def _marker_holds(marker: str, python: str) -> bool:
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate(
            {"python_version": python, "sys_platform": "linux", "platform_system": "Linux"}
        )
    except Exception:  # noqa: BLE001 -- an unreadable marker: carry the package rather than miss it
        return True


def missing_closure(names: list[str], present: set[str], python: str = "3.12") -> dict[str, str]:
    """``names`` and what they require (extras and markers that do not hold on the node left out)
    that the node lacks, as installed here: canonical name → installed version. A present
    package's own requirements are the node's business (its version there may differ)."""
    found: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found or is_node_own(name) or name in present:
            continue
        try:
            found[name] = metadata.version(name)
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            logger.warning(
                "%s is required but not installed here: install the packages of constraints.txt first", name
            )
            continue
        for req in requires:
            spec, _, marker = req.partition(";")
            if "extra" in marker:
                continue
            if marker.strip() and not _marker_holds(marker, python):
                continue
            todo.append(canonical(re.split(r"[<>=!~\[ (]", spec.strip(), maxsplit=1)[0]))
    return found


def download_command(packages: dict[str, str], dest: Path, python: str, platforms: list[str]) -> list[str]:
    """``pip download`` of the binary wheels of ``packages`` (name → version) for ``python`` on
    ``platforms``, without their dependencies (already resolved), into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for platform in platforms:
        cmd += ["--platform", platform]
    return cmd + [f"{name}=={version}" for name, version in sorted(packages.items())]


def install_command(wheels: list[Path], python: str = "python") -> str:
    """The node's command: these wheels alone, from the folder, nothing fetched or replaced."""
    names = " ".join(shlex.quote(f"{w.parent.name}/{w.name}") for w in wheels)
    return f"{python} -m pip install --no-index --no-deps {names}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument(
        "--freeze",
        type=Path,
        default=None,
        help="the node's `pip freeze` output: what it has is not downloaded (without it: everything "
        "but PyTorch and its CUDA libraries)",
    )
    p.add_argument(
        "--python",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the node's Python version, e.g. 3.12 (default: this Python's)",
    )
    p.add_argument(
        "--platform",
        action="append",
        default=None,
        help="the node's wheel platform tag, repeatable (default: x86-64 manylinux, "
        + ", ".join(DEFAULT_PLATFORMS)
        + ")",
    )
    p.add_argument("--dest", type=Path, default=REPO / ".whl", help="where the wheels go (git-ignored)")
    p.add_argument("--dry_run", action="store_true", help="say what the node lacks; download nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not re.fullmatch(r"3\.\d+", args.python):
        p.error(f"--python {args.python}: give the node's Python as MAJOR.MINOR, e.g. 3.12")
    present: set[str] = set()
    if args.freeze is not None:
        try:
            present = freeze_names(args.freeze.read_text())
        except OSError as err:
            p.error(
                f"--freeze {args.freeze}: cannot read it ({err.strerror}); on the node: pip freeze > FILE"
            )
    missing = missing_closure(requirement_names(REPO / "constraints.txt"), present, args.python)
    logger.info(
        "the node lacks %d package(s): %s", len(missing), ", ".join(f"{k}=={v}" for k, v in missing.items())
    )
    if args.dry_run:
        for name, version in sorted(missing.items()):
            print(f"{name}=={version}")
        return 0
    if not missing:
        print("the node has every package this project needs")
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each: two would stop the whole install
        old.unlink()
    cmd = download_command(missing, args.dest, args.python, args.platform or list(DEFAULT_PLATFORMS))
    logger.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        logger.info("  %-60s %6.1f MiB", wheel.name, wheel.stat().st_size / 2**20)
    logger.info(
        "%d wheels, %.1f MiB, in %s: copy the folder to the node", len(wheels), total / 2**20, args.dest
    )
    command = install_command(wheels)
    (args.dest / "COMMAND.txt").write_text(command + "\n")
    print(f"on the node, next to the folder {args.dest.name}/:\n{command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
