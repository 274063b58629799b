"""Edited inputs: what noticing an edit inside a raw dump costs a dry run, and each job on SLURM.

Builds a folder dump of ``--files`` tiny files (default 100 000: 10 class folders of one byte-identical 1 x 1 PNG
copied over and over) in a temporary directory, and the default study with one more data set, ``bench``, that reads
it. Two copies of the workflow are compared: the repository as it is ("with"), and a copy whose ingest rule lacks
the dump's signature parameter ("without"), each in its own working directory holding a finished ingest of the dump
(recorded with ``--touch``, which records what a run records, the parameters among them). Then, in turn, for
``--repeats`` rounds, each timed with ``time.perf_counter`` around the subprocess, best of the rounds:

- dry run: ``snakemake -n results/bench/raw.parquet`` ("Nothing to be done": Snakemake compares the recorded
  signature with the dump's);
- SLURM job: the command the executor plugin runs inside each job (``--target-jobs``, ``--allowed-rules``,
  ``--force``, ``--nolock`` ...), with ``--touch`` standing in for the script, for the ingest job and for the patch
  job after it: the job re-evaluates its part of the workflow and records its parameters;
- the signature alone, in this process (``cytodml.data.signature.dump_signature``).

The dump is in the page cache (just written): the figures are those of a warm cache. Printed: each time with and
without, and the difference.

    python benchmarks/edited_inputs.py [--files 100000] [--repeats 3]

Results are recorded in benchmarks/README.md ("Edited inputs").
"""

import argparse
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from cytodml.data.signature import dump_signature

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
WORKFLOW = ["Snakefile", "rules", "scripts", "schemas", "src", "envs", "report"]
SIGNATURE_PARAM = "        signature=raw_dump_signature,\n"
PATCH_OUTPUTS = ["patches.npy", "patches.parquet", "qc/counts.csv", "qc/montage.png"]


def build_dump(root: Path, files: int) -> dict:
    """``files`` copies of a 1 x 1 PNG in ``CLASSES`` class folders below ``root``; the ``bench`` source block."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = buffer.getvalue()
    for index in range(files):
        folder = root / f"class-{index % CLASSES}"
        if index < CLASSES:
            folder.mkdir(parents=True)
        (folder / f"{index:06d}.png").write_bytes(png)
    return {"kind": "folder", "path": str(root)}


def without_signature(scratch: Path) -> Path:
    """A copy of the workflow whose ingest rule lacks the signature parameter (time stamps kept, so that Snakemake
    sees no newer script); returns its Snakefile."""
    copy = scratch / "without-signature"
    copy.mkdir()
    for name in WORKFLOW:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    rules = copy / "rules" / "data.smk"
    text = rules.read_text()
    if text.count(SIGNATURE_PARAM) != 1:
        raise SystemExit(f"rules/data.smk: the ingest rule's line '{SIGNATURE_PARAM.strip()}' not found once")
    rules.write_text(text.replace(SIGNATURE_PARAM, ""))
    shutil.copystat(ROOT / "rules" / "data.smk", rules)
    return copy / "Snakefile"


def snakemake(snakefile: Path, workdir: Path, *args) -> tuple[float, str]:
    """Seconds and output of ``snakemake`` on ``snakefile`` in ``workdir`` with its config."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", *args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def slurm_job(rule: str) -> list[str]:
    """The arguments the SLURM executor gives Snakemake inside the job of ``rule`` for ``bench``, the script replaced
    by ``--touch`` (snakemake_interface_executor_plugins: RealExecutor.get_job_args and spawn_jobs.general_args)."""
    return [
        *("--target-jobs", f"{rule}:dataset=bench", "--allowed-rules", rule, "--cores", "1", "--force"),
        *("--target-files-omit-workdir-adjustment", "--max-inventory-time", "0", "--nocolor", "--no-hooks"),
        *("--nolock", "--ignore-incomplete", "--touch"),
    ]


def finished_ingest(snakefile: Path, workdir: Path, config: dict) -> None:
    """``workdir`` with a finished ingest of ``bench`` and its patch outputs, as a run would leave them."""
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ["raw.parquet", *PATCH_OUTPUTS]:
        (workdir / "results" / "bench" / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "results" / "bench" / name).touch()
    snakemake(snakefile, workdir, "--touch", "--cores", "1", "results/bench/patches.npy", "--forcerun", "ingest")
    _, output = snakemake(snakefile, workdir, "-n", "results/bench/patches.npy")
    if "Nothing to be done" not in output:
        raise SystemExit(f"{workdir}: the finished ingest is not up to date:\n{output[-3000:]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="files in the dump")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best time of each measure counts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edited-inputs-") as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        source = build_dump(scratch / "dump", args.files)
        print(f"dump: {args.files} files in {CLASSES} class folders, written in {time.perf_counter() - start:.1f} s")
        config = yaml.safe_load((ROOT / "config.yaml").read_text())
        config["datasets"]["bench"] = {
            "source": source,
            "channels": ["brightfield"],
            "patch": {"mode": "resize", "size": 8},
        }
        snakefiles = {"with": ROOT / "Snakefile", "without": without_signature(scratch)}
        for name, snakefile in snakefiles.items():
            finished_ingest(snakefile, scratch / name, config)
        measures = {
            "dry run": ["-n", "results/bench/raw.parquet"],
            "SLURM job: ingest": slurm_job("ingest"),
            "SLURM job: patch": slurm_job("patch"),
        }
        times = {(measure, name): [] for measure in measures for name in snakefiles}
        alone = []
        for _ in range(args.repeats):
            for measure, command in measures.items():
                for name, snakefile in snakefiles.items():
                    times[measure, name].append(snakemake(snakefile, scratch / name, *command)[0])
            start = time.perf_counter()
            signature = dump_signature(source)
            alone.append(time.perf_counter() - start)
        if int(re.match(r"files: (\d+)", signature).group(1)) != args.files:
            raise SystemExit(f"the signature counts other files than the dump's {args.files}: {signature}")
    print(f"{'measure':<20} {'with':>8} {'without':>8} {'added':>8}   (best of {args.repeats}, seconds)")
    for measure in measures:
        best = {name: min(times[measure, name]) for name in snakefiles}
        print(f"{measure:<20} {best['with']:8.2f} {best['without']:8.2f} {best['with'] - best['without']:8.2f}")
    print(f"{'signature alone':<20} {min(alone):8.2f}")


if __name__ == "__main__":
    main()
