"""Similarity maps of one loss's network: which regions drew correct and wrong test images to a class prototype."""

import numpy as np
import pandas as pd
import torch

from cytodml.evaluate.explain import nearest_prototype_cases, similarity_maps
from cytodml.learn.embed import load_model
from cytodml.report.figures import similarity_grid
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    cases, prototypes = nearest_prototype_cases(pd.read_parquet(snakemake.input.embeddings), seed=snakemake.params.seed)
    patches = np.load(snakemake.input.npy, mmap_mode="r")
    images = np.ascontiguousarray(patches[cases["index"].to_numpy()][:, snakemake.params.channels])
    model = load_model(snakemake.input.model)
    called, layer = similarity_maps(model, images, np.stack([prototypes[name] for name in cases["called"]]))
    own, _ = similarity_maps(model, images, np.stack([prototypes[name] for name in cases["class_name"]]), layer=layer)
    similarity_grid(
        images,
        cases,
        called,
        own,
        list(snakemake.output),
        layer=layer,
        title=f"{snakemake.wildcards.loss}, trial {snakemake.params.trial}: nearest class prototype",
    )
    log.info(
        "similarity maps at %s of %d correct and %d wrong test images",
        layer,
        cases["correct"].sum(),
        (~cases["correct"]).sum(),
    )
