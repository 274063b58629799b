"""Classifiers on embeddings: accuracy on separable and overlapping blobs, confidences, add_classes, selection."""

import pickle

import numpy as np
import pytest

from cytodml.errors import InputError
from cytodml.evaluate.classifiers import (
    CentroidClassifier,
    GMMClassifier,
    KNNClassifier,
    SVMClassifier,
    build_classifier,
    select_on_validation,
)
from cytodml.evaluate.metrics import multiclass_metrics

NAMES = ["centroid", "gmm", "svm", "knn"]


def blobs(separation: float, per_class: int = 60, seed: int = 0):
    """Three isotropic unit-variance Gaussian classes on a right-angled triangle with legs ``separation``."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [separation, 0.0], [0.0, separation]])
    y = np.repeat(np.arange(3), per_class)
    return centres[y] + rng.normal(size=(len(y), 2)), y


@pytest.mark.parametrize("name", NAMES)
def test_separable_classes_are_classified_without_error(name):
    X, y = blobs(12.0, seed=0)
    X_test, y_test = blobs(12.0, seed=1)
    classifier = build_classifier(name, {}, seed=0).fit(X, y)
    assert classifier.classes_.tolist() == [0, 1, 2]
    assert np.array_equal(classifier.predict(X_test), y_test)


@pytest.mark.parametrize("name", NAMES)
def test_overlapping_classes_give_probabilities_and_a_middling_accuracy(name):
    X, y = blobs(1.5, seed=0)
    X_test, y_test = blobs(1.5, seed=1)
    classifier = build_classifier(name, {}, seed=0).fit(X, y)
    proba = classifier.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    assert (proba >= 0).all() and (proba <= 1).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    predicted = classifier.predict(X_test)
    assert np.array_equal(predicted, classifier.classes_[proba.argmax(axis=1)])
    accuracy = (predicted == y_test).mean()
    assert 0.45 < accuracy < 0.85  # chance is 1/3; the Bayes accuracy of these blobs is about 0.65


@pytest.mark.parametrize("name", NAMES)
def test_string_labels_and_pickling(name):
    X, y = blobs(12.0)
    names = np.array(["bead", "cryptosporidium", "giardia"])[y]
    classifier = build_classifier(name, {}, seed=0).fit(X, names)
    restored = pickle.loads(pickle.dumps(classifier))
    assert restored.classes_.tolist() == ["bead", "cryptosporidium", "giardia"]
    np.testing.assert_array_equal(restored.predict_proba(X), classifier.predict_proba(X))


def test_centroid_distances_and_confidence_by_hand():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    classifier = CentroidClassifier().fit(X, [0, 0, 1, 1])
    np.testing.assert_allclose(classifier.centres_, [[1.0, 0.0], [10.0, 2.0]])
    # within-class squared deviations 1 + 1 + 4 + 4 = 10 over (N - K) D = 2 * 2 -> s^2 = 2.5
    assert classifier.scale_ == pytest.approx(np.sqrt(2.5))
    query = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(classifier.distances(query), [[2.0, 9.0]])
    expected = 1 / (1 + np.exp(-(81 - 4) / (2 * 2.5)))
    np.testing.assert_allclose(classifier.predict_proba(query), [[expected, 1 - expected]])
    fixed = CentroidClassifier(scale=10.0).fit(X, [0, 0, 1, 1])
    np.testing.assert_allclose(fixed.predict_proba(query)[0, 0], 1 / (1 + np.exp(-77 / 200)))


def test_centroid_without_spread_predicts_but_asks_for_a_scale():
    classifier = CentroidClassifier().fit([[0.0, 0.0], [4.0, 0.0]], [0, 1])
    assert classifier.predict([[1.0, 0.0]]).tolist() == [0]
    with pytest.raises(InputError, match="centroid.scale"):
        classifier.predict_proba([[1.0, 0.0]])


def mirrored_classes(copies_of_right: int = 1):
    """A Gaussian cloud around (-3, 0) and its mirror image around (3, 0), so the density is symmetric about x = 0."""
    left = np.random.default_rng(3).normal(size=(80, 2)) + [-3.0, 0.0]
    right = np.tile(left * [-1.0, 1.0], (copies_of_right, 1))
    return np.concatenate([left, right]), np.repeat([0, 1], [len(left), len(right)])


def test_gmm_confidence_is_near_one_inside_a_class_and_one_half_on_the_midline():
    X, y = mirrored_classes()
    classifier = GMMClassifier().fit(X, y)
    inside = classifier.predict_proba([[-3.0, 0.0], [3.0, 0.5]])
    np.testing.assert_allclose(inside, [[1, 0], [0, 1]], atol=1e-3)
    midline = classifier.predict_proba([[0.0, -2.0], [0.0, 0.0], [0.0, 40.0]])
    np.testing.assert_allclose(midline, 0.5, atol=1e-9)
    # along the axis of the two means the mirrored covariances agree, so the nearer mean wins even very far out
    far = classifier.predict_proba([[-1e4, 0.0], [1e4, 0.0]])
    assert np.isfinite(far).all()
    np.testing.assert_allclose(far, [[1, 0], [0, 1]])


def test_gmm_frequency_prior_weighs_the_midline_by_class_size():
    X, y = mirrored_classes(copies_of_right=2)  # the same Gaussian for class 1, with twice the examples
    uniform = GMMClassifier().fit(X, y).predict_proba([[0.0, 0.0]])
    frequency = GMMClassifier(priors="frequency").fit(X, y).predict_proba([[0.0, 0.0]])
    np.testing.assert_allclose(uniform, [[0.5, 0.5]], atol=1e-9)
    np.testing.assert_allclose(frequency, [[1 / 3, 2 / 3]], atol=1e-9)


def test_knn_vote_fractions_by_hand():
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    y = [0, 0, 0, 1, 1]
    query = np.array([[1.6], [8.0]])
    uniform = KNNClassifier(k=3).fit(X, y).predict_proba(query)
    np.testing.assert_allclose(uniform, [[1, 0], [1 / 3, 2 / 3]])
    # query 8: neighbours 10 (d 2), 11 (d 3), 2 (d 6): weights 1/2 + 1/3 = 5/6 for class 1, 1/6 for class 0
    weighted = KNNClassifier(k=3, weights="distance").fit(X, y).predict_proba(query)
    np.testing.assert_allclose(weighted[1], [1 / 6, 5 / 6])
    exact = KNNClassifier(k=3, weights="distance").fit(X, y).predict_proba([[10.0]])
    np.testing.assert_allclose(exact, [[0, 1]])


@pytest.mark.parametrize("kind", [CentroidClassifier, KNNClassifier])
def test_add_classes_recognises_a_new_class_and_equals_a_fit_on_both(kind):
    X, y = blobs(12.0, seed=0)
    known = y < 2
    classifier = kind().fit(X[known], y[known])
    assert classifier.predict(X[~known]).tolist() != y[~known].tolist()
    few = np.flatnonzero(~known)[:5]
    classifier.add_classes(X[few], y[few])
    assert classifier.classes_.tolist() == [0, 1, 2]
    X_test, y_test = blobs(12.0, seed=1)
    assert np.array_equal(classifier.predict(X_test), y_test)
    both = np.concatenate([np.flatnonzero(known), few])
    refitted = kind().fit(X[both], y[both])
    np.testing.assert_allclose(classifier.predict_proba(X_test), refitted.predict_proba(X_test))


def test_centroid_add_classes_updates_a_known_class_exactly():
    X, y = blobs(3.0, seed=0)
    classifier = CentroidClassifier().fit(X[:100], y[:100]).add_classes(X[100:], y[100:])
    refitted = CentroidClassifier().fit(X, y)
    np.testing.assert_allclose(classifier.centres_, refitted.centres_)
    assert classifier.scale_ == pytest.approx(refitted.scale_)


def noisy_clusters(seed: int, flip: float):
    """Two well-separated classes with a share ``flip`` of the labels swapped: one neighbour is a poor vote."""
    X, y = blobs(10.0, per_class=100, seed=seed)
    X, y = X[y < 2], y[y < 2]
    flipped = np.random.default_rng(seed).random(len(y)) < flip
    return X, np.where(flipped, 1 - y, y)


def test_select_on_validation_prefers_a_wide_neighbourhood_under_label_noise():
    X, y = noisy_clusters(seed=0, flip=0.3)
    X_val, y_val = noisy_clusters(seed=1, flip=0.0)
    classifier, chosen = select_on_validation("knn", {}, X, y, X_val, y_val, seed=0)
    assert chosen["k"] >= 7
    assert classifier.k == chosen["k"]
    assert classifier.predict(X_val).shape == y_val.shape


def test_select_on_validation_caps_k_by_the_smallest_class_and_keeps_fixed_params():
    X, y = blobs(1.5, seed=0)
    keep = np.r_[np.flatnonzero(y < 2), np.flatnonzero(y == 2)[:4]]
    X_val, y_val = blobs(1.5, seed=1)
    _, chosen = select_on_validation("knn", {}, X[keep], y[keep], X_val, y_val, seed=0)
    assert chosen["k"] in (1, 3)
    _, fixed = select_on_validation("knn", {"k": 11, "weights": "distance"}, X, y, X_val, y_val, seed=0)
    assert fixed == {"k": 11, "weights": "distance"}


def test_select_on_validation_picks_the_svm_c_of_best_validation_balanced_accuracy():
    X, y = blobs(2.0, per_class=30, seed=0)
    X_val, y_val = blobs(2.0, per_class=30, seed=1)
    classifier, chosen = select_on_validation("svm", {"gamma": 10.0}, X, y, X_val, y_val, seed=0)
    scores = {
        C: multiclass_metrics(
            y_val, build_classifier("svm", {"C": C, "gamma": 10.0}, 0).fit(X, y).predict(X_val), [0, 1, 2]
        )["balanced_accuracy"]
        for C in (0.1, 1.0, 10.0, 100.0)
    }
    assert chosen["gamma"] == 10.0
    assert scores[chosen["C"]] == max(scores.values())
    assert len(set(scores.values())) > 1  # the choice is not a tie that any C would pass
    assert chosen["C"] == classifier.C


def test_select_on_validation_without_validation_data_uses_the_defaults():
    X, y = blobs(12.0, per_class=20)
    _, svm = select_on_validation("svm", {}, X, y, None, None, seed=0)
    assert svm == {"C": 1.0, "gamma": "scale"}
    _, gmm = select_on_validation("gmm", {"covariance": "diag"}, X, y, np.empty((0, 2)), [], seed=0)
    assert gmm == {"components": 1, "covariance": "diag", "reg_covar": 1e-6, "priors": "uniform", "outlier_alpha": None}


@pytest.mark.parametrize("name", ["centroid", "gmm"])
def test_confidence_rejects_objects_far_from_every_class(name):
    """A posterior is normalised over known classes; the confidence must also fall with distance (unseen types)."""
    X, y = blobs(10.0, per_class=200)
    classifier = build_classifier(name, {"outlier_alpha": 0.001}, seed=0).fit(X, y)
    centres = np.array([X[y == label].mean(axis=0) for label in np.unique(y)])
    far = centres + np.array([[-50.0, -50.0], [70.0, 0.0], [0.0, 70.0]])  # each beyond one class, away from the rest
    assert classifier.predict_proba(far).max(axis=1).min() > 0.98  # the posterior alone is confidently wrong
    assert classifier.confidence(far).max() < 1e-6
    inside = classifier.confidence(centres)
    np.testing.assert_allclose(inside, classifier.predict_proba(centres).max(axis=1))
    # about alpha of a class's own Gaussian members fall outside its region: few known images are lost
    assert np.mean(classifier.confidence(X) < 0.5) < 0.02


@pytest.mark.parametrize("name", ["centroid", "gmm"])
def test_without_outlier_alpha_the_confidence_is_the_posterior(name):
    """outlier_alpha None, the default: the paper's confidence, the posterior alone, far objects and calibration too."""
    X, y = blobs(10.0, per_class=200)
    classifier = build_classifier(name, {}, seed=0).fit(X, y)
    assert classifier.outlier_alpha is None  # the default
    centres = np.array([X[y == label].mean(axis=0) for label in np.unique(y)])
    far = centres + np.array([[-50.0, -50.0], [70.0, 0.0], [0.0, 70.0]])
    queries = np.concatenate([X, far, centres + 200.0])
    classifier.calibrate(3.0 * X, y)  # a wide validation set would change the typicality factor, not the posterior
    np.testing.assert_array_equal(classifier.confidence(queries), classifier.predict_proba(queries).max(axis=1))
    assert classifier.confidence(far).min() > 0.98  # confidently wrong: what the typicality factor exists to stop
    assert build_classifier(name, {"outlier_alpha": 0.001}, seed=0).fit(X, y).confidence(far).max() < 1e-6


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "0.01", True, float("nan")])
def test_outlier_alpha_is_a_number_in_the_open_unit_interval_or_none(value):
    with pytest.raises(
        InputError, match=r"classifiers\.gmm\.outlier_alpha = .*: expected a number in \(0, 1\), or None"
    ):
        build_classifier("gmm", {"outlier_alpha": value}, seed=0)


