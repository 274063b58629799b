"""The training recipe's parts: optimisers and schedules step as documented, the monitor's scores and subsample."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from cytodml.config import checked
from cytodml.learn.monitor import knn_balanced_accuracy, proportion_standard_error, stratified_subsample
from cytodml.learn.optim import build_optimizer, build_schedule, learning_rate_factor


def spec(**overrides):
    return checked("train", {"epochs": 4, "lr": 0.1, **overrides})


def rates(train_spec, steps_per_epoch):
    """The learning rate before each step of the whole budget, read from a real optimiser and scheduler."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([weight], train_spec)
    scheduler = build_schedule(optimizer, train_spec, steps_per_epoch)
    seen = []
    for _ in range(train_spec["epochs"] * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    return np.array(seen)


def test_exponential_decays_once_per_epoch():
    seen = rates(spec(schedule="exponential", lr_decay=0.5), steps_per_epoch=3)
    assert np.allclose(seen, 0.1 * 0.5 ** np.repeat(np.arange(4), 3))


def test_cosine_anneals_from_lr_towards_zero_after_a_linear_warmup():
    seen = rates(spec(schedule="cosine", warmup_epochs=1), steps_per_epoch=5)
    assert np.allclose(seen[:5], 0.1 * np.arange(1, 6) / 5)  # the ramp reaches lr at its last step
    done = np.arange(15) / 15
    assert np.allclose(seen[5:], 0.1 * (1 + np.cos(np.pi * done)) / 2)
    assert seen[-1] < 0.003


def test_constant_keeps_lr_and_fractional_warmup_counts_steps():
    seen = rates(spec(schedule="constant", warmup_epochs=0.5), steps_per_epoch=4)
    assert np.allclose(seen, [0.05] + [0.1] * 15)
    assert learning_rate_factor(0, spec(schedule="constant"), 4) == 1.0


@pytest.mark.parametrize(
    ("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_each_optimizer_is_built_with_its_settings(name, kind):
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = build_optimizer([weight], spec(optimizer=name, weight_decay=0.01, momentum=0.8))
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.1 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.8
        weight.grad = torch.ones(1)
        optimizer.step()  # plain SGD with momentum: w - lr * (g + wd * w)
        assert math.isclose(weight.detach().item(), 1 - 0.1 * 1.01, rel_tol=1e-6)
    else:
        assert group["betas"] == (0.9, 0.999)


def test_stratified_subsample_caps_per_class_and_in_all_keeping_every_class():
    labels = np.repeat([0, 1, 2], [500, 100, 3])
    kept = stratified_subsample(labels, total=None, per_class=20, seed=0)
    assert np.bincount(labels[kept]).tolist() == [20, 20, 3]
    kept = stratified_subsample(labels, total=60, per_class=None, seed=0)
    counts = np.bincount(labels[kept])
    assert counts.sum() <= 60 and counts[2] >= 1 and counts[0] > 4 * counts[1]
    assert np.array_equal(kept, stratified_subsample(labels, total=60, per_class=None, seed=0))
    assert not np.array_equal(kept, stratified_subsample(labels, total=60, per_class=None, seed=1))
    assert len(stratified_subsample(labels, None, None, 0)) == len(labels)


def test_knn_balanced_accuracy_matches_scikit_learn_on_normalised_embeddings():
    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(120, 6)), rng.normal(size=(90, 6))
    reference_labels = rng.integers(0, 4, 120)
    query_labels = np.r_[rng.integers(0, 4, 80), np.full(10, 3)]
    reference[:, 0] += reference_labels
    queries[:, 0] += query_labels
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    predicted = KNeighborsClassifier(5).fit(unit(reference), reference_labels).predict(unit(queries))
    expected = balanced_accuracy_score(query_labels, predicted)
    score, error = knn_balanced_accuracy(
        torch.as_tensor(reference), torch.as_tensor(reference_labels), torch.as_tensor(queries),
        torch.as_tensor(query_labels),
    )  # fmt: skip
    assert 0.3 < score < 1 and math.isclose(score, expected, abs_tol=0.02)  # vote ties may break differently
    hits = [((predicted == query_labels) & (query_labels == c)).sum() for c in range(4)]
    counts = np.bincount(query_labels)
    expected_error = math.sqrt(sum(proportion_standard_error(h, n) ** 2 for h, n in zip(hits, counts))) / 4
    assert math.isclose(error, expected_error, rel_tol=0.1)


def test_proportion_standard_error_shrinks_towards_one_half():
    assert math.isclose(proportion_standard_error(50, 100), math.sqrt(0.25 / 100))
    assert math.isclose(proportion_standard_error(2, 2), math.sqrt(0.75 * 0.25 / 2))  # 2 of 2 is not certain
    assert proportion_standard_error(0, 2) == proportion_standard_error(2, 2)
