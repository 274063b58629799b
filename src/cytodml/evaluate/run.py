"""One trial's evaluation: classifiers fitted on the training embeddings, scored on the test images in every view.

Views (the ``view`` column of the metrics table):

- ``multiclass``: the arg-max class of each known test image, no threshold (the papers' accuracy, F1, MCC, confusion);
- ``binary``: the target classes as positives, an image a target when its arg-max class is one, no threshold (the
  mitosis-vs-interphase MCC and balanced accuracy of Gupta et al., CVPR-W 2019);
- ``rare``: the target classes as positives; an image is called a target when its predicted class is a target and its
  confidence reaches the threshold (Luo et al., RSC Adv 2021);
- ``open_set``: known test images against images of classes never trained on, at the threshold;
- ``latent``: clustering and retrieval quality of the known test embeddings themselves (classifier ``embedding``);
- ``episodic`` (episodic protocol): nearest-prototype accuracy over N-way K-shot episodes (classifier ``prototype``);
- ``novel_rejection`` (with ``novel_classes``): how the classifiers treat the novel classes' images before any example
  of them is added, as open-set images: ``rejection_rate`` at the threshold, ``auroc`` against the known test images;
- ``novel_latent``: the ``latent`` metrics of the novel classes' images (classifier ``embedding``).

With ``novel_classes``, ``novel.csv`` holds the few-shot accuracy on them (:func:`novel_episodes`).

A softmax network's own output is reported as one more classifier, ``softmax``: its class probabilities, whose maximum
is the confidence, so the softmax confidence and a metric-learning classifier's confidence meet the same threshold on
the same open-set images.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cytodml.config import checked
from cytodml.errors import InputError, require_columns
from cytodml.evaluate.classifiers import select_on_validation
from cytodml.evaluate.detection import choose_threshold, open_set_results, spiked_samples
from cytodml.evaluate.metrics import (
    UNKNOWN,
    auroc,
    binary_metrics,
    cluster_agreement,
    cluster_metrics,
    confusion_long,
    multiclass_metrics,
    per_class_metrics,
    retrieval_metrics,
)
from cytodml.evaluate.protocols import episodic_accuracy, few_shot_accuracy, generalised_episodes
from cytodml.io import atomic_path, write_csv, write_parquet

SCORED = ("val", "test", "unknown")
#: the columns of novel.csv (:func:`novel_episodes`)
NOVEL_COLUMNS = [
    "setting",
    "method",
    "ways",
    "shots",
    "scope",
    "class_name",
    "accuracy",
    "ci_low",
    "ci_high",
    "episodes",
]
#: the settings of novel.csv, in order; the position seeds a setting's episodes
NOVEL_SETTINGS = ("novel", "base", "generalised")
REQUIRED_COLUMNS = ("index", "subset", "label", "class_name", "embedding")
log = logging.getLogger(__name__)


def _check_table(embeddings: pd.DataFrame, class_names: list[str], loss: str) -> list[int]:
    """Validate the embed stage's table; return the data-set label of each known class, in ``class_names`` order."""
    where = f"embeddings of loss {loss!r}"
    require_columns(embeddings, REQUIRED_COLUMNS, where)
    stray = sorted(set(embeddings["subset"]) - {"train", "pool", "novel", *SCORED})
    if stray:
        raise InputError(f"{where}: unknown subset value(s) {stray}")
    novel_known = set(embeddings.loc[embeddings["subset"] == "novel", "class_name"]) & set(class_names)
    if novel_known:
        raise InputError(f"{where}: novel class(es) {sorted(novel_known)} have training images")
    pairs = embeddings[["class_name", "label"]].drop_duplicates()
    for column in ("class_name", "label"):
        repeated = pairs[column][pairs[column].duplicated()]
        if len(repeated):
            raise InputError(f"{where}: {column} {repeated.iloc[0]!r} maps to more than one class")
    label_of = dict(zip(pairs["class_name"], pairs["label"]))
    absent = [name for name in class_names if name not in label_of]
    if absent:
        raise InputError(f"{where}: known class(es) {absent} have no row")
    unknown_known = set(embeddings.loc[embeddings["subset"] == "unknown", "class_name"]) & set(class_names)
    if unknown_known:
        raise InputError(f"{where}: known class(es) {sorted(unknown_known)} appear in the 'unknown' subset")
    if "probability" in embeddings.columns:
        widths = {len(p) for p in embeddings["probability"]}
        if widths != {len(class_names)}:
            raise InputError(
                f"{where}: column 'probability' holds vectors of length {sorted(widths)}, "
                f"expected {len(class_names)} (one per known class)"
            )
    return [int(label_of[name]) for name in class_names]


