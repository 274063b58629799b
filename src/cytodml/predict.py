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
the model is refused with both values named.

A :class:`Detector` is the network and one classifier, with the class name of each of the classifier's labels. The
evaluate stage saves its classifiers with the data set's labels (positions in the sorted list of all the data set's
classes); the network's bundle lists the classes it learned, sorted. Both orders are sorted, so the i-th label of
``classes_`` is the i-th of the bundle's ``class_names`` (:func:`load_detector`).

New particle types without retraining (:func:`add_gallery`): labelled example images of a new class, embedded by the
same network, join a centroid classifier as one more class centre (the prototype of Snell et al., NeurIPS 2017) or a
kNN classifier as more labelled neighbours; :func:`save_detector` keeps the extended classifier, with its class names
and the fingerprint of the network it belongs to.
"""

import copy
import hashlib
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial.distance import cdist

from cytodml.config import channel_indices, experiment_settings, resolve_source
from cytodml.data.patching import QC_FLAGS, make_patches
from cytodml.data.sources import ingest
from cytodml.errors import InputError
from cytodml.evaluate.classifiers import CentroidClassifier, GMMClassifier, KNNClassifier
from cytodml.evaluate.detection import BOUND_CONFIDENCE, alarm_count, alarm_rule
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.io import atomic_path, write_csv, write_parquet, write_text
from cytodml.learn.embed import check_images, embed, load_model
from cytodml.report.figures import display_image

__all__ = [
    "Detector",
    "add_gallery",
    "check_predict_config",
    "dump_source",
    "load_detector",
    "model_fingerprint",
    "predict_sample",
    "read_evaluation",
    "save_detector",
    "summarize",
    "summary_markdown",
    "target_montage",
    "write_prediction",
]

DETECTOR_FORMAT = "cytodml-detector"
DETECTOR_VERSION = 1
#: keys of a data set's ``source:`` block that describe how its files are laid out, inherited by a dump of that kind
LAYOUT_KEYS = ("channel_tokens", "group_pattern", "tile_size", "root", "class_names")
#: classifiers whose fitted state takes new classes without refitting (their ``add_classes``)
GALLERY_CLASSIFIERS = ("centroid", "knn")
MONTAGE_LIMIT = 64
"""The montage shows the most confident called targets up to this many; the summary gives the full count."""
MONTAGE_COLUMNS = 8


@dataclass(frozen=True)
class Detector:
    """A trained network and a classifier fitted on its embeddings, with the class name of each label.

    ``model`` is the ``(network, loss, bundle)`` of :func:`~cytodml.learn.embed.load_model`; ``names`` maps each of
    ``classifier.classes_`` to its class name; ``centres`` holds one embedding-space centre per class name (the
    class means), the reference of the per-object distances; ``origin`` names the files it came from.
    """

    model: tuple
    classifier: object
    classifier_name: str
    names: dict
    centres: pd.DataFrame
    origin: str

    @property
    def bundle(self) -> dict:
        return self.model[2]

    @property
    def class_names(self) -> list[str]:
        """Class names in the classifier's ``classes_`` order."""
        return [self.names[label] for label in self.classifier.classes_.tolist()]


# ------------------------------------------------------------------------------------------------ loading, saving


