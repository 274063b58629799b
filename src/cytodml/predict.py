"""Detection in a new sample: a trained network and a fitted classifier applied to an unlabelled raw dump.

The rare-bioparticle study's daily use (Luo et al., RSC Adv 2021): a water sample is imaged, each object is embedded
by the trained network and classified in the latent space. An object is *called* a class when the classifier's
confidence reaches the threshold of the evaluation (0.98 in the paper), and is "unknown" below it; the sample raises
an alarm when enough objects are called a target class (the experiment's ``alarm`` rule: at least ``min_targets``, or
as many as a blank sample of its size reaches only at a ``false_alarm_rate``, from the classifier's false positives on
validation; :func:`cytodml.evaluate.detection.alarm_count`); the called targets are shown in a montage for a person
to confirm, as the paper's experts did.

The dump is ingested and patched with the settings of the data set the network was trained on (patch mode and size,
channels), since its input normalisation holds for such patches only; a dump, a patch size or a file that does not fit
the model is refused with both values named. A gallery of labelled examples (:func:`add_gallery`) is read the same
way before its classes join the classifier.

This module's one job is applying a detector to a new dump; it sits at the top, beside :mod:`cytodml.cli`, because
that job reaches every stage. What it applies lives below it: the detector file and its gallery extension in
:mod:`cytodml.evaluate.detector`, the evaluation's threshold in :mod:`cytodml.evaluate.operating_point`, the
``predict:`` config checks in :mod:`cytodml.config`; the sample's report is drawn by :mod:`cytodml.report.sample`.
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from cytodml.config import channel_indices, schema
from cytodml.data.patching import COUNT_COLUMNS, QC_FLAGS, make_patches
from cytodml.data.sources import ingest
from cytodml.errors import InputError
from cytodml.evaluate.detection import alarm_count, alarm_rule
from cytodml.evaluate.detector import Detector, add_examples, check_extensible
from cytodml.evaluate.latent_map import LatentMap
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.evaluate.objects import classifier_scores
from cytodml.learn.embed import check_images, embed

__all__ = ["add_gallery", "gallery_classes", "predict_sample", "read_labels", "summarize"]

#: the patch stage's counts of objects it leaves out (filler, duplicate, background): a sample's summary gives their sum
DROPPED_COUNTS = [column for column in COUNT_COLUMNS if column.startswith("dropped_")]
#: the count rule a calibrated alarm falls back to where a target is a gallery class: the experiment's default rule
COUNT_RULE = alarm_rule(schema()["$defs"]["experiment"]["properties"]["alarm"]["default"])


def _dump_patches(source: dict, channels: list[str], patch: dict, bundle: dict, workdir, workers: int):
    """Ingest and patch a dump as the network's data set was: ``(patch table, images, QC counts)``."""
    where = f"dump {source.get('path')}"
    if patch.get("size") != bundle["image_size"]:
        raise InputError(
            f"patch.size: {patch.get('size')} px patches do not fit the model, which takes "
            f"{bundle['image_size']} x {bundle['image_size']} px images"
        )
    wanted = list(bundle["channel_names"])
    absent = [name for name in wanted if name not in channels]
    if absent:
        raise InputError(f"channels: the dump's channels {channels} lack {absent}, which the model takes ({wanted})")
    try:
        raw = ingest(source, channels)
    except InputError as error:
        raise InputError(f"{where}, read with the {len(channels)} channel(s) {channels}: {error}") from None
    patch = dict(patch)
    if source["kind"] == "montage":
        patch.setdefault("tile_size", source.get("tile_size"))
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        npy = Path(scratch) / "patches.npy"
        table, counts = make_patches(raw, patch, npy, workers=workers)
        images = np.ascontiguousarray(np.load(npy, mmap_mode="r")[:, channel_indices(channels, wanted)])
    check_images(images, bundle, what=f"patches of {where}")
    return table, images, counts


# ------------------------------------------------------------------------------------------------------ predicting


