"""Novel classes: held out of everything a network learns from, then recognised from K examples (issue 15)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytodml.config import checked, novel_classes_of, pretrain_scope, pretrain_trials, validate_config
from cytodml.data.splits import make_split
from cytodml.errors import InputError
from cytodml.evaluate.classifiers import CentroidClassifier
from cytodml.evaluate.protocols import (
    episodes,
    few_shot_accuracy,
    generalised_accuracy,
    generalised_episodes,
    harmonic_mean,
    name_queries,
)
from cytodml.evaluate.run import NOVEL_COLUMNS, evaluate_trial
from cytodml.learn.inputs import pretraining_rows
from tests.unit.test_evaluate_run import CENTRES, CLASS_NAMES, embeddings_table
from tests.unit.test_splits import make_patches

CLASSES = {"a": 40, "b": 30, "c": 36, "d": 34, "e": 38, "f": 30}
NETWORK = {"name": "small", "embedding_dim": 4}
PROTOCOLS = {
    "full": {"protocol": "full"},
    "fewshot": {"protocol": "fewshot", "shots": 3},
    "episodic": {"protocol": "episodic"},
}


# ------------------------------------------------------------------------------------------------ the held-out rule


@pytest.mark.parametrize("novel", [["b", "e"], {"rotate": 2}], ids=["fixed", "rotate"])
@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_novel_images_never_reach_training_validation_or_pretraining(name, novel):
    patches = make_patches(CLASSES)
    experiment = {**PROTOCOLS[name], "trials": 3, "open_set": ["f"], "novel_classes": novel}
    filled = checked("experiment", {"dataset": "d", "losses": ["x"], "network": NETWORK, **experiment})
    splits = [make_split(patches, experiment, trial, 11, "d")[0] for trial in range(3)]
    plain = [make_split(patches, {**experiment, "novel_classes": None}, trial, 11, "d")[0] for trial in range(3)]
    known = sorted(set(CLASSES) - {"f"})
    for trial, (split, without) in enumerate(zip(splits, plain)):
        novel_now = novel_classes_of(novel, known, trial)
        is_novel = split["class_name"].isin(novel_now)
        # every image of a novel class, and only those, in the novel pool
        assert (split.loc[is_novel, "subset"] == "novel").all() and is_novel.sum() == sum(CLASSES[c] for c in novel_now)
        assert (split.loc[~is_novel, "subset"] != "novel").all()
        # the other classes' subsets are those of the split without novel classes: the fixed split rule holds
        pd.testing.assert_series_equal(split.loc[~is_novel, "subset"], without.loc[~is_novel, "subset"])
    for scope in {pretrain_scope(filled, trial) for trial in range(3)}:
        served = [splits[trial] for trial in pretrain_trials(filled, scope)]
        seen = set(pretraining_rows(served))
        for split in served:
            assert not seen & set(split.loc[split["subset"] == "novel", "index"])
    if isinstance(novel, dict):
        # every class is novel in some trial, and pretraining follows the rotation trial by trial
        assert set().union(*(novel_classes_of(novel, known, t) for t in range(3))) == set(known)
        assert {pretrain_scope(filled, trial) for trial in range(3)} == {"t0", "t1", "t2"}


def test_rotation_walks_the_sorted_classes():
    known = ["a", "b", "c", "d", "e"]
    assert [novel_classes_of({"rotate": 2}, known, t) for t in range(3)] == [["a", "b"], ["c", "d"], ["a", "e"]]
    assert novel_classes_of(["d", "a"], known, 4) == ["a", "d"] and novel_classes_of(None, known, 0) == []


def config(**experiment):
    return {
        "datasets": {
            "d": {
                "source": {"kind": "synthetic", "classes": dict(CLASSES)},
                "channels": ["bf"],
                "patch": {"mode": "object", "size": 32},
            }
        },
        "losses": {"softmax": {"type": "softmax"}},
        "experiments": {
            "e": {"dataset": "d", "protocol": "full", "losses": ["softmax"], "network": NETWORK, **experiment}
        },
        "run": ["e"],
    }


def classes_of(source):
    return sorted(source["classes"])


def sizes_of(source):
    return dict(source["classes"])


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        ({"novel_classes": ["a", "z"]}, r"novel_classes\[1\]: 'z' is not a known class"),
        ({"novel_classes": ["a", "b"], "open_set": ["a"]}, r"novel_classes: \['a'\] also listed in open_set"),
        ({"novel_classes": {"rotate": 2}, "targets": ["c"]}, r"target\(s\) \['c'\] would be novel in some trial"),
        ({"novel_classes": {"rotate": 5}}, "leaves fewer than two to train on"),
        ({"novel_classes": ["a", "b"], "novel_episodes": {"ways": 3}}, "3-way episodes need 3 novel"),
        (
            {"novel_classes": ["a", "b"], "protocol": "episodic", "fractions": {"train": 0.2, "val": 0.2, "test": 0.6}},
            "episodes.ways: 8-way episodes on the test side, but with novel_classes a trial keeps 4 base classes",
        ),
        ({"novel_classes": ["a", "b"], "novel_episodes": {"shots": [5, 20]}}, r"class 'b' \(novel in trial 0\) has 30"),
        ({"novel_classes": ["a"]}, "novel_classes"),
    ],
)
def test_config_errors_name_the_key_before_any_job(experiment, message):
    with pytest.raises(InputError, match=message):
        validate_config(config(**experiment), list_classes=classes_of, class_sizes=sizes_of)


def test_a_config_with_novel_classes_fills_the_episode_defaults():
    filled = validate_config(config(novel_classes=["a", "e"]), list_classes=classes_of, class_sizes=sizes_of)
    assert filled["experiments"]["e"]["novel_episodes"] == {"shots": [1, 5, 10, 20], "queries": 15, "count": 200}


# ------------------------------------------------------------------------------------------------ episodes


def brute_force_name(method, support, query):
    """One query at a time, as the methods are defined (protocols.name_queries)."""
    ways, shots, _ = support.shape
    distance = np.linalg.norm(support - query, axis=2)  # ways x shots
    if method == "prototype":
        return int(np.argmin([np.linalg.norm(support[c].mean(axis=0) - query) for c in range(ways)]))
    if method == "siamese":
        return int(np.argmin(distance.mean(axis=1)))
    k = min(5, ways * shots)
    order = sorted(range(ways * shots), key=lambda i: (distance.ravel()[i], i))[:k]
    votes = {c: sum(1 for i in order if i // shots == c) for c in range(ways)}
    best = max(votes.values())
    return next(i // shots for i in order if votes[i // shots] == best)


@pytest.mark.parametrize("method", ["prototype", "knn", "siamese"])
def test_every_method_names_queries_as_defined(method):
    rng = np.random.default_rng(3)
    support = rng.normal(size=(4, 3, 5)) + np.arange(4)[:, None, None] * 0.7
    queries = rng.normal(size=(40, 5)) + 1.0
    named = name_queries(method, support, queries)
    assert named.tolist() == [brute_force_name(method, support, q) for q in queries]


def test_few_shot_accuracy_and_its_confidence_interval_by_hand():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["p", "q", "r", "s"]), 20)
    X = rng.normal(size=(80, 3)) + np.repeat(np.arange(4), 20)[:, None] * 0.9
    table = few_shot_accuracy(X, y, ways=3, shots=2, queries=4, count=30, seed=9)
    assert list(table.columns) == ["method", "scope", "class_name", "accuracy", "ci_low", "ci_high", "episodes"]
    for method in ("prototype", "knn", "siamese"):
        per_episode = []
        for support, query in episodes(y, 3, 2, 4, 30, seed=9):
            S = X[support].reshape(3, 2, -1)
            per_episode.append(np.mean([brute_force_name(method, S, X[i]) == k // 4 for k, i in enumerate(query)]))
        row = table[(table["method"] == method) & (table["scope"] == "all")].iloc[0]
        mean, sd = np.mean(per_episode), np.std(per_episode, ddof=1)
        half = stats.t.ppf(0.975, 29) * sd / np.sqrt(30)
        assert row["accuracy"] == pytest.approx(mean) and row["episodes"] == 30
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
        assert 0 < mean < 1
    per_class = table[table["scope"] == "class"]
    assert set(per_class["class_name"]) == {"p", "q", "r", "s"}
    assert per_class.groupby("method")["episodes"].sum().eq(3 * 30).all()


def test_generalised_accuracy_extends_the_base_classifier_as_a_gallery_does():
    X_base = np.array([[0.0, 0], [0, 1], [5, 0], [5, 1]])
    base = CentroidClassifier().fit(X_base, np.array([0, 0, 1, 1]))
    support = np.array([[0.0, 10], [0, 11]])
    queries = np.array([[0.0, 0.4], [5, 0.6], [4.9, 6], [0, 9]])  # the third is nearer base class 1 than novel 7
    result = generalised_accuracy(base, support, np.array([7, 7]), queries, np.array([0, 1, 7, 7]))
    assert result["per_class"] == {0: 1.0, 1: 1.0, 7: 0.5}
    assert (result["base"], result["novel"]) == (1.0, 0.5)
    assert result["harmonic"] == pytest.approx(2 * 0.5 / 1.5) == harmonic_mean(1.0, 0.5)
    assert list(base.classes_) == [0, 1]  # the fitted classifier is left as it was
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_generalised_episodes_draw_support_and_queries_and_refuse_a_small_class():
    rng = np.random.default_rng(2)
    X_base, y_base = rng.normal(size=(60, 2)), np.repeat([0, 1, 2], 20)
    X_novel, y_novel = rng.normal(size=(30, 2)) + 8, np.repeat([5, 6], 15)
    base = CentroidClassifier().fit(X_base, y_base)
    table = generalised_episodes(base, X_base, y_base, X_novel, y_novel, shots=5, queries=10, count=12, seed=1)
    assert list(table["scope"][:3]) == ["base", "novel", "harmonic"] and (table["episodes"] == 12).all()
    assert set(table.loc[table["scope"] == "class", "class_name"]) == {0, 1, 2, 5, 6}
    with pytest.raises(InputError, match="class 5 has 15 images, fewer than shots \\+ queries = 10 \\+ 10"):
        generalised_episodes(base, X_base, y_base, X_novel, y_novel, shots=10, queries=10, count=2, seed=1)


# ------------------------------------------------------------------------------------------------ one trial


NOVEL = {"amoeba": (5.0, 2.887, -30.0), "alga": (20.0, 20.0, 0.0)}


def with_novel_rows(table: pd.DataFrame, per_class: int = 30) -> pd.DataFrame:
    """The evaluation test's embeddings plus two novel classes (subset ``novel``), far from the known ones."""
    rng = np.random.default_rng(8)
    rows = [
        {"subset": "novel", "label": 10 + k, "class_name": name, "embedding": (centre + rng.normal(scale=0.5, size=3))}
        for k, (name, centre) in enumerate(NOVEL.items())
        for _ in range(per_class)
    ]
    novel = pd.DataFrame(rows).assign(embedding=lambda t: t["embedding"].map(list))
    if "probability" in table:
        novel["probability"] = [[0.98, 0.01, 0.01]] * len(novel)
    novel["index"] = np.arange(len(novel)) * 3 + 1_000_000
    return pd.concat([table, novel[table.columns]], ignore_index=True)


