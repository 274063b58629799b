"""ROC curves of rare-target detection and of open-set rejection, per classifier, a line per loss, pooled over trials."""

from pathlib import Path

import pandas as pd

from cytodml.report.figures import mean_thresholds, roc_curves
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    predictions = pd.concat(
        [
            pd.read_parquet(path).assign(loss=loss, trial=trial)
            for (loss, trial), path in zip(snakemake.params.runs, snakemake.input.predictions)
        ],
        ignore_index=True,
    )
    patches = pd.read_parquet(snakemake.input.patches, columns=["class_name", "label"])
    label_of = dict(zip(patches["class_name"], patches["label"]))
    target_labels = [label_of[name] for name in snakemake.params.targets]
    aggregated = pd.read_csv(Path(snakemake.input.tables) / "aggregated.csv", keep_default_na=False, na_values=[""])
    roc_curves(predictions, list(snakemake.output), target_labels=target_labels, thresholds=mean_thresholds(aggregated))
    log.info("ROC curves of %d predictions, targets %s", len(predictions), snakemake.params.targets)
