"""Grow one trial's training images to the configured count by shift, flips, rotation and zoom."""

import numpy as np
import pandas as pd

from cytodml.config import channel_indices
from cytodml.data.augment import augment
from cytodml.data.splits import trial_seed
from cytodml.io import write_npy, write_parquet
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    patches = np.load(snakemake.input.npy, mmap_mode="r")
    split = pd.read_parquet(snakemake.input.split)
    train = split[split["subset"] == "train"]
    channels = channel_indices(snakemake.params.dataset_channels, snakemake.params.channels)
    images = patches[train["index"].to_numpy()][:, channels]
    seed = trial_seed(snakemake.params.seed, snakemake.params.dataset, int(snakemake.wildcards.trial))
    grown, ops = augment(images, train["label"].to_numpy(), train["index"].to_numpy(), snakemake.params.augment, seed)
    log.info("%d training images grown to %d", len(images), len(grown))
    write_npy(grown, snakemake.output.npy)
    write_parquet(ops, snakemake.output.table)