def test_a_trial_with_novel_classes_reports_rejection_episodes_and_retrieval():
    experiment = {
        "protocol": "full",
        "classifiers": {"centroid": {}, "knn": {"k": 3}},
        "threshold": 0.9,
        "novel_episodes": {"shots": [1, 5], "queries": 10, "count": 20},
    }
    table = with_novel_rows(embeddings_table(0, softmax=True))
    results = evaluate_trial(table, experiment, CLASS_NAMES, "softmax", seed=4)
    metrics = results["metrics"].set_index(["classifier", "view", "metric"])["value"]
    # before they are added: the share each classifier calls unknown at its threshold
    X_novel = np.stack(table.loc[table["subset"] == "novel", "embedding"].to_numpy())
    for name in ("centroid", "knn"):
        confidence = results["classifiers"][name].confidence(X_novel)
        assert metrics[name, "novel_rejection", "rejection_rate"] == pytest.approx(np.mean(confidence < 0.9))
    assert metrics["softmax", "novel_rejection", "rejection_rate"] == 0.0  # the stub is 98% sure of every one
    assert metrics["softmax", "novel_rejection", "threshold"] == 0.9
    for view in ("latent", "novel_latent"):
        for name in ("r_precision", "recall_at_8", "nmi", "ami", "precision_at_1"):
            assert metrics["embedding", view, name] == pytest.approx(1.0)
    novel = results["novel"]
    assert list(novel.columns) == NOVEL_COLUMNS
    all_rows = novel[novel["scope"] == "all"]
    assert set(zip(all_rows["setting"], all_rows["method"])) == {
        (setting, method) for setting in ("novel", "base") for method in ("prototype", "knn", "siamese")
    }
    assert set(novel["shots"]) == {1, 5} and (novel["ways"] == 2).all()
    assert set(novel.loc[novel["setting"] == "generalised", "method"]) == {"centroid", "knn"}
    assert (all_rows["accuracy"] == 1.0).all()  # well separated, every method names every query right
    generalised = novel[(novel["setting"] == "generalised") & (novel["method"] == "centroid")]
    assert set(generalised["scope"]) == {"base", "novel", "harmonic", "class"}
    assert set(generalised.loc[generalised["scope"] == "class", "class_name"]) == set(CENTRES) | set(NOVEL)
    # the same seed gives the same episodes to every loss of a trial
    again = evaluate_trial(table.drop(columns="probability"), experiment, CLASS_NAMES, "triplet", seed=4)["novel"]
    pd.testing.assert_frame_equal(again[again["setting"] != "generalised"], novel[novel["setting"] != "generalised"])


def test_a_trial_refuses_a_novel_class_that_was_trained_on():
    table = embeddings_table(0)
    table.loc[table["class_name"] == "debris", "subset"] = table["subset"].where(table["subset"] == "train", "novel")
    with pytest.raises(InputError, match=r"novel class\(es\) \['debris'\] have training images"):
        evaluate_trial(table, {"protocol": "full"}, CLASS_NAMES, "softmax", seed=0)
