"""What drew a test image to a class: its nearest class prototype, and Grad-CAM maps of its similarity to one.

The analysis behind the similarity-map figure (:func:`cytodml.report.figures.similarity_grid` draws it): test images
are classified by their nearest prototype, correct and wrong cases are drawn, and each case's map towards a prototype
is computed through the network.
"""

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cytodml.errors import InputError, require_columns
from cytodml.learn.embed import BatchLoader, check_images, load_model

# ------------------------------------------------------------------------------------------ nearest class prototype


def class_prototypes(train: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{class name: prototype}`` in sorted class order: a prototype is the mean training embedding of a class
    (Snell et al. 2017; the centroid classifier of Luo et al. 2021)."""
    return {
        name: np.stack(train.loc[train["class_name"] == name, "embedding"].to_numpy()).mean(axis=0)
        for name in sorted(set(train["class_name"]))
    }


def nearest_prototype(test: pd.DataFrame, prototypes: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each row of ``test`` (of a class among ``prototypes``, in sorted order) called by its nearest prototype.

    Columns ``index``, ``class_name``, ``called`` (the nearest prototype's class), ``distance`` (to it),
    ``own_distance`` (to the prototype of its own class) and ``correct``.
    """
    names = list(prototypes)
    X = np.stack(test["embedding"].to_numpy())
    distances = np.linalg.norm(X[:, None, :] - np.stack(list(prototypes.values()))[None], axis=2)
    nearest = distances.argmin(axis=1)
    own = np.searchsorted(names, test["class_name"].to_numpy())
    rows = np.arange(len(X))
    return pd.DataFrame(
        {
            "index": test["index"].to_numpy(),
            "class_name": test["class_name"].to_numpy(),
            "called": np.asarray(names)[nearest],
            "distance": distances[rows, nearest],
            "own_distance": distances[rows, own],
            "correct": nearest == own,
        }
    )


def _draw_cases(scored: pd.DataFrame, names: list[str], per_outcome: int, seed: int) -> list[int]:
    """Row positions of up to ``per_outcome`` correct, then as many wrong cases of ``scored``, drawn at random
    (``seed``) taking the classes ``names`` in turn, so that every class shows."""
    rng = np.random.default_rng(seed)
    picked = []
    for correct in (True, False):
        pools = [
            list(rng.permutation(np.flatnonzero((scored["correct"] == correct) & (scored["class_name"] == name))))
            for name in names
        ]
        chosen = []
        while len(chosen) < per_outcome and any(pools):
            chosen += [pool.pop() for pool in pools if pool][: per_outcome - len(chosen)]
        picked += chosen
    return picked


def nearest_prototype_cases(
    table: pd.DataFrame, per_outcome: int = 6, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Test images classified by their nearest class prototype, and up to ``per_outcome`` correct and wrong cases.

    ``table`` is the embed stage's table of one trial; prototypes come from its ``train`` rows
    (:func:`class_prototypes`), and test images of classes without training images are left out. Cases are drawn
    at random (``seed``), taking the classes in turn so that every class shows, with the columns of
    :func:`nearest_prototype`. Returns the cases (correct ones first) and ``{class name: prototype}``.
    """
    require_columns(table, ("index", "subset", "class_name", "embedding"), "embeddings")
    train, test = table[table["subset"] == "train"], table[table["subset"] == "test"]
    if train.empty or test.empty:
        raise InputError("embeddings: prototypes need 'train' rows and cases need 'test' rows")
    if not test["class_name"].isin(train["class_name"]).any():
        raise InputError("embeddings: no 'test' row is of a class with 'train' rows")
    prototypes = class_prototypes(train)
    scored = nearest_prototype(test[test["class_name"].isin(list(prototypes))], prototypes)
    return scored.iloc[_draw_cases(scored, list(prototypes), per_outcome, seed)].reset_index(drop=True), prototypes


# ------------------------------------------------------------------------------------------------- similarity maps


def _cam_layer(network, in_channels: int, image_size: int, min_side: int) -> str:
    """The deepest block whose output is at least ``min_side`` pixels wide, else the first spatial block; ``input``
    where no block keeps a spatial map (a backbone that pools inside)."""
    shapes = {}
    with torch.no_grad():
        x = torch.zeros(1, in_channels, image_size, image_size)
        for name, block in network.blocks.items():
            x = block(x)
            shapes[name] = tuple(x.shape)
    spatial = [name for name, shape in shapes.items() if len(shape) == 4]
    if not spatial:
        return "input"
    wide = [name for name in spatial if min(shapes[name][2:]) >= min_side]
    return wide[-1] if wide else spatial[0]


def _grad_cam(network, x: torch.Tensor, prototypes: torch.Tensor, layer: str, size: int) -> np.ndarray:
    """One batch's maps (see :func:`similarity_maps`): the gradient of s = -||f(x) - p|| at block ``layer``'s output
    (``input``: at the image), weighted into a map, resized to ``size`` pixels and scaled to its peak."""
    with torch.enable_grad():
        x = x.contiguous().requires_grad_(True)
        activation, h = x, x
        for name, block in network.blocks.items():
            h = block(h)
            if name == layer:
                activation = h
        similarity = -(network.embedding(h) - prototypes).norm(dim=1)
        (gradient,) = torch.autograd.grad(similarity.sum(), activation)
        if layer == "input":
            cam = gradient.abs().amax(dim=1)
        else:
            cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
        cam = F.interpolate(cam[:, None].detach(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)
        return (cam / peak[:, None, None]).numpy()


def similarity_maps(
    model, images: np.ndarray, prototypes: np.ndarray, layer: str | None = None, min_side: int = 6, batch_size: int = 64
) -> tuple[np.ndarray, str]:
    """Which regions of each image pulled its embedding towards a prototype: Grad-CAM (Selvaraju et al. 2017) of
    the similarity s = -||f(x) - p||, in the spirit of the class-activation maps of a Siamese twin's distance in
    the blood-cell study.

    With A the output of block ``layer`` (channels k, positions ij), the weights a_k = mean_ij ds/dA_kij and the map
    relu(sum_k a_k A_k), bilinearly resized to the image and divided by its maximum: 1 marks the regions whose
    features most brought the image closer to ``p``. ``layer`` defaults to the deepest block still at least
    ``min_side`` pixels wide. Where no block keeps a spatial map, the map is the input gradient's largest absolute
    value over channels (a saliency map).

    ``model`` is a model file, bundle or the triple of :func:`~cytodml.learn.embed.load_model`; ``images`` N x C x
    S x S in the training dtype; ``prototypes`` N x D, the point each image is compared to. Returns the N x S x S
    maps and the layer's name.
    """
    network, _, bundle = model if isinstance(model, tuple) else load_model(model)
    check_images(images, bundle)
    prototypes = np.asarray(prototypes, dtype=np.float32)
    expected = (len(images), bundle["embedding_dim"])
    if prototypes.shape != expected:
        raise InputError(f"similarity_maps: prototypes of shape {prototypes.shape}, expected {expected}")
    size = bundle["image_size"]
    if layer is None:
        layer = _cam_layer(network, bundle["in_channels"], size, min_side)
    elif layer != "input" and layer not in network.blocks:
        raise InputError(f"similarity_maps: layer {layer!r} is not one of {['input', *network.blocks]}")
    network = network.cpu().float().eval()
    loader = BatchLoader(images, bundle["normalization"], torch.device("cpu"))
    batches = [np.arange(start, min(start + batch_size, len(images))) for start in range(0, len(images), batch_size)]
    maps = [_grad_cam(network, loader(rows), torch.from_numpy(prototypes[rows]), layer, size) for rows in batches]
    return np.concatenate(maps), layer
