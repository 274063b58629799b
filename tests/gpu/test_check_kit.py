"""The GPU check kit runs on the CPU (``--device cpu --quick``) within a minute and writes its rows, so that it does
not rot between the sessions that are lent a GPU."""

import csv
import subprocess
import sys

import pytest

pytestmark = pytest.mark.workflow  # its slice step is a Snakemake dry run

BUDGET_S = 60


def test_the_gpu_check_runs_on_the_cpu_within_a_minute_and_writes_every_step(repo_root, tmp_path):
    command = [sys.executable, str(repo_root / "benchmarks" / "gpu" / "check.py"), "--device", "cpu", "--quick",
               "--out", str(tmp_path), "--budget-s", str(BUDGET_S)]  # fmt: skip
    # past its budget the kit skips its remaining steps and fails; the margin covers only its start and end
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=BUDGET_S + 30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    with (tmp_path / "check.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    value = {(row["step"], row["case"], row["metric"]): row["value"] for row in rows}

    assert value[("environment", "python", "version")].startswith("Python 3.")
    assert value[("environment", "pip list", "status")] == "0"
    assert value[("environment", "torch", "cuda_available")] == "False"  # the kit hid any GPU from its children
    assert value[("install", "snakemake", "version")] and value[("install", "pytorch-metric-learning", "version")]
    outcomes = [row["value"] for row in rows if row["step"] == "tests" and row["metric"] == "outcome"]
    assert outcomes and set(outcomes) == {"skipped"}  # the CUDA tests are collected, and skip without CUDA
    assert float(value[("throughput", "small@32px", "ours_images_per_s")]) > 0
    assert float(value[("throughput", "small@32px", "plain_images_per_s")]) > 0
    assert float(value[("throughput", "small@32px", "peak_gflop_per_s")]) > 0
    assert int(value[("slice", "snakemake", "jobs")]) > 0  # the slice's config is valid and plans its jobs
    assert float(value[("check", "all", "seconds")]) <= BUDGET_S
    assert "profile of 5 steps (ours)" in (tmp_path / "check.log").read_text()
