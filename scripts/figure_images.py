"""Image t-SNE of one loss: thumbnails of test and open-set images at their embedded positions, one trial."""

import numpy as np
import pandas as pd

from cytodml.report.figures import SCORED_SUBSETS, balanced_subsample, image_tsne
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    table = pd.read_parquet(snakemake.input.embeddings)
    shown = table[table["subset"].isin(SCORED_SUBSETS)]
    shown = shown.iloc[
        balanced_subsample(shown["class_name"].to_numpy(), snakemake.params.points, snakemake.params.seed)
    ]
    patches = np.load(snakemake.input.npy, mmap_mode="r")
    figure = image_tsne(
        patches[shown["index"].to_numpy()][:, snakemake.params.channels],
        np.stack(shown["embedding"].to_numpy()),
        shown["class_name"].to_numpy(),
        list(snakemake.output),
        unseen=sorted(set(shown.loc[shown["subset"] == "unknown", "class_name"])),
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        title=f"{snakemake.wildcards.loss}, trial {snakemake.params.trial}",
    )
    log.info("%d thumbnails of %d images", len(figure.axes[0].images), len(shown))
