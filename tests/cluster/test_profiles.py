"""The profiles as Snakemake reads them, no cluster needed: what each job of a dry run of the tiny study asks for."""

import pytest
import yaml

from ..workflow.conftest import ROOT, snakemake
from .dryrun import planned_jobs

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((ROOT / "tests" / "workflow" / "tiny.yaml").read_text())
TINY["run"].append("tiny-pretrained")  # its pretrain jobs too
GPU_RULES = {"pretrain", "train", "embed"}
SLURM_VARIABLES = ("SBATCH_PARTITION", "SBATCH_ACCOUNT", "CYTODML_GPU_PARTITION")


def submitted(workdir, profile):
    """The jobs of a dry run of the tiny study with ``profile`` that leave Snakemake's own process."""
    # --cores: a dry run caps threads at its own core count, a cluster job's threads are not capped
    result = snakemake(
        workdir, "-n", "--cores", "64", "--workflow-profile", str(ROOT / "profiles" / profile), config=TINY
    )
    jobs = [job for job in planned_jobs(result.stdout) if not job.local]
    assert {job.rule for job in jobs} > GPU_RULES
    return jobs


def test_slurm_profile_takes_partitions_and_account_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "cpu-nodes")
    monkeypatch.setenv("SBATCH_ACCOUNT", "mylab")
    monkeypatch.setenv("CYTODML_GPU_PARTITION", "gpu-nodes")
    for job in submitted(tmp_path, "slurm"):
        on_gpu = job.rule in GPU_RULES
        assert job.resources["slurm_partition"] == ("gpu-nodes" if on_gpu else "cpu-nodes"), job
        assert job.resources["slurm_account"] == "mylab", job
        assert job.resources.get("gpu") == ("1" if on_gpu else None), job
        assert int(job.resources["cpus_per_task"]) == job.threads, job


def test_slurm_profile_without_the_variables_leaves_partition_and_account_to_slurm(tmp_path, monkeypatch):
    for name in SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    jobs = submitted(tmp_path, "slurm")
    assert not any("slurm_partition" in job.resources or "slurm_account" in job.resources for job in jobs)
    threads = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["set-threads"]
    assert {job.rule: job.threads for job in jobs if job.rule in threads} == threads


def test_local_profile_gives_each_pretraining_training_and_embedding_the_gpu(tmp_path):
    for job in submitted(tmp_path, "local"):
        assert job.resources.get("gpu") == ("1" if job.rule in GPU_RULES else None), job
