"""Few-shot episodes: N-way K-shot tasks drawn from a labelled pool, and the ways a query is named from its support.

An episode (Vinyals et al., NeurIPS 2016) picks ``ways`` classes, then ``shots`` support and ``queries`` query images of
each. A query is named (:data:`FEW_SHOT_METHODS`) by the nearest prototype, the mean of a class's support embeddings
(Snell et al., NeurIPS 2017), the blood-cell Siamese study's 8-way 5-shot rule (Med Biol Eng Comput 2023); by a vote
of its nearest support images (kNN); or by its mean distance to each class's support images, how a twin network that
scores pairs compares a query with a support set (Koch et al., ICML-W 2015). All distances are Euclidean.

The generalised setting (Gidaris & Komodakis, CVPR 2018) names queries of the trained (base) and the new (novel)
classes together: the base classifier, extended with the novel support images as ``cytodml gallery`` extends it, takes
the arg-max over every class; base and novel accuracy and their harmonic mean are reported apart, since a classifier
that never names a novel class keeps a high base accuracy.
"""

import copy

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

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


#: how a query is named from an episode's support set (:func:`name_queries`)
FEW_SHOT_METHODS = ("prototype", "knn", "siamese")
#: the support images a kNN query consults, at most (all of them with fewer shots); the training monitor's k
SUPPORT_NEIGHBOURS = 5