def test_typicality_factor_is_the_chi_square_tail():
    from scipy.stats import chi2

    from cytodml.evaluate.classifiers import typicality_factor

    squared = np.array([0.0, chi2.isf(0.01, 2), chi2.isf(0.001, 2), chi2.isf(1e-5, 2)])
    np.testing.assert_allclose(typicality_factor(squared, 2, 0.001), [1.0, 1.0, 1.0, 0.01], rtol=1e-9)


def test_select_on_validation_rejects_validation_classes_unseen_in_training():
    X, y = blobs(12.0, per_class=20)
    with pytest.raises(InputError, match=r"validation labels \[2\]"):
        select_on_validation("centroid", {}, X[y < 2], y[y < 2], X, y, seed=0)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("forest", {}, r"classifiers\.forest: unknown classifier"),
        ("knn", {"kk": 3}, r"classifiers\.knn\.kk: unknown parameter; knn takes k, weights"),
        ("knn", {"k": 0}, r"classifiers\.knn\.k = 0: expected a positive integer"),
        ("gmm", {"covariance": "round"}, r"classifiers\.gmm\.covariance = 'round'"),
        ("svm", {"seed": 3}, r"classifiers\.svm\.seed: unknown parameter"),
        ("centroid", {"scale": -1.0}, r"classifiers\.centroid\.scale = -1\.0"),
    ],
)
def test_build_classifier_names_the_config_key_at_fault(name, params, message):
    with pytest.raises(InputError, match=message):
        build_classifier(name, params, seed=0)


