"""Patch: decode every object of the raw table once and cut it to a fixed ``size`` x ``size`` patch, losslessly.

Modes (a data set's ``patch:`` block, ``{mode, size, downscale, background, noise_sigmas, foreground_fraction}``;
defaults: the config schema's):

- ``object``: find the main object and centre it. On the image smoothed by a 3 x 3 mean, the background is a plane
  fitted to the frame border and the noise the robust sigma ``1.4826 * MAD`` of the border about it, per channel
  (``background`` a number fixes the level instead); foreground is ``|image - background| > noise_sigmas * noise``
  in any channel; the object is its largest 8-connected component. The
  patch is the ``size`` window centred on the object's bounding box, padded with the background level where it
  leaves the frame; an object larger than ``size`` is shrunk into it when ``downscale`` is true (the default) and
  cut otherwise.
- ``resize``: centre crop to a square and resize to ``size``.
- ``tiles``: the tiles of a montage (or rows of an array file) as they are, resized when ``size`` differs.
- ``grid``: cut a large image into non-overlapping ``size`` tiles, row by row, keeping those whose foreground
  fraction (as in ``object`` mode) is at least ``foreground_fraction``. A tile's group is its image unless the source names one.

Resizing is Pillow's bilinear filter (antialiased when shrinking; 8-bit images are first averaged over whole
blocks, see :data:`REDUCING_GAP`), per channel, in the source dtype. Patches keep the source dtype: no rescaling, so
the network's input normalisation is the only intensity transform.

Each patch carries the sha1 of its object's decoded source pixels (:func:`content_hash`; a JPEG bound for a small
``resize`` patch is decoded at reduced scale), so byte-identical duplicates share it, and QC flags: ``qc_empty`` (no foreground), ``qc_border`` (the object touches the frame border),
``qc_multiple`` (a second component of at least :data:`MULTIPLE_FRACTION` of the main one's area),
``qc_downscaled``. Montage filler tiles (every row identical) and repeated montage tiles (same hash; the first is
kept) are dropped and counted.
"""

import contextlib
import hashlib
import itertools
import math
import multiprocessing
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cytodml.config import checked
from cytodml.data.imageio import Decoded, decode, read_npz_member
from cytodml.errors import InputError
from cytodml.io import commit, open_npy_for_writing

QC_FLAGS = ["qc_empty", "qc_border", "qc_multiple", "qc_downscaled"]
PATCH_COLUMNS = ["index", "object_id", "class_name", "label", "group", "official_subset", "content_hash", *QC_FLAGS]
COUNT_COLUMNS = [
    "class_name",
    "objects",
    "dropped_filler",
    "dropped_duplicate",
    "dropped_background",
    "patches",
    *QC_FLAGS,
]

MULTIPLE_FRACTION = 0.2
"""A second component of at least this fraction of the main component's area flags ``qc_multiple``."""
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 1.0
"""Shrinking first averages blocks of ``floor(scale / REDUCING_GAP)`` pixels (``Image.reduce``: the area average,
free of aliasing), then resamples the rest bilinearly: for a 360 px PBC JPEG shrunk to 64 px, 2.7 times as fast as
the bilinear filter over the full support (0.26 against 0.71 ms) and 1.5 grey levels RMS from it."""
CHUNK_BYTES = 32 << 20
"""Patches per worker task are capped at this many bytes, which bounds memory whatever the dump's size."""
TASKS_PER_WORKER = 4
"""Chunks per worker process at least, so that the last chunks do not leave processes idle."""


class PatchSpec(NamedTuple):
    mode: str
    size: int
    downscale: bool
    background: str | float
    noise_sigmas: float
    foreground_fraction: float | None


class _Job(NamedTuple):
    """What a worker needs to decode one raw row."""

    files: tuple[str, ...]
    tile: int
    member: str
    height: int
    width: int
    montage: bool


