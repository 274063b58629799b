"""The explorer page of one experiment: every model (loss x trial) and classifier on its latent map, with the cells."""

import numpy as np
import pandas as pd

from cytodml.evaluate.latent_map import load_map
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.report.explorer import evaluation_models, explorer_page, thumbnail
from cytodml.report.figures import SCORED_SUBSETS
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    inputs, params = snakemake.input, snakemake.params
    runs = [tuple(run) for run in params.runs]
    tables = {run: pd.read_parquet(path) for run, path in zip(runs, inputs.objects)}
    tables = {run: table[table["subset"].isin(SCORED_SUBSETS)] for run, table in tables.items()}
    classifiers = {run: [name.removesuffix("_call") for name in tables[run] if name.endswith("_call")] for run in runs}
    thresholds = {
        run: {name: read_evaluation(path, name)[0] for name in classifiers[run]}
        for run, path in zip(runs, inputs.metrics)
    }
    maps = {run: load_map(path) for run, path in zip(runs, inputs.maps)}
    objects, models = evaluation_models(tables, thresholds, maps)
    patches = np.load(inputs.npy, mmap_mode="r")
    objects["thumbnail"] = [thumbnail(patches[row][params.channels]) for row in objects["index"]]
    facts = explorer_page(
        objects,
        models,
        snakemake.output[0],
        title=f"experiment {snakemake.wildcards.experiment}",
        targets=params.targets,
        seed=params.seed,
    )
    log.info(
        "%d of %d objects on the maps of %d models, %.1f MB",
        facts["shown"],
        facts["objects"],
        len(models),
        facts["bytes"] / 1e6,
    )
