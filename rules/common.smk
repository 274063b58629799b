# Where the config meets the code: validation, wildcard constraints, and every input function.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cytodml.config import (
    SPLIT_KEYS,
    channel_indices,
    dump_source,
    loss_train,
    predict_settings,
    pretrain_scope,
    pretrain_trials,
    resolve_source,
    synthetic_dump,
    validate_config,
)
from cytodml.data.signature import dump_signature
from cytodml.data.sources import class_sizes, list_classes
from cytodml.errors import InputError

# The schema (schemas/config.schema.yaml) owns every default: validate_config fills them in, as `cytodml predict`
# does, and the rules read the filled config. Snakemake's own validate is not used: its defaults skip $ref targets
# and the defaults that depend on the protocol or the network.
try:
    config.update(
        validate_config(config, list_classes=list_classes, class_sizes=class_sizes)
    )
except InputError as error:
    raise WorkflowError(f"config: {error}") from None

DATASETS = config["datasets"]
LOSSES = config["losses"]
EXPERIMENTS = config["experiments"]


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    experiment=_alternatives(EXPERIMENTS),
    loss=_alternatives(LOSSES),
    trial=r"\d+",
    scope=r"all|t\d+",


# ---- config lookups shared by rules ----------------------------------------------------------------------------


def dataset_of(wildcards):
    return EXPERIMENTS[wildcards.experiment]["dataset"]


def source_of(wildcards):
    return resolve_source(wildcards.dataset, DATASETS[wildcards.dataset])


def experiment_of(wildcards):
    return EXPERIMENTS[wildcards.experiment]


# The experiment keys each stage reads: a rule's params hold only these, so editing one key (adding a loss, changing
# a classifier) reruns the stages that read it and nothing upstream. SPLIT_KEYS come from cytodml.config, whose
# baseline: check needs them too.
TRAIN_KEYS = ("network", "channels")
EVALUATE_KEYS = (
    "protocol",
    "classifiers",
    "threshold",
    "targets",
    "alarm",
    "open_set",
    "spiked",
    "episodes",
    "novel_episodes",
)


def experiment_keys(keys):
    """An input function giving the experiment's settings restricted to ``keys``."""

    def settings(wildcards):
        experiment = EXPERIMENTS[wildcards.experiment]
        return {key: experiment[key] for key in keys if key in experiment}

    return settings


def train_settings(wildcards):
    """The train: block of one experiment x loss: the experiment's, with the loss's own train: keys merged in."""
    return loss_train(
        EXPERIMENTS[wildcards.experiment]["train"], LOSSES[wildcards.loss]
    )


def trials(experiment):
    return range(EXPERIMENTS[experiment]["trials"])


def init_of(wildcards):
    """The encoder a training starts from: the experiment's own pretraining of the trial's scope, or the file
    network.init names (another experiment's pretraining is built first); nothing for random weights.
    """
    experiment = experiment_of(wildcards)
    init = experiment["network"].get("init")
    if init is None:
        return {}
    if init != "pretrain":
        return {"init": init}
    scope = pretrain_scope(experiment, int(wildcards.trial))
    return {"init": f"results/{wildcards.experiment}/pretrain/{scope}.pt"}


def pretrain_inputs(wildcards):
    """The splits of the trials a pretraining serves (it reads only what none of them tests) and the extra data
    sets' patches."""
    experiment = experiment_of(wildcards)
    extra = experiment["pretrain"]["extra"]
    return {
        "splits": [
            f"results/{wildcards.experiment}/splits/t{trial}.parquet"
            for trial in pretrain_trials(experiment, wildcards.scope)
        ],
        "extra_npy": [f"results/{name}/patches.npy" for name in extra],
        "extra_table": [f"results/{name}/patches.parquet" for name in extra],
    }


# ---- input functions -----------------------------------------------------------------------------------------------


def raw_dump(wildcards):
    """The raw dump ingest reads: rendered by synthesize, or the user's files (Snakemake names a missing one)."""
    source = DATASETS[wildcards.dataset]["source"]
    if source["kind"] == "synthetic":
        return synthetic_dump(wildcards.dataset)
    return source["path"]


# Snakemake compares only the dump's own time stamp, which an edit inside a class folder leaves alone. A rule that
# reads a dump also takes its signature as a parameter (a function of the wildcards alone, so that Snakemake records
# it), and a file added, removed or replaced below the dump reruns the rule through the params trigger.