def _threshold(spec, predicted, confidence, y, is_val, targets) -> float:
    """The fixed threshold, or the one whose validation false-positive rate meets the configured rate.

    A validation false positive is a non-target called a target class (with targets), else any image called a wrong
    class: the call a threshold exists to suppress.
    """
    if not isinstance(spec, dict):
        return spec
    if not is_val.any():
        raise InputError("threshold.false_positive_rate: the split has no validation images to choose the threshold on")
    predicted, confidence, y = predicted[is_val], confidence[is_val], y[is_val]
    if len(targets):
        negative = ~np.isin(y, targets)
        alarm = np.isin(predicted, targets)
    else:
        negative = np.ones(len(y), dtype=bool)
        alarm = predicted != y
    scores = np.where(alarm, confidence, 0.0)[negative]
    return choose_threshold(scores, spec["false_positive_rate"])


def _rows(classifier: str, view: str, values: dict) -> list[dict]:
    return [{"classifier": classifier, "view": view, "metric": k, "value": float(v)} for k, v in values.items()]


def _calls(experiment, table, X, known_labels, is_train, is_val, is_scored, seed):
    """Fitted classifiers, and per classifier the class labels and probabilities of the scored rows."""
    fitted, calls = {}, {}
    for name, params in experiment["classifiers"].items():
        fitted[name], _ = select_on_validation(
            name,
            params or {},
            X[is_train],
            table["label"].to_numpy()[is_train],
            X[is_val],
            table["label"].to_numpy()[is_val],
            seed,
        )
        scored = X[is_scored]
        calls[name] = (fitted[name].classes_, fitted[name].predict_proba(scored), fitted[name].confidence(scored))
    if "probability" in table.columns:
        # the softmax network's own answer: its maximum class probability, as the rare-bioparticle paper compares
        probability = np.stack(table.loc[is_scored, "probability"].to_numpy()).astype(np.float64)
        calls["softmax"] = (np.asarray(known_labels), probability, probability.max(axis=1))
    if not calls:
        raise InputError("classifiers: none configured, and the embeddings have no softmax 'probability' column")
    return fitted, calls


@dataclass(frozen=True)
class _Scored:
    """The rows a trial scores (val, test, unknown) and what every classifier is judged against."""

    index: np.ndarray
    subset: np.ndarray
    y: np.ndarray
    names: np.ndarray  # the class name of each row, open-set classes included
    known_labels: list[int]
    class_names: list[str]
    target_labels: np.ndarray
    threshold_spec: object
    spiked_config: dict
    alarm: dict
    seed: int

    @property
    def is_val(self) -> np.ndarray:
        return self.subset == "val"

    @property
    def is_test(self) -> np.ndarray:
        return self.subset == "test"

    @property
    def on_sample(self) -> np.ndarray:
        """Test and open-set images: what a screened sample would hold."""
        return np.isin(self.subset, ("test", "unknown"))

    @property
    def is_target(self) -> np.ndarray:
        return np.isin(self.y, self.target_labels)


def _spiked(predicted, confidence, threshold: float, validation: tuple[int, int], rows: _Scored) -> pd.DataFrame:
    """One classifier's spiked samples (:func:`spiked_samples`) drawn from the test and open-set images, by class name;
    the same seed for every classifier, so their samples hold the same images."""
    name_of = dict(zip(rows.known_labels, rows.class_names))
    return spiked_samples(
        np.array([name_of[label] for label in predicted[rows.on_sample]]),
        confidence[rows.on_sample],
        rows.names[rows.on_sample],
        [name_of[label] for label in rows.target_labels],
        threshold,
        seed=rows.seed,
        alarm=rows.alarm,
        validation=validation,
        **rows.spiked_config,
    )


