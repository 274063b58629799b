"""Training and validation loss and the validation metric per epoch, a column per loss, every trial."""

import pandas as pd

from cytodml.report.figures import training_curves
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    history = pd.concat(
        [
            pd.read_csv(path).assign(loss=loss, trial=trial)
            for (loss, trial), path in zip(snakemake.params.runs, snakemake.input.histories)
        ],
        ignore_index=True,
    )
    training_curves(history, list(snakemake.output))
    log.info("training curves of %d runs", len(snakemake.params.runs))
