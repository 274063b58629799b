"""Confusion matrices of one loss, summed over trials: arg-max calls, and calls at the threshold with open-set images."""

from pathlib import Path

import pandas as pd

from cytodml.report.figures import confusion_heatmaps
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    loss = snakemake.wildcards.loss
    confusion = pd.read_csv(Path(snakemake.input.tables) / "confusion.csv", keep_default_na=False)
    of_loss = confusion[confusion["loss"] == loss]
    for view, paths, title in (
        ("multiclass", snakemake.output.multiclass, f"{loss}: known test images, arg-max class"),
        ("open_set", snakemake.output.at_threshold, f"{loss}: test and open-set images, 'unknown' below the threshold"),
    ):
        confusion_heatmaps(of_loss[of_loss["view"] == view], paths, title=title)
    log.info("confusion matrices of %s: %s", loss, ", ".join(dict.fromkeys(of_loss["classifier"])))
