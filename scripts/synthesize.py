"""Render the synthetic imaging-flow-cytometry dump of one data set."""

from cytodml.data.splits import trial_seed
from cytodml.data.synthetic import render_dump
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    seed = trial_seed(snakemake.params.seed, snakemake.wildcards.dataset)
    manifest = render_dump(snakemake.output[0], snakemake.params.source, seed=seed)
    log.info("rendered %d objects: %s", len(manifest), manifest["class_name"].value_counts().to_dict())
