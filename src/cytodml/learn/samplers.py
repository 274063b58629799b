"""Batch samplers that give every metric loss the positives it needs, however rare a class is."""

import math

import numpy as np
from torch.utils.data import Sampler

from cytodml.errors import InputError

__all__ = ["ClassBalancedBatchSampler"]


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of indices with at least ``samples_per_class`` images of every class, rare classes included.

    Guarantee: each batch holds ``samples_per_class`` images of every class in ``labels`` (the class quota), plus
    ``batch_size - samples_per_class * n_classes`` images filled in at random from the whole data set, so classes
    appear there in proportion to their frequency. Within a batch an image repeats only where its class has fewer
    than ``samples_per_class`` images (drawn again, with replacement) or the batch is larger than the data set.

    Each class's quota cycles through a shuffled order of its images, and the filling through shuffled orders of all
    images, so an epoch of the default ``ceil(N / batch_size)`` batches sees about every image once and a rare class's
    images in turn. The order is a function of ``(seed, epoch)`` only (call ``set_epoch`` before iterating), so a
    training run resumed at an epoch draws the batches the uninterrupted run would have drawn.
    ``samples_per_class = 0`` gives plain shuffled batches (the softmax baseline).

    Like pytorch-metric-learning's ``MPerClassSampler``, with the per-batch guarantee stated and checked.
    """

    def __init__(
        self, labels, batch_size: int, samples_per_class: int, seed: int, batches_per_epoch: int | None = None
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise InputError(f"labels: expected a non-empty 1-D vector, got shape {labels.shape}")
        _check_count("batch_size", batch_size, minimum=1)
        _check_count("samples_per_class", samples_per_class, minimum=0)
        _check_count("seed", seed, minimum=0)
        classes, inverse = np.unique(labels, return_inverse=True)
        if batch_size < samples_per_class * len(classes):
            raise InputError(
                f"batch_size {batch_size} is smaller than samples_per_class {samples_per_class} x {len(classes)} "
                f"classes = {samples_per_class * len(classes)}: raise batch_size or lower samples_per_class"
            )
        if batches_per_epoch is not None:
            _check_count("batches_per_epoch", batches_per_epoch, minimum=1)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.batches_per_epoch = math.ceil(len(labels) / batch_size) if batches_per_epoch is None else batches_per_epoch
        self.epoch = 0
        self.classes = classes
        self._n_images = len(labels)
        self._members = [np.flatnonzero(inverse == c) for c in range(len(classes))]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        quota = self._quota(rng)
        filling = _Stream(rng, self._n_images)
        n_fill = self.batch_size - quota.shape[1]
        for taken in quota:
            batch = np.concatenate([taken, filling.take(n_fill, exclude=taken)])
            yield rng.permutation(batch).tolist()

    def _quota(self, rng: np.random.Generator) -> np.ndarray:
        """batches x (samples_per_class * n_classes): each class's images in a shuffled cycle, m per batch."""
        m = self.samples_per_class
        if m == 0:
            return np.empty((self.batches_per_epoch, 0), dtype=np.int64)
        position = np.arange(self.batches_per_epoch * m)
        per_class = [rng.permutation(members)[position % len(members)] for members in self._members]
        return np.stack(per_class, axis=1).reshape(self.batches_per_epoch, -1)


class _Stream:
    """Indices 0..n-1 in shuffled passes, one pass after the other, handed out without repeats within a request."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.rng = rng
        self.n = n
        self.buffer = np.empty(0, dtype=np.int64)

    def take(self, count: int, exclude: np.ndarray) -> np.ndarray:
        """The next ``count`` indices not in ``exclude`` (skipped ones are lost), distinct while the data allow."""
        distinct = min(count, self.n - len(np.unique(exclude)))
        taken = np.empty(0, dtype=np.int64)
        while len(taken) < distinct:
            candidates = self._next(distinct - len(taken))
            candidates = candidates[~np.isin(candidates, exclude) & ~np.isin(candidates, taken)]
            _, first = np.unique(candidates, return_index=True)
            taken = np.concatenate([taken, candidates[np.sort(first)]])
        return np.concatenate([taken, self._next(count - distinct)])

    def _next(self, count: int) -> np.ndarray:
        while len(self.buffer) < count:
            self.buffer = np.concatenate([self.buffer, self.rng.permutation(self.n)])
        head, self.buffer = self.buffer[:count], self.buffer[count:]
        return head


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
