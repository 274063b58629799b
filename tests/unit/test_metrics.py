"""Metrics against hand counts, scikit-learn, pytorch-metric-learning and published tables."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn import metrics as skm
from sklearn.cluster import KMeans

from cytodml.errors import InputError
from cytodml.evaluate.metrics import (
    KMEANS_RESTARTS,
    RECALL_AT,
    auroc,
    binary_metrics,
    cluster_agreement,
    cluster_metrics,
    confusion_long,
    mean_ci,
    multiclass_metrics,
    per_class_metrics,
    retrieval_metrics,
)


def from_confusion(matrix):
    """Label vectors realising a confusion matrix (rows actual, columns predicted; labels 0..K-1, then -1)."""
    matrix = np.asarray(matrix)
    labels = list(range(matrix.shape[0])) + [-1] * (matrix.shape[1] - matrix.shape[0])
    actual = np.repeat(np.arange(matrix.shape[0]), matrix.sum(axis=1))
    predicted = np.concatenate([np.repeat(labels, row) for row in matrix])
    return actual, predicted


# rows actual a, b, c; columns predicted a, b, c
HAND = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]


def test_multiclass_metrics_on_a_hand_counted_confusion_matrix():
    y_true, y_pred = from_confusion(HAND)
    result = multiclass_metrics(y_true, y_pred, [0, 1, 2])
    # trace 12 of 16; row sums 6, 6, 4; column sums 7, 4, 5
    assert result["accuracy"] == pytest.approx(12 / 16)
    assert result["recall_macro"] == pytest.approx((5 / 6 + 3 / 6 + 4 / 4) / 3)
    assert result["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 6 + 4 / 4) / 3)
    assert result["precision_macro"] == pytest.approx((5 / 7 + 3 / 4 + 4 / 5) / 3)
    # F1 = 2 tp / (2 tp + fp + fn): a 10 / 13, b 6 / 10, c 8 / 9
    assert result["f1_macro"] == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3)
    # Gorodkin: (12 * 16 - (7*6 + 4*6 + 5*4)) / sqrt((256 - (49 + 16 + 25)) (256 - (36 + 36 + 16)))
    assert result["mcc"] == pytest.approx(106 / np.sqrt(166 * 168))


@pytest.mark.parametrize("n", [500, 200_000])  # the larger: N^4 in the MCC overflows 64-bit integers
def test_multiclass_metrics_agree_with_scikit_learn_with_unknown_predictions(n):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(-1, 4, n))
    result = multiclass_metrics(y_true, y_pred, [0, 1, 2, 3])
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=np.nan
    )
    assert (y_pred == -1).sum() > 20
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    assert result["precision_macro"] == pytest.approx(precision)
    assert result["recall_macro"] == pytest.approx(recall)
    assert result["f1_macro"] == pytest.approx(f1)


def test_luo_table_2_follows_from_their_table_4_confusion_matrix():
    # Luo et al. 2021, metric model; rows actual pollutants, Cryptosporidium, Giardia; Table 2 gives the % below
    y_true, y_pred = from_confusion([[29639, 17, 3], [9, 820, 2], [6, 9, 1360]])
    result = multiclass_metrics(y_true, y_pred, [0, 1, 2])
    assert round(100 * result["accuracy"], 2) == 99.86
    assert round(100 * result["precision_macro"], 2) == 98.84
    assert round(100 * result["recall_macro"], 2) == 99.17
    assert round(100 * result["f1_macro"], 2) == 99.00


def test_per_class_metrics_mark_a_never_predicted_class_nan():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, -1])
    table = per_class_metrics(y_true, y_pred, [0, 1, 2], ["bead", "debris", "giardia"])
    assert table.columns.tolist() == ["class", "precision", "recall", "f1", "support"]
    assert table["class"].tolist() == ["bead", "debris", "giardia"]
    np.testing.assert_allclose(table["precision"], [1 / 2, 2 / 3, np.nan])
    np.testing.assert_allclose(table["recall"], [1 / 2, 1, 0])
    np.testing.assert_allclose(table["f1"], [1 / 2, 4 / 5, 0])
    assert table["support"].tolist() == [2, 2, 2]
    assert multiclass_metrics(y_true, y_pred, [0, 1, 2])["precision_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_confusion_long_has_every_pair_and_an_unknown_column():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, -1, 1, 0, -1])
    table = confusion_long(y_true, y_pred, [0, 1, 2], ["a", "b", "c"])
    assert table.columns.tolist() == ["actual", "predicted", "count"]
    assert len(table) == 3 * 4
    counts = table.set_index(["actual", "predicted"])["count"]
    assert counts[("a", "a")] == 1 and counts[("a", "unknown")] == 1
    assert counts[("b", "a")] == 1 and counts[("c", "unknown")] == 1
    assert counts[("c", "c")] == 0
    assert counts.sum() == 5
    closed = confusion_long(y_true, np.array([0, 0, 1, 1, 2]), [0, 1, 2], ["a", "b", "c"])
    assert len(closed) == 12 and closed.set_index(["actual", "predicted"])["count"][("a", "unknown")] == 0


def test_confusion_long_gains_an_unknown_row_for_open_set_images():
    table = confusion_long([0, 1, -1, -1], [0, -1, -1, 1], [0, 1], ["a", "b"])
    assert len(table) == 3 * 3
    counts = table.set_index(["actual", "predicted"])["count"]
    assert counts[("unknown", "unknown")] == 1 and counts[("unknown", "b")] == 1


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "message"),
    [
        ([0, 3], [0, 1], [0, 1], r"y_true holds 3 \(row 1\), neither one of the labels \[0, 1\] nor -1"),
        ([0, 1], [0, 1, 1], [0, 1], "y_true has 2 entries but y_pred has 3"),
        ([0, 1], [0, 1], [0, 1, 1], "without repeats"),
        ([0, 1], [0, 1], [-1, 0, 1], "must not hold -1"),
    ],
)
def test_bad_labels_are_named(y_true, y_pred, labels, message):
    with pytest.raises(InputError, match=message):
        multiclass_metrics(y_true, y_pred, labels)


def test_binary_metrics_by_hand():
    truth = [1, 1, 1, 0, 0, 0, 0, 0]
    predicted = [1, 1, 0, 1, 0, 0, 0, 0]
    result = binary_metrics(truth, predicted)
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (2, 1, 1, 4)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(4 / 5)
    assert result["false_alarm_rate"] == pytest.approx(1 / 5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["f_score"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["mcc"] == pytest.approx((2 * 4 - 1 * 1) / np.sqrt(3 * 3 * 5 * 5))


def test_binary_metrics_mark_undefined_ratios_nan():
    blank = binary_metrics(np.zeros(5, bool), np.zeros(5, bool))  # a blank sample, nothing detected
    assert (blank["tp"], blank["tn"]) == (0, 5)
    assert blank["specificity"] == 1.0 and blank["false_alarm_rate"] == 0.0
    for undefined in ("sensitivity", "precision", "f_score", "balanced_accuracy", "mcc"):
        assert np.isnan(blank[undefined]), undefined
    with pytest.raises(InputError, match="is_target_pred must be booleans"):
        binary_metrics([True, False], [0, 2])


@pytest.mark.parametrize(
    ("counts", "published"),
    [
        ((69, 1, 36, 2924), (0.66, 0.99, 0.79, 0.98, 0.80)),
        ((49, 1, 21, 2093), (0.70, 0.98, 0.82, 0.98, 0.82)),
        ((29, 1, 9, 1259), (0.76, 0.96, 0.85, 0.97, 0.85)),
    ],
)
def test_gupta_table_2_follows_from_its_counts(counts, published):
    tp, fn, fp, tn = counts
    truth = np.repeat([True, True, False, False], counts)
    predicted = np.repeat([True, False, True, False], counts)
    result = binary_metrics(truth, predicted)
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == counts
    ours = [result[key] for key in ("precision", "sensitivity", "f_score", "balanced_accuracy", "mcc")]
    # the paper rounds some values and truncates others to two decimals
    np.testing.assert_allclose(ours, published, atol=0.01)


def test_cluster_metrics_match_scikit_learn_and_need_two_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    X = rng.normal(size=(90, 4)) + y[:, None]
    result = cluster_metrics(X, y)
    assert result["silhouette"] == pytest.approx(skm.silhouette_score(X, y))
    assert result["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X, y))
    one_class = cluster_metrics(X, np.zeros(90))
    assert np.isnan(one_class["silhouette"]) and np.isnan(one_class["davies_bouldin"])


def test_retrieval_metrics_by_hand():
    X = np.array([[0.0], [1.0], [1.8], [10.0], [11.0]])
    y = np.array([0, 1, 1, 0, 1])
    # query: R, labels of the others by distance -> hit at 1, AP@R, R-precision, first same-class rank
    # 0: R 1, [1 1 0 1] -> miss, 0, 0, 3;  1: R 2, [1 0 0 1] -> hit, (1/1) / 2, 1/2, 1;  1.8: the same as 1
    # 10: R 1, [1 1 1 0] -> miss, 0, 0, 4;  11: R 2, [0 1 1 0] -> miss, (1/2) / 2, 1/2, 2
    result = retrieval_metrics(X, y)
    assert result["precision_at_1"] == pytest.approx(2 / 5)
    assert result["map_at_r"] == pytest.approx((0 + 1 / 2 + 1 / 2 + 0 + 1 / 4) / 5)
    assert result["r_precision"] == pytest.approx((0 + 1 / 2 + 1 / 2 + 0 + 1 / 2) / 5)
    # recall_at_8 ranks all 4 others
    recall = [result[f"recall_at_{k}"] for k in RECALL_AT]
    assert RECALL_AT == (1, 2, 4, 8)
    assert recall == pytest.approx([2 / 5, 3 / 5, 5 / 5, 5 / 5])


def test_retrieval_metrics_are_nan_without_a_class_of_two():
    result = retrieval_metrics(np.eye(3), [0, 1, 2])
    assert list(result) == ["precision_at_1", "map_at_r", "r_precision", *(f"recall_at_{k}" for k in RECALL_AT)]
    assert all(np.isnan(value) for value in result.values())


def clustered(seed, sizes, dim=8, spread=0.8):
    """Gaussian classes of the given sizes around centres ``spread`` apart along the diagonal, rows shuffled."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    X = rng.normal(size=(len(y), dim)) + spread * y[:, None]
    return X.astype(np.float32), y


