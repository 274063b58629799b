"""Image t-SNE of one loss: thumbnails of test and open-set images at their places on the model's latent map."""

import numpy as np
import pandas as pd

from cytodml.evaluate.latent_map import balanced_subsample
from cytodml.report.figures import SCORED_SUBSETS, image_tsne
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    table = pd.read_parquet(snakemake.input.map)
    shown = table[table["subset"].isin(SCORED_SUBSETS)]
    shown = shown.iloc[
        balanced_subsample(shown["class_name"].to_numpy(), snakemake.params.points, snakemake.params.seed)
    ]
    patches = np.load(snakemake.input.npy, mmap_mode="r")
    figure = image_tsne(
        patches[shown["index"].to_numpy()][:, snakemake.params.channels],
        shown[["x", "y"]].to_numpy(),
        shown["class_name"].to_numpy(),
        list(snakemake.output),
        unseen=sorted(set(shown.loc[shown["subset"] == "unknown", "class_name"])),
        method=str(shown["map"].iloc[0]),
        title=f"{snakemake.wildcards.loss}, trial {snakemake.params.trial}",
    )
    log.info("%d thumbnails of %d images", len(figure.axes[0].images), len(shown))