class _Chunk(NamedTuple):
    """A worker's patches for consecutive raw rows; ``rows`` are positions in the chunk, one per patch."""

    patches: np.ndarray | None
    rows: list[int]
    cells: list[int]
    hashes: list[str]
    flags: list[tuple[bool, bool, bool, bool]]
    fillers: list[int]
    background: dict[int, int]


def make_patches(raw: pd.DataFrame, patch: dict, out_npy, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``out_npy`` (N x C x S x S, source dtype) and return its table and the per-class QC counts.

    The array is written chunk by chunk into a memory map at a temporary name, by ``workers`` processes in raw-table
    order, and renamed onto ``out_npy`` only when complete. The table's columns are :data:`PATCH_COLUMNS` (row i
    describes ``out_npy[i]``; ``label`` is the position of ``class_name`` in the sorted class names); the counts'
    columns are :data:`COUNT_COLUMNS`, one row per class.
    """
    spec = patch_spec(patch)
    raw = raw.reset_index(drop=True)
    channels, dtype = _layout(raw, spec, patch.get("tile_size"))
    ledger = _Ledger(raw)
    jobs = [
        _Job(tuple(files), tile, member, height, width, montage)
        for files, tile, member, height, width, montage in zip(
            raw["files"], raw["tile"], raw["member"], raw["height"], raw["width"], ledger.montage
        )
    ]
    patch_bytes = channels * spec.size**2 * np.dtype(dtype).itemsize
    bounds = _chunk_bounds(ledger.montage, [job.files for job in jobs], patch_bytes, workers)
    array, tmp = open_npy_for_writing(out_npy, (_capacity(raw, spec), channels, spec.size, spec.size), dtype)
    try:
        with _mapper(workers, len(bounds)) as imap:
            tasks = [(jobs[start:stop], spec) for start, stop in bounds]
            for (start, _), chunk in zip(bounds, imap(_patch_chunk, tasks)):
                keep = ledger.enter(chunk, start)
                if keep:
                    array[len(ledger.sources) - len(keep) : len(ledger.sources)] = chunk.patches[keep]
        if not ledger.sources:
            raise InputError(f"{out_npy}: no patch left (every object was dropped as filler, duplicate or background)")
        commit(array, tmp, out_npy, rows=len(ledger.sources))
    finally:
        Path(tmp).unlink(missing_ok=True)
        read_npz_member.cache_clear()
    table = ledger.table()
    return table, ledger.counts(table)


def patch_spec(patch: dict) -> PatchSpec:
    """The ``patch:`` block checked, keys it lacks taking the config schema's defaults (``tile_size`` is passed on
    from a montage source)."""
    spec = checked("patch", {key: value for key, value in patch.items() if key != "tile_size"}, "patch")
    return PatchSpec(
        spec["mode"],
        spec["size"],
        spec["downscale"],
        spec["background"],
        spec["noise_sigmas"],
        spec.get("foreground_fraction"),
    )


def content_hash(image: np.ndarray) -> str:
    """Hex sha1 of an object's decoded source pixels (``H x W x C``; shape and dtype included)."""
    digest = hashlib.sha1(f"{image.shape}{image.dtype.str}".encode())
    digest.update(np.ascontiguousarray(image))
    return digest.hexdigest()


