"""What model selection measures on the validation images after each epoch (``train.monitor``).

Early stopping on the validation loss keeps the wrong epoch where training sets are small: on a few-shot training set
the validation loss rises while retrieval still improves (measured in issue 13: 9 of 20 BloodMNIST-like models kept
epoch 1 to 4, validation precision@1 0.59 to 0.65 at the kept epoch and 0.67 to 0.77 later). The default monitor is
therefore what the evaluation measures, class-balanced, so that a rare class counts as much as a common one:

- :func:`knn_balanced_accuracy`: kNN (k = 5, cosine, i.e. Euclidean on L2-normalised embeddings, majority vote) with
  the training images as the reference set, scored by the mean per-class recall on the validation images;
- :func:`precision_at_1`: the share of validation images whose nearest other validation image is of their class.

Both run on a fixed :func:`stratified_subsample` of the images, so that a large validation set costs a bounded time
per epoch and every epoch is scored on the same images. Each comes with its standard error, which the trainer's
one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani & Friedman, ESL 2009, section 7.10) uses to tell a
real gain from noise: on 20 validation images per class, or a rare class of 2, one image more or less moves a
balanced accuracy by several points.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "KNN_NEIGHBOURS", "knn_balanced_accuracy", "precision_at_1", "proportion_standard_error", "stratified_subsample"
]  # fmt: skip

#: neighbours of the monitor's kNN, the evaluation's common choice (REFERENCE.md's baselines, the kNN classifier)
KNN_NEIGHBOURS = 5


def stratified_subsample(labels, total: int | None, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``per_class`` images of each class and about ``total`` in all, drawn at random
    (a function of ``seed``) with the classes' shares kept and every class keeping at least one image.

    None means no cap. ``total`` is exceeded only by the classes that keep their one image although their share
    rounds to none.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 1013])
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    counts = np.array([len(m) if per_class is None else min(per_class, len(m)) for m in members])
    if total is not None and counts.sum() > total:
        counts = np.maximum(1, np.floor(counts * total / counts.sum()).astype(int))
    return np.sort(np.concatenate([m[:n] for m, n in zip(members, counts)]))


def precision_at_1(embeddings: torch.Tensor, labels: torch.Tensor, chunk: int = 2048) -> float:
    """Fraction of images whose nearest other image (Euclidean distance) is of the same class; NaN below 2 images."""
    if len(embeddings) < 2:
        return math.nan
    hits = 0
    for start in range(0, len(embeddings), chunk):
        distances = torch.cdist(embeddings[start : start + chunk], embeddings)
        rows = torch.arange(len(distances), device=distances.device)
        distances[rows, rows + start] = math.inf
        hits += int((labels[distances.argmin(dim=1)] == labels[start : start + chunk]).sum())
    return hits / len(embeddings)


def proportion_standard_error(hits: float, n: int) -> float:
    """``sqrt(p (1 - p) / n)`` with ``p = (hits + 1) / (n + 2)``: the binomial standard error of a share of ``n``,
    with the Laplace (Agresti-Coull-like) shrinkage that keeps 0 of 2 or 2 of 2 from looking certain."""
    shrunk = (hits + 1) / (n + 2)
    return math.sqrt(shrunk * (1 - shrunk) / n)


def knn_balanced_accuracy(
    reference: torch.Tensor, reference_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor
) -> tuple[float, float]:
    """Balanced accuracy (mean recall over the query classes) of kNN on L2-normalised embeddings, and its standard
    error ``sqrt(sum_c se_c^2) / C`` over the C query classes, ``se_c`` the :func:`proportion_standard_error` of the
    class's recall (the classes' recalls are independent binomial shares).

    Each query gets the class most frequent among its ``min(k, len(reference))`` most cosine-similar reference
    embeddings (k = :data:`KNN_NEIGHBOURS`; a tie goes to the lowest class position, as ``argmax`` of the vote shares
    in the evaluation's kNN).
    """
    k = min(KNN_NEIGHBOURS, len(reference))
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(reference.float(), dim=1).T
    neighbours = reference_labels[similarity.topk(k, dim=1).indices]
    classes = int(max(reference_labels.max(), query_labels.max())) + 1
    votes = torch.zeros(len(queries), classes, device=queries.device)
    votes.scatter_add_(1, neighbours, torch.ones_like(neighbours, dtype=votes.dtype))
    correct = (votes.argmax(dim=1) == query_labels).float()
    per_class = [correct[query_labels == c] for c in torch.unique(query_labels)]
    balanced = float(torch.stack([hits.mean() for hits in per_class]).mean())
    variance = sum(proportion_standard_error(float(hits.sum()), len(hits)) ** 2 for hits in per_class)
    return balanced, math.sqrt(variance) / len(per_class)
