"""Self-supervised pretraining of one experiment's network (per experiment, or per trial for the full protocol) on
images no trial it serves tests, plus the extra unlabelled data sets; checkpoints each epoch, resumes after a kill."""

import shutil

import numpy as np
import pandas as pd
import torch

from cytodml.config import channel_indices
from cytodml.data.splits import trial_seed
from cytodml.io import atomic_path, write_csv
from cytodml.learn.embed import asks_for_gpu, choose_device, describe_device
from cytodml.learn.inputs import held_out_hashes, pretraining_rows
from cytodml.learn.pretrain import pretrain
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    log.info("device: %s", describe_device(choose_device(require_gpu=asks_for_gpu(snakemake.resources))))
    experiment = snakemake.params.experiment
    channel_names = experiment.get("channels") or snakemake.params.dataset_channels
    channels = channel_indices(snakemake.params.dataset_channels, channel_names)
    table = pd.read_parquet(snakemake.input.table, columns=["index", "content_hash"])
    splits = [pd.read_parquet(path) for path in snakemake.input.splits]
    rows = pretraining_rows(splits)
    images = [np.load(snakemake.input.npy, mmap_mode="r")[rows][:, channels]]
    log.info(
        "%d images of %s (train, val and pool of every trial served; none tested)", len(rows), snakemake.params.dataset
    )
    held_out = held_out_hashes(table, rows)
    for name, npy, extra_table in zip(snakemake.params.extra, snakemake.input.extra_npy, snakemake.input.extra_table):
        hashes = pd.read_parquet(extra_table, columns=["content_hash"])["content_hash"]
        kept = np.flatnonzero(~hashes.isin(held_out).to_numpy())
        extra_channels = channel_indices(snakemake.params.extra_channels[name], channel_names)
        images.append(np.load(npy, mmap_mode="r")[kept][:, extra_channels])
        log.info(
            "%d images of extra data set %s (%d exact copies of held-out images left out)",
            len(kept), name, len(hashes) - len(kept),
        )  # fmt: skip
    images = np.ascontiguousarray(np.concatenate(images))
    torch.set_num_threads(snakemake.threads)
    scope = snakemake.wildcards.scope
    encoder, history = pretrain(
        images,
        network=experiment["network"],
        spec=snakemake.params.pretrain,
        channel_names=list(channel_names),
        seed=trial_seed(snakemake.params.seed, snakemake.params.dataset, None if scope == "all" else int(scope[1:])),
        checkpoint_dir=snakemake.params.checkpoints,
        log=log.info,
    )
    with atomic_path(snakemake.output.encoder) as tmp:
        torch.save(encoder, tmp)
    write_csv(history, snakemake.output.history)
    # the checkpoint served a resume; left behind, it would make a forced rerun resume a finished run
    shutil.rmtree(snakemake.params.checkpoints, ignore_errors=True)