def model_fingerprint(bundle: dict) -> str:
    """Hex sha1 of a model bundle's weights (names, shapes, dtypes, bytes): embeddings of one network never mix."""
    digest = hashlib.sha1()
    for name, tensor in bundle["state_dict"].items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_detector(model_path, classifiers_path, classifier: str) -> Detector:
    """The network of ``model_path`` with classifier ``classifier`` of ``classifiers_path``.

    ``classifiers_path`` is the evaluate stage's ``classifiers.joblib`` (name -> fitted classifier, on the data set's
    labels of the network's classes) or a file :func:`save_detector` wrote for this network. Raises
    :class:`InputError` for a file that is not a cytodml model or classifier file, a classifier the file does not
    hold, and a classifier fitted on another network's embeddings.
    """
    model = load_model(model_path)
    bundle = model[2]
    stored = _load_joblib(classifiers_path)
    if isinstance(stored, dict) and stored.get("format") == DETECTOR_FORMAT:
        estimator, names, centres = _saved_classifier(stored, classifier, bundle, classifiers_path, model_path)
    elif isinstance(stored, dict) and stored and all(hasattr(value, "predict_proba") for value in stored.values()):
        estimator, names, centres = _evaluated_classifier(stored, classifier, bundle, classifiers_path, model_path)
    else:
        raise InputError(
            f"{classifiers_path}: not a cytodml classifiers file (expected the evaluate stage's classifiers.joblib)"
        )
    if estimator.n_features_in_ != bundle["embedding_dim"]:
        raise InputError(
            f"{classifiers_path}: classifier '{classifier}' takes {estimator.n_features_in_}-dimensional embeddings, "
            f"the network {model_path} makes {bundle['embedding_dim']}-dimensional ones"
        )
    origin = f"network {model_path}, classifiers {classifiers_path}"
    return Detector(model, estimator, classifier, names, centres, origin)


def _saved_classifier(stored: dict, classifier: str, bundle: dict, where, model_path):
    """(classifier, label -> name, centres) of a file :func:`save_detector` wrote, checked against the network."""
    if stored.get("version") != DETECTOR_VERSION:
        raise InputError(f"{where}: detector format version {stored.get('version')}, this cytodml reads 1")
    if stored["classifier_name"] != classifier:
        raise InputError(f"{where}: holds classifier '{stored['classifier_name']}', not '{classifier}'")
    if stored["fingerprint"] != model_fingerprint(bundle):
        raise InputError(
            f"{where}: the classifier was fitted on the embeddings of another network than {model_path} "
            f"({stored['origin']})"
        )
    return stored["estimator"], dict(stored["names"]), pd.DataFrame(stored["centres"]).T


def _evaluated_classifier(stored: dict, classifier: str, bundle: dict, where, model_path):
    """(classifier, label -> name, centres) of the evaluate stage's classifiers; an SVM, which has no class model,
    takes its centres from a classifier beside it that has one."""
    if classifier not in stored:
        raise InputError(f"{where}: no classifier '{classifier}' (it holds {', '.join(sorted(stored))})")
    estimator = stored[classifier]
    names = _evaluation_names(estimator, bundle, where, model_path)
    for candidate in [estimator, *stored.values()]:
        centres = _centres(candidate, names)
        if centres is not None:
            return estimator, names, centres
    raise InputError(
        f"{where}: classifier '{classifier}' has no class centres and the file holds no centroid, gmm or knn "
        "classifier to take them from"
    )


def save_detector(detector: Detector, path) -> None:
    """Write the detector's classifier, class names and centres, tied to its network by :func:`model_fingerprint`."""
    stored = {
        "format": DETECTOR_FORMAT,
        "version": DETECTOR_VERSION,
        "classifier_name": detector.classifier_name,
        "estimator": detector.classifier,
        "names": dict(detector.names),
        "centres": {name: row.to_numpy() for name, row in detector.centres.iterrows()},
        "fingerprint": model_fingerprint(detector.bundle),
        "origin": detector.origin,
    }
    with atomic_path(path) as tmp:
        joblib.dump(stored, tmp)