def raw_dump_signature(wildcards):
    """The signature of a user's raw dump; None for a synthetic one, which Snakemake follows as synthesize's output."""
    source = DATASETS[wildcards.dataset]["source"]
    return None if source["kind"] == "synthetic" else dump_signature(source)


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
        outputs += (
            data_outputs(experiment)
            + [f"results/{experiment}/tables"]
            + report_outputs(experiment)
        )
    return outputs


def trial_evaluations(wildcards):
    """Every evaluation of one experiment, by kind of result: a list over losses x trials. The predictions choose the
    recommended model (on validation images), the patches table labels the targets."""
    experiment = EXPERIMENTS[wildcards.experiment]
    files = (
        "metrics.csv",
        "confusion.csv",
        "per_class.csv",
        "spiked.csv",
        "open_set.csv",
        "episodes.csv",
        "novel.csv",
        "predictions.parquet",
    )
    evaluations = {
        file.split(".")[0]: [
            f"results/{wildcards.experiment}/eval/{loss}/t{trial}/{file}"
            for loss in experiment["losses"]
            for trial in trials(wildcards.experiment)
        ]
        for file in files
    }
    evaluations["patches"] = patches_of(wildcards)["table"]
    if "baseline" in experiment:
        # the baseline experiment's runs of the losses both train, compared trial by trial (tables' paired.csv)
        baseline = experiment["baseline"]
        evaluations["baseline_metrics"] = [
            f"results/{baseline}/eval/{loss}/t{trial}/metrics.csv"
            for loss in experiment["losses"]
            if loss in EXPERIMENTS[baseline]["losses"]
            for trial in trials(wildcards.experiment)
        ]
    return evaluations


# ---- predict: a trained model applied to new samples (rules/predict.smk) -------------------------------------------

PREDICT = predict_settings(config) if "predict" in config else {}
PREDICT_SAMPLES = PREDICT.get("samples", {})


def predict_experiment():
    return EXPERIMENTS[PREDICT["model"]["experiment"]]


def predict_dataset():
    return DATASETS[predict_experiment()["dataset"]]


def predict_recommended():
    """Whether predict applies the experiment's recommended model: the config names no loss and classifier."""
    return "loss" not in PREDICT["model"]


def predict_losses(wildcards):
    """The losses whose model predict may apply: the one named, or, for the recommended model, every loss of the
    experiment (the job reads which from the tables' recommended.csv)."""
    model = PREDICT["model"]
    return predict_experiment()["losses"] if predict_recommended() else [model["loss"]]


def predict_inputs(wildcards):
    """The trained models, their evaluated classifiers, metrics (the threshold) and latent maps, in predict_losses
    order; the sample's dump and the gallery. For the recommended model, the experiment's tables: a new aggregation, which may
    recommend another model, reruns predict."""
    model = PREDICT["model"]
    where = f"results/{model['experiment']}"
    runs = [f"{loss}/t{model['trial']}" for loss in predict_losses(wildcards)]
    inputs = {
        "models": [f"{where}/models/{run}.pt" for run in runs],
        "classifiers": [f"{where}/eval/{run}/classifiers.joblib" for run in runs],
        "metrics": [f"{where}/eval/{run}/metrics.csv" for run in runs],
        "maps": [f"{where}/maps/{run}.npz" for run in runs],
        "dump": PREDICT_SAMPLES[wildcards.sample]["path"],
    }
    if predict_recommended():
        inputs["tables"] = f"{where}/tables"
    if PREDICT.get("gallery"):
        inputs["gallery"] = PREDICT["gallery"]["path"]
    return inputs


def predict_source(wildcards):
    """The sample's source block, its layout completed from the model's data set."""
    return dump_source(predict_dataset()["source"], PREDICT_SAMPLES[wildcards.sample])


def predict_gallery(wildcards):
    gallery = PREDICT.get("gallery")
    return dump_source(predict_dataset()["source"], gallery) if gallery else None


def predict_signatures(wildcards):
    """The signatures of the sample's dump and of the gallery (see raw_dump_signature)."""
    gallery = predict_gallery(wildcards)
    return {
        "sample": dump_signature(predict_source(wildcards)),
        "gallery": dump_signature(gallery) if gallery else None,
    }


