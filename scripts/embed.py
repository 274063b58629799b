"""Embed the patches of one trial's split (train, val, test, unknown; not a few-shot pool) with a trained network."""

import numpy as np
import pandas as pd
import torch

from cytodml.config import channel_indices
from cytodml.io import write_parquet
from cytodml.learn.embed import asks_for_gpu, choose_device, describe_device, embedding_table, load_model
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    # before any data is read: a job that asked for a GPU and cannot use one stops at once, saying why
    log.info("device: %s", describe_device(choose_device(require_gpu=asks_for_gpu(snakemake.resources))))
    torch.set_num_threads(snakemake.threads)
    model = load_model(snakemake.input.model)
    channels = channel_indices(snakemake.params.dataset_channels, snakemake.params.experiment.get("channels"))
    table = embedding_table(
        model, np.load(snakemake.input.npy, mmap_mode="r"), pd.read_parquet(snakemake.input.split), channels
    )
    log.info("embedded %d patches: %s", len(table), table["subset"].value_counts().to_dict())
    write_parquet(table, snakemake.output[0])