def _judge(name: str, classes: np.ndarray, proba: np.ndarray, confidence: np.ndarray, rows: _Scored) -> dict[str, list]:
    """Every view of one classifier's probabilities and confidence over the scored rows."""
    predicted = classes[np.argmax(proba, axis=1)]
    threshold = _threshold(rows.threshold_spec, predicted, confidence, rows.y, rows.is_val, rows.target_labels)
    parts = _known_views(name, predicted, confidence, threshold, rows)
    parts["metrics"] += _target_views(name, classes, proba, predicted, confidence, threshold, rows, parts["spiked"])
    parts["predictions"] = [
        pd.DataFrame(
            {
                "index": rows.index,
                "subset": rows.subset,
                "label": rows.y,
                "classifier": name,
                "predicted": predicted,
                "confidence": confidence,
            }
        )
    ]
    return parts


def _known_views(name, predicted, confidence, threshold: float, rows: _Scored) -> dict[str, list]:
    """The multiclass and open-set views: metrics, confusions (arg-max, and at the threshold with open-set images as
    the actual "unknown" row and rejected images as the predicted one) and per-class scores."""
    test, sample, is_unknown = rows.is_test, rows.on_sample, rows.subset == "unknown"
    y, labels, names = rows.y, rows.known_labels, rows.class_names
    metrics = _rows(name, "multiclass", multiclass_metrics(y[test], predicted[test], labels))
    open_set = open_set_results(confidence[test], predicted[test], y[test], confidence[is_unknown], threshold)
    metrics += _rows(name, "open_set", {**open_set, "threshold": threshold})
    actual = np.where(is_unknown, UNKNOWN, y)
    called = np.where(confidence >= threshold, predicted, UNKNOWN)
    return {
        "metrics": metrics,
        "confusion": [
            confusion_long(y[test], predicted[test], labels, names).assign(classifier=name, view="multiclass"),
            confusion_long(actual[sample], called[sample], labels, names).assign(classifier=name, view="open_set"),
        ],
        "per_class": [per_class_metrics(y[test], predicted[test], labels, names).assign(classifier=name)],
        "spiked": [],
        "open_set": [{"classifier": name, "threshold": threshold, **open_set}],
    }


def _target_views(name, classes, proba, predicted, confidence, threshold: float, rows: _Scored, spiked: list) -> list:
    """The binary (arg-max) and rare (at the threshold) views of the targets against the rest, and the spiked
    samples (appended to ``spiked``); nothing for an experiment without targets."""
    if not len(rows.target_labels):
        return []
    test = rows.is_test
    predicted_target = np.isin(predicted, rows.target_labels)
    target_score = proba[:, np.isin(classes, rows.target_labels)].sum(axis=1)
    metrics = _rows(name, "binary", binary_metrics(rows.is_target[test], predicted_target[test]))
    called_target = predicted_target & (confidence >= threshold)
    rare = binary_metrics(rows.is_target[test], called_target[test])
    rare["auroc"] = auroc(target_score[test], rows.is_target[test])
    # what a calibrated alarm rests on, here and when the classifier screens new samples (cytodml.predict)
    val_negative = rows.is_val & ~rows.is_target
    validation = (int(called_target[val_negative].sum()), int(val_negative.sum()))
    rare |= {"threshold": threshold, "val_false_positives": validation[0], "val_negatives": validation[1]}
    samples = _spiked(predicted, confidence, threshold, validation, rows)
    spiked.append(_first(samples.assign(classifier=name, threshold=threshold), ["classifier"]))
    return metrics + _rows(name, "rare", rare)


def _episodes(experiment: dict, X_test: np.ndarray, names_test: np.ndarray, seed: int) -> pd.DataFrame:
    table = episodic_accuracy(X_test, names_test, seed=seed, **experiment["episodes"])
    return table.rename(columns={"class": "class_name"})


