"""N-way K-shot episodes: the sampler's guarantees and nearest-prototype accuracy against a plain loop."""

import numpy as np
import pytest
from scipy import stats

from cytodml.errors import InputError
from cytodml.evaluate.protocols import episodes, episodic_accuracy


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    return rng.permutation(np.repeat(["a", "b", "c", "d", "e"], [20, 23, 26, 29, 40]))


def test_every_episode_holds_ways_classes_with_shots_and_queries_each_disjoint(labels):
    ways, shots, queries = 3, 2, 4
    drawn = episodes(labels, ways=ways, shots=shots, queries=queries, count=60, seed=1)
    assert len(drawn) == 60
    for support, query in drawn:
        assert len(support) == ways * shots and len(query) == ways * queries
        assert len(set(support) | set(query)) == ways * (shots + queries)  # no image twice
        support_classes = labels[support].reshape(ways, shots)
        query_classes = labels[query].reshape(ways, queries)
        # class by class, the same classes on both sides, ways distinct ones
        assert (support_classes == support_classes[:, :1]).all()
        assert (query_classes == support_classes[:, :1]).all()
        assert len(set(support_classes[:, 0])) == ways
    assert {c for s, _ in drawn for c in labels[s]} == set(labels)  # every class takes part over 60 episodes


def test_episodes_are_seeded(labels):
    first = episodes(labels, 3, 2, 4, 5, seed=7)
    again = episodes(labels, 3, 2, 4, 5, seed=7)
    other = episodes(labels, 3, 2, 4, 5, seed=8)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(first, again))
    assert any((a[0] != b[0]).any() for a, b in zip(first, other))


def test_too_few_images_for_shots_and_queries_names_the_class():
    labels = np.array(["blast"] * 30 + ["platelet"] * 7)
    with pytest.raises(InputError, match=r"'platelet' has 7 images, fewer than shots \+ queries = 5 \+ 3"):
        episodes(labels, ways=2, shots=5, queries=3, count=1, seed=0)


def test_fewer_classes_than_ways():
    with pytest.raises(InputError, match="ways = 8.*only 2 classes"):
        episodes(np.repeat([0, 1], 30), ways=8, shots=5, queries=15, count=1, seed=0)


def test_accuracy_matches_a_plain_loop_over_the_same_episodes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], 25)
    X = rng.normal(size=(100, 3)) + y[:, None] * 0.8  # overlapping classes: accuracies strictly between 0 and 1
    ways, shots, queries, count = 3, 2, 5, 40
    table = episodic_accuracy(X, y, ways, shots, queries, count, seed=5)

    per_class = {c: [] for c in range(4)}
    for support, query in episodes(y, ways, shots, queries, count, seed=5):
        classes = sorted(set(y[support]))
        prototypes = {c: X[support][y[support] == c].mean(axis=0) for c in classes}
        for c in classes:
            own = query[y[query] == c]
            called = [min(classes, key=lambda k: np.linalg.norm(X[i] - prototypes[k])) for i in own]
            per_class[c].append(np.mean(np.array(called) == c))

    assert list(table["class"]) == [0, 1, 2, 3]
    for _, row in table.iterrows():
        accuracies = per_class[row["class"]]
        half = stats.t.ppf(0.975, len(accuracies) - 1) * np.std(accuracies, ddof=1) / np.sqrt(len(accuracies))
        assert row["episodes"] == len(accuracies)
        assert row["accuracy"] == pytest.approx(np.mean(accuracies))
        assert row["ci_low"] == pytest.approx(np.mean(accuracies) - half)
        assert row["ci_high"] == pytest.approx(np.mean(accuracies) + half)
    assert table["episodes"].sum() == ways * count
    assert table["accuracy"].min() > 0 and table["accuracy"].max() < 1


def test_separated_classes_are_always_named_right():
    rng = np.random.default_rng(1)
    y = np.repeat(["basophil", "eosinophil", "platelet"], 30)
    centres = {"basophil": (0, 0), "eosinophil": (20, 0), "platelet": (0, 20)}
    X = np.array([centres[c] for c in y]) + rng.normal(scale=0.5, size=(90, 2))
    table = episodic_accuracy(X, y, ways=3, shots=5, queries=10, count=20, seed=0)
    assert list(table["class"]) == ["basophil", "eosinophil", "platelet"]
    assert (table["accuracy"] == 1.0).all() and (table["episodes"] == 20).all()
