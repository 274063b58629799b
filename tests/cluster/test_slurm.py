"""The workflow on a real SLURM: a single-node cluster on localhost (localslurm.py), the study in study.yaml run by
``snakemake --executor slurm --workflow-profile profiles/slurm``, every job checked in ``sacct`` against what the
profile and the rules request, and a training cancelled with ``scancel`` that resumes from its checkpoint.

Needs root (and apt-get where SLURM is not installed); skips, saying why, elsewhere. Wall time: benchmarks/README.md.
"""

import re
import subprocess
import threading
import time

import pandas as pd
import pytest
import torch
import yaml

from cytodml.learn.embed import CPU_FOR_GPU_JOBS

from ..workflow.conftest import ROOT, snakemake
from .dryrun import planned_jobs
from .localslurm import LocalSlurm, Unavailable, install

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900, method="signal")]

STUDY = yaml.safe_load((ROOT / "tests" / "cluster" / "study.yaml").read_text())
PROFILE_DIR = ROOT / "profiles" / "slurm"
PROFILE = yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())  # YTE's `?if` keys read as plain strings here
PARTITION, ACCOUNT = "debug", "dml"
STUDY_TABLES = "results/slurm/tables"
PREEMPTED_MODEL = "results/preempted/models/softmax/t0.pt"
PREEMPTED_CHECKPOINT = "results/preempted/checkpoints/softmax/t0/checkpoint.pt"
PREEMPTED_JOB = "rule_train_wildcards_preempted_softmax_0"  # the comment Snakemake gives its SLURM job
SACCT_FIELDS = ["JobID", "State", "ExitCode", "Partition", "Account", "AllocCPUS", "ReqMem", "AllocTRES", "Timelimit"]


@pytest.fixture(scope="module")
def slurm():
    """The cluster, up for this module; the profile finds partition and account where users set them."""
    try:
        install()
    except Unavailable as reason:
        pytest.skip(f"SLURM cannot be installed here: {reason}")
    cluster = LocalSlurm(partition=PARTITION, account=ACCOUNT)
    try:
        cluster.start()
    except Unavailable as reason:
        cluster.stop()
        pytest.skip(f"SLURM cannot be started here: {reason}")
    except BaseException:
        cluster.stop()
        raise
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SBATCH_PARTITION", PARTITION)
            env.setenv("SBATCH_ACCOUNT", ACCOUNT)
            # the node's GPU is a gres SLURM allocates, not a device PyTorch can use: jobs that ask for it may run on
            # the CPU, saying so in their logs (test_device.py proves they stop without this)
            env.setenv(CPU_FOR_GPU_JOBS, "1")
            yield cluster
    finally:
        cluster.stop()


def on_slurm(workdir, *args, config):
    """Snakemake through the SLURM profile, polling job states every few seconds instead of every 40+ s."""
    return snakemake(
        workdir,
        "--executor",
        "slurm",
        "--workflow-profile",
        str(PROFILE_DIR),
        "--slurm-init-seconds-before-status-checks",
        "1",
        *args,
        config=config,
        timeout=840,
    )


def run_id(result) -> str:
    """The SLURM job name Snakemake gave every job of one run."""
    return re.search(r"SLURM run ID: (\S+)", result.stdout + result.stderr).group(1)


def planned(workdir, *args, config) -> dict[str, dict]:
    """Rule -> jobs, threads, mem_mb, runtime of the jobs a dry run with the profile would submit (every job of a rule
    asks for the same here)."""
    # --cores: a dry run caps threads at its own core count, a SLURM job's threads are not capped
    result = on_slurm(workdir, "-n", "--cores", "64", *args, config=config)
    rules = {}
    for job in planned_jobs(result.stdout):
        if not job.local:
            spec = {
                "threads": job.threads,
                "mem_mb": int(job.resources["mem_mb"]),
                "runtime": int(job.resources["runtime"]),
            }
            rules.setdefault(job.rule, {"jobs": 0, **spec})["jobs"] += 1
    return rules


def sacct(name: str) -> pd.DataFrame:
    """One row per SLURM job named ``name`` (a run ID), with the rule that Snakemake put in its comment."""
    fields = SACCT_FIELDS + ["Comment"]
    result = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-a", "-S", "2000-01-01", "--name", name, "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    table = pd.DataFrame([line.split("|") for line in result.stdout.splitlines()], columns=fields)
    table["rule"] = table["Comment"].str.extract(r"^rule_([A-Za-z0-9]+)", expand=False)
    return table