def test_build_classifier_passes_the_seed_and_stores_params_unchanged():
    classifier = build_classifier("gmm", {"components": 2}, seed=7)
    assert classifier.get_params() == {
        "components": 2,
        "covariance": "full",
        "reg_covar": 1e-6,
        "seed": 7,
        "priors": "uniform",
        "outlier_alpha": None,
    }


@pytest.mark.parametrize("kind", [CentroidClassifier, GMMClassifier, SVMClassifier, KNNClassifier])
def test_bad_input_messages_name_the_shape_or_value(kind):
    X, y = blobs(12.0, per_class=10)
    with_nan = X.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(InputError, match="row 3, column 1"):
        kind().fit(with_nan, y)
    with pytest.raises(InputError, match="30 rows but 29 labels"):
        kind().fit(X, y[:-1])
    with pytest.raises(InputError, match=r"2-D array .* shape \(30,\)"):
        kind().fit(X[:, 0], y)
    fitted = kind().fit(X, y)
    with pytest.raises(InputError, match="3 embedding dimensions but the classifier was fitted on 2"):
        fitted.predict(np.zeros((1, 3)))


def test_too_small_classes_are_named():
    X, y = blobs(12.0, per_class=10)
    keep = np.r_[np.flatnonzero(y < 2), np.flatnonzero(y == 2)[:1]]
    with pytest.raises(InputError, match="class 2 has 1 training example.*at least 2"):
        GMMClassifier().fit(X[keep], y[keep])
    with pytest.raises(
        InputError, match=r"class 0 has 10 training example\(s\); a 11-component Gaussian mixture needs at least 11"
    ):
        GMMClassifier(components=11).fit(X, y)
    with pytest.raises(InputError, match="class 2 has 1 training example; the SVM"):
        SVMClassifier().fit(X[keep], y[keep])
    with pytest.raises(InputError, match="k = 50 exceeds the 30 gallery examples"):
        KNNClassifier(k=50).fit(X, y)