def evaluate_trial(
    embeddings: pd.DataFrame, experiment: dict, class_names: list[str], loss: str, seed: int
) -> dict[str, object]:
    """Evaluate one trial's embeddings (the embed stage's table) under the experiment's protocol.

    ``experiment`` is the experiment's config block; keys it lacks take the config schema's defaults, and a wrong key
    or value raises :class:`InputError` naming it. Classifiers named in ``experiment["classifiers"]`` are fitted on
    the ``train`` rows, with open hyper-parameters chosen on ``val`` (:func:`select_on_validation`), and applied to
    ``val``, ``test`` and ``unknown`` rows. The threshold is ``experiment["threshold"]`` or, given
    ``{false_positive_rate: r}``, chosen per classifier on validation (:func:`_threshold`). Targets
    (``experiment["targets"]``, class names) make the ``rare`` view and the spiked samples, whose alarms follow
    ``experiment["alarm"]`` (:func:`~cytodml.evaluate.detection.alarm_rule`); spiked-sample backgrounds are drawn
    from the non-target ``test`` and ``unknown`` images, min(spiked.background, their number) per sample
    (:func:`~cytodml.evaluate.detection.spiked_samples`), so unseen particle types can raise false positives as in a
    real water sample, and every classifier sees the same samples (one seed), so their rows pair up. The episodic
    protocol adds nearest-prototype episodes on the known test images (``experiment["episodes"]``).

    Returns a dict: ``metrics`` (classifier, view, metric, value), ``confusion`` (classifier, view, actual, predicted,
    count: view ``multiclass`` the arg-max on known test images, view ``open_set`` at the threshold with open-set
    images as actual "unknown"), ``per_class``, ``predictions`` (index, subset, label, classifier, predicted,
    confidence for the val, test and unknown rows), ``spiked`` and ``open_set`` (one table each, a ``classifier``
    column first), ``episodes`` (per class; empty unless the protocol is episodic) and ``classifiers`` (name -> fitted).
    """
    experiment = checked("experiment", experiment, partial=True)
    known_labels = _check_table(embeddings, class_names, loss)
    stray = [t for t in experiment["targets"] if t not in class_names]
    if stray:
        raise InputError(f"targets: {stray} are not among the known classes {class_names}")
    table = embeddings.reset_index(drop=True)
    X = np.stack(table["embedding"].to_numpy()).astype(np.float64)
    subset = table["subset"].to_numpy()
    is_scored = np.isin(subset, SCORED)
    if not (subset == "test").any():
        raise InputError(f"embeddings of loss {loss!r}: no 'test' rows to evaluate")
    fitted, calls = _calls(experiment, table, X, known_labels, subset == "train", subset == "val", is_scored, seed)
    rows = _scored_rows(table[is_scored], experiment, known_labels, class_names, seed)

    parts = {"metrics": [], "confusion": [], "per_class": [], "predictions": [], "spiked": [], "open_set": []}
    for name, (classes, proba, confidence) in calls.items():
        for key, value in _judge(name, classes, proba, confidence, rows).items():
            parts[key] += value
    if parts["spiked"]:
        # the job log says what the background rule gave, so a background smaller than asked is never a surprise
        log.info(
            "spiked samples: %d background images each (spiked.background %d, at most the %d non-target test and "
            "open-set images)",
            parts["spiked"][0]["background"].iloc[0],
            experiment["spiked"]["background"],
            int((rows.on_sample & ~rows.is_target).sum()),
        )
    X_test, y_test = X[is_scored][rows.is_test], rows.y[rows.is_test]
    parts["metrics"] += _rows("embedding", "latent", latent_metrics(X_test, y_test, seed))
    novel = pd.DataFrame(columns=NOVEL_COLUMNS)
    if (subset == "novel").any():
        thresholds = {row["classifier"]: row["threshold"] for row in parts["open_set"]}
        parts["metrics"] += _novel_rejection(table, X, fitted, calls, thresholds, rows)
        X_novel, y_novel = X[subset == "novel"], table["label"].to_numpy()[subset == "novel"]
        parts["metrics"] += _rows("embedding", "novel_latent", latent_metrics(X_novel, y_novel, seed))
        name_of = dict(zip(table["label"], table["class_name"]))
        novel = novel_episodes(experiment, fitted, (X_test, y_test), (X_novel, y_novel), name_of, seed)
    episodes = pd.DataFrame(columns=["class_name", "accuracy", "ci_low", "ci_high", "episodes"])
    if experiment["protocol"] == "episodic":
        episodes = _episodes(experiment, X_test, np.array([class_names[known_labels.index(v)] for v in y_test]), seed)
        # Every episode holds `ways` classes with `queries` queries each, so the mean episode accuracy is the
        # episode-weighted mean of the per-class accuracies.
        overall = np.average(episodes["accuracy"], weights=episodes["episodes"])
        parts["metrics"] += _rows("prototype", "episodic", {"accuracy": overall})
    return _tables(parts) | {"episodes": episodes, "novel": novel, "classifiers": fitted}


