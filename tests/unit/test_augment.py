"""Augmentation: counts, class balance, dtype, determinism, and recorded ops that reproduce every image exactly."""

import numpy as np
import pandas as pd
import pytest

from cytodml.data.augment import OP_COLUMNS, apply_ops, augment, balanced_sizes, proportional_sizes
from cytodml.errors import InputError

SPEC = {"count": 600, "balance": False, "shift": 0.1, "rotation": 180, "zoom": [0.9, 1.1], "flips": True}


def training_set(dtype=np.uint8, sizes=(20, 50, 130), channels=2, size=16, seed=0):
    """Random images of a dtype's full range, labels 0, 1, 2 in blocks, patch rows 1000 + i."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, np.iinfo(dtype).max, (sum(sizes), channels, size, size), endpoint=True, dtype=dtype)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return images, labels, 1000 + np.arange(len(images))


def as_patches(images: np.ndarray, source_index: np.ndarray) -> np.ndarray:
    """A patches array in which ``patches[source_index[i]] == images[i]``."""
    patches = np.zeros((source_index.max() + 1, *images.shape[1:]), dtype=images.dtype)
    patches[source_index] = images
    return patches


def ops(n: int, **values) -> pd.DataFrame:
    """Op rows for patches 0..n-1, identity unless ``values`` says otherwise."""
    identity = {"shift_y": 0.0, "shift_x": 0.0, "hflip": False, "vflip": False, "angle": 0.0, "zoom": 1.0}
    columns = {key: np.full(n, value) for key, value in {**identity, **values}.items()}
    return pd.DataFrame({"source_index": np.arange(n), **columns})


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_count_originals_first_and_dtype(dtype):
    images, labels, source_index = training_set(dtype)
    out, table = augment(images, labels, source_index, SPEC, seed=1)
    assert out.shape == (600, *images.shape[1:]) and out.dtype == dtype
    assert list(table.columns) == ["source_index", "label", *OP_COLUMNS] and len(table) == 600
    np.testing.assert_array_equal(out[:200], images)
    first = table[:200]
    assert (first["source_index"] == source_index).all() and (first["label"] == labels).all()
    assert (first[["shift_y", "shift_x", "angle"]] == 0).all().all() and (first["zoom"] == 1).all()
    assert not first[["hflip", "vflip"]].any().any()
    assert out[200:].max() > 0.9 * np.iinfo(dtype).max  # warped in float, not squeezed into a smaller range


def test_new_images_come_from_their_own_class_within_the_spec_ranges():
    images, labels, source_index = training_set()
    _, table = augment(images, labels, source_index, SPEC, seed=1)
    new = table[200:]
    assert (labels[new["source_index"] - 1000] == new["label"]).all()
    assert new[["shift_y", "shift_x"]].abs().max().max() <= 0.1 * 16
    assert new["angle"].abs().max() <= 180 and new["angle"].std() > 50
    assert new["zoom"].between(0.9, 1.1).all()
    assert 0.3 < new["hflip"].mean() < 0.7 and 0.3 < new["vflip"].mean() < 0.7
    _, no_flips = augment(images, labels, source_index, {**SPEC, "flips": False}, seed=1)
    assert not no_flips[["hflip", "vflip"]].any().any()


def test_class_proportions_kept_without_balance():
    images, labels, source_index = training_set()
    _, table = augment(images, labels, source_index, SPEC, seed=1)
    assert table["label"].value_counts().sort_index().tolist() == [60, 150, 390]


def test_balance_gives_equal_class_counts():
    images, labels, source_index = training_set()
    _, table = augment(images, labels, source_index, {**SPEC, "balance": True}, seed=1)
    assert table["label"].value_counts().sort_index().tolist() == [200, 200, 200]


def test_class_sizes():
    assert proportional_sizes([5, 7, 10], 31).tolist() == [7, 10, 14]
    assert balanced_sizes([5, 7, 10], 31).tolist() == [11, 10, 10]
    assert balanced_sizes([9000, 10, 10, 10, 10], 10000).tolist() == [9000, 250, 250, 250, 250]
    assert balanced_sizes([5, 7, 100], 90).tolist() == [5, 7, 100]


@pytest.mark.parametrize("count", [0, 150, 200])
def test_count_at_most_the_originals_adds_nothing(count):
    images, labels, source_index = training_set()
    out, table = augment(images, labels, source_index, {**SPEC, "count": count}, seed=1)
    np.testing.assert_array_equal(out, images)
    assert len(table) == 200


def test_deterministic_from_seed():
    images, labels, source_index = training_set()
    out, table = augment(images, labels, source_index, SPEC, seed=5)
    again, table_again = augment(images, labels, source_index, SPEC, seed=5)
    np.testing.assert_array_equal(out, again)
    pd.testing.assert_frame_equal(table, table_again)
    other, _ = augment(images, labels, source_index, SPEC, seed=6)
    assert not np.array_equal(out, other)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_recorded_ops_reproduce_every_image(dtype, tmp_path):
    images, labels, source_index = training_set(dtype)
    out, table = augment(images, labels, source_index, SPEC, seed=3)
    table.to_parquet(tmp_path / "t0.parquet", index=False)
    reread = pd.read_parquet(tmp_path / "t0.parquet")
    np.testing.assert_array_equal(apply_ops(as_patches(images, source_index), reread), out)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_identity_ops_return_the_input_exactly(dtype):
    images, _, _ = training_set(dtype, sizes=(64,))
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0, np.iinfo(dtype).max
    np.testing.assert_array_equal(apply_ops(images, ops(64)), images)


@pytest.mark.parametrize("size", [8, 9])
def test_quarter_turn_and_flips_match_numpy(size):
    images, _, _ = training_set(sizes=(4,), size=size)
    np.testing.assert_array_equal(apply_ops(images, ops(4, angle=90.0)), np.rot90(images, 1, axes=(-2, -1)))
    np.testing.assert_array_equal(apply_ops(images, ops(4, angle=-90.0)), np.rot90(images, -1, axes=(-2, -1)))
    np.testing.assert_array_equal(apply_ops(images, ops(4, hflip=True)), images[..., ::-1])
    np.testing.assert_array_equal(apply_ops(images, ops(4, vflip=True)), images[..., ::-1, :])


def test_shift_moves_content_and_reflects_at_the_border():
    images, _, _ = training_set(sizes=(4,))
    down_left = apply_ops(images, ops(4, shift_y=3.0, shift_x=-2.0))
    np.testing.assert_array_equal(down_left[..., 3:, :-2], images[..., :-3, 2:])
    np.testing.assert_array_equal(down_left[..., :3, :-2], images[..., 2::-1, 2:])  # mirrored, not black


def test_zoom_magnifies_about_the_centre():
    square = np.zeros((1, 1, 16, 16), dtype=np.uint8)
    square[..., 6:10, 6:10] = 200
    zoomed = apply_ops(square, ops(1, zoom=2.0))
    assert (zoomed[0, 0] > 100).sum() == pytest.approx(8 * 8, abs=8)
    assert zoomed[0, 0, 7:9, 7:9].min() == 200 and zoomed[0, 0, :3].max() == 0


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"count": -1}, "augment.count"),
        ({"shift": 0.8}, "augment.shift"),
        ({"rotation": 270}, "augment.rotation"),
        ({"zoom": [1.2, 0.8]}, "augment.zoom"),
        ({"mirror": True}, "mirror"),
        ({"flips": False}, "augment.count"),
    ],
)
def test_bad_spec_names_the_key(spec, key):
    images, labels, source_index = training_set()
    with pytest.raises(InputError, match=key):
        augment(images, labels, source_index, {"count": 10, **spec} if "count" not in key else spec, seed=0)


def test_bad_images_are_refused():
    images, labels, source_index = training_set()
    with pytest.raises(InputError, match="uint8 or uint16"):
        augment(images.astype(np.float32), labels, source_index, SPEC, seed=0)
    with pytest.raises(InputError, match="labels"):
        augment(images, labels[:-1], source_index, SPEC, seed=0)