def predict_targets(wildcards):
    return PREDICT["targets"]


# ---- figures of each experiment (rules/report.smk) -----------------------------------------------------------------

# the trial whose models, embeddings and images the per-trial figures draw (latent spaces, blocks, thumbnails, maps)
FIGURE_TRIAL = 0
# scatter plots and t-SNE: at most this many images, rare classes kept whole
FIGURE_POINTS = 1500
# one t-SNE per loss x block: fewer images keep that grid within a minute or two on one core
BLOCK_POINTS = 600
EXPERIMENT_FIGURES = ["latent", "blocks", "metrics", "training", "confidence"]
LOSS_FIGURES = ["images", "confusion", "confusion_at_threshold", "similarity"]


def report_outputs(experiment):
    """The report's files of one experiment, among the final outputs: the config record, the PNG of every figure
    (each job writes the PDF beside it), the explorer page and the objects' exports of every evaluation.
    """
    settings = EXPERIMENTS[experiment]
    detection = ["roc"] if settings["targets"] or settings["open_set"] else []
    novel = ["novel_shots"] if "novel_classes" in settings else []
    return (
        [f"results/{experiment}/config.yaml", f"results/{experiment}/explorer.html"]
        + [
            f"results/{experiment}/eval/{loss}/t{trial}/objects.{suffix}"
            for loss in settings["losses"]
            for trial in trials(experiment)
            for suffix in ("h5ad", "fcs")
        ]
        + [
            f"results/{experiment}/figures/{name}.png"
            for name in EXPERIMENT_FIGURES + detection + novel
        ]
        + [
            f"results/{experiment}/figures/{loss}/{name}.png"
            for loss in settings["losses"]
            for name in LOSS_FIGURES
        ]
    )


def figure(name, title, subcategory, loss="all", labels=None):
    """The PNG and PDF outputs of one figure; the PNG goes into the report, captioned by report/fig_{name}.rst and
    labelled with its title and loss (or ``labels``)."""
    where = "results/{experiment}/figures/" + ("{loss}/" if loss == "{loss}" else "")
    return {
        "png": report(
            f"{where}{name}.png",
            caption=f"../report/fig_{name}.rst",
            category="{experiment}",
            subcategory=subcategory,
            labels=labels or {"figure": title, "loss": loss},
        ),
        "pdf": f"{where}{name}.pdf",
    }


def figure_losses(wildcards):
    """The experiment's losses, softmax baselines first, beside the metric losses they are compared with."""
    losses = EXPERIMENTS[wildcards.experiment]["losses"]
    return sorted(losses, key=lambda loss: LOSSES[loss]["type"] != "softmax")


def per_loss(pattern):
    """Input function: ``pattern`` for each loss of the experiment (figure_losses order) at FIGURE_TRIAL."""
    return lambda wildcards: [
        pattern.format(experiment=wildcards.experiment, loss=loss, trial=FIGURE_TRIAL)
        for loss in figure_losses(wildcards)
    ]


def loss_trials(wildcards):
    """(loss, trial) of every training run of the experiment, in the order of per_loss_and_trial's files."""
    return [
        (loss, trial)
        for loss in figure_losses(wildcards)
        for trial in trials(wildcards.experiment)
    ]


def per_loss_and_trial(pattern):
    """Input function: ``pattern`` for each (loss, trial) of loss_trials."""
    return lambda wildcards: [
        pattern.format(experiment=wildcards.experiment, loss=loss, trial=trial)
        for loss, trial in loss_trials(wildcards)
    ]


def figure_channels(wildcards):
    """Positions of the experiment's channels in its data set's patches."""
    return channel_indices(
        DATASETS[dataset_of(wildcards)]["channels"],
        experiment_of(wildcards).get("channels"),
    )


def experiment_config(wildcards):
    """The config of one experiment on its own, a config that reruns just it: the seed, its data set and losses."""
    experiment = config["experiments"][wildcards.experiment]
    return {
        "seed": config["seed"],
        "datasets": {experiment["dataset"]: DATASETS[experiment["dataset"]]},
        "losses": {loss: LOSSES[loss] for loss in experiment["losses"]},
        "experiments": {wildcards.experiment: experiment},
        "run": [wildcards.experiment],
    }
