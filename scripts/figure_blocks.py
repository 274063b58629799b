"""t-SNE of every block's pooled features, a row per loss's network, on the test and open-set images of one trial."""

import numpy as np
import pandas as pd
import torch

from cytodml.evaluate.latent_map import balanced_subsample
from cytodml.learn.embed import embed
from cytodml.report.figures import SCORED_SUBSETS, block_tsne
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    split = pd.read_parquet(snakemake.input.split).sort_values("index")
    shown = split[split["subset"].isin(SCORED_SUBSETS)]
    shown = shown.iloc[
        balanced_subsample(shown["class_name"].to_numpy(), snakemake.params.points, snakemake.params.seed)
    ]
    patches = np.load(snakemake.input.npy, mmap_mode="r")
    images = np.ascontiguousarray(patches[shown["index"].to_numpy()][:, snakemake.params.channels])
    features = {
        loss: embed(path, images, blocks=True)["blocks"]
        for loss, path in zip(snakemake.params.losses, snakemake.input.models)
    }
    block_tsne(
        features,
        shown["class_name"].to_numpy(),
        list(snakemake.output),
        unseen=sorted(set(shown.loc[shown["subset"] == "unknown", "class_name"])),
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
    log.info("block features of %d images, %d networks", len(images), len(features))