def read_evaluation(metrics_path, classifier: str, *, threshold=None, targets=None, evaluated_targets=None):
    """The threshold and the validation false positives the evaluation recorded for ``classifier`` (metrics.csv).

    Returns ``(threshold, validation)``: ``threshold`` the given one, else the evaluation's (view ``open_set``, metric
    ``threshold``: the configured number, or the one chosen on validation for a false-alarm rate); ``validation`` the
    ``(false positives, negatives)`` of non-target validation images at that threshold (view ``rare``), which a
    calibrated alarm rests on, or None where they do not apply: a threshold or targets other than the evaluation's
    (``evaluated_targets``), or an evaluation without targets.
    """
    try:
        table = pd.read_csv(metrics_path)
    except FileNotFoundError:
        if threshold is None:
            raise InputError(f"{metrics_path}: no such metrics file (give the threshold instead)") from None
        return float(threshold), None
    missing = {"classifier", "view", "metric", "value"} - set(table.columns)
    if missing:
        raise InputError(f"{metrics_path}: not an evaluation metrics table (no column(s) {sorted(missing)})")
    values = table[table["classifier"] == classifier].set_index(["view", "metric"])["value"]
    if ("open_set", "threshold") not in values.index:
        known = sorted(table.loc[table["metric"] == "threshold", "classifier"].unique())
        raise InputError(f"{metrics_path}: no threshold for classifier '{classifier}' (it has {known})")
    evaluated = float(values[("open_set", "threshold")])
    same = (threshold is None or float(threshold) == evaluated) and (
        targets is None or sorted(targets) == sorted(evaluated_targets or [])
    )
    validation = None
    if same and ("rare", "val_negatives") in values.index:
        validation = (int(values[("rare", "val_false_positives")]), int(values[("rare", "val_negatives")]))
    return (evaluated if threshold is None else float(threshold)), validation


