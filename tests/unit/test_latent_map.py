"""The latent map: fitted on the training images, the others placed on it, saved and loaded, refused when unfit."""

import numpy as np
import pandas as pd
import pytest

from cytodml.errors import InputError
from cytodml.evaluate import latent_map

CENTRES = {"bead": (0.0, 0.0, 0.0, 0.0), "crypto": (6.0, 0.0, 0.0, 0.0), "debris": (0.0, 6.0, 0.0, 0.0)}


def embeddings(seed: int = 0, dim: int = 4, per_class: int = 30) -> pd.DataFrame:
    """Three separated classes, each with train, val and test rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, centre in CENTRES.items():
        for number in range(per_class):
            subset = ("train", "train", "val", "test", "test")[number % 5]
            rows.append((subset, name, (np.array(centre[:dim]) + rng.normal(0, 0.4, dim)).tolist()))
    table = pd.DataFrame(rows, columns=["subset", "class_name", "embedding"])
    table.insert(0, "index", np.arange(len(table)) * 2)
    return table


def test_balanced_subsample_keeps_rare_classes_whole():
    groups = np.array(["common"] * 900 + ["rare"] * 30 + ["mid"] * 200)
    rows = latent_map.balanced_subsample(groups, limit=300, seed=1)
    kept = pd.Series(groups[rows]).value_counts()
    assert len(rows) <= 300 and kept["rare"] == 30 and kept["mid"] == kept["common"] == 135
    assert np.array_equal(rows, np.sort(rows)) and len(set(rows)) == len(rows)
    assert np.array_equal(rows, latent_map.balanced_subsample(groups, limit=300, seed=1))
    assert len(latent_map.balanced_subsample(groups[:50], limit=300)) == 50


@pytest.fixture(scope="module")
def fitted():
    table = embeddings()
    return table, latent_map.fit_map(table, seed=3, limit=50)


def test_the_map_is_fitted_on_a_balanced_sample_of_training_images(fitted):
    table, fitted_map = fitted
    assert fitted_map.method == "t-SNE" and fitted_map.coords.shape == (len(fitted_map.reference), 2)
    # 18 train and 6 val images per class, 50 at most: 16 or 17 per class
    assert len(fitted_map.reference) == 50
    counts = pd.Series(fitted_map.class_names).value_counts()
    assert counts.max() - counts.min() <= 1
    training = np.stack(table.loc[table["subset"].isin(["train", "val"]), "embedding"].to_numpy()).astype(np.float32)
    assert all((training == row).all(axis=1).any() for row in fitted_map.reference)


def test_test_images_land_among_the_training_images_of_their_class(fitted):
    table, fitted_map = fitted
    placed = latent_map.map_table(table, fitted_map)
    assert list(placed.columns) == ["index", "subset", "class_name", "x", "y", "map"]
    assert placed["index"].tolist() == table["index"].tolist() and (placed["map"] == "t-SNE").all()
    test = placed[placed["subset"] == "test"]
    distances = np.linalg.norm(test[["x", "y"]].to_numpy()[:, None] - fitted_map.coords[None], axis=2)
    nearest = fitted_map.class_names[distances.argmin(axis=1)]
    assert (nearest == test["class_name"].to_numpy()).mean() >= 0.9


def test_a_saved_map_places_new_points_as_the_fitted_one(tmp_path, fitted):
    table, fitted_map = fitted
    latent_map.save_map(fitted_map, tmp_path / "t0.npz")
    loaded = latent_map.load_map(tmp_path / "t0.npz")
    assert (loaded.method, loaded.perplexity, loaded.seed) == (fitted_map.method, fitted_map.perplexity, 3)
    assert np.array_equal(loaded.coords, fitted_map.coords)
    new = np.stack(table["embedding"].to_numpy()[:12])
    np.testing.assert_allclose(loaded.place(new), fitted_map.place(new), atol=1e-6)


def test_a_two_dimensional_latent_space_is_its_own_map():
    table = embeddings(dim=2)
    fitted_map = latent_map.fit_map(table)
    assert fitted_map.method == "latent"
    X = np.stack(table["embedding"].to_numpy())
    np.testing.assert_allclose(latent_map.map_table(table, fitted_map)[["x", "y"]].to_numpy(), X, rtol=1e-6)


def test_unfit_maps_and_files_are_refused(tmp_path, fitted):
    table, fitted_map = fitted
    few = table[(table["subset"] != "train") & (table["subset"] != "val")]
    with pytest.raises(InputError, match="at least 10 train and validation images, the trial has 0"):
        latent_map.fit_map(few)
    with pytest.raises(InputError, match="cannot be placed on a map of 4-D embeddings"):
        fitted_map.place(np.zeros((3, 5)))
    with pytest.raises(InputError, match="no such latent map"):
        latent_map.load_map(tmp_path / "absent.npz")
    (tmp_path / "other.npz").write_bytes(b"not a map")
    with pytest.raises(InputError, match="not a latent map"):
        latent_map.load_map(tmp_path / "other.npz")
