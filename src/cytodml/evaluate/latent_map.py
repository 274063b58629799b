"""The 2-D map of a trained model's latent space: fitted once on the images it trained on, placing any others later.

A person judges an embedding by looking at the cells in it, on a plane. The map is t-SNE (van der Maaten & Hinton,
JMLR 2008) as openTSNE computes it (Poličar et al., J Stat Softw 2024), chosen over scikit-learn's because it places
new points on an existing map without moving it (``TSNEEmbedding.transform``: each new point starts at the median of
its nearest reference points and is optimised against the fixed reference), and over umap-learn because it needs no
JIT compilation, which costs every fresh process a minute on a CPU.

The reference is what the network trained on: a class-balanced sample of at most :data:`MAP_POINTS` of the trial's
train and validation images. Test, open-set and novel images are placed on it exactly as a new sample's objects are
later (:mod:`cytodml.predict`), so the explorer of an evaluation and that of a screened sample show the same plane.
A 2-D latent space is its own map (Luo et al. 2021, Fig. 7), since its distances are what the losses shaped.

The file keeps the reference embeddings and their positions (``.npz``, a few hundred kB); the nearest-neighbour
affinities that placing needs are recomputed from them on load, which takes well under a second.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openTSNE
import pandas as pd
from threadpoolctl import threadpool_limits

from cytodml.errors import InputError, require_columns
from cytodml.evaluate.metrics import sklearn_seed
from cytodml.io import atomic_path

__all__ = [
    "MAP_POINTS",
    "REFERENCE_SUBSETS",
    "LatentMap",
    "balanced_subsample",
    "fit_map",
    "load_map",
    "map_table",
    "save_map",
]

MAP_POINTS = 2000
"""At most this many reference images: an openTSNE fit of 2 000 x 16 takes about 10 s on one core."""
REFERENCE_SUBSETS = ("train", "val")
MIN_REFERENCE = 10
"""Fewer reference images than this make no map worth reading (t-SNE's perplexity needs neighbours)."""
PLACE_NEIGHBOURS = 25
"""Reference neighbours a placed point is initialised from and attracted to (openTSNE's default)."""


@dataclass(frozen=True)
class LatentMap:
    """A fitted map: ``reference`` (R x D embeddings), their ``coords`` (R x 2), their ``class_names``, the
    ``method`` (``"t-SNE"`` or ``"latent"``), the fit's ``perplexity`` and ``seed``."""

    reference: np.ndarray
    coords: np.ndarray
    class_names: np.ndarray
    method: str
    perplexity: float
    seed: int

    def reference_points(self) -> pd.DataFrame:
        """The training images the map was fitted on: ``x``, ``y``, ``class_name``."""
        return pd.DataFrame({"x": self.coords[:, 0], "y": self.coords[:, 1], "class_name": self.class_names})

    def place(self, X, threads: int = 1) -> np.ndarray:
        """Positions (N x 2) of embeddings ``X`` (N x D) on the map, the reference left where it is."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.reference.shape[1]:
            raise InputError(
                f"embeddings of shape {X.shape} cannot be placed on a map of {self.reference.shape[1]}-D embeddings"
            )
        if self.method == "latent" or not len(X):
            return X.astype(np.float64).reshape(len(X), 2)
        neighbours = min(PLACE_NEIGHBOURS, len(self.reference) - 1)
        affinities = openTSNE.affinity.PerplexityBasedNN(
            self.reference, perplexity=self.perplexity, n_jobs=threads, random_state=self.seed
        )
        embedding = openTSNE.TSNEEmbedding(self.coords, affinities, random_state=self.seed)
        with threadpool_limits(threads):
            placed = embedding.transform(X, perplexity=min(5.0, (neighbours - 1) / 3), k=neighbours)
        return np.asarray(placed, dtype=np.float64)


def balanced_subsample(groups, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted row positions of at most ``limit`` rows, each group given as equal a share as its size allows.

    The share is water-filled: groups smaller than an equal share keep every row and leave the rest to the larger
    ones, so a rare class stays fully visible while a common one is thinned. Rows are drawn at random (``seed``).
    """
    groups = np.asarray(groups)
    if len(groups) <= limit:
        return np.arange(len(groups))
    names, counts = np.unique(groups, return_counts=True)
    quota, left = {}, limit
    for position, index in enumerate(np.argsort(counts, kind="stable")):
        quota[names[index]] = min(int(counts[index]), left // (len(names) - position))
        left -= quota[names[index]]
    rng = np.random.default_rng(seed)
    drawn = [rng.choice(np.flatnonzero(groups == name), size=quota[name], replace=False) for name in names]
    return np.sort(np.concatenate(drawn))


def _reference_rows(table: pd.DataFrame, limit: int, seed: int) -> np.ndarray:
    """Row positions of the reference: train and validation images, at most ``limit``, as equal a share per class
    as the class sizes allow."""
    rows = np.flatnonzero(table["subset"].isin(REFERENCE_SUBSETS).to_numpy())
    return rows[balanced_subsample(table["class_name"].to_numpy()[rows], limit, seed)]


def fit_map(embeddings: pd.DataFrame, seed: int = 0, limit: int = MAP_POINTS, threads: int = 1) -> LatentMap:
    """The map of one trial's embed-stage table (``subset``, ``class_name``, ``embedding``), fitted on its reference.

    t-SNE with PCA initialisation, perplexity min(30, (R - 1) / 3) for R reference images, openTSNE's other defaults
    (learning rate R / 12, 250 steps of early exaggeration, 500 more).
    """
    require_columns(embeddings, ("subset", "class_name", "embedding"), "embeddings")
    rows = _reference_rows(embeddings, limit, seed)
    if len(rows) < MIN_REFERENCE:
        raise InputError(
            f"a latent map needs at least {MIN_REFERENCE} train and validation images, the trial has {len(rows)}"
        )
    reference = np.stack(embeddings["embedding"].to_numpy()[rows]).astype(np.float32)
    class_names = embeddings["class_name"].to_numpy()[rows].astype(str)
    if reference.shape[1] == 2:
        return LatentMap(reference, reference.astype(np.float64), class_names, "latent", 0.0, seed)
    perplexity = min(30.0, (len(rows) - 1) / 3)
    tsne = openTSNE.TSNE(perplexity=perplexity, initialization="pca", n_jobs=threads, random_state=sklearn_seed(seed))
    with threadpool_limits(threads):
        coords = np.asarray(tsne.fit(reference), dtype=np.float64)
    return LatentMap(reference, coords, class_names, "t-SNE", perplexity, sklearn_seed(seed))


def map_table(embeddings: pd.DataFrame, latent_map: LatentMap, threads: int = 1) -> pd.DataFrame:
    """Every row of an embed-stage table on the map: ``index``, ``subset``, ``class_name``, ``x``, ``y`` and ``map``
    (the map's method, which names its axes).

    Rows are placed by :meth:`LatentMap.place`, reference rows included, so that every image of the trial, the
    model's own training images as much as a new sample's, is put on the plane the same way.
    """
    require_columns(embeddings, ("index", "subset", "class_name", "embedding"), "embeddings")
    X = (
        np.stack(embeddings["embedding"].to_numpy())
        if len(embeddings)
        else np.empty((0, latent_map.reference.shape[1]))
    )
    xy = latent_map.place(X, threads=threads)
    table = embeddings[["index", "subset", "class_name"]].reset_index(drop=True).copy()
    table["x"], table["y"] = xy[:, 0], xy[:, 1]
    table["map"] = latent_map.method
    return table


def save_map(latent_map: LatentMap, path) -> None:
    """Write the map as ``.npz`` (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            reference=latent_map.reference,
            coords=latent_map.coords,
            class_names=latent_map.class_names.astype(str),
            method=np.array(latent_map.method),
            perplexity=np.array(latent_map.perplexity),
            seed=np.array(latent_map.seed),
        )


def load_map(path) -> LatentMap:
    """The map :func:`save_map` wrote to ``path``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return LatentMap(
                reference=data["reference"],
                coords=data["coords"],
                class_names=data["class_names"],
                method=str(data["method"]),
                perplexity=float(data["perplexity"]),
                seed=int(data["seed"]),
            )
    except FileNotFoundError:
        raise InputError(f"{path}: no such latent map") from None
    except (KeyError, ValueError, OSError) as error:
        raise InputError(f"{path}: not a latent map ({error})") from None