@pytest.mark.parametrize("name", ["centroid", "gmm"])
def test_calibration_on_validation_keeps_held_out_known_images(name):
    """Training embeddings are tighter than held-out ones; the spread estimated on validation makes them typical."""
    X, y = blobs(30.0, per_class=200, seed=0)
    centres = np.array([X[y == label].mean(axis=0) for label in np.unique(y)])
    X_val, y_val = blobs(30.0, per_class=100, seed=1)
    X_test, y_test = blobs(30.0, per_class=100, seed=2)

    def widen(points, labels):
        return centres[labels] + 3.0 * (points - centres[labels])

    classifier = build_classifier(name, {"outlier_alpha": 0.001}, seed=0).fit(X, y)
    lost_before = np.mean(classifier.confidence(widen(X_test, y_test)) < 0.98)
    classifier.calibrate(widen(X_val, y_val), y_val)
    lost_after = np.mean(classifier.confidence(widen(X_test, y_test)) < 0.98)
    assert classifier.spread_ == pytest.approx(9.0, rel=0.2)
    assert lost_before > 0.3 and lost_after < 0.05
    assert classifier.confidence(centres + 200.0).max() < 1e-6  # far objects stay unknown


@pytest.mark.parametrize("name", ["gmm", "svm"])
def test_pipeline_seeds_of_63_bits_are_accepted(name):
    X, y = blobs(12.0, per_class=20)
    classifier = build_classifier(name, {}, seed=6968855048007451022).fit(X, y)
    assert classifier.predict(X).shape == y.shape