def _load_joblib(path):
    try:
        return joblib.load(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such classifiers file") from None
    except Exception as err:  # pickle, zlib and EOF errors alike for a foreign or truncated file
        raise InputError(f"{path}: not a cytodml classifiers file ({type(err).__name__}: {err})") from None


def _evaluation_names(estimator, bundle: dict, where: str, model_path) -> dict:
    """Label -> class name for a classifier of the evaluate stage: the sorted labels pair with the sorted names."""
    labels, names = estimator.classes_.tolist(), list(bundle["class_names"])
    if len(labels) != len(names) or names != sorted(names):
        raise InputError(
            f"{where}: the classifier knows {len(labels)} classes, the network {model_path} {len(names)} "
            f"({', '.join(names)}); were they made by the same trial?"
        )
    return dict(zip(labels, names))


def _centres(estimator, names: dict) -> pd.DataFrame | None:
    """Class means in the embedding space, one row per class name, from a classifier's fitted class model."""
    if isinstance(estimator, CentroidClassifier):
        means = estimator.centres_
    elif isinstance(estimator, KNNClassifier):
        means = np.stack([estimator.gallery_[estimator.gallery_labels_ == c].mean(axis=0) for c in estimator.classes_])
    elif isinstance(estimator, GMMClassifier):
        means = np.stack([mixture.weights_ @ mixture.means_ for mixture in estimator.mixtures_])
    else:
        return None
    return pd.DataFrame(means, index=[names[label] for label in estimator.classes_.tolist()])


# ----------------------------------------------------------------------------------------------- the dump's patches


def dump_source(dataset_source: dict, dump: dict) -> dict:
    """The ``source:`` block of a new dump: its own keys, the rest of its layout from the model's data set.

    ``dump`` holds at least ``path``; its ``kind`` defaults to the data set's, and a dump of the data set's kind
    inherits the layout keys (:data:`LAYOUT_KEYS`: channel tokens, tile size, ...) it does not set, since a new sample
    from the same instrument is exported the same way.
    """
    if not dump.get("path"):
        raise InputError("dump: the path of the raw dump is missing")
    kind = dump.get("kind", dataset_source["kind"])
    source = {"kind": kind}
    if kind == dataset_source["kind"]:
        source |= {key: dataset_source[key] for key in LAYOUT_KEYS if key in dataset_source}
    return source | dict(dump)


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
    alarm: dict | None = None,
    validation: tuple[int, int] | None = None,
    name: str | None = None,
    workdir=None,
    workers: int = 1,
) -> dict:
    """Classify every object of a raw dump, count the classes, and decide the alarm.

    ``source`` is the dump's ``source:`` block (:func:`dump_source`), ``channels`` its channel names in order (the
    data set's), ``patch`` the data set's ``patch:`` block; ``threshold`` the confidence an object needs to be called
    a class; ``targets`` the class names that raise the alarm; ``alarm`` the rule
    (:func:`~cytodml.evaluate.detection.alarm_rule`), ``validation`` what a calibrated one rests on
    (:func:`read_evaluation`); ``workdir`` where the patches are cut (a temporary folder, removed after).

    Returns ``objects`` (one row per patch: ``object_id``, ``predicted`` (the class called, or "unknown" below the
    threshold), ``best_match`` (the most probable class), ``confidence``, ``is_target`` (called a target class),
    ``distance_<class>`` (Euclidean, to each class centre), the QC flags), ``summary`` (:func:`summarize`), ``target_rows`` (the rows of the called targets, most
    confident first, as the montage shows them) and ``target_images`` (their patches).
    """
    rule = alarm_rule(alarm)
    if "false_alarm_rate" in rule and validation is None:
        raise InputError(
            "alarm.false_alarm_rate: the evaluation recorded no validation false positives for this classifier at "
            f"threshold {threshold} and targets {targets}; keep the evaluation's threshold and targets, or give "
            "alarm.min_targets"
        )
    if isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise InputError(f"threshold: {threshold} is not a confidence in [0, 1]")
    stray = [target for target in targets if target not in detector.class_names]
    if stray:
        raise InputError(f"targets: {stray} are not classes of the classifier ({', '.join(detector.class_names)})")
    table, images, counts = _dump_patches(source, list(channels), patch, detector.bundle, workdir, workers)
    objects = _classify(detector, embed(detector.model, images)["embedding"], threshold, targets)
    objects = pd.concat([table[["object_id"]], objects, table[QC_FLAGS]], axis=1)
    dropped = int(counts[["dropped_filler", "dropped_duplicate", "dropped_background"]].to_numpy().sum())
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
        dropped=dropped,
    )
    called = objects.index[objects["is_target"]].to_numpy()
    order = called[np.argsort(-objects.loc[called, "confidence"].to_numpy(), kind="stable")]
    return {"objects": objects, "summary": summary, "target_images": images[order], "target_rows": order}


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
    return objects


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
) -> dict:
    """The sample's counts and alarm from its objects table (columns ``predicted``, ``is_target`` and QC flags).

    ``counts`` has every class of ``class_names`` (zeros included) and ``unknown``; ``target_count`` is the number of
    objects called a target class; ``alarm`` is True when it reaches ``min_targets``, the count the rule asks of a
    sample of this size (:func:`~cytodml.evaluate.detection.alarm_count`; ``validation`` for a calibrated rule).
    """
    rule = alarm_rule(alarm)
    min_targets = alarm_count(rule, len(objects), *(validation or (None, None)))
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
        "alarm": target_count >= min_targets,
        "min_targets": min_targets,
        "alarm_rule": rule,
        "validation": list(validation) if validation else None,
        "threshold": float(threshold),
        "classifier": classifier,
        "origin": origin,
        "qc": {flag: int(objects[flag].sum()) for flag in QC_FLAGS if flag in objects},
        "dropped": int(dropped),
    }


# ---------------------------------------------------------------------------------------------------------- gallery


