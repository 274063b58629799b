"""The default study's model screening new samples through the predict rule: a blank raises no alarm, a sample with
targets does.

The model is trial 0 of one loss of the default study (`config.yaml`, unchanged but for the losses and trials it
runs; a trial's split, augmentation and training seeds do not depend on the others), evaluated with the default
study's classifiers and alarm rule. The samples are rendered with the default data set's settings and fresh seeds:
the blank holds the known background (beads and debris, 1 : 2 as in the study); the contaminated one holds as many
oocysts and cysts as background particles, which this model (about half the targets called at 0.98, 3 % of the
background on the evaluation's test set) must report where its calibrated rule asks for about 50 called targets in
a sample of 600 objects.
"""

import copy

import pandas as pd
import pytest

from cytodml.data.synthetic import render_dump

from .conftest import snakemake

pytestmark = pytest.mark.workflow

LOSS, CLASSIFIER = "triplet", "gmm"
BACKGROUND = {"bead": 300, "debris": 600}
CONTAMINATED = {"bead": 100, "debris": 200, "cryptosporidium": 150, "giardia": 150}
TARGETS = ["cryptosporidium", "giardia"]


@pytest.fixture(scope="module")
def screened(tmp_path_factory, default_config):
    workdir = tmp_path_factory.mktemp("default-model")
    config = copy.deepcopy(default_config)
    experiment = config["experiments"]["bioparticles"]
    experiment |= {"losses": [LOSS], "trials": 1}
    source = config["datasets"][experiment["dataset"]]["source"]
    for name, classes, seed in (("blank", BACKGROUND, 11), ("contaminated", CONTAMINATED, 12)):
        render_dump(workdir / "dumps" / name, {**source, "classes": classes}, seed=seed)
    config["predict"] = {
        "model": {"experiment": "bioparticles", "loss": LOSS, "trial": 0, "classifier": CLASSIFIER},
        "samples": {name: {"path": f"dumps/{name}"} for name in ("blank", "contaminated")},
    }
    snakemake(workdir, "--cores", "2", "predict_all", config=config)
    return workdir, experiment


def summary(workdir, sample: str) -> tuple[str, pd.DataFrame]:
    out = workdir / "results" / "predict" / sample
    return (out / "summary.md").read_text(), pd.read_parquet(out / "objects.parquet")


def test_blank_sample_raises_no_alarm(screened):
    workdir, experiment = screened
    assert "false_alarm_rate" in experiment["alarm"]  # the default study's rule, calibrated on validation
    text, objects = summary(workdir, "blank")
    assert text.splitlines()[2].startswith("no alarm:"), text
    assert len(objects) == sum(BACKGROUND.values())
    assert "a blank sample of 900 objects reaches with probability at most" in text


def test_sample_with_targets_raises_the_alarm(screened):
    workdir, _ = screened
    text, objects = summary(workdir, "contaminated")
    assert text.splitlines()[2].startswith("**ALARM**:"), text
    truth = objects["object_id"].str.split("/").str[0]
    assert truth[objects["is_target"]].isin(TARGETS).mean() > 0.8  # what is called a target mostly is one
