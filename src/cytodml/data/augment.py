"""Grow a training set to a target count with random shifts, flips, rotations and zooms, recording every image's ops.

The rare-bioparticle paper (RSC Adv 2021) augments its training images to 10 000 by shift, flip, rotation and zoom.
Here each new image is one randomly chosen training image under one random affine map; the op parameters are written
beside the images so that :func:`apply_ops` reproduces every image exactly (the recorded ops are the truth).

The map of an op row, in pixel coordinates about the image centre (x right, y down), is::

    p_out = zoom * R(angle) * F(hflip, vflip) * p_in + (shift_x, shift_y)

with ``F`` mirroring x (hflip) and y (vflip), and ``R`` rotating content counter-clockwise on screen by ``angle``
degrees (``angle = 90`` is ``np.rot90``). ``zoom > 1`` magnifies. Pixels mapped from outside the image take the
mirrored image (reflect), so microscopy background continues rather than turning black.
"""

import zlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cytodml.config import checked
from cytodml.errors import InputError

OP_COLUMNS = ("shift_y", "shift_x", "hflip", "vflip", "angle", "zoom")
CHUNK = 512  # images warped at once: bounds the float32 working memory to a few chunks of images
#: mixed into the seed: a trial's seed also drives its split, and the two stages must not draw the same stream
STREAM = zlib.crc32(b"augment")


def augment(
    images: np.ndarray, labels: np.ndarray, source_index: np.ndarray, spec: dict, seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """The training images followed by new augmented images, ``spec["count"]`` in all, and one op row per image.

    ``images`` (M x C x S x S, uint8 or uint16) are the training patches, ``labels`` their labels and
    ``source_index`` their rows in patches. ``spec`` is the experiment's ``augment:`` block (keys it lacks take the config schema's
    defaults, except ``count``, whose default depends on the protocol): ``count`` (target total;
    0 or <= M adds nothing), ``balance`` (grow the smallest classes to a common size instead of keeping the class
    proportions), ``shift`` (max |shift| as a fraction of S), ``rotation`` (max |angle|, degrees), ``zoom`` ([lo, hi])
    and ``flips``. Each new image takes a training image of its class, drawn uniformly with replacement, and ops drawn
    uniformly from those ranges (each flip with probability 1/2). The table has columns ``source_index, label`` and
    :data:`OP_COLUMNS`; the originals come first, unchanged, with identity ops. Deterministic given ``seed``.
    """
    spec = _check_spec(spec)
    _check_images(images)
    labels, source_index = np.asarray(labels), np.asarray(source_index)
    if len(labels) != len(images) or len(source_index) != len(images):
        raise InputError(
            f"augment: {len(images)} images but {len(labels)} labels and {len(source_index)} source indices"
        )
    rng = np.random.default_rng([seed, STREAM])
    classes, class_sizes = np.unique(labels, return_counts=True)
    grow = (balanced_sizes if spec["balance"] else proportional_sizes)(class_sizes, spec["count"]) - class_sizes
    drawn = np.concatenate(
        [rng.choice(np.flatnonzero(labels == label), n, replace=True) for label, n in zip(classes, grow)]
    ).astype(np.int64)
    originals = _identity_ops(len(images))
    new = _random_ops(len(drawn), images.shape[-1], spec, rng)
    positions = np.concatenate([np.arange(len(images)), drawn])
    table = pd.concat([originals, new], ignore_index=True)
    table.insert(0, "label", labels[positions].astype(np.int64))
    table.insert(0, "source_index", source_index[positions].astype(np.int64))

    out = np.empty((len(positions), *images.shape[1:]), dtype=images.dtype)
    out[: len(images)] = images
    _warp_rows(images, drawn, new, out=out[len(images) :])
    return out, table


def apply_ops(patches: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Re-apply recorded ops: row i of ``table`` applied to ``patches[table.source_index[i]]``.

    ``patches`` is the data set's patch array (or a memory map of ``patches.npy``); the result equals the array
    :func:`augment` wrote beside ``table``.
    """
    _check_images(patches)
    missing = [column for column in ("source_index", *OP_COLUMNS) if column not in table]
    if missing:
        raise InputError(f"augment table: missing column(s) {', '.join(missing)}")
    out = np.empty((len(table), *patches.shape[1:]), dtype=patches.dtype)
    _warp_rows(patches, table["source_index"].to_numpy(dtype=np.int64), table, out=out)
    return out


def proportional_sizes(class_sizes: np.ndarray, count: int) -> np.ndarray:
    """Class sizes scaled to ``count`` in all, proportions kept (largest remainders); never below the originals."""
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    if count <= class_sizes.sum():
        return class_sizes
    share = count * class_sizes / class_sizes.sum()
    sizes = np.floor(share).astype(np.int64)
    sizes[np.argsort(sizes - share, kind="stable")[: count - sizes.sum()]] += 1
    return sizes


def balanced_sizes(class_sizes: np.ndarray, count: int) -> np.ndarray:
    """Class sizes with ``count`` in all, the smallest classes raised to one common level L (water filling).

    L is the smallest integer with ``sum_k max(n_k, L) >= count``; classes above L keep their originals; the surplus
    is taken back one image each from raised classes, so raised classes end at L or L - 1 (all equal when ``count``
    allows). ``count`` <= the originals adds nothing.
    """
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    if count <= class_sizes.sum():
        return class_sizes
    levels = np.arange(-(-count // len(class_sizes)) + 1)
    level = levels[np.argmax(np.maximum(class_sizes, levels[:, None]).sum(axis=1) >= count)]
    sizes = np.maximum(class_sizes, level)
    raised = np.flatnonzero(class_sizes < level)
    sizes[raised[len(raised) - (sizes.sum() - count) :]] -= 1
    return sizes


def _warp_rows(images: np.ndarray, positions: np.ndarray, ops: pd.DataFrame, out: np.ndarray) -> None:
    """``out[i]`` = ``images[positions[i]]`` under op row i: bilinear, reflect at the border, rounded and clipped."""
    size = images.shape[-1]
    theta = _inverse_maps(ops, size)
    info = np.iinfo(images.dtype)
    for start in range(0, len(positions), CHUNK):
        stop = min(start + CHUNK, len(positions))
        batch = torch.from_numpy(np.asarray(images[positions[start:stop]], dtype=np.float32))
        grid = _sampling_grid(theta[start:stop], size)
        warped = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[start:stop] = warped.round_().clamp_(info.min, info.max).numpy()


def _sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, S, S), align_corners=False)``, as one matrix product.

    affine_grid's N batched (S*S x 3) @ (3 x 2) products take longer than the sampling itself on a CPU; one
    (2N x 3) @ (3 x S*S) product over the shared pixel centres gives the same grid several times faster.
    """
    centres = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    base = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size), torch.ones(size, size)])
    grid = theta.reshape(-1, 3) @ base.reshape(3, -1)
    return grid.reshape(len(theta), 2, size, size).permute(0, 2, 3, 1)


