"""The detector file: a trained network and one fitted classifier, with the class name of each of its labels.

What the evaluate stage hands to the screening of new samples (:mod:`cytodml.predict`). It sits in ``evaluate``
because it reads and writes that stage's classifiers and builds on the learn stage's model bundle, and nothing of
predicting or reporting; the threshold the evaluation chose is read by :mod:`cytodml.evaluate.operating_point`, from
another file.

The evaluate stage saves its classifiers with the data set's labels (positions in the sorted list of all the data set's
classes); the network's bundle lists the classes it learned, sorted. Both orders are sorted, so the i-th label of
``classes_`` is the i-th of the bundle's ``class_names`` (:func:`load_detector`).

New particle types without retraining (:func:`add_examples`): labelled example images of a new class, embedded by the
same network, join a centroid classifier as one more class centre (the prototype of Snell et al., NeurIPS 2017) or a
kNN classifier as more labelled neighbours; :func:`save_detector` keeps the extended classifier, with its class names
and the fingerprint of the network it belongs to.
"""

import copy
import hashlib
from dataclasses import dataclass, replace

import joblib
import numpy as np
import pandas as pd
import torch

from cytodml.config import GALLERY_CLASSIFIERS
from cytodml.errors import InputError
from cytodml.evaluate.classifiers import CentroidClassifier, GMMClassifier, KNNClassifier
from cytodml.io import atomic_path
from cytodml.learn.embed import embed, load_model

__all__ = [
    "Detector",
    "add_examples",
    "check_extensible",
    "load_detector",
    "model_fingerprint",
    "save_detector",
]

DETECTOR_FORMAT = "cytodml-detector"
DETECTOR_VERSION = 1


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


# ---------------------------------------------------------------------------------------------------------- gallery


def check_extensible(detector: Detector) -> None:
    """Refuse a classifier that cannot take new classes without refitting (one not in :data:`GALLERY_CLASSIFIERS`)."""
    if not hasattr(detector.classifier, "add_classes"):
        raise InputError(
            f"classifier '{detector.classifier_name}' cannot take new classes without refitting; "
            f"a gallery extends {' or '.join(GALLERY_CLASSIFIERS)}"
        )


def add_examples(detector: Detector, images: np.ndarray, class_names, where: str) -> Detector:
    """The detector with labelled example ``images`` (one class name each, in ``class_names``) added to its classifier.

    The images, patched as the network's data set was, are embedded and passed to the classifier's ``add_classes``:
    a class it does not know becomes a new class (a new centre for the centroid classifier, new neighbours for kNN),
    examples of a known class join it. The network is unchanged, so nothing is retrained. The detector given is left
    as it was; ``where`` names the examples in errors and in the new detector's ``origin``.
    """
    check_extensible(detector)
    class_names = pd.Series(class_names)
    unlabelled = class_names.eq("")
    if unlabelled.any():
        raise InputError(f"{where}: {int(unlabelled.sum())} examples without a class name")
    label_of = {name: label for label, name in detector.names.items()}
    names = dict(detector.names)
    next_label = max(label_of.values()) + 1
    for class_name in sorted(set(class_names) - set(label_of)):
        label_of[class_name], names[next_label] = next_label, class_name
        next_label += 1
    X = embed(detector.model, images)["embedding"].astype(np.float64)
    y = np.array([label_of[name] for name in class_names], dtype=detector.classifier.classes_.dtype)
    estimator = copy.deepcopy(detector.classifier).add_classes(X, y)
    origin = f"{detector.origin}, {where}"
    return replace(detector, classifier=estimator, names=names, centres=_centres(estimator, names), origin=origin)