def add_gallery(
    detector: Detector,
    source: dict,
    *,
    channels: list[str],
    patch: dict,
    workdir=None,
    workers: int = 1,
) -> Detector:
    """The detector with the labelled examples of ``source`` (one folder per class) added to its classifier.

    The examples are patched and embedded like a dump and passed to the classifier's ``add_classes``: a class it
    does not know becomes a new class (a new centre for the centroid classifier, new neighbours for kNN), examples of a
    known class join it. The network is unchanged, so nothing is retrained. The detector given is left as it was.
    """
    if not hasattr(detector.classifier, "add_classes"):
        raise InputError(
            f"classifier '{detector.classifier_name}' cannot take new classes without refitting; "
            f"a gallery extends {' or '.join(GALLERY_CLASSIFIERS)}"
        )
    table, images, _ = _dump_patches(source, list(channels), patch, detector.bundle, workdir, workers)
    unlabelled = table["class_name"].eq("")
    if unlabelled.any():
        raise InputError(f"gallery {source.get('path')}: {int(unlabelled.sum())} examples without a class name")
    label_of = {name: label for label, name in detector.names.items()}
    names = dict(detector.names)
    next_label = max(label_of.values()) + 1
    for class_name in sorted(set(table["class_name"]) - set(label_of)):
        label_of[class_name], names[next_label] = next_label, class_name
        next_label += 1
    X = embed(detector.model, images)["embedding"].astype(np.float64)
    y = np.array([label_of[name] for name in table["class_name"]], dtype=detector.classifier.classes_.dtype)
    estimator = copy.deepcopy(detector.classifier).add_classes(X, y)
    origin = f"{detector.origin}, gallery {source.get('path')}"
    return replace(detector, classifier=estimator, names=names, centres=_centres(estimator, names), origin=origin)


# ---------------------------------------------------------------------------------------------------------- outputs


def write_prediction(result: dict, out_dir) -> None:
    """objects.parquet, objects.csv, summary.md and targets.png of :func:`predict_sample`'s result, each atomically."""
    out_dir = Path(out_dir)
    write_parquet(result["objects"], out_dir / "objects.parquet")
    write_csv(result["objects"], out_dir / "objects.csv")
    objects = result["objects"].loc[result["target_rows"]]
    target_montage(result["target_images"], objects, out_dir / "targets.png")
    write_text(summary_markdown(result["summary"], montage="targets.png"), out_dir / "summary.md")


