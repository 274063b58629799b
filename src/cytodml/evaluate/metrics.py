"""Metrics of classification, detection, clustering and retrieval, named as the CSV columns they become.

Labels are integers (strings work too). A prediction of "none of the known classes" is the label :data:`UNKNOWN`
(-1); the true label of an open-set test image may be -1 too. Where a ratio is 0 / 0 the value is NaN (undefined), never a silent 0, so a
mean over trials shows the gap instead of hiding it.
"""

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_mutual_info_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    roc_auc_score,
    silhouette_score,
)

from cytodml.errors import InputError

UNKNOWN = -1
UNKNOWN_NAME = "unknown"
#: the K of :func:`retrieval_metrics`'s recall_at_K (Oh Song et al., CVPR 2016)
RECALL_AT = (1, 2, 4, 8)
#: k-means starts of :func:`cluster_agreement`, the best kept
KMEANS_RESTARTS = 10


def sklearn_seed(seed: int) -> int:
    """Our seeds are 63-bit (:func:`cytodml.data.splits.trial_seed`); scikit-learn takes 32 bits."""
    return int(seed) % 2**32


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def _check_pair(a, b, what_a: str, what_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise InputError(f"{what_a} and {what_b} must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise InputError(f"{what_a} has {len(a)} entries but {what_b} has {len(b)}")
    return a, b


def check_embeddings(X, what: str = "X") -> np.ndarray:
    """``X`` as a finite float64 matrix (samples x embedding dimensions), or InputError naming what is wrong."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be a numeric array (samples x embedding dimensions): {err}") from None
    if X.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (samples x embedding dimensions), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {X.shape})")
    finite = np.isfinite(X)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise InputError(
            f"{what} holds {int((~finite).sum())} NaN or infinite value(s), the first at row {row}, column {col}"
        )
    return X


def _codes(values: np.ndarray, labels: np.ndarray, what: str) -> np.ndarray:
    """Position of each value in ``labels``, ``len(labels)`` for UNKNOWN; InputError for any other value."""
    codes = np.full(len(values), len(labels), dtype=np.int64)
    known = np.zeros(len(values), dtype=bool)
    for position, label in enumerate(labels):
        match = values == label
        codes[match] = position
        known |= match
    stray = ~known & (values != UNKNOWN)
    if stray.any():
        row = int(np.argmax(stray))
        raise InputError(
            f"{what} holds {values[row].item()!r} (row {row}), neither one of the labels {labels.tolist()} "
            f"nor {UNKNOWN} ({UNKNOWN_NAME})"
        )
    return codes


def confusion_matrix(y_true, y_pred, labels) -> np.ndarray:
    """(K + 1) x (K + 1) counts, rows actual, columns predicted, in ``labels`` order, then UNKNOWN last."""
    y_true, y_pred = _check_pair(y_true, y_pred, "y_true", "y_pred")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or len(np.unique(labels)) != len(labels):
        raise InputError(f"labels must be a non-empty list without repeats, got {labels.tolist()}")
    if (labels == UNKNOWN).any():
        raise InputError(f"labels must not hold {UNKNOWN}: it stands for {UNKNOWN_NAME}")
    size = len(labels) + 1
    cells = _codes(y_true, labels, "y_true") * size + _codes(y_pred, labels, "y_pred")
    return np.bincount(cells, minlength=size * size).reshape(size, size)


def _per_class(confusion: np.ndarray) -> dict:
    """Per known class (all rows but UNKNOWN's): support, precision, recall and F1, NaN where 0 / 0.

    precision_c = tp / (tp + fp) (NaN: c never predicted), recall_c = tp / (tp + fn) (NaN: c absent),
    f1_c = 2 tp / (2 tp + fp + fn) (NaN: c neither present nor predicted); a prediction of UNKNOWN is a miss (fn)
    of the true class and a false positive of none.
    """
    known = len(confusion) - 1
    tp = np.diag(confusion)[:known]
    support = confusion[:known].sum(axis=1)
    predicted = confusion[:, :known].sum(axis=0)
    return {
        "support": support,
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, support),
        "f1": _ratio(2 * tp, support + predicted),
    }


def _gorodkin_mcc(confusion: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004, R_K); NaN where a marginal is concentrated on one class."""
    confusion = confusion.astype(np.float64)  # N^4 overflows int64 from N = 55 000 on
    total = confusion.sum()
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    covariance = np.trace(confusion) * total - actual @ predicted
    spread = (total**2 - predicted @ predicted) * (total**2 - actual @ actual)
    return float(covariance / np.sqrt(spread)) if spread > 0 else float("nan")


def multiclass_metrics(y_true, y_pred, labels) -> dict:
    """accuracy, balanced_accuracy, mcc, precision_macro, recall_macro, f1_macro.

    - accuracy = sum_c C[c, c] / N over all rows (an UNKNOWN prediction of an UNKNOWN image counts as right);
    - precision_macro, recall_macro, f1_macro: the mean over the known ``labels`` of the per-class values of
      :func:`per_class_metrics`, skipping the classes where a value is NaN (sklearn's ``zero_division=np.nan``);
    - balanced_accuracy = the mean recall over the known classes present in y_true (equal to recall_macro);
    - mcc: Gorodkin's R_K = (c N - sum_k p_k t_k) / sqrt((N^2 - sum_k p_k^2)(N^2 - sum_k t_k^2)) over the
      confusion matrix C with UNKNOWN as one more class, c its trace, t_k and p_k its row and column sums
      (sklearn's ``matthews_corrcoef``), NaN where a denominator factor is 0.
    """
    confusion = confusion_matrix(y_true, y_pred, labels)
    if confusion.sum() == 0:
        raise InputError("y_true and y_pred are empty")
    per_class = _per_class(confusion)
    recall_macro = _nanmean(per_class["recall"])
    return {
        "accuracy": float(np.trace(confusion) / confusion.sum()),
        "balanced_accuracy": recall_macro,
        "mcc": _gorodkin_mcc(confusion),
        "precision_macro": _nanmean(per_class["precision"]),
        "recall_macro": recall_macro,
        "f1_macro": _nanmean(per_class["f1"]),
    }


def _check_names(labels, names) -> list[str]:
    names = list(names)
    if len(names) != len(labels):
        raise InputError(f"{len(names)} class names were given for {len(labels)} labels")
    return names


def per_class_metrics(y_true, y_pred, labels, names) -> pd.DataFrame:
    """One row per known class: class, precision, recall, f1, support.

    precision = tp / (tp + fp), recall = tp / (tp + fn), f1 = 2 tp / (2 tp + fp + fn), support = tp + fn (the
    class's true count); NaN where 0 / 0 (a class never predicted has no precision, an absent class no recall).
    """
    names = _check_names(labels, names)
    per_class = _per_class(confusion_matrix(y_true, y_pred, labels))
    return pd.DataFrame(
        {
            "class": names,
            "precision": per_class["precision"],
            "recall": per_class["recall"],
            "f1": per_class["f1"],
            "support": per_class["support"],
        }
    )


def confusion_long(y_true, y_pred, labels, names) -> pd.DataFrame:
    """The confusion matrix in long form: actual, predicted, count, one row per pair, zeros included.

    Rows are every (actual, predicted) pair of the class ``names`` in ``labels`` order; the predicted side always
    has a column ``"unknown"`` (label -1) as well, and the actual side an ``"unknown"`` row where y_true holds -1
    (open-set images), so tables of one experiment have the same rows in every trial.
    """
    names = _check_names(labels, names)
    confusion = confusion_matrix(y_true, y_pred, labels)
    actual_names = names + [UNKNOWN_NAME] if confusion[-1].sum() > 0 else names
    predicted_names = names + [UNKNOWN_NAME]
    return pd.DataFrame(
        [
            {"actual": actual, "predicted": predicted, "count": int(confusion[i, j])}
            for i, actual in enumerate(actual_names)
            for j, predicted in enumerate(predicted_names)
        ]
    )


def binary_metrics(is_target_true, is_target_pred) -> dict:
    """Detection counts and rates for "is this a target" (true and predicted booleans, one per image).

    tp, fn, fp, tn (counts); sensitivity = tp / (tp + fn); specificity = tn / (tn + fp); false_alarm_rate =
    fp / (fp + tn); precision = tp / (tp + fp); f_score = 2 tp / (2 tp + fp + fn); balanced_accuracy =
    (sensitivity + specificity) / 2; mcc = (tp tn - fp fn) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn)).
    Each ratio is NaN where it is 0 / 0 (sensitivity without targets, precision without detections, ...), and so
    is balanced_accuracy when either half is; mcc is NaN where any factor of its denominator is 0.
    """
    truth, predicted = _check_pair(is_target_true, is_target_pred, "is_target_true", "is_target_pred")
    for what, values in (("is_target_true", truth), ("is_target_pred", predicted)):
        if values.dtype != bool and not np.isin(values, (0, 1)).all():
            raise InputError(f"{what} must be booleans (or 0 / 1), got values {np.unique(values)[:5].tolist()}")
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    tp = int(np.sum(truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    fp = int(np.sum(~truth & predicted))
    tn = int(np.sum(~truth & ~predicted))
    sensitivity = float(_ratio(tp, tp + fn))
    specificity = float(_ratio(tn, tn + fp))
    spread = float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return {
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "false_alarm_rate": float(_ratio(fp, fp + tn)),
        "precision": float(_ratio(tp, tp + fp)),
        "f_score": float(_ratio(2 * tp, 2 * tp + fp + fn)),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "mcc": float((tp * tn - fp * fn) / np.sqrt(spread)) if spread > 0 else float("nan"),
    }


def _check_embedded(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = check_embeddings(X)
    y = np.asarray(y)
    if y.shape != (len(X),):
        raise InputError(f"y must hold one label per row of X ({len(X)}), got shape {y.shape}")
    return X, y


def cluster_metrics(X, y) -> dict:
    """silhouette and davies_bouldin of the labelled embeddings (sklearn), as reported by Medela & Picon 2020.

    silhouette = mean over samples of (b - a) / max(a, b), a the mean distance to the own class, b to the nearest
    other class (higher is better, in [-1, 1]); davies_bouldin = mean over classes of max_{j != i} (s_i + s_j) /
    d(mu_i, mu_j), s the mean distance to the class centre (lower is better). Both NaN unless
    2 <= classes <= samples - 1.
    """
    X, y = _check_embedded(X, y)
    classes = len(np.unique(y))
    if not 2 <= classes <= len(X) - 1:
        return {"silhouette": float("nan"), "davies_bouldin": float("nan")}
    return {"silhouette": float(silhouette_score(X, y)), "davies_bouldin": float(davies_bouldin_score(X, y))}


def retrieval_metrics(X, y, chunk_elements: int = 2**24) -> dict:
    """precision_at_1, map_at_r, r_precision and recall_at_K, leave-one-out on the set itself.

    Each sample is a query against all others, ranked by Euclidean distance. With R the number of other samples of
    the query's class and rel(i) = 1 when the i-th nearest shares the class (Musgrave et al., ECCV 2020):
    precision_at_1 = rel(1); r_precision = (1 / R) sum_{i=1}^{R} rel(i); map_at_r = (1 / R) sum_{i=1}^{R} rel(i) *
    (sum_{j <= i} rel(j)) / i. recall_at_K, for K in :data:`RECALL_AT`, = 1 when at least one of the K nearest
    shares the class, max_{i <= K} rel(i) (Oh Song et al., CVPR 2016; all others when K > N - 1), so
    recall_at_1 = precision_at_1. Each is a mean over the queries with R >= 1 (a class of one sample has nothing
    to retrieve; NaN if no query has), as pytorch-metric-learning's AccuracyCalculator computes the first three.
    Distances are computed in chunks of queries, about ``chunk_elements`` matrix entries at a time.
    """
    X, y = _check_embedded(X, y)
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    embeddings, labels = torch.from_numpy(X), torch.from_numpy(codes)
    hits, r_precision, average_precision = [], [], []
    rows = max(1, chunk_elements // len(X))
    # Queries go class by class, so each chunk ranks only as deep as its own class needs: R for r_precision and
    # map_at_r, the largest K for recall_at_K, never more than the N - 1 others.
    for code in np.flatnonzero(counts > 1):
        R = int(counts[code]) - 1
        depth = min(max(R, max(RECALL_AT)), len(X) - 1)
        rank = torch.arange(1, R + 1, dtype=torch.float64)
        members = np.flatnonzero(codes == code)
        for start in range(0, len(members), rows):
            query = torch.from_numpy(members[start : start + rows])
            distance = torch.cdist(embeddings[query], embeddings)
            distance[torch.arange(len(query)), query] = float("inf")
            nearest = torch.topk(distance, depth, dim=1, largest=False, sorted=True).indices
            relevant = labels[nearest] == code
            found = relevant[:, :R].cumsum(dim=1, dtype=torch.float64)
            r_precision.append(found[:, -1] / R)
            average_precision.append((found / rank * relevant[:, :R]).sum(dim=1) / R)
            hits.append(torch.stack([relevant[:, :k].any(dim=1) for k in RECALL_AT], dim=1).double())
    recall_keys = [f"recall_at_{k}" for k in RECALL_AT]
    if not hits:
        return dict.fromkeys(["precision_at_1", "map_at_r", "r_precision", *recall_keys], float("nan"))
    recall = torch.cat(hits).mean(dim=0).tolist()
    return {
        "precision_at_1": recall[RECALL_AT.index(1)],
        "map_at_r": float(torch.cat(average_precision).mean()),
        "r_precision": float(torch.cat(r_precision).mean()),
        **dict(zip(recall_keys, recall, strict=True)),
    }


def cluster_agreement(X, y, seed: int) -> dict:
    """nmi and ami between the classes and a k-means clustering of the embeddings into as many clusters.

    k-means is sklearn's KMeans (Lloyd, k-means++ starts, the best of :data:`KMEANS_RESTARTS` by inertia,
    ``random_state=seed``), as pytorch-metric-learning's AccuracyCalculator clusters before its NMI and AMI (there
    with faiss). With I the mutual information of classes Y and clusters C and H the entropy:
    nmi = I(Y; C) / ((H(Y) + H(C)) / 2) (Strehl & Ghosh 2002, arithmetic mean; sklearn
    ``normalized_mutual_info_score``); ami = (I - E[I]) / ((H(Y) + H(C)) / 2 - E[I]), E[I] under random labellings
    of the same sizes (Vinh et al. 2010; sklearn ``adjusted_mutual_info_score``). Both NaN with fewer than 2
    classes or fewer than classes + 1 samples.
    """
    X, y = _check_embedded(X, y)
    classes = len(np.unique(y))
    if classes < 2 or len(X) < classes + 1:
        return {"nmi": float("nan"), "ami": float("nan")}
    clusters = KMeans(n_clusters=classes, n_init=KMEANS_RESTARTS, random_state=sklearn_seed(seed)).fit_predict(X)
    return {
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "ami": float(adjusted_mutual_info_score(y, clusters)),
    }


def auroc(scores, is_positive) -> float:
    """Area under the ROC curve of ``scores`` for the positives (sklearn ``roc_auc_score``); NaN with one class only."""
    scores, is_positive = _check_pair(scores, is_positive, "scores", "is_positive")
    is_positive = is_positive.astype(bool)
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, scores))


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise InputError(f"level = {level!r}: expected a confidence level between 0 and 1")
    return level


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t interval: t_{(1 + level) / 2, n - 1} * s / sqrt(n).

    s is the sample standard deviation (n - 1 in the denominator). The half-width is NaN for one value, and both
    are NaN for none; NaN values propagate.
    """
    level = _check_level(level)
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        return float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) == 1:
        return mean, float("nan")
    half_width = stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, float(half_width)
