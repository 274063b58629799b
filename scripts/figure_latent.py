"""The latent space of every loss of one trial, a panel per loss, softmax beside the metric losses."""

import pandas as pd

from cytodml.report.figures import latent_space
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    maps = {loss: pd.read_parquet(path) for loss, path in zip(snakemake.params.losses, snakemake.input.maps)}
    figure = latent_space(maps, list(snakemake.output), limit=snakemake.params.points, seed=snakemake.params.seed)
    log.info("latent spaces of %s: %s", ", ".join(maps), figure.axes[0].get_xlabel())
