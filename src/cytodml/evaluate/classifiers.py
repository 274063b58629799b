"""Classifiers on embeddings: nearest class centre, per-class Gaussian mixture, RBF SVM, k nearest neighbours.

All four keep scikit-learn's contract: hyper-parameters are constructor arguments stored unchanged, ``fit(X, y)``
returns self, ``classes_`` holds the sorted class labels, ``predict_proba`` has one column per class in ``classes_``
order, and ``predict`` is the arg-max of ``predict_proba`` (ties to the first class), so a confidence threshold and the
predicted class can never disagree. Bad input raises :class:`~cytodml.errors.InputError` naming the shape or value.
"""

import itertools

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp, softmax
from scipy.stats import chi2
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from cytodml.errors import InputError
from cytodml.evaluate.metrics import check_embeddings, multiclass_metrics, sklearn_seed

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def check_labelled(X, y, what: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` validated: embeddings as in :func:`check_embeddings`, one label per row, no missing label."""
    X = check_embeddings(X, what)
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"labels for {what} must be 1-D, got shape {y.shape}")
    if len(y) != len(X):
        raise InputError(f"{what} has {len(X)} rows but {len(y)} labels were given")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InputError(f"labels for {what} hold NaN or infinite values (first at row {np.argmin(np.isfinite(y))})")
    if y.dtype.kind == "O":
        raise InputError(f"labels for {what} must be integers or strings, got objects")
    return X, y


def _param_error(name: str, value, expected: str) -> InputError:
    return InputError(f"{name} = {value!r}: expected {expected}")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and bool(np.isfinite(value))


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _param_error(name, value, "a positive integer")


def _check_positive_number(name: str, value) -> None:
    if not (_is_number(value) and value > 0):
        raise _param_error(name, value, "a positive number")


class _EmbeddingClassifier(ClassifierMixin, BaseEstimator):
    """What the four classifiers share: input checks, ``predict`` as the arg-max of ``predict_proba``.

    Each subclass defines ``_check_params()``, raising InputError that names the first hyper-parameter with a value
    it cannot use.
    """

    def hyper_parameters(self) -> dict:
        """The hyper-parameters a fit uses (``None`` resolved to its default), without the seed."""
        return {name: value for name, value in self.get_params().items() if name != "seed"}

    def _start_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        self._check_params()
        X, y = check_labelled(X, y)
        self.n_features_in_ = X.shape[1]
        return X, y

    def _check_query(self, X, what: str = "X") -> np.ndarray:
        check_is_fitted(self, "classes_")
        X = check_embeddings(X, what)
        if X.shape[1] != self.n_features_in_:
            raise InputError(
                f"{what} has {X.shape[1]} embedding dimensions but the classifier was fitted on {self.n_features_in_}"
            )
        return X

    def predict(self, X) -> np.ndarray:
        """The class of highest ``predict_proba``."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def confidence(self, X) -> np.ndarray:
        """Confidence in the predicted class, what a detection threshold is applied to: here its ``predict_proba``."""
        return self.predict_proba(X).max(axis=1)

    def calibrate(self, X_val, y_val):
        """Adapt the confidence to held-out embeddings of known classes (a no-op where nothing is calibrated)."""
        return self


class _TypicalityMixin:
    """The typicality part of :meth:`confidence` for classifiers with a Gaussian model per class.

    With ``outlier_alpha`` None (the default) the confidence is the plain class posterior, as in Luo et al. (RSC Adv
    2021), whose 0.98 threshold applies to it; with a number in (0, 1) it is the posterior times
    :func:`typicality_factor`, which rejects objects far from every class (unseen types) but, on the default study,
    finds no more targets at the same specificity (README, "What the default study shows").

    Embeddings of the training images are tighter than those of images the network never saw, so distances are
    measured in units inflated by ``spread_`` = mean m^2 / D of the validation images to their own class (at least 1),
    estimated by :meth:`calibrate`; a chi^2_D variable has mean D, so this one factor makes the held-out embeddings of
    known classes typical again.
    """

    spread_ = 1.0

    def _class_distances(self, X) -> np.ndarray:
        """N x K squared distances in the class model's units (chi^2_D for the class's own members)."""
        raise NotImplementedError

    def confidence(self, X) -> np.ndarray:
        if self.outlier_alpha is None:
            return super().confidence(X)
        proba = self.predict_proba(X)
        predicted = np.argmax(proba, axis=1)
        distance = self._class_distances(X)[np.arange(len(predicted)), predicted] / self.spread_
        return proba.max(axis=1) * typicality_factor(distance, self.n_features_in_, self.outlier_alpha)

    def calibrate(self, X_val, y_val):
        X_val, y_val = check_labelled(X_val, y_val, "X_val")
        own = np.searchsorted(self.classes_, y_val)
        squared = self._class_distances(X_val)[np.arange(len(y_val)), own]
        self.spread_ = max(1.0, float(np.mean(squared)) / self.n_features_in_) if len(squared) else 1.0
        return self


def typicality_factor(squared_distance: np.ndarray, dimensions: int, outlier_alpha: float) -> np.ndarray:
    """How typical a sample is of the class it was assigned to, as a factor in [0, 1] on the class posterior.

    A posterior is normalised over the known classes, so an object far from all of them (a particle type never seen
    in training) still gets a posterior near 1 for the nearest class. Under the class's Gaussian model the squared
    Mahalanobis distance m^2 of a member follows chi^2 with D degrees of freedom; its tail probability
    ``p = P(chi^2_D > m^2)`` says how many members lie farther out. The factor ``min(1, p / outlier_alpha)`` leaves the
    confidence of every sample inside the class's (1 - alpha) region unchanged and takes it to 0 outside, in
    proportion, so that an unseen object lands under any threshold and "unknown" becomes an answer.
    """
    return np.minimum(1.0, chi2.sf(squared_distance, dimensions) / outlier_alpha)


def _check_alpha(value) -> None:
    if value is not None and not (_is_number(value) and 0 < value < 1):
        raise _param_error("outlier_alpha", value, "a number in (0, 1), or None for the plain posterior")


def _merge_classes(classes: np.ndarray, new: np.ndarray) -> np.ndarray:
    if (classes.dtype.kind in "iu") != (new.dtype.kind in "iu"):
        raise InputError(f"new labels are of type {new.dtype} but the fitted classes are of type {classes.dtype}")
    return np.union1d(classes, new)


def _class_moments(X: np.ndarray, y: np.ndarray):
    """Per class: labels, counts, means and the sum of squared deviations from the mean (over all dimensions)."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), X.shape[1]))
    np.add.at(sums, inverse, X)
    means = sums / counts[:, None]
    squares = np.zeros(len(classes))
    np.add.at(squares, inverse, ((X - means[inverse]) ** 2).sum(axis=1))
    return classes, counts, means, squares


class CentroidClassifier(_TypicalityMixin, _EmbeddingClassifier):
    """Nearest class centre (mean) in Euclidean distance, with a distance-based confidence (Luo et al., RSC Adv 2021).

    The centre of class c is the mean mu_c of its training embeddings; a sample goes to the nearest centre. The
    confidence is the posterior of an isotropic Gaussian per class with a shared variance s^2 and equal priors::

        p_c(x) = exp(-||x - mu_c||^2 / (2 s^2)) / sum_k exp(-||x - mu_k||^2 / (2 s^2))

    with s = ``scale`` where given, else s^2 is the pooled within-class variance of the training embeddings, per
    dimension, averaged over the D dimensions: s^2 = sum_c sum_{i in c} ||x_i - mu_c||^2 / ((N - K) D) for N
    examples of K classes. That s^2 is undefined with one example per class (N = K) or no spread at all; then
    ``predict`` and ``distances`` still work and ``predict_proba`` asks for ``scale``.

    :meth:`confidence` is that posterior (``outlier_alpha`` None, the paper's confidence) or the posterior times
    :func:`typicality_factor` of ``||x - mu_c||^2 / s^2`` (chi^2 with D degrees of freedom under the same model), so
    that objects far from every centre are not confident (:class:`_TypicalityMixin`).

    Parameters
    ----------
    scale : float or None
        s, in embedding units; None estimates it from the training embeddings as above.
    outlier_alpha : float or None
        Tail probability beyond which an object stops being typical of its class (see :func:`typicality_factor`);
        None (default): no typicality factor, the confidence is the posterior.

    Attributes
    ----------
    classes_, centres_ (K x D), counts_ (examples per class), scatter_ (sum of squared deviations per class),
    scale_ (the s in use; NaN where undefined), n_features_in_.
    """

    def __init__(self, scale=None, outlier_alpha=None):
        self.scale = scale
        self.outlier_alpha = outlier_alpha

    def _check_params(self) -> None:
        if self.scale is not None:
            _check_positive_number("scale", self.scale)
        _check_alpha(self.outlier_alpha)

    def fit(self, X, y):
        X, y = self._start_fit(X, y)
        self.classes_, self.counts_, self.centres_, self.scatter_ = _class_moments(X, y)
        self._update_scale()
        return self

    def add_classes(self, X, y):
        """Add labelled examples of new classes, or more of known ones, without touching the other centres.

        A known class's centre and spread are updated exactly (Chan et al.'s pairwise update), so ``fit(X1, y1)``
        then ``add_classes(X2, y2)`` equals ``fit`` on both; a fitted ``scale`` estimate is updated the same way.
        """
        X, y = check_labelled(self._check_query(X), y)
        new_classes, new_counts, new_centres, new_scatter = _class_moments(X, y)
        classes = _merge_classes(self.classes_, new_classes)
        counts = np.zeros(len(classes), dtype=np.int64)
        centres = np.zeros((len(classes), X.shape[1]))
        scatter = np.zeros(len(classes))
        old = np.searchsorted(classes, self.classes_)
        counts[old], centres[old], scatter[old] = self.counts_, self.centres_, self.scatter_
        for label, n_new, centre, spread in zip(new_classes, new_counts, new_centres, new_scatter):
            i = np.searchsorted(classes, label)
            n_old = counts[i]
            total = n_old + n_new
            scatter[i] += spread + n_old * n_new / total * np.sum((centres[i] - centre) ** 2)
            centres[i] = (n_old * centres[i] + n_new * centre) / total
            counts[i] = total
        self.classes_, self.counts_, self.centres_, self.scatter_ = classes, counts, centres, scatter
        self._update_scale()
        return self

    def _update_scale(self) -> None:
        if self.scale is not None:
            self.scale_ = float(self.scale)
            return
        degrees = (self.counts_.sum() - len(self.classes_)) * self.centres_.shape[1]
        pooled = self.scatter_.sum() / degrees if degrees > 0 else 0.0
        self.scale_ = float(np.sqrt(pooled)) if pooled > 0 else float("nan")

    def distances(self, X) -> np.ndarray:
        """N x K Euclidean distances from each sample to each class centre, columns in ``classes_`` order."""
        return cdist(self._check_query(X), self.centres_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmin(self.distances(X), axis=1)]

    def predict_proba(self, X) -> np.ndarray:
        if not np.isfinite(self.scale_):
            raise InputError(
                f"the centroid confidence needs a scale: the training embeddings ({self.counts_.sum()} examples of "
                f"{len(self.classes_)} classes) have no within-class spread to estimate it from; set classifiers."
                "centroid.scale"
            )
        return softmax(-(self.distances(X) ** 2) / (2 * self.scale_**2), axis=1)

    def _class_distances(self, X) -> np.ndarray:
        return self.distances(X) ** 2 / self.scale_**2


class GMMClassifier(_TypicalityMixin, _EmbeddingClassifier):
    """A Gaussian mixture per class, fitted by EM; the confidence is the class posterior (Luo et al., RSC Adv 2021),
    times a typicality factor unless ``outlier_alpha`` is None.

    ``p(c | x) = prior_c p(x | c) / sum_k prior_k p(x | k)``, with p(x | c) the class's mixture density (sklearn
    ``GaussianMixture``), computed in log space (log-sum-exp) so that a point far from every class still gets a
    finite posterior rather than 0 / 0.

    The default prior is uniform: the class mix of a training split (set by the split fractions and by how rare a
    class is in the dump) is not the prevalence in a sample to be screened, and a frequency prior would move a rare
    target's confidence, and so what a fixed detection threshold (0.98 in the paper) lets through, with the split.
    ``priors="frequency"`` uses the training class frequencies instead.

    Parameters
    ----------
    components : int
        Gaussian components per class; each class needs at least max(2, components) training examples.
    covariance : {"full", "tied", "diag", "spherical"}
        ``GaussianMixture.covariance_type``.
    reg_covar : float
        Added to the covariance diagonal, so a class spread on a line in the latent space stays invertible.
    seed : int
        Seed of the k-means initialisation.
    priors : {"uniform", "frequency"}
    outlier_alpha : float or None
        :meth:`confidence` is the posterior times :func:`typicality_factor` of the squared Mahalanobis distance to
        the nearest component of the predicted class; None (default): the posterior alone, as in the paper.

    Attributes
    ----------
    classes_, mixtures_ (one fitted GaussianMixture per class), log_priors_, n_features_in_.
    """

    def __init__(self, components=1, covariance="full", reg_covar=1e-6, seed=0, priors="uniform", outlier_alpha=None):
        self.components = components
        self.covariance = covariance
        self.reg_covar = reg_covar
        self.seed = seed
        self.priors = priors
        self.outlier_alpha = outlier_alpha

    def _check_params(self) -> None:
        _check_positive_int("components", self.components)
        if self.covariance not in COVARIANCE_TYPES:
            raise _param_error("covariance", self.covariance, f"one of {', '.join(COVARIANCE_TYPES)}")
        if not (_is_number(self.reg_covar) and self.reg_covar >= 0):
            raise _param_error("reg_covar", self.reg_covar, "a number >= 0")
        if self.priors not in ("uniform", "frequency"):
            raise _param_error("priors", self.priors, "'uniform' or 'frequency'")
        _check_alpha(self.outlier_alpha)

    def fit(self, X, y):
        X, y = self._start_fit(X, y)
        self.classes_, counts = np.unique(y, return_counts=True)
        needed = max(2, self.components)
        for label, count in zip(self.classes_, counts):
            if count < needed:
                raise InputError(
                    f"class {label.item()!r} has {count} training example(s); a {self.components}-component "
                    f"Gaussian mixture needs at least {needed}"
                )
        self.mixtures_ = [
            GaussianMixture(
                n_components=self.components,
                covariance_type=self.covariance,
                reg_covar=self.reg_covar,
                random_state=sklearn_seed(self.seed),
            ).fit(X[y == label])
            for label in self.classes_
        ]
        frequencies = counts / counts.sum() if self.priors == "frequency" else np.full(len(counts), 1 / len(counts))
        self.log_priors_ = np.log(frequencies)
        return self

    def log_likelihoods(self, X) -> np.ndarray:
        """N x K log p(x | c), columns in ``classes_`` order."""
        X = self._check_query(X)
        return np.column_stack([mixture.score_samples(X) for mixture in self.mixtures_])

    def predict_proba(self, X) -> np.ndarray:
        joint = self.log_likelihoods(X) + self.log_priors_
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def distances(self, X) -> np.ndarray:
        """N x K Mahalanobis distances to the nearest component of each class, columns in ``classes_`` order."""
        return np.sqrt(self._class_distances(X))

    def _class_distances(self, X) -> np.ndarray:
        """N x K squared Mahalanobis distance to the nearest component of each class, columns in ``classes_`` order."""
        X = self._check_query(X)
        return np.column_stack([_component_mahalanobis(mixture, X).min(axis=1) for mixture in self.mixtures_])


def _component_mahalanobis(mixture: GaussianMixture, X: np.ndarray) -> np.ndarray:
    """N x M squared Mahalanobis distances of X to the M components, from sklearn's Cholesky factors of the precisions."""
    factors = mixture.precisions_cholesky_
    columns = []
    for m, mean in enumerate(mixture.means_):
        centred = X - mean
        if mixture.covariance_type == "full":
            whitened = centred @ factors[m]
        elif mixture.covariance_type == "tied":
            whitened = centred @ factors
        else:  # diag: one factor per dimension; spherical: one per component
            whitened = centred * factors[m]
        columns.append((whitened**2).sum(axis=1))
    return np.column_stack(columns)


class SVMClassifier(_EmbeddingClassifier):
    """RBF support vector machine on the embeddings (Gupta et al., CVPR Workshops 2019), with calibrated probabilities.

    Decision function f(x) = sum_i alpha_i y_i exp(-gamma ||x - x_i||^2) + b (one-vs-rest over classes). The
    probabilities are Platt's sigmoid 1 / (1 + exp(A f(x) + B)) per class, fitted on cross-validated decision
    values (stratified, min(5, smallest class) folds), normalised over classes: sklearn's
    ``CalibratedClassifierCV(SVC(), ensemble=False)``, which replaces ``SVC(probability=True)`` (deprecated in
    scikit-learn 1.9). Each class needs at least 2 training examples for the calibration folds.

    Parameters
    ----------
    C : float or None
        Soft-margin penalty; None means 1.0 here and "choose on validation data" in :func:`select_on_validation`.
    gamma : float, "scale", "auto" or None
        RBF width; "scale" is 1 / (D var(X)), "auto" 1 / D; None means "scale" here and "choose" in
        :func:`select_on_validation`.
    seed : int
        Seed of the calibration folds.

    Attributes
    ----------
    classes_, model_ (the fitted CalibratedClassifierCV), n_features_in_.
    """

    def __init__(self, C=None, gamma=None, seed=0):
        self.C = C
        self.gamma = gamma
        self.seed = seed

    def _check_params(self) -> None:
        if self.C is not None:
            _check_positive_number("C", self.C)
        if self.gamma is not None and self.gamma not in ("scale", "auto"):
            _check_positive_number("gamma", self.gamma)

    def hyper_parameters(self) -> dict:
        # unset ones are scikit-learn's SVC defaults (C = 1, gamma = "scale"), read from the fitted SVC's own params
        given = {"C": self.C, "gamma": self.gamma}
        defaults = SVC().get_params()
        return {name: defaults[name] if value is None else value for name, value in given.items()}

    def fit(self, X, y):
        X, y = self._start_fit(X, y)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise InputError(f"the SVM needs at least 2 classes, the training labels hold {len(classes)}")
        if counts.min() < 2:
            raise InputError(
                f"class {classes[np.argmin(counts)].item()!r} has 1 training example; the SVM's probability "
                "calibration needs at least 2 per class"
            )
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True, random_state=sklearn_seed(self.seed))
        svc = SVC(kernel="rbf", **self.hyper_parameters())
        self.model_ = CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(self._check_query(X))


class KNNClassifier(_EmbeddingClassifier):
    """k nearest neighbours in Euclidean distance over a gallery of labelled embeddings.

    ``predict_proba`` is the share of the k neighbours' votes per class: each vote 1 (``weights="uniform"``) or
    1 / distance (``weights="distance"``, where a neighbour at distance 0 takes all the weight, as in sklearn).

    Parameters
    ----------
    k : int
        Neighbours per query; at most the gallery size.
    weights : {"uniform", "distance"}

    Attributes
    ----------
    classes_, gallery_ (the stored examples), gallery_labels_, n_features_in_.
    """

    def __init__(self, k=5, weights="uniform"):
        self.k = k
        self.weights = weights

    def _check_params(self) -> None:
        _check_positive_int("k", self.k)
        if self.weights not in ("uniform", "distance"):
            raise _param_error("weights", self.weights, "'uniform' or 'distance'")

    def fit(self, X, y):
        X, y = self._start_fit(X, y)
        return self._store(X, y)

    def add_classes(self, X, y):
        """Add labelled examples of new classes, or more of known ones, to the gallery; equals ``fit`` on both sets."""
        X, y = check_labelled(self._check_query(X), y)
        _merge_classes(self.classes_, y)
        return self._store(np.concatenate([self.gallery_, X]), np.concatenate([self.gallery_labels_, y]))

    def _store(self, X: np.ndarray, y: np.ndarray):
        if self.k > len(X):
            raise InputError(f"k = {self.k} exceeds the {len(X)} gallery examples")
        self.gallery_, self.gallery_labels_ = X, y
        self.classes_, self._codes = np.unique(y, return_inverse=True)
        self._index = NearestNeighbors(n_neighbors=self.k).fit(X)
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = self._check_query(X)
        distance, neighbour = self._index.kneighbors(X)
        if self.weights == "uniform":
            votes = np.ones_like(distance)
        else:
            exact = distance == 0
            with np.errstate(divide="ignore"):
                votes = np.where(exact.any(axis=1, keepdims=True), exact, 1 / distance)
        proba = np.zeros((len(X), len(self.classes_)))
        np.add.at(proba, (np.arange(len(X))[:, None], self._codes[neighbour]), votes)
        return proba / proba.sum(axis=1, keepdims=True)


CLASSIFIERS = {
    "centroid": CentroidClassifier,
    "gmm": GMMClassifier,
    "svm": SVMClassifier,
    "knn": KNNClassifier,
}

# Candidates tried on validation data for a hyper-parameter the config leaves open; ties go to the first listed.
SEARCH_GRIDS = {
    "centroid": {},
    "gmm": {"components": (1, 2, 3)},
    "svm": {"C": (0.1, 1.0, 10.0, 100.0), "gamma": ("scale", 0.1, 1.0, 10.0)},
    "knn": {"k": (1, 3, 5, 7, 11)},
}


def build_classifier(name: str, params: dict, seed: int) -> _EmbeddingClassifier:
    """An unfitted classifier from its config entry ``classifiers.<name>: params``; the seed comes from the trial."""
    params = params or {}  # a bare `knn:` in YAML is None
    if name not in CLASSIFIERS:
        raise InputError(f"classifiers.{name}: unknown classifier; expected one of {', '.join(CLASSIFIERS)}")
    kind = CLASSIFIERS[name]
    defaults = kind().get_params()
    accepted = [param for param in defaults if param != "seed"]
    for param in params:
        if param not in accepted:
            raise InputError(f"classifiers.{name}.{param}: unknown parameter; {name} takes {', '.join(accepted)}")
    seeded = {"seed": seed} if "seed" in defaults else {}
    classifier = kind(**params, **seeded)
    try:
        classifier._check_params()
    except InputError as err:
        raise InputError(f"classifiers.{name}.{err}") from None
    return classifier


def _candidates(name: str, params: dict, smallest_class: int) -> list[dict]:
    """Every combination of the grid values of the hyper-parameters ``params`` leaves open (None counts as open)."""
    grid = {param: values for param, values in SEARCH_GRIDS[name].items() if params.get(param) is None}
    # A neighbourhood or a mixture larger than the smallest class can never be that class's own.
    for param in ("k", "components"):
        if param in grid:
            grid[param] = tuple(v for v in grid[param] if v <= smallest_class) or grid[param][:1]
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def select_on_validation(name, params, X_train, y_train, X_val=None, y_val=None, seed=0):
    """Fit ``classifiers.<name>`` on the training embeddings, choosing open hyper-parameters on validation data.

    Each hyper-parameter of :data:`SEARCH_GRIDS` that ``params`` does not fix (absent or None) is chosen by the
    balanced accuracy on ``(X_val, y_val)`` of a classifier fitted on the training data, over the grid (k and
    components capped by the smallest training class); ties go to the first candidate in grid order. Fixed
    parameters are kept. Without validation data (None or empty) the defaults are used.

    Returns the winning classifier, fitted on the training data and calibrated on the validation data
    (:meth:`calibrate`), and the hyper-parameters it uses (fixed, chosen and default alike, without the seed).
    """
    params = params or {}
    base = build_classifier(name, params, seed)
    X_train, y_train = check_labelled(X_train, y_train, "X_train")
    if X_val is None or len(X_val) == 0:
        fitted = base.fit(X_train, y_train)
        return fitted, fitted.hyper_parameters()
    X_val, y_val = check_labelled(X_val, y_val, "X_val")
    classes, counts = np.unique(y_train, return_counts=True)
    unseen = np.setdiff1d(np.unique(y_val), classes)
    if len(unseen):
        raise InputError(f"validation labels {unseen.tolist()} are not among the training classes {classes.tolist()}")
    best, best_score = None, -np.inf
    for candidate in _candidates(name, params, int(counts.min())):
        fitted = clone(base).set_params(**candidate).fit(X_train, y_train)
        score = multiclass_metrics(y_val, fitted.predict(X_val), classes)["balanced_accuracy"]
        if score > best_score:
            best, best_score = fitted, score
    return best.calibrate(X_val, y_val), best.hyper_parameters()
