"""One row per evaluated object, as a person looking at cells wants it: its class, each classifier's call and why.

The evaluate stage's files are long tables made for metrics (``predictions.parquet``: one row per object and
classifier, labels as numbers). The explorer page and the exports (``.h5ad``, FCS) need the other shape: one row per
object, its true class, and for every classifier the call at the evaluation's threshold, the confidence, and the
evidence behind the call, the *scores*: the distance to each class (centroid: Euclidean to the class centre; GMM:
Mahalanobis to the nearest component of the class) or, for classifiers without a class model, the class
probabilities (SVM, kNN, and the softmax network's own output). :func:`evaluation_objects` builds it from the files of
one trial; :func:`classifier_scores` is the evidence alone, which a screened sample's objects get too
(:mod:`cytodml.predict`).

Column names of the table (also what the exports write): ``index`` (the patch row), ``object_id``, ``class_name``,
``subset``, the QC flags, ``map_x`` / ``map_y`` (the model's latent map), then per classifier ``<c>`` the columns
``<c>_call`` (class name, or "unknown" below the threshold), ``<c>_best_match``, ``<c>_confidence``,
``<c>_is_target`` and ``<c>_distance_<class>`` or ``<c>_probability_<class>`` per class.
"""

import numpy as np
import pandas as pd

from cytodml.errors import InputError, require_columns
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.learn.inputs import known_classes

__all__ = ["SCORE_KINDS", "classifier_evidence", "classifier_scores", "evaluation_objects"]

SCORE_KINDS = ("distance", "probability")


def classifier_scores(estimator, X, class_names: list[str], proba=None) -> tuple[str, pd.DataFrame]:
    """``(kind, scores)``: N x K distances to each class where the classifier measures them (a ``distances``
    method), else its class probabilities (``proba``, where the caller has them already); columns are
    ``class_names`` (in the classifier's ``classes_`` order)."""
    if hasattr(estimator, "distances"):
        return "distance", pd.DataFrame(estimator.distances(X), columns=class_names)
    return "probability", pd.DataFrame(estimator.predict_proba(X) if proba is None else proba, columns=class_names)


def classifier_evidence(objects: pd.DataFrame, classifier: str) -> tuple[str, pd.DataFrame]:
    """``(kind, scores)`` of one classifier in an objects table, one column per class name (the table's columns
    ``<classifier>_<kind>_<class>`` for an evaluation, ``<kind>_<class>`` for a screened sample, whose one classifier
    is ``""``)."""
    prefix = f"{classifier}_" if classifier else ""
    # a screened sample's table has the distances to the class centres for every classifier, and the probabilities
    # too for a classifier without a class model: those are its evidence
    for kind in reversed(SCORE_KINDS):
        columns = [column for column in objects.columns if column.startswith(f"{prefix}{kind}_")]
        if columns:
            return kind, objects[columns].set_axis(
                [column.removeprefix(f"{prefix}{kind}_") for column in columns], axis=1
            )
    raise InputError(f"objects table: no distance or probability columns of classifier '{classifier or 'the'}'")


def _calls(best_match: np.ndarray, confidence: np.ndarray, threshold: float, targets) -> dict[str, np.ndarray]:
    called = confidence >= threshold
    return {
        "call": np.where(called, best_match, UNKNOWN_NAME),
        "best_match": best_match,
        "confidence": confidence,
        "is_target": called & np.isin(best_match, list(targets)),
    }


def evaluation_objects(
    embeddings: pd.DataFrame,
    predictions: pd.DataFrame,
    classifiers: dict,
    thresholds: dict[str, float],
    patches: pd.DataFrame,
    latent_map: pd.DataFrame,
    targets=(),
    class_names: list[str] | None = None,
) -> pd.DataFrame:
    """The objects table of one trial's evaluation: its scored objects (the rows of ``predictions``), described above.

    ``embeddings`` is the embed stage's table (``index``, ``label``, ``class_name``, ``embedding``, and
    ``probability`` for a softmax network), ``predictions`` the evaluation's, ``classifiers`` its fitted classifiers
    (``classifiers.joblib``), ``thresholds`` the evaluation's threshold per classifier
    (:func:`~cytodml.evaluate.operating_point.read_evaluation`), ``patches`` the data set's patch table (object ids and
    QC flags), ``latent_map`` the model's map table (:func:`~cytodml.evaluate.latent_map.map_table`), ``class_names``
    the classes of the softmax network's outputs, in order (default: the trial's known classes, sorted, as the
    evaluate stage has them).
    """
    require_columns(predictions, ("index", "subset", "classifier", "predicted", "confidence"), "predictions")
    require_columns(embeddings, ("index", "label", "class_name", "embedding"), "embeddings")
    require_columns(latent_map, ("index", "x", "y"), "latent map")
    require_columns(patches, ("index", "object_id"), "patches")
    order = predictions.drop_duplicates("index")[["index", "subset"]].reset_index(drop=True)
    table = order.merge(embeddings[["index", "class_name"]], on="index", how="left", validate="one_to_one")
    if table["class_name"].isna().any():
        raise InputError("predictions: objects without an embedding (were they made from the same trial?)")
    flags = [column for column in patches.columns if column.startswith("qc_")]
    table = table.merge(patches[["index", "object_id", *flags]], on="index", how="left", validate="one_to_one")
    placed = latent_map.set_index("index").reindex(table["index"])
    table["map_x"], table["map_y"] = placed["x"].to_numpy(), placed["y"].to_numpy()
    rows = embeddings.set_index("index").loc[table["index"]]
    X = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
    name_of = dict(zip(embeddings["label"], embeddings["class_name"]))
    columns = {}
    for name, group in predictions.groupby("classifier", sort=False):
        if name not in thresholds:
            raise InputError(f"thresholds: none for classifier '{name}' (have {sorted(thresholds)})")
        group = group.set_index("index").loc[table["index"]]
        best_match = group["predicted"].map(name_of).to_numpy(dtype=object)
        calls = _calls(best_match, group["confidence"].to_numpy(), thresholds[name], targets)
        columns.update({f"{name}_{key}": value for key, value in calls.items()})
        if name == "softmax":  # the network's own output, one probability per class it learned (sorted)
            probability = np.stack(rows["probability"].to_numpy())
            outputs = class_names or known_classes(embeddings)
            kind, scores = "probability", pd.DataFrame(probability, columns=outputs)
        else:
            estimator = classifiers[name]
            kind, scores = classifier_scores(estimator, X, [name_of[label] for label in estimator.classes_.tolist()])
        columns.update({f"{name}_{kind}_{class_name}": scores[class_name].to_numpy() for class_name in scores})
    return pd.concat([table, pd.DataFrame(columns)], axis=1)
