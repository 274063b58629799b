"""Bar charts of MCC, balanced accuracy and silhouette per loss and classifier, mean +- std over trials."""

from pathlib import Path

import pandas as pd

from cytodml.report.figures import metric_bars
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    aggregated = pd.read_csv(Path(snakemake.input.tables) / "aggregated.csv", keep_default_na=False, na_values=[""])
    figure = metric_bars(aggregated, list(snakemake.output))
    log.info("bars of %s", ", ".join(ax.get_title() for ax in figure.axes))
