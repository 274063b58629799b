"""Build the GPU check's wheel folder (``benchmarks/gpu/wheels``, git-ignored) here, and print the device call to make.

The GPU machine runs Python 3.12 with CUDA torch and no package registry (benchmarks/README.md, "GPU check kit"). The
folder holds what its image lacks: the requirement closure of cytodml and snakemake at the versions installed in this
interpreter (those the suite passes with), stopping at the packages the image holds (``image-packages.txt``); a
cp312 manylinux x86_64 wheel of each from PyPI, or, for a release published without one, a pure-Python wheel built
here; a wheel of the project built from this tree; and the digest of the sources that wheel was built from.

    python benchmarks/gpu/build_wheels.py
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from check import DIGEST_NAME, ROOT, WHEELS, source_digest  # check.py beside this file, the script run on the GPU
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

#: the packages the check installs, each with what it needs
ROOTS = ["cytodml", "snakemake"]
#: the GPU machine's interpreter, for the requirements' environment markers
TARGET = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix",
}  # fmt: skip
#: pip matches platform tags exactly: every manylinux the image's glibc (Ubuntu 24.04: 2.39) runs
PLATFORMS = ["manylinux1_x86_64", "manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(17, 40))]
#: what travels with a call at most: the working tree and the carried folders together
TREE_LIMIT_MIB = 64
CHECK_TIMEOUT_S = 480  # the check's own budget (420 s) and its start and end


def image_packages() -> set[str]:
    lines = (ROOT / "benchmarks" / "gpu" / "image-packages.txt").read_text().splitlines()
    return {canonicalize_name(line) for line in lines if line and not line.startswith("#")}


def closure(roots: list[str], stop: set[str]) -> dict[str, str]:
    """name -> version of every distribution ``roots`` need on the target, as installed here, not descending into
    those in ``stop``; a requirement's extras bring the requirements marked with them."""
    found, todo = {}, [(root, frozenset()) for root in roots]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in stop or (key in found and not extras):
            continue
        try:
            distribution = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name} is needed on the GPU machine but not installed here: install it, then rerun"
            ) from None
        found[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({**TARGET, "extra": extra}) for extra in {"", *extras}):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def pip(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True, check=False)


def fetch(name: str, version: str, folder: Path) -> None:
    """A cp312 manylinux x86_64 (or pure-Python) wheel of ``name==version`` from PyPI into ``folder``; where the
    release has none, a wheel built here from its source, which must come out pure Python."""
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    spec = f"{name}=={version}"
    fetched = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                  "cp", *platforms, "--dest", str(folder), spec)  # fmt: skip
    if fetched.returncode == 0:
        return
    with tempfile.TemporaryDirectory() as built:
        result = pip("wheel", "--no-deps", "--wheel-dir", built, spec)
        wheels = list(Path(built).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise SystemExit(f"{spec}: no wheel for the GPU machine\n{fetched.stderr[-2000:]}\n{result.stderr[-2000:]}")
        tags = parse_wheel_filename(wheels[0].name)[3]
        if any(tag.abi != "none" or tag.platform != "any" for tag in tags):
            raise SystemExit(f"{spec}: PyPI has no cp312 wheel, and the one built here is not pure Python")
        shutil.move(wheels[0], folder / wheels[0].name)


def build_project(folder: Path) -> None:
    """A wheel of cytodml built from this tree, in a copy (an in-tree build would leave build/ for the device call to
    carry), and the digest of its sources beside it."""
    with tempfile.TemporaryDirectory() as copy:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, Path(copy) / name)
        shutil.copytree(ROOT / "src", Path(copy) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        result = pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(folder), copy)
        if result.returncode != 0:
            raise SystemExit(f"building the cytodml wheel failed:\n{result.stderr[-3000:]}")
    (folder / DIGEST_NAME).write_text(source_digest() + "\n")


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the carried folders: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout  # fmt: skip
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return sum(path.stat().st_size for path in paths if path.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=WHEELS)
    args = parser.parse_args()
    needed = closure(ROOTS, image_packages())
    shutil.rmtree(args.wheels, ignore_errors=True)  # one version of each: two stop the install
    args.wheels.mkdir(parents=True)
    for name, version in sorted(needed.items()):
        if name != "cytodml":
            print(f"{name}=={version}", flush=True)
            fetch(name, version, args.wheels)
    build_project(args.wheels)
    wheels = sorted(args.wheels.glob("*.whl"))
    folder = sum(path.stat().st_size for path in wheels)
    tree = tree_bytes()
    print(f"\n{len(wheels)} wheels, {folder / 2**20:.1f} MiB in {args.wheels.relative_to(ROOT)}; with the working "
          f"tree ({tree / 2**20:.1f} MiB) {(folder + tree) / 2**20:.1f} MiB of the {TREE_LIMIT_MIB} MiB a call "
          f"takes")  # fmt: skip
    if folder + tree > TREE_LIMIT_MIB * 2**20:
        raise SystemExit("too large for one device call")
    call = {
        "command": "PYTHONUNBUFFERED=1 python3 benchmarks/gpu/check.py --device cuda",
        "carry": [str(args.wheels.relative_to(ROOT))],
        "timeout_s": CHECK_TIMEOUT_S,
    }
    print(f"the device call (tool `run`), which writes check.csv and check.log to $OUT:\n{json.dumps(call, indent=1)}")


if __name__ == "__main__":
    main()
