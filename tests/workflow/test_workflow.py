"""The workflow as a user runs it: lint, dry runs, config errors before any job, and a small study end to end."""

import copy
import re

import pandas as pd
import pytest

from .conftest import ROOT, snakemake

pytestmark = pytest.mark.workflow


def planned_jobs(result) -> dict[str, int]:
    """Rule -> job count from a dry run's job table."""
    table = result.stdout.split("Job stats:")[-1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M) if rule != "total"}


def test_lint_is_clean(tmp_path):
    result = snakemake(ROOT, "--lint", check=False)
    assert "good condition" in result.stdout + result.stderr, result.stdout + result.stderr


def test_snakefmt_is_clean():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_study_dry_run(workdir, default_config):
    jobs = planned_jobs(snakemake(workdir, "-n", config=default_config))
    experiment = default_config["experiments"]["bioparticles"]
    trials, losses = experiment["trials"], len(experiment["losses"])
    assert jobs["synthesize"] == jobs["ingest"] == jobs["patch"] == 1
    assert jobs["split"] == jobs["augment"] == trials
    assert jobs.get("train") == jobs.get("embed") == jobs.get("evaluate") == trials * losses


@pytest.mark.parametrize("preset", sorted(path.name for path in (ROOT / "presets").glob("*.yaml")))
def test_presets_dry_run(workdir, preset):
    import yaml

    config = yaml.safe_load((ROOT / "presets" / preset).read_text())
    result = snakemake(workdir, "-n", config=config, check=False)
    output = result.stdout + result.stderr
    # a source-study preset names data a user brings: its dry run may only lack those files
    assert result.returncode == 0 or "Missing input files for rule ingest" in output, output[-3000:]


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c["experiments"]["bioparticles"].update(trails=3), "trails"),
        (lambda c: c["experiments"]["bioparticles"].update(dataset="nowhere"), "experiments.bioparticles.dataset"),
        (lambda c: c["experiments"]["bioparticles"].update(targets=["amoeba"]), "experiments.bioparticles.targets[0]"),
        (lambda c: c["datasets"]["synthetic-ifc"]["patch"].update(size="big"), "size"),
    ],
)
def test_bad_config_fails_before_any_job(workdir, default_config, edit, named):
    config = copy.deepcopy(default_config)
    edit(config)
    result = snakemake(workdir, "--cores", "1", config=config, check=False)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_tiny_study_end_to_end(tiny_run, tiny_config):
    experiment = tiny_config["experiments"]["tiny"]
    patches = pd.read_parquet(tiny_run / "results/tiny-ifc/patches.parquet")
    assert patches["class_name"].value_counts().to_dict() == tiny_config["datasets"]["tiny-ifc"]["source"]["classes"]
    for trial in range(experiment["trials"]):
        split = pd.read_parquet(tiny_run / f"results/tiny/splits/t{trial}.parquet")
        assert set(split.loc[split["class_name"] == "pollen", "subset"]) == {"unknown"}
        augmented = pd.read_parquet(tiny_run / f"results/tiny/augmented/t{trial}.parquet")
        assert len(augmented) == experiment["augment"]["count"]
        assert set(augmented["source_index"]) <= set(split.loc[split["subset"] == "train", "index"])


def test_rerun_does_nothing(tiny_run, tiny_config):
    result = snakemake(tiny_run, "-n", config=tiny_config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_patch_change_reruns_only_what_depends_on_it(tiny_run, tiny_config):
    config = copy.deepcopy(tiny_config)
    config["datasets"]["tiny-ifc"]["patch"]["size"] = 40
    jobs = planned_jobs(snakemake(tiny_run, "-n", config=config))
    assert "synthesize" not in jobs and "ingest" not in jobs
    assert jobs["patch"] == 1 and jobs["split"] == 2 and jobs["augment"] == 2
