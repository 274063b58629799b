"""Few-shot episodes: N-way K-shot tasks drawn from a labelled pool, classified by nearest prototype.

An episode (Vinyals et al., NeurIPS 2016) picks ``ways`` classes, then ``shots`` support and ``queries`` query images of
each; a query is assigned to the class whose prototype, the mean of its support embeddings (Snell et al., NeurIPS 2017),
is nearest in Euclidean distance. The blood-cell Siamese study (Med Biol Eng Comput 2023) reports 8-way 5-shot
per-class accuracy this way.
"""

import numpy as np
import pandas as pd

from cytodml.errors import InputError
from cytodml.evaluate.metrics import mean_ci


def episodes(labels, ways: int, shots: int, queries: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw ``count`` N-way K-shot episodes from ``labels``.

    Guarantee: every episode holds exactly ``ways`` distinct classes, ``shots`` support and ``queries`` query images of
    each, support and query disjoint. ``support_idx`` (length ways * shots) and ``query_idx`` (ways * queries) are
    positions into ``labels``, class by class: ``support_idx[i * shots:(i + 1) * shots]`` and
    ``query_idx[i * queries:(i + 1) * queries]`` belong to the episode's i-th class.

    Every class in ``labels`` takes part, so each must hold at least ``shots + queries`` images, and there must be at
    least ``ways`` classes; otherwise :class:`InputError` names the class, its count and the numbers asked for.
    """
    for key, value in (("ways", ways), ("shots", shots), ("queries", queries), ("count", count)):
        if int(value) < 1:
            raise InputError(f"episodes.{key} must be at least 1, got {value}")
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    for cls, size in zip(classes, sizes):
        if size < shots + queries:
            raise InputError(
                f"episodes: class {cls.item()!r} has {size} images, fewer than shots + queries = {shots} + {queries}"
            )
    if len(classes) < ways:
        raise InputError(f"episodes.ways = {ways}, but the pool holds only {len(classes)} classes")
    members = {cls: np.flatnonzero(labels == cls) for cls in classes}
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(count):
        chosen = rng.choice(classes, size=ways, replace=False)
        picks = [rng.choice(members[cls], size=shots + queries, replace=False) for cls in chosen]
        drawn.append((np.concatenate([p[:shots] for p in picks]), np.concatenate([p[shots:] for p in picks])))
    return drawn


def episodic_accuracy(
    X, y, ways: int, shots: int, queries: int, count: int, seed: int, level: float = 0.95
) -> pd.DataFrame:
    """Per-class accuracy of nearest-prototype classification over ``count`` episodes.

    In each episode the prototype of class c is ``p_c = mean of the support embeddings of c`` and a query x is given
    ``argmin_c ||x - p_c||``. A class's accuracy is the mean over the episodes it took part in of the fraction of its
    queries named correctly; the interval is the t interval of that mean over episodes (queries of one episode share a
    support set, so episodes, not queries, are the independent draws).

    Returns one row per class: ``class``, ``accuracy``, ``ci_low``, ``ci_high``, ``episodes``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise InputError(f"episodic_accuracy: embeddings of shape {X.shape} do not match {len(y)} labels")
    per_class: dict[object, list[float]] = {}
    for support, query in episodes(y, ways, shots, queries, count, seed):
        prototypes = X[support].reshape(ways, shots, -1).mean(axis=1)
        named = y[support[::shots]]
        distances = ((X[query][:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=-1)
        correct = (named[distances.argmin(axis=1)] == y[query]).reshape(ways, queries)
        for cls, hits in zip(named, correct):
            per_class.setdefault(cls, []).append(hits.mean())
    rows = []
    for cls in sorted(per_class):
        mean, half = mean_ci(per_class[cls], level=level)
        rows.append(
            {
                "class": cls,
                "accuracy": mean,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "episodes": len(per_class[cls]),
            }
        )
    return pd.DataFrame(rows)