def latent_metrics(X, y, seed: int) -> dict:
    """Clustering and retrieval quality of labelled embeddings: silhouette, Davies-Bouldin, precision@1, MAP@R,
    R-precision, Recall@K, and the NMI and AMI of k-means (:mod:`cytodml.evaluate.metrics`)."""
    return cluster_metrics(X, y) | retrieval_metrics(X, y) | cluster_agreement(X, y, seed=seed)


def _novel_rejection(table: pd.DataFrame, X: np.ndarray, fitted: dict, calls: dict, thresholds: dict, rows: _Scored):
    """Per classifier, the novel images as open-set ones before any is added (:func:`open_set_results` against the
    known test images): ``rejection_rate`` (called unknown at the classifier's threshold), ``auroc``,
    ``known_lost_rate``, ``threshold``."""
    is_novel = table["subset"].to_numpy() == "novel"
    metrics = []
    for name, (classes, proba, confidence) in calls.items():
        if name == "softmax":
            novel_confidence = np.stack(table.loc[is_novel, "probability"].to_numpy()).max(axis=1)
        else:
            novel_confidence = fitted[name].confidence(X[is_novel])
        test = rows.is_test
        predicted = classes[np.argmax(proba, axis=1)]
        result = open_set_results(confidence[test], predicted[test], rows.y[test], novel_confidence, thresholds[name])
        values = {
            "rejection_rate": 1 - result["false_alarm_rate"],
            "auroc": result["auroc"],
            "known_lost_rate": result["known_lost_rate"],
            "threshold": thresholds[name],
        }
        metrics += _rows(name, "novel_rejection", values)
    return metrics


