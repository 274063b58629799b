# Where the config meets the code: validation, wildcard constraints, and every input function.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cytodml.config import (
    check_config,
    experiment_settings,
    resolve_source,
    synthetic_dump,
)
from cytodml.data.sources import list_classes
from cytodml.errors import InputError

validate(config, schema="../schemas/config.schema.yaml")
try:
    check_config(config, list_classes=list_classes)
except InputError as error:
    raise WorkflowError(f"config: {error}") from None

DATASETS = config["datasets"]
LOSSES = config["losses"]
EXPERIMENTS = {
    name: experiment_settings(spec) for name, spec in config["experiments"].items()
}


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    experiment=_alternatives(EXPERIMENTS),
    loss=_alternatives(LOSSES),
    trial=r"\d+",


# ---- config lookups shared by rules ----------------------------------------------------------------------------


def dataset_of(wildcards):
    return EXPERIMENTS[wildcards.experiment]["dataset"]


def source_of(wildcards):
    return resolve_source(wildcards.dataset, DATASETS[wildcards.dataset])


def experiment_of(wildcards):
    return EXPERIMENTS[wildcards.experiment]


# The experiment keys each stage reads: a rule's params hold only these, so editing one key (adding a loss, changing
# a classifier) reruns the stages that read it and nothing upstream.
SPLIT_KEYS = ("protocol", "fractions", "shots", "official_split", "drop_small_classes", "open_set")
TRAIN_KEYS = ("network", "train", "channels")
EVALUATE_KEYS = ("protocol", "classifiers", "threshold", "targets", "open_set", "spiked", "episodes")


def experiment_keys(keys):
    """An input function giving the experiment's settings restricted to ``keys``."""

    def settings(wildcards):
        experiment = EXPERIMENTS[wildcards.experiment]
        return {key: experiment[key] for key in keys if key in experiment}

    return settings


def trials(experiment):
    return range(EXPERIMENTS[experiment]["trials"])


# ---- input functions -----------------------------------------------------------------------------------------------


def raw_dump(wildcards):
    """The raw dump ingest reads: rendered by synthesize, or the user's files (Snakemake names a missing one)."""
    source = DATASETS[wildcards.dataset]["source"]
    if source["kind"] == "synthetic":
        return synthetic_dump(wildcards.dataset)
    return source["path"]


def patches_of(wildcards):
    dataset = dataset_of(wildcards)
    return {
        "npy": f"results/{dataset}/patches.npy",
        "table": f"results/{dataset}/patches.parquet",
    }


def data_outputs(experiment):
    dataset = EXPERIMENTS[experiment]["dataset"]
    return [f"results/{dataset}/qc/montage.png", f"results/{dataset}/qc/counts.csv"] + [
        f"results/{experiment}/augmented/t{trial}.parquet"
        for trial in trials(experiment)
    ]


def final_outputs():
    outputs = []
    for experiment in config["run"]:
        outputs += data_outputs(experiment) + [f"results/{experiment}/tables"]
    return outputs


def trial_evaluations(wildcards):
    """Every evaluation of one experiment, by kind of result: a list over losses x trials."""
    experiment = EXPERIMENTS[wildcards.experiment]
    kinds = ("metrics", "confusion", "spiked", "open_set", "episodes")
    return {
        kind: [
            f"results/{wildcards.experiment}/eval/{loss}/t{trial}/{kind}.csv"
            for loss in experiment["losses"]
            for trial in trials(wildcards.experiment)
        ]
        for kind in kinds
    }


# ---- predict: a trained model applied to new samples (rules/predict.smk) -------------------------------------------

PREDICT = config.get("predict", {})
PREDICT_SAMPLES = PREDICT.get("samples", {})

if PREDICT:  # cytodml.predict loads torch: only where the config asks for predictions
    from cytodml.predict import check_predict_config, dump_source

    try:
        check_predict_config(config, list_classes=list_classes)
    except InputError as error:
        raise WorkflowError(f"config: {error}") from None


def predict_experiment():
    return EXPERIMENTS[PREDICT["model"]["experiment"]]


def predict_dataset():
    return DATASETS[predict_experiment()["dataset"]]


def predict_inputs(wildcards):
    """The trained model, its evaluated classifiers and metrics (the threshold), the sample's dump and the gallery."""
    model = PREDICT["model"]
    trial = f"{model['experiment']}/eval/{model['loss']}/t{model.get('trial', 0)}"
    inputs = {
        "model": f"results/{model['experiment']}/models/{model['loss']}/t{model.get('trial', 0)}.pt",
        "classifiers": f"results/{trial}/classifiers.joblib",
        "metrics": f"results/{trial}/metrics.csv",
        "dump": PREDICT_SAMPLES[wildcards.sample]["path"],
    }
    if PREDICT.get("gallery"):
        inputs["gallery"] = PREDICT["gallery"]["path"]
    return inputs


def predict_source(wildcards):
    """The sample's source block, its layout completed from the model's data set."""
    return dump_source(predict_dataset()["source"], PREDICT_SAMPLES[wildcards.sample])


def predict_gallery(wildcards):
    gallery = PREDICT.get("gallery")
    return dump_source(predict_dataset()["source"], gallery) if gallery else None


def predict_targets(wildcards):
    return PREDICT.get("targets", predict_experiment()["targets"])
