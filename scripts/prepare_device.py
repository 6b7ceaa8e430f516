"""Prepare a lent GPU machine's run of the speed report: the wheels it lacks, and the command.

    python scripts/prepare_device.py                      # wheels into .whl/, command printed
    python scripts/prepare_device.py --dry_run            # only say what is missing

The device machine has PyTorch and many packages but reaches no package registry. This script
takes the project's pinned packages (constraints.txt less torch/torchvision, which the
machine brings, and the test and lint tools), follows their dependencies as installed here, drops
those the machine already has (the package list of the device tool's KINDS.md, or ``--present``),
and downloads the rest (but imageio-ffmpeg, which only MP4 output needs and whose 65 MiB wheel
alone is over the limit) as wheels for the machine (CPython 3.12, x86-64 manylinux) at the versions
installed here, into ``.whl/`` (git-ignored). It checks their total against what may travel and
writes the one-line device command to ``.whl/COMMAND.txt``: install the wheels into /tmp/site,
then ``scripts/benchmark.py --report $OUT/report`` (JSON, markdown and log come back in $OUT).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import logging
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.cli_help import DefaultsHelpFormatter  # noqa: E402

logger = logging.getLogger("prepare_device")

DEFAULT_KINDS = Path("/work/.library/device/KINDS.md")
# The machine brings its own PyTorch build (CUDA); test and lint tools do not run there.
NOT_CARRIED = {"torch", "torchvision", "pytest", "pytest-xdist", "ruff"}
# Needed only to read or write MP4 (imported lazily in infra/video_io.py): the report writes no
# video, and its wheel (65 MiB, with an ffmpeg binary) alone is over what may travel.
NOT_FOR_THE_REPORT = {
    "imageio-ffmpeg": "MP4 reading/writing only; its wheel (65 MiB) is over the 64 MiB limit"
}
# The device tool carries at most 64 MiB of working tree per call, the checkout included.
CARRY_LIMIT_BYTES = 64 * 2**20
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
REPORT_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl && export PYTHONPATH=/tmp/site || exit; mkdir -p $OUT/report; set -o pipefail; "
    "PYTHONUNBUFFERED=1 python3 scripts/benchmark.py --report $OUT/report --preset {preset} --budget_s {budget} "
    "2>&1 | tee $OUT/report/log.txt"
)


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_' and '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: Path) -> list[str]:
    """Names in a requirements file (pins and comments dropped)."""
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonical(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    return names


def missing_closure(names: list[str], present: set[str]) -> dict[str, str]:
    """``names`` and what they require (extras and other platforms' markers left out) that is not
    in ``present``, as installed here: canonical name → installed version. A present package's own
    requirements are the machine's business (its version there may differ from ours)."""
    found: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found or name in NOT_CARRIED or name in present:
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
            if marker.strip() and not _marker_holds(marker):
                continue
            todo.append(canonical(re.split(r"[<>=!~\[ (]", spec.strip(), maxsplit=1)[0]))
    return found


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate(
            {"python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux"}
        )
    except Exception:  # noqa: BLE001 -- an unreadable marker: carry the package rather than miss it
        return True


def device_packages(kinds: Path) -> set[str]:
    """The package names under 'Python packages already there' in the device tool's KINDS.md."""
    text = kinds.read_text()
    section = text.split("Python packages already there", 1)[-1]
    match = re.search(r"Packages:\s*(.+?)\.\s*$", section, flags=re.S | re.M)
    if match is None:
        raise SystemExit(f"error: no 'Packages: ...' list found in {kinds}; pass --present FILE instead")
    return {canonical(n.strip()) for n in match.group(1).split(",") if n.strip()}


def download(packages: dict[str, str], dest: Path) -> None:
    """The wheels of ``packages`` (name → version) for CPython 3.12 on x86-64 Linux, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
    ]
    cmd += ["--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, version in sorted(packages.items())]
    logger.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def checkout_bytes() -> int:
    """Bytes of the files git tracks (what travels besides the wheels)."""
    listed = subprocess.run(["git", "ls-files", "-z"], capture_output=True, cwd=REPO, check=True).stdout
    return sum(
        (REPO / name).stat().st_size
        for name in listed.decode().split("\0")
        if name and (REPO / name).is_file()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter)
    p.add_argument("--kinds", type=Path, default=DEFAULT_KINDS, help="the device tool's KINDS.md")
    p.add_argument(
        "--present", type=Path, default=None, help="instead of --kinds: a file of package names, one a line"
    )
    p.add_argument("--dest", type=Path, default=REPO / ".whl", help="where the wheels go (git-ignored)")
    p.add_argument("--preset", default="full", help="the report's preset")
    p.add_argument(
        "--budget_s", type=int, default=420, help="the report's time budget (the device allows 600 s a call)"
    )
    p.add_argument("--dry_run", action="store_true", help="say what is missing; download nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.present is not None:
        present = {canonical(line.strip()) for line in args.present.read_text().splitlines() if line.strip()}
    elif args.kinds.is_file():
        present = device_packages(args.kinds)
    else:
        p.error(f"{args.kinds} not found: pass --kinds PATH (the device tool's KINDS.md) or --present FILE")
    missing = missing_closure(requirement_names(REPO / "constraints.txt"), present)
    for name, why in NOT_FOR_THE_REPORT.items():
        if missing.pop(name, None) is not None:
            logger.info("not carried: %s (%s)", name, why)
    logger.info(
        "the device lacks %d package(s): %s", len(missing), ", ".join(f"{k}=={v}" for k, v in missing.items())
    )
    command = REPORT_COMMAND.format(preset=args.preset, budget=args.budget_s)
    if args.dry_run:
        print(command)
        return 0
    for old in args.dest.glob("*.whl"):  # one version of each: two would stop the whole install
        old.unlink()
    download(missing, args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        logger.info("  %-60s %6.1f MiB", wheel.name, wheel.stat().st_size / 2**20)
    tree = checkout_bytes()
    logger.info("wheels: %d files, %.1f MiB; with the checkout's %.1f MiB: %.1f of the %d MiB that may travel",
                len(wheels), total / 2**20, tree / 2**20, (total + tree) / 2**20, CARRY_LIMIT_BYTES // 2**20)  # fmt: skip
    if total + tree > CARRY_LIMIT_BYTES:
        print(f"error: wheels and checkout take {(total + tree) / 2**20:.1f} MiB, over the "
              f"{CARRY_LIMIT_BYTES // 2**20} MiB that may travel")  # fmt: skip
        return 1
    (args.dest / "COMMAND.txt").write_text(command + "\n")
    print(f"carry: .whl    timeout_s: 600\ncommand:\n{command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
