"""Fit the experiment's classifiers on one trial's embeddings and evaluate them (multiclass, rare, spiked, open set)."""

from pathlib import Path

import pandas as pd

from cytodml.data.splits import trial_seed
from cytodml.evaluate.run import evaluate_trial, write_trial
from cytodml.learn.inputs import known_classes
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    embeddings = pd.read_parquet(snakemake.input[0])
    results = evaluate_trial(
        embeddings,
        snakemake.params.experiment,
        class_names=known_classes(embeddings),
        loss=snakemake.wildcards.loss,
        seed=trial_seed(snakemake.params.seed, snakemake.params.dataset, int(snakemake.wildcards.trial)),
    )
    write_trial(results, Path(snakemake.output.metrics).parent)
    headline = results["metrics"].query("view == 'multiclass' and metric in ['balanced_accuracy', 'mcc']")
    log.info("test results:\n%s", headline.to_string(index=False))
