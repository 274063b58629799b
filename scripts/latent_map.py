"""The latent map of one trained model: fitted on its training images, every image of the trial placed on it."""

import pandas as pd

from cytodml.evaluate.latent_map import fit_map, map_table, save_map
from cytodml.io import write_parquet
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    embeddings = pd.read_parquet(snakemake.input[0])
    latent_map = fit_map(embeddings, seed=snakemake.params.seed, threads=snakemake.threads)
    save_map(latent_map, snakemake.output.map)
    write_parquet(map_table(embeddings, latent_map, threads=snakemake.threads), snakemake.output.table)
    log.info(
        "%s map fitted on %d training images (perplexity %.1f); %d images placed",
        latent_map.method,
        len(latent_map.reference),
        latent_map.perplexity,
        len(embeddings),
    )
