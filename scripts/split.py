"""Assign every patch of one trial to train / val / test (or unknown, pool), stratified, group- and duplicate-aware."""

import pandas as pd

from cytodml.data.splits import make_split
from cytodml.io import write_parquet
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    patches = pd.read_parquet(snakemake.input.table)
    split, notes = make_split(
        patches,
        snakemake.params.experiment,
        trial=int(snakemake.wildcards.trial),
        seed=snakemake.params.seed,
        dataset=snakemake.params.dataset,
    )
    for note in notes:
        log.warning(note)
    log.info("subsets:\n%s", pd.crosstab(split["class_name"], split["subset"]).to_string())
    write_parquet(split, snakemake.output[0])