def name_queries(method: str, support: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The position (0 .. N - 1) of the class each query is given, from ``support`` of shape N x K x D.

    - ``prototype``: ``argmin_c ||x - p_c||``, ``p_c`` the mean of the support images of c;
    - ``siamese``: ``argmin_c (1 / K) sum_j ||x - s_cj||``, the mean distance to the support images of c;
    - ``knn``: the most frequent class among the k = min(:data:`SUPPORT_NEIGHBOURS`, N K) nearest support images, a
      tie going to the tied class with the nearest of them.
    """
    ways, shots, _ = support.shape
    if method == "prototype":
        return cdist(queries, support.mean(axis=1)).argmin(axis=1)
    distances = cdist(queries, support.reshape(ways * shots, -1))
    if method == "siamese":
        return distances.reshape(len(queries), ways, shots).mean(axis=2).argmin(axis=1)
    if method == "knn":
        k = min(SUPPORT_NEIGHBOURS, ways * shots)
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k] // shots
        is_class = nearest[:, :, None] == np.arange(ways)
        votes = is_class.sum(axis=1)
        first = np.where(is_class.any(axis=1), is_class.argmax(axis=1), k)
        return (votes * (k + 1) - first).argmax(axis=1)
    raise InputError(f"few-shot method {method!r} is not one of {', '.join(FEW_SHOT_METHODS)}")


def _summary_rows(values: dict, level: float, columns) -> list[dict]:
    """One row per key of ``values`` (a list of per-episode accuracies each): ``columns(key)``, then the mean and its
    t interval."""
    rows = []
    for key, accuracies in values.items():
        mean, half = mean_ci(accuracies, level=level)
        rows.append(
            {
                **columns(key),
                "accuracy": mean,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "episodes": len(accuracies),
            }
        )
    return rows


def few_shot_accuracy(
    X, y, ways: int, shots: int, queries: int, count: int, seed: int, methods=FEW_SHOT_METHODS, level: float = 0.95
) -> pd.DataFrame:
    """Accuracy of each method of :func:`name_queries` over the same ``count`` episodes of :func:`episodes`.

    Rows: ``method``, ``scope`` (``all``: the share of an episode's queries named right, whose classes are balanced;
    ``class``: the share of one class's queries, over the episodes it took part in), ``class_name`` (empty for
    ``all``), ``accuracy`` (the mean over episodes), ``ci_low``, ``ci_high`` (its Student-t interval at ``level``:
    the queries of one episode share a support set, so episodes, not queries, are the independent draws), ``episodes``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise InputError(f"few-shot episodes: embeddings of shape {X.shape} do not match {len(y)} labels")
    overall = {method: [] for method in methods}
    per_class: dict[tuple, list[float]] = {}
    truth = np.repeat(np.arange(ways), queries)
    for support, query in episodes(y, ways, shots, queries, count, seed):
        named = y[support[::shots]]
        for method in methods:
            correct = name_queries(method, X[support].reshape(ways, shots, -1), X[query]) == truth
            overall[method].append(correct.mean())
            for cls, hits in zip(named, correct.reshape(ways, queries)):
                per_class.setdefault((method, cls), []).append(hits.mean())
    rows = _summary_rows(overall, level, columns=lambda method: {"method": method, "scope": "all", "class_name": ""})
    rows += _summary_rows(
        dict(sorted(per_class.items(), key=lambda item: (methods.index(item[0][0]), item[0][1]))),
        level,
        columns=lambda key: {"method": key[0], "scope": "class", "class_name": key[1]},
    )
    return pd.DataFrame(rows, columns=["method", "scope", "class_name", "accuracy", "ci_low", "ci_high", "episodes"])


def episodic_accuracy(
    X, y, ways: int, shots: int, queries: int, count: int, seed: int, level: float = 0.95
) -> pd.DataFrame:
    """Per-class accuracy of nearest-prototype classification over ``count`` episodes (:func:`few_shot_accuracy`).

    Returns one row per class: ``class``, ``accuracy``, ``ci_low``, ``ci_high``, ``episodes``.
    """
    table = few_shot_accuracy(X, y, ways, shots, queries, count, seed, methods=("prototype",), level=level)
    table = table[table["scope"] == "class"].drop(columns=["method", "scope"])
    return table.rename(columns={"class_name": "class"}).reset_index(drop=True)


def harmonic_mean(a: float, b: float) -> float:
    """``2 a b / (a + b)``, 0 where both are 0: a classifier must name both kinds of class to score."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def generalised_accuracy(classifier, X_support, y_support, X_query, y_query) -> dict:
    """Base and novel classes named together by ``classifier`` (fitted on the base classes) extended with the novel
    support images through its ``add_classes``, as ``cytodml gallery`` extends a detector; arg-max, no threshold.

    Returns ``base`` and ``novel`` (the mean per-class accuracy over the queries of the base classes, those the
    classifier was fitted on, and of the support's classes), ``harmonic`` (:func:`harmonic_mean` of the two) and
    ``per_class`` (class -> the share of its queries named right).
    """
    extended = copy.deepcopy(classifier).add_classes(np.asarray(X_support, np.float64), np.asarray(y_support))
    y_query = np.asarray(y_query)
    predicted = extended.classes_[np.argmax(extended.predict_proba(np.asarray(X_query, np.float64)), axis=1)]
    per_class = {cls: float((predicted[y_query == cls] == cls).mean()) for cls in np.unique(y_query)}
    novel_classes = set(np.unique(y_support).tolist())
    base = [value for cls, value in per_class.items() if cls not in novel_classes]
    novel = [value for cls, value in per_class.items() if cls in novel_classes]
    base_mean = float(np.mean(base)) if base else float("nan")
    novel_mean = float(np.mean(novel)) if novel else float("nan")
    return {
        "base": base_mean,
        "novel": novel_mean,
        "harmonic": harmonic_mean(base_mean, novel_mean),
        "per_class": per_class,
    }


def generalised_episodes(
    classifier, X_base, y_base, X_novel, y_novel, shots: int, queries: int, count: int, seed: int, level: float = 0.95
) -> pd.DataFrame:
    """:func:`generalised_accuracy` over ``count`` episodes: each draws ``shots`` support images of every novel class
    and ``queries`` query images of every novel class (from the rest) and of every base class (all of a base class
    with fewer).

    Rows: ``scope`` (``base``, ``novel``, ``harmonic``: the per-episode values; ``class``: a class's share of its
    queries), ``class_name`` (``class`` rows only), ``accuracy`` (mean over episodes), ``ci_low``, ``ci_high`` (the t
    interval at ``level``), ``episodes``.
    """
    X_base, X_novel = np.asarray(X_base, np.float64), np.asarray(X_novel, np.float64)
    y_base, y_novel = np.asarray(y_base), np.asarray(y_novel)
    novel_classes = np.unique(y_novel)
    for cls in novel_classes:
        size = int((y_novel == cls).sum())
        if size < shots + queries:
            raise InputError(
                f"novel episodes: class {cls.item()!r} has {size} images, fewer than shots + queries = "
                f"{shots} + {queries}"
            )
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"base": [], "novel": [], "harmonic": []}
    per_class: dict[object, list[float]] = {}
    for _ in range(count):
        support, query = [], []
        for cls in novel_classes:
            picks = rng.choice(np.flatnonzero(y_novel == cls), size=shots + queries, replace=False)
            support.append(picks[:shots])
            query.append(picks[shots:])
        base_query = np.concatenate(
            [rng.choice(rows, size=min(queries, len(rows)), replace=False) for rows in _members(y_base)]
        )
        support, query = np.concatenate(support), np.concatenate(query)
        result = generalised_accuracy(
            classifier,
            X_novel[support],
            y_novel[support],
            np.concatenate([X_base[base_query], X_novel[query]]),
            np.concatenate([y_base[base_query], y_novel[query]]),
        )
        for scope in scores:
            scores[scope].append(result[scope])
        for cls, value in result["per_class"].items():
            per_class.setdefault(cls, []).append(value)
    rows = _summary_rows(scores, level, columns=lambda scope: {"scope": scope, "class_name": ""})
    rows += _summary_rows(
        dict(sorted(per_class.items())), level, columns=lambda cls: {"scope": "class", "class_name": cls}
    )
    return pd.DataFrame(rows, columns=["scope", "class_name", "accuracy", "ci_low", "ci_high", "episodes"])


def _members(labels: np.ndarray) -> list[np.ndarray]:
    """The positions of each class's images, classes sorted."""
    return [np.flatnonzero(labels == cls) for cls in np.unique(labels)]
