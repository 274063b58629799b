"""What a training run, a pretraining and an embedding pass read: images of one trial's subsets, with the known
classes' labels.

Patches carry the data set's labels (positions in the sorted list of all its classes). A network is trained on the
known classes of an experiment only (open-set classes and classes the split dropped never enter training), so its
labels are positions in the sorted list of the classes present in the trial's training subset. Pretraining reads no
label, and only images that no trial it serves tests (:func:`pretraining_rows`).
"""

import numpy as np
import pandas as pd


def known_classes(split: pd.DataFrame) -> list[str]:
    """The classes a network of this trial learns: those with training images, sorted."""
    return sorted(split.loc[split["subset"] == "train", "class_name"].unique())


def class_labels(class_names_of_rows, class_names: list[str]) -> np.ndarray:
    """Positions of each row's class in ``class_names`` (the model's label space)."""
    position = {name: index for index, name in enumerate(class_names)}
    return np.array([position[name] for name in class_names_of_rows], dtype=np.int64)


def subset_images(patches: np.ndarray, split: pd.DataFrame, subset: str, channels: list[int]) -> np.ndarray:
    """The patches of one subset with the experiment's channels, in split order (one read of a memory map)."""
    rows = np.sort(split.loc[split["subset"] == subset, "index"].to_numpy())
    return np.ascontiguousarray(patches[rows][:, channels]) if len(rows) else patches[:0][:, channels]


def training_data(patches, patches_table, split, augmented, augmented_table, channels):
    """Arrays for :func:`cytodml.learn.trainer.train`: the augmented training set and the validation subset.

    Returns ``(train_images, train_labels, val_images, val_labels, class_names)``; the augmented images already hold
    only the experiment's channels.
    """
    class_names = known_classes(split)
    names_by_index = patches_table.set_index("index")["class_name"]
    train_labels = class_labels(names_by_index.loc[augmented_table["source_index"]].to_numpy(), class_names)
    val_rows = np.sort(split.loc[split["subset"] == "val", "index"].to_numpy())
    val_images = subset_images(patches, split, "val", channels)
    val_labels = class_labels(names_by_index.loc[val_rows].to_numpy(), class_names)
    return augmented, train_labels, val_images, val_labels, class_names


#: the subsets self-supervised pretraining may read, labels ignored; never test, unknown (open set) or dropped rows
PRETRAIN_SUBSETS = ("train", "val", "pool")


def pretraining_rows(splits: list[pd.DataFrame]) -> np.ndarray:
    """Patch indices that every split of ``splits`` (the trials one pretraining serves) places in train, val or
    pool, sorted: an image that any of these trials tests, holds out as open set or drops is never seen."""
    allowed = None
    for split in splits:
        rows = set(split.loc[split["subset"].isin(PRETRAIN_SUBSETS), "index"].tolist())
        allowed = rows if allowed is None else allowed & rows
    return np.array(sorted(allowed or ()), dtype=np.int64)


def held_out_hashes(patches_table: pd.DataFrame, seen_rows: np.ndarray) -> set:
    """Content hashes of the patches outside ``seen_rows`` (:func:`pretraining_rows`): an extra dump's exact copy of
    one of them is left out of pretraining too (a resized or re-cropped copy has another hash and cannot be caught
    this way)."""
    return set(patches_table.loc[~patches_table["index"].isin(seen_rows), "content_hash"])
