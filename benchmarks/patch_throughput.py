"""Patch throughput: cytodml's ingest + patch of the PBC subset against bare Pillow decoding of the same JPEGs.

Both sides run in this one interpreter after every import, with the same number of worker processes, each side
starting its process pool inside its timed region (a fork: the workers inherit the imports, so the pool start costs
milliseconds; its time is printed too). One untimed round warms the page cache and Pillow's plugins; then the sides
alternate, ``--repeats`` rounds, and the best time of each counts.

- ours: ``ingest`` (file listing, one header read per file) + ``make_patches`` (decode, content hash, centre crop,
  resize to ``--size``, write the memory-mapped ``.npy``), the complete patch stage;
- bare: ``np.asarray(Image.open(path))`` of every file, nothing else.

    python benchmarks/patch_throughput.py [--data ../shared/data/pbc-subset] [--workers 2] [--size 64]

The target is ours / bare <= 1.5; results are recorded in benchmarks/README.md.
"""

import argparse
import math
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cytodml.data.patching import TASKS_PER_WORKER, make_patches
from cytodml.data.sources import ingest

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["red", "green", "blue"]


def decode(paths: list[str]) -> int:
    """Bare decoding of a chunk of files; returns the pixel count so the work cannot be skipped."""
    return sum(np.asarray(Image.open(path)).size for path in paths)


def bare(paths: list[str], workers: int) -> None:
    size = math.ceil(len(paths) / (workers * TASKS_PER_WORKER))  # the chunking make_patches uses
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with multiprocessing.get_context().Pool(workers) as pool:
        assert sum(pool.imap(decode, chunks)) > 0


def ours(source: dict, patch: dict, out_dir: Path, workers: int) -> None:
    raw = ingest(source, CHANNELS)
    table, _ = make_patches(raw, patch, out_dir / "patches.npy", workers=workers)
    assert len(table) == len(raw)


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the pool's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run, *args) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of one run."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def pool_start(workers: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context().Pool(workers) as pool:
        pool.map(abs, range(workers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pbc-subset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    source = {"kind": "folder", "path": str(args.data)}
    patch = {"mode": "resize", "size": args.size}
    paths = sorted(str(path) for path in args.data.glob("*/*.jpg"))
    print(f"{len(paths)} JPEGs in {args.data}; {args.workers} worker processes; patch {patch}")
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, pool start {pool_start(args.workers):.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        ours(source, patch, Path(tmp), args.workers)
        bare(paths, args.workers)
        runs = {"ours": [], "bare": []}
        for _ in range(args.repeats):
            runs["ours"].append(timed(ours, source, patch, Path(tmp), args.workers))
            runs["bare"].append(timed(bare, paths, args.workers))
    best = {side: (min(w for w, _ in values), min(c for _, c in values)) for side, values in runs.items()}
    for side, values in runs.items():
        rounds = ", ".join(f"{wall:.3f}" for wall, _ in values)
        wall, cpu = best[side]
        print(f"{side}: best {wall:.3f} s wall ({len(paths) / wall:.0f} images/s), {cpu:.3f} s CPU; rounds {rounds}")
    print(f"ratio ours / bare = {best['ours'][0] / best['bare'][0]:.2f} wall (target <= 1.5)")
    print(f"ratio ours / bare = {best['ours'][1] / best['bare'][1]:.2f} CPU (all processes; robust to a busy machine)")


if __name__ == "__main__":
    main()