def slurm_minutes(limit: str) -> int:
    """``[D-]HH:MM:SS`` as minutes."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + minutes


def gpu_rules() -> set[str]:
    return {rule for rule, resources in PROFILE["set-resources"].items() if resources.get("gpu")}


class CancelAfterFirstCheckpoint(threading.Thread):
    """Waits for ``checkpoint`` to appear, then cancels the SLURM job whose comment (Snakemake's ``rule_<rule>_
    wildcards_<values>``) is ``comment`` with scancel (SIGTERM, as a preemption does), and records the job and the
    epoch the checkpoint held at that moment."""

    def __init__(self, checkpoint, comment, deadline_s):
        super().__init__(daemon=True)
        self.checkpoint, self.comment, self.deadline = checkpoint, comment, time.monotonic() + deadline_s
        self.cancelled_job, self.epoch = None, None

    def run(self):
        while time.monotonic() < self.deadline and not self.checkpoint.exists():
            time.sleep(0.1)
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True).stdout.splitlines()
        jobs = [job for job, comment in (line.split("|", 1) for line in queue) if comment == self.comment]
        if not self.checkpoint.exists() or len(jobs) != 1:
            return
        subprocess.run(["scancel", jobs[0]], check=True)
        self.cancelled_job = jobs[0]
        self.epoch = torch.load(self.checkpoint, map_location="cpu", weights_only=True)["epoch"]


@pytest.fixture(scope="module")
def study(slurm, tmp_path_factory):
    """The study run once on SLURM, with the preempted experiment's model as a second target whose training is
    cancelled after its first checkpoint: work directory, planned jobs, run ID and the cancellation."""
    workdir = tmp_path_factory.mktemp("slurm-study")
    # through the tables: the figure jobs would add a SLURM round trip each and are tested on the local executor
    targets = [STUDY_TABLES, PREEMPTED_MODEL]
    plan = planned(workdir, *targets, config=STUDY)
    canceller = CancelAfterFirstCheckpoint(workdir / PREEMPTED_CHECKPOINT, PREEMPTED_JOB, deadline_s=600)
    canceller.start()
    try:
        result = on_slurm(workdir, *targets, config=STUDY)
    except (AssertionError, subprocess.TimeoutExpired) as failure:
        output = getattr(failure, "stderr", None) or b""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        raise AssertionError(f"{failure}\n{output[-6000:]}\n{slurm.log_tails()}") from None
    canceller.join(timeout=5)
    return {"workdir": workdir, "plan": plan, "run": run_id(result), "canceller": canceller}


def test_every_job_ran_as_a_slurm_job_with_its_resources(study):
    jobs = sacct(study["run"])
    assert set(jobs.loc[jobs["State"] != "COMPLETED", "JobID"]) <= {study["canceller"].cancelled_job}
    jobs = jobs.query("State == 'COMPLETED'")
    plan = study["plan"]
    assert jobs.groupby("rule").size().to_dict() == {rule: spec["jobs"] for rule, spec in plan.items()}
    assert set(jobs["ExitCode"]) == {"0:0"}
    assert set(jobs["Partition"]) == {PARTITION} and set(jobs["Account"]) == {ACCOUNT}
    for _, job in jobs.iterrows():
        spec = plan[job["rule"]]
        assert int(job["AllocCPUS"]) == spec["threads"], job.to_dict()
        assert job["ReqMem"] == f"{spec['mem_mb']}M", job.to_dict()
        assert slurm_minutes(job["Timelimit"]) == spec["runtime"], job.to_dict()
        assert ("gres/gpu=1" in job["AllocTRES"]) == (job["rule"] in gpu_rules()), job.to_dict()
    # the profile's own numbers reached SLURM, not only the rules' defaults
    for rule, threads in PROFILE["set-threads"].items():
        if rule in plan:
            assert set(jobs.loc[jobs["rule"] == rule, "AllocCPUS"].astype(int)) == {threads}


def test_study_outputs(study):
    workdir = study["workdir"]
    experiment = STUDY["experiments"]["slurm"]
    classes = STUDY["datasets"][experiment["dataset"]]["source"]["classes"]
    patches = pd.read_parquet(workdir / f"results/{experiment['dataset']}/patches.parquet")
    assert patches["class_name"].value_counts().to_dict() == classes
    augmented = pd.read_parquet(workdir / "results/slurm/augmented/t0.parquet")
    assert len(augmented) == experiment["augment"]["count"]
    metrics = pd.concat(
        pd.read_csv(workdir / f"results/slurm/eval/{loss}/t0/metrics.csv") for loss in experiment["losses"]
    )
    assert set(experiment["classifiers"]) <= set(metrics["classifier"])
    assert (workdir / "results/slurm/tables/metrics.csv").stat().st_size > 0
    result = snakemake(workdir, "-n", STUDY_TABLES, PREEMPTED_MODEL, config=STUDY)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_cancelled_training_resumed_from_its_checkpoint(study):
    canceller, workdir = study["canceller"], study["workdir"]
    assert canceller.cancelled_job, "the training ended before its first checkpoint could be cancelled"
    jobs = sacct(study["run"])
    trainings = jobs[jobs["Comment"] == PREEMPTED_JOB]
    assert dict(zip(trainings["JobID"], trainings["State"].str.split().str[0])) == {
        canceller.cancelled_job: "CANCELLED",
        **{job: "COMPLETED" for job in trainings["JobID"] if job != canceller.cancelled_job},
    }
    assert len(trainings) == 2, trainings
    log = (workdir / "logs/preempted/train/softmax/t0.log").read_text()
    resumed = re.search(r"resumed from \S+ after epoch (\d+)", log)
    assert resumed, log
    assert int(resumed.group(1)) >= canceller.epoch >= 1
    epochs = STUDY["experiments"]["preempted"]["train"]["epochs"]
    history = pd.read_csv(workdir / "results/preempted/models/softmax/t0.history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
