"""The CUDA tests train on test_trainer's images, so GPU and CPU runs are compared on the same data."""

from tests.unit.test_trainer import data  # noqa: F401 - a fixture, shared by import