def resize_square(image: np.ndarray, size: int, pillow: Image.Image | None = None) -> np.ndarray:
    """Centre crop ``image`` (``H x W x C``) to a square and resize it to ``size`` x ``size``, in its dtype.

    ``pillow``, the same pixels as a Pillow image where the decoder made one, spares copying them into Pillow.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if side == size:
        return image[top : top + side, left : left + side]
    box = (left, top, left + side, top + side)
    if pillow is not None:
        return _pillow_resize(pillow, box, size)
    return _resize(image, box, size)


def centre_object(image: np.ndarray, spec: PatchSpec) -> tuple[np.ndarray, tuple[bool, bool, bool, bool]]:
    """The ``spec.size`` patch centred on the main object of ``image`` (``H x W x C``), and its QC flags."""
    mask, level = foreground(image, spec.background, spec.noise_sigmas)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    height, width = image.shape[:2]
    if count == 0:
        return _window(image, height / 2, width / 2, spec.size, level, spec.size), (True, False, False, False)
    areas = np.bincount(labels.ravel())[1:]
    main = int(np.argmax(areas))
    rows, cols = ndimage.find_objects(labels, max_label=main + 1)[main]
    border = rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width
    multiple = np.count_nonzero(areas >= MULTIPLE_FRACTION * areas[main]) > 1
    extent = max(rows.stop - rows.start, cols.stop - cols.start)
    side = extent if spec.downscale and extent > spec.size else spec.size
    centre_y, centre_x = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2
    patch = _window(image, centre_y, centre_x, side, level, spec.size)
    return patch, (False, border, bool(multiple), side > spec.size)


def grid_tiles(image: np.ndarray, spec: PatchSpec) -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """The ``spec.size`` tiles of ``image`` (row by row) with enough foreground: tiles, grid cells, all fractions."""
    size = spec.size
    mask, _ = foreground(image, spec.background, spec.noise_sigmas)
    rows, cols = image.shape[0] // size, image.shape[1] // size
    fraction = mask[: rows * size, : cols * size].reshape(rows, size, cols, size).mean(axis=(1, 3)).ravel()
    minimum = spec.foreground_fraction
    cells = np.flatnonzero(fraction >= minimum).tolist()
    tiles = [
        image[(c // cols) * size : (c // cols + 1) * size, (c % cols) * size : (c % cols + 1) * size] for c in cells
    ]
    return tiles, cells, fraction


def foreground(image: np.ndarray, background, sigmas: float) -> tuple[np.ndarray, np.ndarray]:
    """The foreground mask of ``image`` (``H x W x C``) and the background level per channel (for padding).

    The image is smoothed by a 3 x 3 mean first, which divides white noise by 3 while an object's signal stays, so
    that faint objects are found whole. The background is a plane fitted to the frame border per channel (an
    illumination gradient is common in brightfield), refitted without the border pixels more than 3 sigmas off it
    (an object cut by the frame); the noise sigma is the robust ``1.4826 * MAD`` of the border about the plane,
    floored at one grey level (a flat border has a MAD of 0, and every quantisation step would count as object).
    ``background`` a number replaces the plane by that level. Foreground is more than ``sigmas`` noise sigmas from
    the background in any channel.
    """
    smooth = ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1), mode="nearest")
    height, width = image.shape[:2]
    on_border = np.zeros((height, width), bool)
    on_border[[0, -1], :] = on_border[:, [0, -1]] = True
    rows, cols = np.nonzero(on_border)
    design = np.stack([np.ones(len(rows)), rows, cols], axis=1)
    values = smooth[rows, cols].astype(np.float64)
    # From the border's median level (which an object cut by the frame does not move), twice: drop the pixels more
    # than 3 sigmas off the plane, refit. The spread is floored at one grey level, as the noise below: on a
    # noiseless border its MAD is 0, and every pixel the fit misses by a rounding error would be an outlier.
    coef = np.stack([np.median(values, axis=0), np.zeros(values.shape[1]), np.zeros(values.shape[1])])
    inliers = np.ones(len(values), bool)
    for _ in range(2):
        residual = values - design @ coef
        kept = np.all(np.abs(residual) <= 3 * np.maximum(_robust_sigma(residual), 1.0), axis=1)
        if kept.sum() < 3:
            break
        inliers = kept
        coef = np.linalg.lstsq(design[inliers], values[inliers], rcond=None)[0]
    noise = np.maximum(_robust_sigma(values[inliers] - design[inliers] @ coef), 1.0)
    if background == "auto":
        yy, xx = np.mgrid[:height, :width]
        surface = coef[0] + yy[:, :, None] * coef[1] + xx[:, :, None] * coef[2]
        level = coef[0] + (height - 1) / 2 * coef[1] + (width - 1) / 2 * coef[2]
    else:
        surface = level = np.full(image.shape[2], float(background))
    return np.any(np.abs(smooth - surface) > sigmas * noise, axis=2), level


def _robust_sigma(values: np.ndarray) -> np.ndarray:
    """``1.4826 * MAD`` per column: the standard deviation of Gaussian noise, unmoved by a minority of outliers."""
    return 1.4826 * np.median(np.abs(values - np.median(values, axis=0)), axis=0)


# --------------------------------------------------------------------------------------------------- the workers


def _patch_chunk(task: tuple[list[_Job], PatchSpec]) -> _Chunk:
    """Decode and cut a run of raw rows (runs in a worker process)."""
    jobs, spec = task
    patches, rows, cells, hashes, flags, fillers, background = [], [], [], [], [], [], {}
    decoded: dict[str, Decoded] = {}  # the montages of the current object, shared by its tiles
    for row, job in enumerate(jobs):
        # a resized patch needs no more pixels than its size: JPEGs may decode at a reduced scale
        image, pillow = _source_image(job, decoded, spec.size if spec.mode == "resize" else None)
        if job.montage and (image == image[:1]).all():
            fillers.append(row)
            continue
        if spec.mode == "grid":
            tiles, grid_cells, fraction = grid_tiles(image, spec)
            background[row] = fraction.size - len(tiles)
            for tile, cell in zip(tiles, grid_cells):
                patches.append(tile.transpose(2, 0, 1))
                rows.append(row)
                cells.append(cell)
                hashes.append(content_hash(tile))
                flags.append((bool(fraction[cell] == 0), False, False, False))
            continue
        digest = content_hash(image)  # while the decoded pixels are still in the cache
        if spec.mode == "object":
            patch, flag = centre_object(image, spec)
        else:
            patch, flag = resize_square(image, spec.size, pillow), (False, False, False, False)
        patches.append(patch.transpose(2, 0, 1))
        rows.append(row)
        cells.append(-1)
        hashes.append(digest)
        flags.append(flag)
    stacked = np.stack(patches) if patches else None
    return _Chunk(stacked, rows, cells, hashes, flags, fillers, background)


def _source_image(job: _Job, decoded: dict, at_least: int | None = None) -> Decoded:
    """The object's source pixels, ``H x W x C`` with C = the data set's channels (see :func:`decode` for ``at_least``)."""
    if job.member:
        pixels = read_npz_member(job.files[0], job.member)[job.tile]
        return Decoded(pixels[:, :, None] if pixels.ndim == 2 else pixels, None)
    if job.montage and not all(path in decoded for path in job.files):
        decoded.clear()  # a new montage: the previous one's tiles are done
    planes = []
    for path, repeats in itertools.groupby(job.files):  # an RGB file is listed once per channel
        count = len(list(repeats))
        pixels, pillow = decoded[path] if path in decoded else decode(path, at_least)
        if job.montage:
            decoded[path] = Decoded(pixels, None)
            pixels, pillow = _montage_tile(pixels, job, path), None
        if pixels.shape[2] != count:
            raise InputError(f"{path}: {pixels.shape[2]} channel(s) decoded, {count} listed in the raw table")
        planes.append(pixels)
    if len(planes) == 1:
        return Decoded(planes[0], pillow)
    if len({plane.shape[:2] for plane in planes}) > 1:
        raise InputError(f"{', '.join(job.files)}: the channel files of one object differ in size")
    return Decoded(np.concatenate(planes, axis=2), None)


def _montage_tile(montage: np.ndarray, job: _Job, path: str) -> np.ndarray:
    """Tile ``job.tile`` of a montage filled column by column."""
    grid_rows = montage.shape[0] // job.height
    row, col = job.tile % grid_rows, job.tile // grid_rows
    if col >= montage.shape[1] // job.width:
        raise InputError(f"{path}: no tile {job.tile} in a {montage.shape[0]} x {montage.shape[1]} montage")
    return montage[row * job.height : (row + 1) * job.height, col * job.width : (col + 1) * job.width]


def _resize(image: np.ndarray, box, size: int) -> np.ndarray:
    """Resize the ``box`` (left, top, right, bottom) of ``image`` to ``size`` x ``size``, per channel, in its dtype."""
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return _pillow_resize(Image.fromarray(image), box, size)
    planes = [
        _pillow_resize(Image.fromarray(np.ascontiguousarray(image[:, :, c])), box, size) for c in range(image.shape[2])
    ]
    return np.concatenate(planes, axis=2)


def _pillow_resize(image: Image.Image, box, size: int) -> np.ndarray:
    """``H x W x C`` pixels of a Pillow image's ``box`` resized to ``size`` (``reduce`` takes 8-bit modes only)."""
    gap = REDUCING_GAP if image.mode in ("L", "RGB") else None
    pixels = np.asarray(image.resize((size, size), RESAMPLE, box=box, reducing_gap=gap))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _window(image: np.ndarray, centre_y: float, centre_x: float, side: int, level: np.ndarray, size: int):
    """The ``side`` x ``side`` window centred at (centre_y, centre_x), padded with ``level``, resized to ``size``."""
    height, width, channels = image.shape
    info = np.iinfo(image.dtype)
    window = np.empty((side, side, channels), image.dtype)
    window[:] = np.clip(np.round(level), info.min, info.max).astype(image.dtype)
    top, left = int(round(centre_y - side / 2)), int(round(centre_x - side / 2))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    window[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return window if side == size else _resize(window, None, size)


# ------------------------------------------------------------------------------------------------- the main side


def _layout(raw: pd.DataFrame, spec: PatchSpec, tile_size: int | None) -> tuple[int, str]:
    """Channel count and dtype of the data set's patches, after checking that the raw table suits ``spec``."""
    if raw.empty:
        raise InputError("raw table: no objects to patch")
    channels = raw["files"].map(len)
    if channels.nunique() != 1:
        row = raw.loc[channels != channels.iloc[0]].iloc[0]
        raise InputError(f"raw table: object {row.object_id} has {len(row.files)} channels, others {channels.iloc[0]}")
    if raw["dtype"].nunique() != 1:
        raise InputError(f"raw table: mixed dtypes {sorted(raw['dtype'].unique())}")
    if spec.mode == "tiles" and (raw["tile"] < 0).any():
        row = raw.loc[raw["tile"] < 0].iloc[0]
        raise InputError(f"patch.mode: 'tiles' needs montage or array sources; object {row.object_id} is a whole file")
    if tile_size is not None and ((raw["height"] != tile_size) | (raw["width"] != tile_size)).any():
        raise InputError(f"patch.tile_size: {tile_size} differs from the raw table's tile size")
    return int(channels.iloc[0]), str(raw["dtype"].iloc[0])


def _capacity(raw: pd.DataFrame, spec: PatchSpec) -> int:
    """Rows to reserve: one per object, or every grid cell in grid mode; the unused tail is cut at the end."""
    if spec.mode != "grid":
        return len(raw)
    return max(1, int(((raw["height"] // spec.size) * (raw["width"] // spec.size)).sum()))


def _chunk_bounds(montage: np.ndarray, files: list[tuple], patch_bytes: int, workers: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges for the workers; a montage's tiles stay in one chunk so it is decoded once."""
    total = len(montage)
    size = max(1, min(CHUNK_BYTES // patch_bytes, math.ceil(total / (max(workers, 1) * TASKS_PER_WORKER))))
    bounds, start = [], 0
    for row in range(1, total):
        same_montage = montage[row] and montage[row - 1] and files[row] == files[row - 1]
        if row - start >= size and not same_montage:
            bounds.append((start, row))
            start = row
    bounds.append((start, total))
    return bounds


@contextlib.contextmanager
def _mapper(workers: int, tasks: int):
    """An ordered, lazy ``map``: in this process for one worker, else over a pool of ``workers`` processes."""
    if workers <= 1 or tasks <= 1:
        yield map
        return
    with multiprocessing.get_context().Pool(min(workers, tasks)) as pool:
        yield pool.imap


class _Ledger:
    """The main process's account: the raw row, grid cell, hash and flags of every kept patch, and the drops per row.

    Filler tiles are dropped by the workers; a montage tile whose hash was seen before is dropped here, in raw-table
    order, so the first copy is the one kept.
    """

    def __init__(self, raw: pd.DataFrame):
        self.raw = raw
        self.montage = ((raw["member"] == "") & (raw["tile"] >= 0)).to_numpy()
        self.sources: list[int] = []
        self.cells: list[int] = []
        self.hashes: list[str] = []
        self.flags: list[tuple[bool, ...]] = []
        self.filler = np.zeros(len(raw), bool)
        self.duplicate = np.zeros(len(raw), bool)
        self.background = np.zeros(len(raw), np.int64)
        self.seen: set[str] = set()

    def enter(self, chunk: _Chunk, start: int) -> list[int]:
        """Book a chunk whose first raw row is ``start``; the positions of its patches to keep."""
        self.filler[[start + row for row in chunk.fillers]] = True
        for row, count in chunk.background.items():
            self.background[start + row] = count
        keep = []
        for position, (row, digest) in enumerate(zip(chunk.rows, chunk.hashes)):
            if self.montage[start + row]:
                if digest in self.seen:
                    self.duplicate[start + row] = True
                    continue
                self.seen.add(digest)
            keep.append(position)
            self.sources.append(start + row)
            self.cells.append(chunk.cells[position])
            self.hashes.append(digest)
            self.flags.append(chunk.flags[position])
        return keep

    def table(self) -> pd.DataFrame:
        """The patches' table, :data:`PATCH_COLUMNS`."""
        source = self.raw.iloc[self.sources].reset_index(drop=True)
        cells = np.asarray(self.cells)
        object_id = source["object_id"].astype(str)
        grid = cells >= 0
        if grid.any():
            object_id = object_id.where(~grid, object_id + "/" + pd.Series(cells, dtype=str))
            # the tiles of one image stay on one side of a split: the image is their group when the source knows none
            source["group"] = source["group"].fillna(source["object_id"])
        classes = sorted(self.raw["class_name"].unique())
        table = pd.DataFrame(
            {
                "index": np.arange(len(source)),
                "object_id": object_id,
                "class_name": source["class_name"],
                "label": pd.Categorical(source["class_name"], categories=classes).codes.astype("int64"),
                "group": source["group"],
                "official_subset": source["official_subset"],
                "content_hash": self.hashes,
            }
        )
        table[QC_FLAGS] = np.asarray(self.flags, bool).reshape(len(source), len(QC_FLAGS))
        return table[PATCH_COLUMNS]

    def counts(self, table: pd.DataFrame) -> pd.DataFrame:
        """Per class: objects, drops by reason, patches and QC flags, :data:`COUNT_COLUMNS`."""
        per_row = pd.DataFrame(
            {
                "class_name": self.raw["class_name"],
                "objects": 1,
                "dropped_filler": self.filler,
                "dropped_duplicate": self.duplicate,
                "dropped_background": self.background,
            }
        )
        counts = per_row.groupby("class_name").sum()
        counts["patches"] = table.groupby("class_name").size()
        counts = counts.join(table.groupby("class_name")[QC_FLAGS].sum())
        return counts.fillna(0).astype("int64").reset_index()[COUNT_COLUMNS]
