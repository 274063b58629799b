"""DAG scale: the dry-run time and job count of a large study against one ten times smaller, in one run.

The studies are the default study's shape (config.yaml) on synthetic data sets, one experiment per data set, every
experiment with all its losses:

- large: 5 data sets x 8 losses x 10 trials (400 trainings);
- small: 5 data sets x 8 losses x 1 trial (40 trainings), ten times fewer of every per-trial job;
- base: 1 data set x 1 loss x 1 trial, nearly nothing but Snakemake's fixed cost (start, config checks).

Each is dry-run (``snakemake -n``) in a fresh scratch directory; the time is ``time.perf_counter`` around the whole
subprocess, best of ``--repeats``. Printed: jobs and seconds of each; the ratio of times large / small against the
ratio of jobs; and the cost per added job from base to small and from small to large, equal where growth is linear
(a DAG step that grows faster than the job count makes the second larger).

    python benchmarks/dag_scale.py [--repeats 3]

Results are recorded in benchmarks/README.md ("DAG scale").
"""

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"base": (1, 1, 1), "small": (5, 8, 1), "large": (5, 8, 10)}  # data sets, losses, trials
LOSSES = {
    "softmax": {"type": "softmax"},
    "contrastive": {"type": "contrastive"},
    "triplet-semihard": {"type": "triplet", "mining": "semihard"},
    "triplet-hard": {"type": "triplet", "mining": "hard"},
    "triplet-all": {"type": "triplet", "mining": "all"},
    "npair": {"type": "npair"},
    "constellation-k3": {"type": "constellation", "k": 3},
    "constellation-all": {"type": "constellation", "k": "all"},
}


def study(datasets: int, losses: int, trials: int) -> dict:
    """The default study's data set and experiment, copied to ``datasets`` data sets, with the first ``losses`` of
    ``LOSSES`` and ``trials`` trials."""
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    (dataset,) = default["datasets"].values()
    (experiment,) = default["experiments"].values()
    names = list(LOSSES)[:losses]
    config = {"seed": default["seed"], "datasets": {}, "experiments": {}, "run": []}
    config["losses"] = {name: LOSSES[name] for name in names}
    for index in range(datasets):
        name = f"synthetic-{index}"
        config["datasets"][name] = copy.deepcopy(dataset)
        config["experiments"][f"study-{index}"] = {
            **copy.deepcopy(experiment),
            "dataset": name,
            "trials": trials,
            "losses": names,
        }
        config["run"].append(f"study-{index}")
    return config


def dry_run(config: dict, repeats: int) -> tuple[int, float]:
    """Planned job count and best wall time of ``snakemake -n`` on ``config``, each repeat in a fresh directory."""
    times, jobs = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="dag-scale-") as scratch:
            path = Path(scratch) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--snakefile"]
            command += [str(ROOT / "Snakefile"), "--directory", scratch, "--configfile", str(path)]
            command += ["--replace-workflow-config"]
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"snakemake -n failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        jobs = int(re.search(r"^total\s+(\d+)\s*$", result.stdout + result.stderr, flags=re.M).group(1))
    return jobs, min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="dry runs per study; the best time counts")
    args = parser.parse_args(argv)
    results = {name: dry_run(study(*size), args.repeats) for name, size in SIZES.items()}
    for name, (datasets, losses, trials) in SIZES.items():
        jobs, seconds = results[name]
        shape = f"{datasets} data sets x {losses} losses x {trials:>2} trials"
        print(f"{name:>5}: {shape}: {jobs:>5} jobs, dry run {seconds:6.2f} s (best of {args.repeats})")
    (base_jobs, base_s), (small_jobs, small_s), (large_jobs, large_s) = results.values()
    print(f"ratio large / small: jobs {large_jobs / small_jobs:.2f}, time {large_s / small_s:.2f}")
    print(
        f"per added job: base -> small {1000 * (small_s - base_s) / (small_jobs - base_jobs):.1f} ms, "
        f"small -> large {1000 * (large_s - small_s) / (large_jobs - small_jobs):.1f} ms"
    )


if __name__ == "__main__":
    main()