def predict_sample(
    source: dict,
    detector: Detector,
    *,
    channels: list[str],
    patch: dict,
    threshold: float,
    targets: list[str],
    alarm: dict,
    validation: tuple[int, int] | None = None,
    name: str | None = None,
    recommended: dict | None = None,
    latent_map: LatentMap | None = None,
    workdir=None,
    workers: int = 1,
) -> dict:
    """Classify every object of a raw dump, count the classes, and decide the alarm.

    ``source`` is the dump's ``source:`` block (:func:`cytodml.config.dump_source`), ``channels`` its channel names in
    order (the data set's), ``patch`` the data set's ``patch:`` block; ``threshold`` the confidence an object needs to
    be called a class; ``targets`` the class names that raise the alarm; ``alarm`` the rule
    (:func:`~cytodml.evaluate.detection.alarm_rule`), ``validation`` what a calibrated one rests on
    (:func:`~cytodml.evaluate.operating_point.read_evaluation`); ``recommended`` the row of the experiment's
    ``recommended.csv`` where the detector is its recommended model
    (:func:`~cytodml.evaluate.recommend.read_recommended`), which the summary then says; ``latent_map`` the model's
    map (:mod:`cytodml.evaluate.latent_map`), where the objects are placed beside the training classes; ``workdir``
    where the patches are cut (a temporary folder, removed after).

    Returns ``objects`` (one row per patch: ``object_id``, ``predicted`` (the class called, or "unknown" below the
    threshold), ``best_match`` (the most probable class), ``confidence``, ``is_target`` (called a target class),
    ``distance_<class>`` (Euclidean, to each class centre), ``probability_<class>`` (for a classifier without a class
    model: SVM, kNN), the QC flags, and ``map_x``, ``map_y`` on the map), ``summary`` (:func:`summarize`),
    ``target_rows`` (the rows of the called targets, most confident first, as the montage shows them),
    ``target_images`` (their patches), ``images`` and ``embedding`` (of every object) and ``map`` (``latent_map``).

    A calibrated rule with a gallery class among the targets (:func:`gallery_classes`) cannot be computed, since the
    evaluation never saw that class: the count rule :data:`COUNT_RULE` is applied instead, and the summary's
    ``alarm_note`` says so.
    """
    rule, note = _checked_request(detector, threshold, targets, alarm, validation)
    if note:
        validation = None  # the count rule applied rests on no validation count
    table, images, counts = _dump_patches(source, list(channels), patch, detector.bundle, workdir, workers)
    X = embed(detector.model, images)["embedding"]
    objects = pd.concat([table[["object_id"]], _classify(detector, X, threshold, targets), table[QC_FLAGS]], axis=1)
    if latent_map is not None:
        objects["map_x"], objects["map_y"] = latent_map.place(X, threads=workers).T
    summary = summarize(
        objects,
        detector.class_names,
        targets,
        threshold,
        rule,
        validation=validation,
        sample=name or Path(source["path"]).name,
        classifier=detector.classifier_name,
        origin=detector.origin,
        dropped=int(counts[DROPPED_COUNTS].to_numpy().sum()),
        recommended=recommended,
        alarm_note=note,
    )
    order = _most_confident_targets(objects)
    return {
        "objects": objects,
        "summary": summary,
        "target_images": images[order],
        "target_rows": order,
        "images": images,
        "embedding": X,
        "map": latent_map,
    }


def gallery_classes(detector: Detector) -> list[str]:
    """The classes of the detector's classifier that its network was not trained on: those a gallery added."""
    trained = set(detector.bundle["class_names"])
    return [name for name in detector.class_names if name not in trained]


def _checked_request(
    detector: Detector, threshold: float, targets: list[str], alarm: dict, validation
) -> tuple[dict, str | None]:
    """``(rule, note)``: the alarm rule to apply, once the request is known to be one the detector can answer, and
    None, or, for a calibrated rule with a gallery class among the targets, :data:`COUNT_RULE` and the sentence that
    says why; checked before the dump is read, which takes the longest."""
    rule = alarm_rule(alarm)
    if isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise InputError(f"threshold: {threshold} is not a confidence in [0, 1]")
    stray = [target for target in targets if target not in detector.class_names]
    if stray:
        raise InputError(f"targets: {stray} are not classes of the classifier ({', '.join(detector.class_names)})")
    if "false_alarm_rate" not in rule:
        return rule, None
    added = [target for target in targets if target in gallery_classes(detector)]
    if added:
        return COUNT_RULE, (
            f"The calibrated rule (false_alarm_rate {rule['false_alarm_rate']:g}) cannot be computed for the gallery "
            f"class(es) {', '.join(added)}, which the evaluation never saw: the count rule (min_targets "
            f"{COUNT_RULE['min_targets']}) is applied instead."
        )
    if validation is None:
        raise InputError(
            "alarm.false_alarm_rate: the evaluation recorded no validation false positives for this classifier at "
            f"threshold {threshold} and targets {targets}; keep the evaluation's threshold and targets, or give "
            "alarm.min_targets"
        )
    return rule, None


def _classify(detector: Detector, X: np.ndarray, threshold: float, targets: list[str]) -> pd.DataFrame:
    """Per embedding: the best class, the confidence in it, the call at the threshold, distances to the centres."""
    estimator = detector.classifier
    proba = estimator.predict_proba(X)
    best = np.array(detector.class_names, dtype=object)[np.argmax(proba, axis=1)]
    confidence = estimator.confidence(X)
    called = confidence >= threshold
    objects = pd.DataFrame(
        {
            "predicted": np.where(called, best, UNKNOWN_NAME),
            "best_match": best,
            "confidence": confidence,
            "is_target": called & np.isin(best, targets),
        }
    )
    distances = cdist(X.astype(np.float64), detector.centres.to_numpy(np.float64))
    for column, class_name in enumerate(detector.centres.index):
        objects[f"distance_{class_name}"] = distances[:, column]
    kind, scores = classifier_scores(estimator, X, detector.class_names, proba=proba)
    if kind == "probability":
        for class_name in scores:
            objects[f"probability_{class_name}"] = scores[class_name].to_numpy()
    return objects


