"""One trial's evaluated objects, one row each (class, calls, confidences, scores, map position), as Parquet, AnnData
and FCS."""

from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cytodml.evaluate.objects import evaluation_objects
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.io import write_parquet
from cytodml.report.exports import write_fcs, write_h5ad
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    inputs, params = snakemake.input, snakemake.params
    embeddings = pd.read_parquet(inputs.embeddings)
    predictions = pd.read_parquet(inputs.predictions)
    latent_map = pd.read_parquet(inputs.map)
    thresholds = {name: read_evaluation(inputs.metrics, name)[0] for name in predictions["classifier"].unique()}
    objects = evaluation_objects(
        embeddings,
        predictions,
        joblib.load(inputs.classifiers),
        thresholds,
        pd.read_parquet(inputs.patches),
        latent_map,
        targets=params.targets,
    )
    write_parquet(objects, snakemake.output.table)
    X = np.stack(embeddings.set_index("index").loc[objects["index"], "embedding"].to_numpy())
    run = f"{snakemake.wildcards.experiment}/{snakemake.wildcards.loss}/t{snakemake.wildcards.trial}"
    about = {"model": run, "thresholds": thresholds, "targets": list(params.targets)}
    write_h5ad(objects, X, snakemake.output.h5ad, map_method=str(latent_map["map"].iloc[0]), uns=about)
    write_fcs(objects, snakemake.output.fcs, text={"cytodml_model": run})
    log.info("%d objects of %s exported to %s", len(objects), run, Path(snakemake.output.table).parent)