# uneven classes: one large, small ones below the deepest K (8), one of two and one of a single sample
SIZES = (150, 90, 60, 40, 7, 5, 3, 2, 1)


@pytest.mark.parametrize("chunk_elements", [2**24, 500])
def test_retrieval_metrics_match_pytorch_metric_learning(chunk_elements):
    X, y = clustered(2, SIZES)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
    )
    # query = reference; the class of one sample has nothing to retrieve, left out as in pytorch-metric-learning
    expected = calculator.get_accuracy(X, y, X, y, ref_includes_query=True)
    result = retrieval_metrics(X, y, chunk_elements=chunk_elements)
    assert 0.1 < result["map_at_r"] < result["r_precision"] < result["precision_at_1"] < 0.95
    assert result["precision_at_1"] == pytest.approx(expected["precision_at_1"], abs=1e-9)
    assert result["r_precision"] == pytest.approx(expected["r_precision"], abs=1e-9)
    assert result["map_at_r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-9)


def brute_force_recall(X, y, k):
    """Share of the queries with another sample of their class that have one among their k nearest others."""
    X = np.asarray(X, dtype=np.float64)
    distance = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(distance, axis=1, kind="stable")[:, : len(X) - 1]  # the others, nearest first
    hits = [(y[order[i, :k]] == y[i]).any() for i in range(len(X)) if (y == y[i]).sum() > 1]
    return np.mean(hits)


@pytest.mark.parametrize(
    ("sizes", "chunk_elements"),
    [(SIZES, 2**24), (SIZES, 500), ((3, 2, 1), 2**24), ((2, 2, 2), 7)],  # the last two: K = 8 > N - 1
)
def test_recall_at_k_matches_a_brute_force_ranking(sizes, chunk_elements):
    X, y = clustered(4, sizes, spread=0.5)
    result = retrieval_metrics(X, y, chunk_elements=chunk_elements)
    for k in RECALL_AT:
        assert result[f"recall_at_{k}"] == pytest.approx(brute_force_recall(X, y, k), abs=1e-12), k
    recall = [result[f"recall_at_{k}"] for k in RECALL_AT]
    assert recall == sorted(recall)
    assert result["recall_at_1"] == result["precision_at_1"]
    if len(y) <= 9:
        assert result["recall_at_8"] == 1.0  # every other sample is among the 8 nearest


def test_retrieval_metrics_do_not_depend_on_the_chunk_size():
    X, y = clustered(5, SIZES, spread=0.5)
    whole = retrieval_metrics(X, y)
    for chunk_elements in (1, 333, len(y) * 7):
        assert retrieval_metrics(X, y, chunk_elements=chunk_elements) == pytest.approx(whole, abs=1e-12)


def sklearn_kmeans(seed):
    """The k-means of cluster_agreement in the form of AccuracyCalculator's kmeans_func(embeddings, clusters)."""

    def kmeans(x, clusters):
        fitted = KMeans(n_clusters=clusters, n_init=KMEANS_RESTARTS, random_state=seed)
        return torch.from_numpy(fitted.fit_predict(x.cpu().numpy().astype(np.float64)))

    return kmeans


def test_cluster_agreement_matches_pytorch_metric_learning_and_scikit_learn():
    X, y = clustered(6, (60, 40, 25, 10, 5), dim=4, spread=1.5)
    result = cluster_agreement(X, y, seed=3)
    calculator = AccuracyCalculator(
        include=("NMI", "AMI"),
        device=torch.device("cpu"),
        kmeans_func=sklearn_kmeans(3),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),  # unused by NMI / AMI; the default needs faiss
    )
    expected = calculator.get_accuracy(X, y, X, y, ref_includes_query=True)
    assert 0.2 < result["ami"] < result["nmi"] < 0.95
    assert result["nmi"] == pytest.approx(expected["NMI"], abs=1e-12)
    assert result["ami"] == pytest.approx(expected["AMI"], abs=1e-12)
    clusters = KMeans(n_clusters=5, n_init=KMEANS_RESTARTS, random_state=3).fit_predict(X.astype(np.float64))
    assert result["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, clusters), abs=1e-12)
    assert result["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, clusters), abs=1e-12)
    assert cluster_agreement(X, y, seed=3) == result


def test_cluster_agreement_needs_two_classes_and_more_samples_than_classes():
    X, y = clustered(7, (10, 10), dim=3)
    for labels, rows in ((np.zeros(20), X), (np.arange(3), X[:3]), (np.array([0, 1, 1]), X[:3])):
        result = cluster_agreement(rows, labels, seed=0)
        assert list(result) == ["nmi", "ami"]
        assert np.isnan(result["nmi"]) == np.isnan(result["ami"]) == (labels.tolist() != [0, 1, 1]), labels


def test_auroc_matches_scikit_learn_and_is_nan_with_one_class():
    rng = np.random.default_rng(3)
    positive = rng.random(200) < 0.1
    scores = rng.normal(size=200) + positive
    assert auroc(scores, positive) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert np.isnan(auroc(scores, np.zeros(200, bool)))


def test_mean_ci_is_the_student_t_interval():
    mean, half_width = mean_ci([1.0, 2.0, 3.0, 4.0])
    # s = sqrt(5 / 3), t_{0.975, 3} = 3.182446305
    assert mean == 2.5
    assert half_width == pytest.approx(3.182446305 * np.sqrt(5 / 3) / 2)
    assert mean_ci([0.7])[0] == 0.7 and np.isnan(mean_ci([0.7])[1])
    with pytest.raises(InputError, match="level = 95"):
        mean_ci([1.0, 2.0], level=95)
