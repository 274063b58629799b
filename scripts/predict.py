"""Detect targets in one new sample: patch it as the model's data set, embed, classify, count, decide the alarm, place
its objects on the model's latent map."""

from pathlib import Path

import torch

from cytodml.evaluate.detector import load_detector
from cytodml.evaluate.latent_map import load_map
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.evaluate.recommend import read_recommended
from cytodml.predict import add_gallery, predict_sample
from cytodml.report.sample import write_prediction
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    # the model named in the config, or the experiment's recommended one (no classifier named)
    loss, classifier, recommended = params.losses[0], params.classifier, None
    if classifier is None:
        recommended = read_recommended(
            Path(snakemake.input.tables) / "recommended.csv", params.experiment, losses=params.losses
        )
        loss, classifier = recommended["loss"], recommended["classifier"]
        log.info("the recommended model of experiment %s: loss %s, classifier %s", params.experiment, loss, classifier)
    run = params.losses.index(loss)
    detector = load_detector(snakemake.input.models[run], snakemake.input.classifiers[run], classifier)
    if params.gallery:
        detector = add_gallery(
            detector, params.gallery, channels=params.channels, patch=params.patch, workers=snakemake.threads
        )
        log.info("classes with the gallery: %s", ", ".join(detector.class_names))
    threshold, validation = read_evaluation(
        snakemake.input.metrics[run],
        classifier,
        threshold=params.threshold,
        targets=params.targets,
        evaluated_targets=params.evaluated_targets,
    )
    result = predict_sample(
        params.source,
        detector,
        channels=params.channels,
        patch=params.patch,
        threshold=threshold,
        targets=params.targets,
        alarm=params.alarm,
        validation=validation,
        name=snakemake.wildcards.sample,
        recommended=recommended,
        latent_map=load_map(snakemake.input.maps[run]),
        workers=snakemake.threads,
    )
    write_prediction(result, Path(snakemake.output.summary).parent, model=(loss, params.trial))
    summary = result["summary"]
    log.info(
        "%d objects, %d target(s) called at confidence >= %g, alarm: %s; counts %s",
        summary["objects"],
        summary["target_count"],
        threshold,
        "yes" if summary["alarm"] else "no",
        summary["counts"],
    )
