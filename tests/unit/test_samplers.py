"""ClassBalancedBatchSampler: its per-batch class guarantee, determinism per epoch, and its preconditions."""

import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cytodml.errors import InputError
from cytodml.learn.samplers import ClassBalancedBatchSampler

# 1000 / 30 / 3 images, shuffled so that classes are not contiguous
IMBALANCED = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [1000, 30, 3]))


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return [np.array(batch) for batch in sampler]


@pytest.mark.parametrize("batch_size, samples_per_class", [(32, 4), (12, 4), (7, 2)])
def test_every_batch_holds_samples_per_class_images_of_every_class(batch_size, samples_per_class):
    sampler = ClassBalancedBatchSampler(IMBALANCED, batch_size, samples_per_class, seed=1)
    batches = epoch_batches(sampler, 0)
    assert len(batches) == len(sampler) == -(-1033 // batch_size)
    for batch in batches:
        assert len(batch) == batch_size and batch.min() >= 0 and batch.max() < 1033
        assert (np.bincount(IMBALANCED[batch], minlength=3) >= samples_per_class).all()


def test_an_image_repeats_within_a_batch_only_where_its_class_is_too_small():
    rare = np.flatnonzero(IMBALANCED == 2)
    for batch in epoch_batches(ClassBalancedBatchSampler(IMBALANCED, 32, 4, seed=2), 3):
        values, counts = np.unique(batch, return_counts=True)
        assert set(values[counts > 1]) <= set(rare)
        # the 3 images of the rare class fill its quota of 4 in turn: all three in every batch
        assert set(rare) <= set(batch)


def test_rare_class_images_take_turns_through_the_epoch():
    labels = np.repeat([0, 1], [200, 10])
    batches = epoch_batches(ClassBalancedBatchSampler(labels, 20, 2, seed=3), 0)
    counts = np.bincount(np.concatenate(batches), minlength=210)
    # 11 batches x 2 quota places cycle through the 10 images of class 1: each 2 or 3 times (plus the rare filler)
    assert counts[200:].min() >= 2


def test_without_a_quota_an_epoch_is_a_shuffled_pass_over_every_image():
    sampler = ClassBalancedBatchSampler(IMBALANCED, 64, 0, seed=4)
    batches = epoch_batches(sampler, 0)
    assert len(batches) == 17
    seen = np.concatenate(batches)
    assert len(seen) == 17 * 64 and set(seen) == set(range(1033))
    assert len(np.unique(seen[: 16 * 64])) == 16 * 64  # within the first pass, no repeat
    assert all(len(np.unique(batch)) == 64 for batch in batches)  # the last batch spans two passes
    assert not np.array_equal(np.sort(batches[0]), np.arange(64))


def test_batches_per_epoch_sets_the_length():
    sampler = ClassBalancedBatchSampler(IMBALANCED, 16, 4, seed=5, batches_per_epoch=7)
    assert len(sampler) == 7 and len(epoch_batches(sampler, 0)) == 7


def test_each_epoch_is_a_function_of_seed_and_epoch_only():
    sampler = ClassBalancedBatchSampler(IMBALANCED, 32, 4, seed=6)
    first = [epoch_batches(sampler, epoch) for epoch in range(3)]
    # a fresh sampler resumed at epoch 2 (as after a killed job) draws the batches of the uninterrupted run
    resumed = ClassBalancedBatchSampler(IMBALANCED, 32, 4, seed=6)
    for a, b in zip(first[2], epoch_batches(resumed, 2)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[0], epoch_batches(sampler, 0)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(first[1]))
    other_seed = ClassBalancedBatchSampler(IMBALANCED, 32, 4, seed=7)
    assert not np.array_equal(np.concatenate(first[0]), np.concatenate(epoch_batches(other_seed, 0)))


def test_a_batch_larger_than_the_data_set_keeps_the_guarantee():
    labels = ["b", "a", "b", "c", "a"]  # any hashable labels
    for batch in epoch_batches(ClassBalancedBatchSampler(labels, 9, 2, seed=8, batches_per_epoch=4), 0):
        assert len(batch) == 9 and set(batch) == set(range(5))
        names, counts = np.unique(np.array(labels)[batch], return_counts=True)
        assert list(names) == ["a", "b", "c"] and counts.min() >= 2


def test_too_small_a_batch_names_batch_size_samples_per_class_and_the_class_count():
    with pytest.raises(InputError, match=r"batch_size 10 .* samples_per_class 4 x 3 classes = 12"):
        ClassBalancedBatchSampler(IMBALANCED, 10, 4, seed=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"samples_per_class": -1}, "samples_per_class"),
        ({"samples_per_class": 2.0}, "samples_per_class"),
        ({"seed": -3}, "seed"),
        ({"batches_per_epoch": 0}, "batches_per_epoch"),
        ({"labels": []}, "labels"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    arguments = {"labels": IMBALANCED, "batch_size": 32, "samples_per_class": 2, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=name):
        ClassBalancedBatchSampler(**arguments)


def test_drives_a_data_loader():
    labels = torch.tensor(IMBALANCED[:200])
    sampler = ClassBalancedBatchSampler(labels.numpy(), 24, 4, seed=9)
    loader = DataLoader(TensorDataset(torch.arange(200), labels), batch_sampler=sampler)
    for index, label in loader:
        assert index.shape == (24,) and torch.equal(label, labels[index])
        assert (torch.bincount(label, minlength=3) >= 4).all()


def test_an_epoch_over_a_large_data_set_is_cheap():
    labels = np.random.default_rng(1).integers(0, 8, 200_000)
    sampler = ClassBalancedBatchSampler(labels, 128, 4, seed=10)
    start = time.perf_counter()
    assert sum(1 for _ in sampler) == 1563
    assert time.perf_counter() - start < 5  # about 0.5 s on 2 shared cores
