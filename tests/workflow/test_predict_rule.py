"""The predict rule as a user asks for it: dry runs of one sample and of every sample, config errors up front, and
the experiment's recommended model screening a sample of the finished tiny study."""

import copy

import pandas as pd
import pytest

from cytodml.data.synthetic import render_dump

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


def test_recommended_model_screens_a_sample(tiny_run, tiny_config):
    """No loss and classifier named: predict applies those of the experiment's tables/recommended.csv (the finished
    tiny study's, so predict is the only job), says so, and runs again when a new aggregation may recommend another."""
    source = tiny_config["datasets"]["tiny-ifc"]["source"]
    render_dump(tiny_run / "dumps" / "few", {**source, "classes": {"bead": 6, "cryptosporidium": 4}}, seed=31)
    config = copy.deepcopy(tiny_config)
    config["predict"] = {
        "model": {"experiment": "tiny"},
        "alarm": {"min_targets": 2},
        "samples": {"few": {"path": "dumps/few"}},
    }
    target = "results/predict/few/summary.md"
    assert planned_jobs(snakemake(tiny_run, "-n", target, config=config)) == {"predict": 1}
    snakemake(tiny_run, "--cores", "2", target, config=config)
    tables = tiny_run / "results" / "tiny" / "tables"
    best = pd.read_csv(tables / "recommended.csv").iloc[0]
    ranked = pd.read_csv(tables / "validation.csv")
    assert (best["loss"], best["classifier"]) == tuple(ranked.loc[ranked["rank"] == 1, ["loss", "classifier"]].iloc[0])
    assert best["validation_mean"] == ranked["validation_mean"].max()
    assert f"| {best['loss']} " in next(
        line
        for line in (tables / "metrics.md").read_text().splitlines()
        if f"{best['classifier']} (recommended)" in line
    )
    summary = (tiny_run / target).read_text()
    network = f"results/tiny/models/{best['loss']}/t0.pt"
    assert f"Classifier `{best['classifier']}`: network {network}" in summary
    assert "This is the recommended model of experiment tiny" in summary
    forced = planned_jobs(snakemake(tiny_run, "-n", target, "--forcerun", "aggregate", config=config))
    assert forced == {"aggregate": 1, "predict": 1}


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
        (lambda p: p["model"].pop("classifier"), "predict.model.classifier: missing"),
    ],
)
def test_bad_predict_config_fails_before_any_job(workdir, predict_config, edit, named):
    edit(predict_config["predict"])
    result = snakemake(workdir, "-n", "predict_all", config=predict_config, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
