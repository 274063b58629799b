"""N-way K-shot accuracy against shots on the novel and the base classes, a panel per few-shot method, a line per loss,
mean +- std over trials."""

from pathlib import Path

import pandas as pd

from cytodml.report.figures import novel_shots_figure
from cytodml.runlog import logged


def read_trial(path) -> pd.DataFrame:
    """A results/<experiment>/eval/<loss>/t<trial>/novel.csv with its ``loss`` and ``trial`` (from the path, as
    aggregate's trial_dirs_of reads them)."""
    folder = Path(path).parent
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return table.assign(loss=folder.parent.name, trial=int(folder.name[1:]))


with logged(snakemake.log[0]) as log:
    novel = pd.concat([read_trial(path) for path in snakemake.input], ignore_index=True)
    figure = novel_shots_figure(novel, [snakemake.output.png, snakemake.output.pdf])
    panels = ", ".join(ax.get_title() for ax in figure.axes)
    log.info("novel-class accuracy against shots of %d trials: %s", len(snakemake.input), panels)
