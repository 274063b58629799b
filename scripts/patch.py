"""Decode every object once and cut it to a fixed-size patch; QC counts and a montage per class."""

import numpy as np
import pandas as pd

from cytodml.data.patching import make_patches
from cytodml.data.qc import class_montage
from cytodml.data.splits import trial_seed
from cytodml.io import write_csv, write_parquet
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    raw = pd.read_parquet(snakemake.input[0])
    patch = dict(snakemake.params.patch)
    if snakemake.params.source["kind"] == "montage":
        patch.setdefault("tile_size", snakemake.params.source["tile_size"])
    table, qc_counts = make_patches(raw, patch, snakemake.output.npy, workers=snakemake.threads)
    log.info("%d patches; QC:\n%s", len(table), qc_counts.to_string(index=False))
    write_parquet(table, snakemake.output.table)
    write_csv(qc_counts, snakemake.output.counts)
    images = np.load(snakemake.output.npy, mmap_mode="r")
    seed = trial_seed(snakemake.params.seed, snakemake.wildcards.dataset)
    class_montage(images, table["class_name"].tolist(), snakemake.output.montage, seed=seed)
