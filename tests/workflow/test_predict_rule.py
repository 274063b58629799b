"""The predict rule as a user asks for it: dry runs of one sample and of every sample, and config errors up front."""

import copy

import pytest

from .conftest import snakemake
from .test_workflow import planned_jobs

pytestmark = pytest.mark.workflow


@pytest.fixture()
def predict_config(tiny_config, workdir):
    """The tiny study with two samples to screen, their dumps present (a dry run checks that inputs exist)."""
    for name in ("water-0001", "water-0002", "pollen-examples"):
        (workdir / "dumps" / name).mkdir(parents=True)
    config = copy.deepcopy(tiny_config)
    config["predict"] = {
        "model": {"experiment": "tiny", "loss": "triplet", "trial": 1, "classifier": "centroid"},
        "alarm": {"min_targets": 2},
        "samples": {
            "water-0001": {"kind": "folder", "path": "dumps/water-0001"},
            "water-0002": {"path": "dumps/water-0002"},
        },
    }
    return config


def test_one_sample_plans_its_model_first(workdir, predict_config):
    result = snakemake(workdir, "-n", "results/predict/water-0001/summary.md", config=predict_config)
    jobs = planned_jobs(result)
    assert jobs["predict"] == 1
    # one training of the named loss and trial, and what it needs: no other loss, no other trial, no tables
    assert jobs["train"] == jobs["embed"] == jobs["evaluate"] == jobs["split"] == jobs["augment"] == 1
    assert jobs["synthesize"] == jobs["ingest"] == jobs["patch"] == 1
    assert "aggregate" not in jobs
    assert "results/tiny/models/triplet/t1.pt" in result.stdout


def test_predict_all_plans_every_sample_and_rule_all_none(workdir, predict_config):
    jobs = planned_jobs(snakemake(workdir, "-n", "predict_all", config=predict_config))
    assert jobs["predict"] == 2 and jobs["train"] == 1
    assert "predict" not in planned_jobs(snakemake(workdir, "-n", config=predict_config))


def test_unknown_sample_is_no_target(workdir, predict_config):
    result = snakemake(workdir, "-n", "results/predict/water-9999/summary.md", config=predict_config, check=False)
    assert result.returncode != 0 and "MissingRuleException" in result.stderr + result.stdout


def gallery_on_gmm(predict):
    predict["gallery"] = {"path": "dumps/pollen-examples"}
    predict["model"]["classifier"] = "gmm"


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda p: p["model"].update(loss="arcface"), "predict.model.loss"),
        (lambda p: p.update(targets=["amoeba"]), "predict.targets[0]"),
        (gallery_on_gmm, "predict.gallery"),
        (lambda p: p["samples"]["water-0001"].update(colour="blue"), "colour"),
    ],
)
def test_bad_predict_config_fails_before_any_job(workdir, predict_config, edit, named):
    edit(predict_config["predict"])
    result = snakemake(workdir, "-n", "predict_all", config=predict_config, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
