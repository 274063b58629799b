"""Confidence histograms of known test images against open-set images, per loss and classifier, pooled over trials."""

from pathlib import Path

import pandas as pd

from cytodml.report.figures import confidence_histograms, mean_thresholds
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    predictions = pd.concat(
        [
            pd.read_parquet(path).assign(loss=loss, trial=trial)
            for (loss, trial), path in zip(snakemake.params.runs, snakemake.input.predictions)
        ],
        ignore_index=True,
    )
    aggregated = pd.read_csv(Path(snakemake.input.tables) / "aggregated.csv", keep_default_na=False, na_values=[""])
    confidence_histograms(predictions, list(snakemake.output), thresholds=mean_thresholds(aggregated))
    log.info("confidence of %d predictions", len(predictions))
