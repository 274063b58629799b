"""Ingest and patch of the three real data sets in ../shared/data, in the forms their users have them."""

import numpy as np
import pytest

from cytodml.data.patching import make_patches
from cytodml.data.sources import ingest, list_classes

pytestmark = pytest.mark.shared_data

JURKAT_COUNTS = {
    "Anaphase": 15,
    "Metaphase": 69,
    "Telophase": 28,
    "Prophase": 606,
    "G1": 900,
    "S_phase": 900,
    "G2": 900,
}
BLOODMNIST_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature_granulocyte",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]


def test_jurkat_montages(shared_data, tmp_path):
    source = {
        "kind": "montage",
        "path": str(shared_data / "ifc-jurkat" / "Experiment_1"),
        "tile_size": 40,
        "channel_tokens": {"brightfield": "Ch3", "dna": "Ch4", "darkfield": "Ch6"},
    }
    channels = ["brightfield", "dna", "darkfield"]
    raw = ingest(source, channels)
    assert len(raw) == 7 * 900 and (raw["dtype"] == "uint16").all()
    assert sorted(list_classes(source)) == sorted(JURKAT_COUNTS)
    table, counts = make_patches(raw, {"mode": "tiles", "size": 40, "tile_size": 40}, tmp_path / "p.npy", workers=2)
    assert table["class_name"].value_counts().to_dict() == JURKAT_COUNTS
    counts = counts.set_index("class_name")
    assert counts.loc["Anaphase", "dropped_duplicate"] == 1 and counts["dropped_duplicate"].sum() == 1
    assert counts["dropped_filler"].to_dict() == {
        name: 900 - n - (name == "Anaphase") for name, n in JURKAT_COUNTS.items()
    }
    patches = np.load(tmp_path / "p.npy", mmap_mode="r")
    assert patches.shape == (3418, 3, 40, 40) and patches.dtype == np.uint16
    assert table["content_hash"].is_unique


def test_bloodmnist_official_split_is_kept_and_resize_at_28_is_identity(shared_data, tmp_path):
    path = shared_data / "bloodmnist" / "bloodmnist.npz"
    source = {"kind": "medmnist", "path": str(path), "class_names": BLOODMNIST_CLASSES, "official_subsets": True}
    raw = ingest(source, ["red", "green", "blue"])
    assert raw["official_subset"].value_counts().to_dict() == {"train": 11959, "test": 3421, "val": 1712}
    assert raw["class_name"].value_counts()["neutrophil"] == 3329
    table, _ = make_patches(raw, {"mode": "resize", "size": 28}, tmp_path / "p.npy")
    assert table["label"].max() == 7 and (table["official_subset"] == raw["official_subset"]).all()
    patches = np.load(tmp_path / "p.npy", mmap_mode="r")
    with np.load(path) as archive:
        test_images = archive["test_images"]
        test_labels = archive["test_labels"][:, 0]
    test = (table["official_subset"] == "test").to_numpy()
    assert np.array_equal(patches[test], test_images.transpose(0, 3, 1, 2))
    assert np.array_equal(table.loc[test, "label"], test_labels)  # the class names are already in sorted order


def test_pbc_jpegs(shared_data, tmp_path):
    source = {"kind": "folder", "path": str(shared_data / "pbc-subset")}
    raw = ingest(source, ["red", "green", "blue"])
    assert len(raw) == 1200 and raw["class_name"].value_counts().eq(150).all() and (raw["dtype"] == "uint8").all()
    table, counts = make_patches(raw, {"mode": "resize", "size": 64}, tmp_path / "p.npy", workers=2)
    assert np.load(tmp_path / "p.npy", mmap_mode="r").shape == (1200, 3, 64, 64)
    assert counts["patches"].sum() == 1200  # duplicates are kept in a folder source: the split keeps them together
    repeated = table[table["content_hash"].duplicated(keep=False)]
    assert sorted(repeated["object_id"]) == ["eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"]
