"""Train one embedding network (experiment x loss x trial); checkpoints each epoch, resumes after a kill."""

import shutil

import numpy as np
import pandas as pd
import torch

from cytodml.config import channel_indices
from cytodml.data.splits import trial_seed
from cytodml.io import atomic_path, write_csv
from cytodml.learn.embed import asks_for_gpu, choose_device, describe_device, load_encoder
from cytodml.learn.inputs import training_data
from cytodml.learn.trainer import train
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    # before any data is read: a job that asked for a GPU and cannot use one stops at once, saying why
    log.info("device: %s", describe_device(choose_device(require_gpu=asks_for_gpu(snakemake.resources))))
    experiment = snakemake.params.experiment
    channels = channel_indices(snakemake.params.dataset_channels, experiment.get("channels"))
    train_images, train_labels, val_images, val_labels, class_names = training_data(
        np.load(snakemake.input.npy, mmap_mode="r"),
        pd.read_parquet(snakemake.input.table),
        pd.read_parquet(snakemake.input.split),
        np.load(snakemake.input.augmented),
        pd.read_parquet(snakemake.input.augmented_table),
        channels,
    )
    log.info(
        "training %s on %d images of %d classes, validating on %d",
        snakemake.wildcards.loss,
        len(train_images),
        len(class_names),
        len(val_images),
    )
    init = load_encoder(snakemake.input.init) if snakemake.input.get("init") else None
    if init is not None:
        log.info("starting from the encoder %s (pretrained on %d images)", snakemake.input.init, init["images"])
    torch.set_num_threads(snakemake.threads)
    bundle, history = train(
        train_images,
        train_labels,
        val_images,
        val_labels,
        network=experiment["network"],
        loss_spec=snakemake.params.loss,
        train_spec=snakemake.params.train,
        class_names=class_names,
        channel_names=[snakemake.params.dataset_channels[index] for index in channels],
        seed=trial_seed(snakemake.params.seed, snakemake.params.dataset, int(snakemake.wildcards.trial)),
        checkpoint_dir=snakemake.params.checkpoints,
        init=init,
        log=log.info,
    )
    with atomic_path(snakemake.output.model) as tmp:
        torch.save(bundle, tmp)
    write_csv(history, snakemake.output.history)
    # the checkpoint served a resume; left behind, it would make a forced rerun resume a finished run
    shutil.rmtree(snakemake.params.checkpoints, ignore_errors=True)