def _most_confident_targets(objects: pd.DataFrame) -> np.ndarray:
    """Rows of the objects called a target class, most confident first (ties in object order), as a person checks
    them."""
    called = objects.index[objects["is_target"]].to_numpy()
    return called[np.argsort(-objects.loc[called, "confidence"].to_numpy(), kind="stable")]


def summarize(
    objects: pd.DataFrame,
    class_names: list[str],
    targets: list[str],
    threshold: float,
    alarm: dict,
    *,
    validation: tuple[int, int] | None = None,
    sample: str,
    classifier: str,
    origin: str,
    dropped: int = 0,
    recommended: dict | None = None,
    alarm_note: str | None = None,
) -> dict:
    """The sample's counts and alarm from its objects table (columns ``predicted``, ``is_target`` and QC flags).

    ``counts`` has every class of ``class_names`` (zeros included) and ``unknown``; ``target_count`` is the number of
    objects called a target class; ``alarm`` is True when it reaches ``alarm_at``, the count the rule asks of a
    sample of this size (the spiked table's "alarm at") (:func:`~cytodml.evaluate.detection.alarm_count`; ``validation`` for a calibrated rule).
    ``recommended`` (the experiment's recommended model, where it is the one applied) is kept as given, and so is
    ``alarm_note`` (why ``alarm_rule``, the rule applied, is not the one asked; None where it is).
    """
    rule = alarm_rule(alarm)
    alarm_at = alarm_count(rule, len(objects), *(validation or (None, None)))
    called = objects["predicted"].value_counts()
    counts = {name: int(called.get(name, 0)) for name in [*class_names, UNKNOWN_NAME]}
    target_count = int(objects["is_target"].sum())
    return {
        "sample": sample,
        "objects": len(objects),
        "counts": counts,
        "targets": list(targets),
        "target_counts": {target: counts[target] for target in targets},
        "target_count": target_count,
        "alarm": target_count >= alarm_at,
        "alarm_at": alarm_at,
        "alarm_rule": rule,
        "alarm_note": alarm_note,
        "validation": list(validation) if validation else None,
        "threshold": float(threshold),
        "classifier": classifier,
        "origin": origin,
        "qc": {flag: int(objects[flag].sum()) for flag in QC_FLAGS if flag in objects},
        "dropped": int(dropped),
        "recommended": recommended,
    }


# ---------------------------------------------------------------------------------------------------------- gallery


def add_gallery(
    detector: Detector,
    source: dict,
    *,
    channels: list[str],
    patch: dict,
    labels: pd.DataFrame | None = None,
    workdir=None,
    workers: int = 1,
) -> Detector:
    """The detector with the labelled examples of ``source`` (one folder per class) added to its classifier.

    The examples are patched like a dump and passed to :func:`~cytodml.evaluate.detector.add_examples`: a class the
    classifier does not know becomes a new class, examples of a known class join it; nothing is retrained. The
    detector given is left as it was. With ``labels`` (:func:`read_labels`: the objects picked in an explorer page),
    the examples are those objects of the dump, with those labels, whatever folder they lie in.
    """
    check_extensible(detector)  # before the gallery is patched: a classifier that cannot take it is refused at once
    where = f"gallery {source.get('path')}"
    table, images, _ = _dump_patches(source, list(channels), patch, detector.bundle, workdir, workers)
    if labels is None:
        return add_examples(detector, images, table["class_name"], where=where)
    absent = sorted(set(labels["object_id"]) - set(table["object_id"]))
    if absent:
        raise InputError(
            f"{where}: {len(absent)} labelled object(s) are not objects of the dump, e.g. {absent[:3]} (were the "
            "labels saved from an explorer page of this dump, or of the data set's?)"
        )
    picked = table["object_id"].isin(labels["object_id"]).to_numpy()
    names = table.loc[picked, "object_id"].map(dict(zip(labels["object_id"], labels["label"])))
    return add_examples(detector, images[picked], names.to_numpy(), where=f"{where} with the picked labels")


def read_labels(path) -> pd.DataFrame:
    """An explorer page's saved selection: a CSV with columns ``object_id`` and ``label``, one row per object."""
    try:
        labels = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such labels file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a labels CSV ({error})") from None
    missing = {"object_id", "label"} - set(labels.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)} (has {list(labels.columns)})")
    for row, (object_id, label) in enumerate(zip(labels["object_id"], labels["label"]), start=2):
        if not object_id or not label:
            raise InputError(f"{path}: line {row}: an empty object_id or label")
    twice = sorted(set(labels["object_id"][labels["object_id"].duplicated()]))
    if twice:
        raise InputError(f"{path}: object(s) {twice[:3]} listed more than once")
    if labels.empty:
        raise InputError(f"{path}: no labelled objects")
    return labels[["object_id", "label"]]