def target_montage(images: np.ndarray, objects: pd.DataFrame, path, limit: int = MONTAGE_LIMIT) -> None:
    """A grid of the called targets' patches, each captioned with its class and confidence, in the given order.

    ``objects`` holds the rows of ``images`` (columns ``object_id``, ``predicted``, ``confidence``); the first
    ``limit`` are drawn. A sample without targets gets a figure saying so, so the file always exists.
    """
    shown = min(len(images), limit)
    columns = min(MONTAGE_COLUMNS, max(shown, 1))
    rows = max(math.ceil(shown / columns), 1)
    aspect = 1 if images.shape[1] == 3 else images.shape[1]
    figure = Figure(figsize=(1.6 * columns * aspect, 1.9 * rows + 0.5))
    FigureCanvasAgg(figure)
    if not shown:
        figure.text(0.5, 0.5, "no target called in this sample", ha="center", va="center", fontsize=12)
    else:
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, image, row in zip(axes, images[:shown], objects.iloc[:shown].itertuples()):
            ax.imshow(display_image(image), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{row.predicted}\n{row.confidence:.3f}", fontsize=8)
            ax.text(0.5, -0.04, row.object_id, transform=ax.transAxes, ha="center", va="top", fontsize=6)
        more = f" (the {shown} most confident of {len(images)})" if len(images) > shown else ""
        figure.suptitle(f"called targets, to confirm{more}", fontsize=10)
        figure.subplots_adjust(left=0.01, right=0.99, bottom=0.04, top=1 - 0.5 / figure.get_figheight(), hspace=0.5)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def summary_markdown(summary: dict, montage: str | None = None) -> str:
    """A one-page Markdown report of a sample: the alarm, the counts per class, the settings, the montage link."""
    alarm = "**ALARM**" if summary["alarm"] else "no alarm"
    found = ", ".join(f"{name} {count}" for name, count in summary["target_counts"].items())
    rule = summary["alarm_rule"]
    why = ""
    if "false_alarm_rate" in rule:
        false_positives, negatives = summary["validation"]
        why = (
            f" This is how many a blank sample of {summary['objects']} objects reaches with probability at most "
            f"{rule['false_alarm_rate']:g}, from the classifier's {false_positives} false positive(s) among "
            f"{negatives} non-target validation images (upper {BOUND_CONFIDENCE:.0%} bound on the rate); fewer called "
            "targets cannot be told from false positives."
        )
    lines = [
        f"# Sample {summary['sample']}",
        "",
        f"{alarm}: {summary['target_count']} target(s) called ({found}) among {summary['objects']} objects; the rule "
        f"raises the alarm at {summary['min_targets']} or more objects called a target class "
        f"({', '.join(summary['targets'])}) with confidence >= {summary['threshold']:g}.{why}",
        "",
        "| class | objects |",
        "|---|---:|",
        *(
            f"| {name}{' (target)' if name in summary['targets'] else ''} | {count} |"
            for name, count in summary["counts"].items()
        ),
        f"| total | {summary['objects']} |",
        "",
        f"Objects below the threshold are `{UNKNOWN_NAME}`: none of the known classes, or not sure which.",
        "",
        "Quality flags: "
        + ", ".join(f"{flag.removeprefix('qc_')} {count}" for flag, count in summary["qc"].items())
        + f"; {summary['dropped']} object(s) dropped before classification (filler, duplicate or background).",
        "",
        f"Classifier `{summary['classifier']}`: {summary['origin']}.",
    ]
    if montage:
        lines += ["", f"![called targets, to confirm]({montage})"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------- config


def check_predict_config(config: dict, list_classes=None) -> None:
    """Raise :class:`InputError` naming the key of the first broken cross-reference of the ``predict:`` block.

    The model must name an experiment, one of its losses, one of its trials and one of its classifiers; a gallery
    needs a centroid or kNN classifier; a calibrated alarm needs the evaluation's threshold and targets; targets must be
    classes of the data set (or of the gallery), where
    ``list_classes(source)`` can tell them.
    """
    predict = config["predict"]
    model = predict["model"]
    experiments = config["experiments"]
    if model["experiment"] not in experiments:
        raise InputError(
            f"predict.model.experiment: unknown experiment '{model['experiment']}' ({sorted(experiments)})"
        )
    experiment = experiment_settings(experiments[model["experiment"]])
    if model["loss"] not in experiment["losses"]:
        raise InputError(f"predict.model.loss: '{model['loss']}' is not among the experiment's {experiment['losses']}")
    if model.get("trial", 0) >= experiment["trials"]:
        raise InputError(
            f"predict.model.trial: {model.get('trial', 0)}, but the experiment has {experiment['trials']} trial(s)"
        )
    if model["classifier"] not in experiment["classifiers"]:
        raise InputError(
            f"predict.model.classifier: '{model['classifier']}' is not among the experiment's "
            f"{sorted(experiment['classifiers'])}"
        )
    if predict.get("gallery") and model["classifier"] not in GALLERY_CLASSIFIERS:
        raise InputError(f"predict.gallery: extends {' or '.join(GALLERY_CLASSIFIERS)}, not '{model['classifier']}'")
    rule = alarm_rule(predict.get("alarm", experiment.get("alarm")))
    evaluated = sorted(experiment.get("targets") or [])
    if "false_alarm_rate" in rule and (
        "threshold" in model or not evaluated or sorted(predict.get("targets", evaluated)) != evaluated
    ):
        where = "predict.alarm" if "alarm" in predict else f"experiments.{model['experiment']}.alarm"
        raise InputError(
            f"{where}: a false_alarm_rate rule rests on the evaluation's false positives at its own threshold and "
            "targets; drop predict.model.threshold and predict.targets, or give predict.alarm: {min_targets: k}"
        )
    if list_classes is None or "targets" not in predict:
        return
    dataset = config["datasets"][experiment["dataset"]]
    classes = list_classes(resolve_source(experiment["dataset"], dataset))
    if classes is None:
        return
    known = set(classes) - set(experiment["open_set"])
    if predict.get("gallery"):
        gallery = list_classes(dump_source(dataset["source"], predict["gallery"]))
        if gallery is None:
            return
        known |= set(gallery)
    for index, target in enumerate(predict["targets"]):
        if target not in known:
            raise InputError(
                f"predict.targets[{index}]: '{target}' is not a class the model or gallery knows ({sorted(known)})"
            )
