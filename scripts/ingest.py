"""List the objects of a raw dump (files, headers, classes, groups) without decoding pixels."""

from cytodml.data.sources import ingest
from cytodml.io import write_parquet
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    raw = ingest(snakemake.params.source, snakemake.params.channels)
    log.info("%d objects: %s", len(raw), raw["class_name"].value_counts().sort_index().to_dict())
    write_parquet(raw, snakemake.output[0])