def _inverse_maps(ops: pd.DataFrame, size: int) -> torch.Tensor:
    """``affine_grid`` matrices (N x 2 x 3): output -> input in normalised coordinates, ``p_in = M (p_out - t)``.

    ``M = F R(angle)^T / zoom`` inverts ``zoom R F``; for a square image, normalised coordinates ([-1, 1] over the
    image, ``align_corners=False``) are pixel coordinates about the centre scaled by 2 / S, so only ``t`` rescales.
    """
    angle = np.deg2rad(ops["angle"].to_numpy(dtype=np.float64))
    cos, sin = np.cos(angle), np.sin(angle)
    mirror_x = np.where(ops["hflip"].to_numpy(dtype=bool), -1.0, 1.0)
    mirror_y = np.where(ops["vflip"].to_numpy(dtype=bool), -1.0, 1.0)
    zoom = ops["zoom"].to_numpy(dtype=np.float64)
    matrix = np.empty((len(ops), 2, 2))
    matrix[:, 0, 0], matrix[:, 0, 1] = mirror_x * cos, -mirror_x * sin
    matrix[:, 1, 0], matrix[:, 1, 1] = mirror_y * sin, mirror_y * cos
    matrix /= zoom[:, None, None]
    shift = np.stack([ops["shift_x"].to_numpy(dtype=np.float64), ops["shift_y"].to_numpy(dtype=np.float64)], axis=1)
    offset = -np.einsum("nij,nj->ni", matrix, shift * 2.0 / size)
    return torch.from_numpy(np.concatenate([matrix, offset[:, :, None]], axis=2).astype(np.float32))


def _random_ops(n: int, size: int, spec: dict, rng: np.random.Generator) -> pd.DataFrame:
    max_shift = spec["shift"] * size
    flips = spec["flips"]
    return pd.DataFrame(
        {
            "shift_y": rng.uniform(-max_shift, max_shift, n),
            "shift_x": rng.uniform(-max_shift, max_shift, n),
            "hflip": rng.random(n) < 0.5 if flips else np.zeros(n, dtype=bool),
            "vflip": rng.random(n) < 0.5 if flips else np.zeros(n, dtype=bool),
            "angle": rng.uniform(-spec["rotation"], spec["rotation"], n),
            "zoom": rng.uniform(*spec["zoom"], n),
        }
    )


def _identity_ops(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "shift_y": np.zeros(n),
            "shift_x": np.zeros(n),
            "hflip": np.zeros(n, dtype=bool),
            "vflip": np.zeros(n, dtype=bool),
            "angle": np.zeros(n),
            "zoom": np.ones(n),
        }
    )


def _check_spec(spec: dict) -> dict:
    spec = checked("augment", spec, "augment")
    if spec["zoom"][0] > spec["zoom"][1]:
        raise InputError(f"augment.zoom: must be [lo, hi] with lo <= hi, got {spec['zoom']!r}")
    if "count" not in spec:
        raise InputError("augment.count: required here (in a study config the protocol gives its default)")
    return spec


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"augment: images must be N x C x S x S, got shape {images.shape}")
    if images.dtype not in (np.uint8, np.uint16):
        raise InputError(f"augment: images must be uint8 or uint16, got {images.dtype}")
    if len(images) == 0:
        raise InputError("augment: no training images")