def _episode_seed(seed: int, setting: str, shots: int) -> int:
    """The seed of one setting's episodes at ``shots``: the same for every loss of a trial, so that losses meet the
    same episodes, and unrelated between settings and shots."""
    state = np.random.SeedSequence([seed, NOVEL_SETTINGS.index(setting), shots]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def novel_episodes(experiment: dict, fitted: dict, base_test: tuple, novel: tuple, name_of: dict, seed: int):
    """The few-shot accuracy on the novel classes, the rows of novel.csv (:data:`NOVEL_COLUMNS`), for each K of
    ``novel_episodes.shots``:

    - setting ``novel``: N-way K-shot episodes on the novel pool, each query named by every method of
      :func:`~cytodml.evaluate.protocols.few_shot_accuracy` (``scope`` ``all`` and per ``class``);
    - setting ``base``: the same N and K on the base classes' test images (those with K + Q of them), so that base and
      novel compare at the same N;
    - setting ``generalised``: each fitted classifier that takes new classes without refitting (centroid, kNN)
      extended with the K support images of every novel class, on queries of the base and novel classes together
      (:func:`~cytodml.evaluate.protocols.generalised_episodes`; ``ways`` is the number of novel classes).

    ``base_test`` and ``novel`` are ``(embeddings, data-set labels)``; ``name_of`` maps a label to its class name.
    """
    spec = experiment["novel_episodes"]
    X_base, y_base = base_test
    X_novel, y_novel = novel
    n_novel = len(np.unique(y_novel))
    ways, queries, count = spec.get("ways", n_novel), spec["queries"], spec["count"]
    parts = []
    for shots in spec["shots"]:
        parts.append(
            few_shot_accuracy(
                X_novel, y_novel, ways, shots, queries, count, _episode_seed(seed, "novel", shots)
            ).assign(setting="novel", ways=ways, shots=shots)
        )
        labels, sizes = np.unique(y_base, return_counts=True)
        eligible = np.isin(y_base, labels[sizes >= shots + queries])
        if len(labels[sizes >= shots + queries]) >= ways:
            base = few_shot_accuracy(
                X_base[eligible], y_base[eligible], ways, shots, queries, count, _episode_seed(seed, "base", shots)
            )
            parts.append(base.assign(setting="base", ways=ways, shots=shots))
        else:
            log.warning(
                "base episodes at %d-shot skipped: %d base classes have %d + %d test images, %d-way episodes need %d",
                shots,
                int((sizes >= shots + queries).sum()),
                shots,
                queries,
                ways,
                ways,
            )
        for name, classifier in fitted.items():
            if not hasattr(classifier, "add_classes"):
                continue
            generalised = generalised_episodes(
                classifier,
                X_base,
                y_base,
                X_novel,
                y_novel,
                shots,
                queries,
                count,
                _episode_seed(seed, "generalised", shots),
            )
            parts.append(generalised.assign(setting="generalised", method=name, ways=n_novel, shots=shots))
    table = pd.concat(parts, ignore_index=True)
    named = table["class_name"].map(lambda label: name_of.get(label, label) if label != "" else "")
    return table.assign(class_name=named)[NOVEL_COLUMNS]


def _scored_rows(scored: pd.DataFrame, experiment: dict, known_labels: list[int], class_names, seed) -> _Scored:
    """The val, test and open-set rows, with what every classifier is judged against."""
    return _Scored(
        index=scored["index"].to_numpy(),
        subset=scored["subset"].to_numpy(),
        y=scored["label"].to_numpy(),
        names=scored["class_name"].to_numpy(),
        known_labels=known_labels,
        class_names=class_names,
        target_labels=np.array([known_labels[class_names.index(t)] for t in experiment["targets"]], dtype=np.int64),
        threshold_spec=experiment["threshold"],
        spiked_config=experiment["spiked"],
        alarm=experiment["alarm"],
        seed=seed,
    )


def _tables(parts: dict[str, list]) -> dict[str, pd.DataFrame]:
    """Every classifier's parts stacked into one table per result, the classifier column first."""
    return {
        "metrics": pd.DataFrame(parts["metrics"], columns=["classifier", "view", "metric", "value"]),
        "confusion": _first(pd.concat(parts["confusion"], ignore_index=True), ["classifier", "view"]),
        "per_class": _first(pd.concat(parts["per_class"], ignore_index=True), ["classifier"]),
        "predictions": pd.concat(parts["predictions"], ignore_index=True),
        "spiked": (
            pd.concat(parts["spiked"], ignore_index=True) if parts["spiked"] else pd.DataFrame(columns=["classifier"])
        ),
        "open_set": pd.DataFrame(parts["open_set"]),
    }


def _first(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``table`` with ``columns`` moved to the front."""
    return table[columns + [c for c in table.columns if c not in columns]]


def write_trial(results: dict[str, object], out_dir) -> None:
    """Write :func:`evaluate_trial`'s results into ``out_dir``, each file atomically.

    metrics.csv, confusion.csv, per_class.csv, predictions.parquet, spiked.csv, open_set.csv, episodes.csv and
    classifiers.joblib (name -> fitted classifier). A table a trial has no rows for (spiked samples without targets,
    episodes outside the episodic protocol) is written with its header only, so every trial has the same files.
    """
    out_dir = Path(out_dir)
    for name in ("metrics", "confusion", "per_class", "spiked", "open_set", "episodes", "novel"):
        write_csv(results[name], out_dir / f"{name}.csv")
    write_parquet(results["predictions"], out_dir / "predictions.parquet")
    with atomic_path(out_dir / "classifiers.joblib") as tmp:
        joblib.dump(results["classifiers"], tmp)
