"""Ingest: list the objects of a raw dump, one row each, from file names and image headers (pixels are not decoded).

A data set's ``source:`` block names the dump's form (``kind``); its ``channels:`` list names the channels, in the
order of the patches' channel axis:

- ``folder``: one folder per class holding PNG / JPEG / TIFF / BMP images, 8 or 16 bit, grey or RGB. With
  ``channel_tokens`` ({channel: token}) the files of one object are grouped by removing the token from the name
  (IDEAS exports ``00042_Ch1.tif``, ``00042_Ch6.tif`` -> object ``00042``); without, each file is one object, and an
  RGB file gives three channels. ``group_pattern`` (a regex with a named group ``group``, searched in the file name)
  tells the specimen or sample, for group-aware splits.
- ``synthetic``: the dump :mod:`cytodml.data.synthetic` renders, ``<class>/<object>_Ch1.tif``: a one-channel folder.
- ``montage``: per class folder, one montage per channel (``channel_tokens``), a grid of ``tile_size`` tiles filled
  column by column (IDEAS / CellProfiler exports); one row per grid place, filler places are dropped by patching.
- ``medmnist``: a MedMNIST ``.npz`` (``{train,val,test}_images`` N x H x W [x 3], ``*_labels`` N x 1), named classes.
- ``manifest``: a CSV / TSV / parquet table with columns ``path`` and ``label``, optional ``group``, and optionally
  ``object`` + ``channel`` to gather one object's channel files; paths are relative to ``root`` (default: the
  table's folder).

The table's columns are :data:`RAW_COLUMNS` (docs/architecture.md, raw.parquet). Every check is cheap (names, headers,
bit depth) and a failure is an :class:`InputError` naming the file, folder, row or config key.
"""

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from cytodml.data.imageio import IMAGE_SUFFIXES, is_ignored, is_image, npz_members, read_header
from cytodml.errors import InputError

RAW_COLUMNS = [
    "object_id",
    "class_name",
    "group",
    "files",
    "tile",
    "member",
    "official_subset",
    "height",
    "width",
    "dtype",
]
MEDMNIST_SUBSETS = ("train", "val", "test")
MANIFEST_READERS = {
    ".csv": pd.read_csv,
    ".tsv": lambda path: pd.read_csv(path, sep="\t"),
    ".parquet": pd.read_parquet,
}
#: the synthetic renderer writes ``<object>_Ch1.tif``, one brightfield channel
SYNTHETIC_TOKEN = "Ch1"


class _Object(NamedTuple):
    """An object found on disk: ``paths`` holds one file per channel, or one file holding every channel."""

    object_id: str
    class_name: str
    group: str | None
    paths: list[Path]


def ingest(source: dict, channels: list[str]) -> pd.DataFrame:
    """The raw table of ``source``: one row per object, :data:`RAW_COLUMNS`, sorted by class then object."""
    kind = source.get("kind")
    if kind not in _INGESTERS:
        raise InputError(f"source.kind: unknown kind '{kind}' (known: {sorted(_INGESTERS)})")
    channels = list(channels)
    if not channels:
        raise InputError("channels: a data set needs at least one channel name")
    return _INGESTERS[kind](source, channels)


def list_classes(source: dict) -> list[str] | None:
    """The class names of ``source``, sorted, from the config or a folder listing; None where not knowable yet."""
    kind = source.get("kind")
    if kind == "synthetic" and source.get("classes"):
        return sorted(name for name, count in source["classes"].items() if count)
    if kind == "medmnist":
        return sorted(source["class_names"]) if source.get("class_names") else None
    path = Path(source.get("path", ""))
    if kind == "manifest":
        if not path.is_file() or path.suffix.lower() not in MANIFEST_READERS:
            return None
        table = read_manifest(path)
        return sorted({str(label) for label in table["label"].dropna()} - {""}) if "label" in table else None
    if not path.is_dir():
        return None
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not is_ignored(entry.name))


def class_sizes(source: dict) -> dict[str, int] | None:
    """Objects per class of ``source`` from the config, a label array, a table or a folder listing (no image is
    read); None where not knowable cheaply (a montage's filler tiles are found by patching). Patching may still drop
    some (quality control), so a size here is an upper bound."""
    kind = source.get("kind")
    path = Path(source.get("path", ""))
    if kind == "synthetic" and source.get("classes"):
        return {name: int(count) for name, count in source["classes"].items() if count}
    if kind == "medmnist" and source.get("class_names") and path.is_file():
        with np.load(path) as archive:
            labels = [
                archive[f"{subset}_labels"].ravel() for subset in MEDMNIST_SUBSETS if f"{subset}_labels" in archive
            ]
        counts = np.bincount(np.concatenate(labels).astype(np.int64), minlength=len(source["class_names"]))
        return dict(zip(source["class_names"], counts.tolist()))
    if kind == "manifest" and path.is_file() and path.suffix.lower() in MANIFEST_READERS:
        table = read_manifest(path)
        if "label" not in table:
            return None
        objects = table.drop_duplicates("object") if "object" in table else table
        return {str(label): int(count) for label, count in objects["label"].value_counts().items()}
    if kind == "folder" and path.is_dir():
        # a multi-channel object has one file per channel: count the files of its first channel
        token = next(iter((source.get("channel_tokens") or {"": ""}).values()))
        return {
            entry.name: sum(1 for file in entry.iterdir() if is_image(file) and token in file.name)
            for entry in sorted(path.iterdir())
            if entry.is_dir() and not is_ignored(entry.name)
        }
    return None


# ------------------------------------------------------------------------------------------------- source kinds


def _ingest_folder(source: dict, channels: list[str]) -> pd.DataFrame:
    root = _existing(source, "path")
    tokens = source.get("channel_tokens")
    pattern = _group_pattern(source)
    objects = []
    for class_name, class_dir, files in _class_files(root):
        if tokens:
            grouped = _group_by_token(class_dir, files, channels, tokens)
        else:
            grouped = [(path.name, [path]) for path in files]
        for key, paths in grouped:
            group = _group_of(pattern, paths[0])
            objects.append(_Object(_object_id(class_name, key), class_name, group, paths))
    return _objects_table(objects, channels)


def _ingest_synthetic(source: dict, channels: list[str]) -> pd.DataFrame:
    if len(channels) != 1:
        raise InputError(f"channels: a synthetic data set has one channel (brightfield), not {channels}")
    return _ingest_folder({**source, "channel_tokens": {channels[0]: SYNTHETIC_TOKEN}}, channels)


def _ingest_montage(source: dict, channels: list[str]) -> pd.DataFrame:
    root = _existing(source, "path")
    if not source.get("channel_tokens"):
        raise InputError("source.channel_tokens: a montage source needs one token per channel")
    tile = source.get("tile_size")
    if not isinstance(tile, int) or tile < 1:
        raise InputError(f"source.tile_size: a positive number of pixels, not {tile!r}")
    pattern = _group_pattern(source)
    rows = []
    for class_name, class_dir, files in _class_files(root):
        for key, paths in _group_by_token(class_dir, files, channels, source["channel_tokens"]):
            object_id = _object_id(class_name, key)
            height, width, dtype = _object_header(object_id, paths, channels)
            if height % tile or width % tile:
                raise InputError(f"{paths[0]}: {height} x {width} is not a whole grid of source.tile_size = {tile}")
            group = _group_of(pattern, paths[0])
            files_ = [str(path) for path in paths]
            for index in range((height // tile) * (width // tile)):
                rows.append((f"{object_id}/{index}", class_name, group, files_, index, "", "", tile, tile, dtype))
    return _table(rows)


def _ingest_medmnist(source: dict, channels: list[str]) -> pd.DataFrame:
    path = _existing(source, "path")
    names = source.get("class_names")
    if not names:
        raise InputError("source.class_names: a MedMNIST source needs the class names, in label order")
    members = npz_members(path)
    with np.load(path) as archive:
        labels = {subset: archive[f"{subset}_labels"] for subset in MEDMNIST_SUBSETS if f"{subset}_labels" in members}
    columns = {column: [] for column in RAW_COLUMNS}
    for subset in MEDMNIST_SUBSETS:
        member = f"{subset}_images"
        if member not in members or subset not in labels:
            raise InputError(f"{path}: no '{member}' / '{subset}_labels' arrays (it has {sorted(members)})")
        shape, dtype = members[member]
        count, height, width = shape[:3]
        depth = shape[3] if len(shape) == 4 else 1
        if depth != len(channels):
            raise InputError(f"channels: {path} holds {depth}-channel images, but channels lists {channels}")
        label = labels[subset].reshape(len(labels[subset]), -1)
        if label.shape != (count, 1):
            raise InputError(f"{path}: {subset}_labels has shape {labels[subset].shape}; expected one label per image")
        label = label[:, 0].astype(np.int64)
        if label.min(initial=0) < 0 or label.max(initial=0) >= len(names):
            raise InputError(f"source.class_names: {len(names)} names, but {path} has labels up to {label.max()}")
        rows = np.arange(count)
        columns["object_id"] += [f"{subset}/{row}" for row in rows]
        columns["class_name"] += [names[value] for value in label]
        columns["group"] += [None] * count
        columns["files"] += [[str(path)] * depth for _ in rows]
        columns["tile"] += rows.tolist()
        columns["member"] += [member] * count
        columns["official_subset"] += [subset if source.get("official_subsets") else ""] * count
        columns["height"] += [height] * count
        columns["width"] += [width] * count
        columns["dtype"] += [dtype] * count
    return _frame(columns)


def _ingest_manifest(source: dict, channels: list[str]) -> pd.DataFrame:
    path = _existing(source, "path")
    if path.suffix.lower() not in MANIFEST_READERS:
        raise InputError(f"source.path: {path} is not a {' / '.join(MANIFEST_READERS)} table")
    table = read_manifest(path)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)} (has {list(table.columns)})")
    if ("object" in table) != ("channel" in table):
        raise InputError(f"{path}: columns 'object' and 'channel' go together (one row per channel file of an object)")
    root = manifest_root(source)
    table = table.assign(
        file=[root / name for name in table["path"].astype(str)],
        label=table["label"].fillna("").astype(str),
        group=table.get("group", None),
    )
    for row, file in enumerate(table["file"]):
        if not file.is_file():
            raise InputError(f"{path}: row {row}: file {file} not found")
    if "object" not in table:
        objects = [_Object(str(row.path), row.label, _group_text(row.group), [row.file]) for row in table.itertuples()]
        return _objects_table(objects, channels)
    objects = []
    for object_id, rows in table.groupby("object", sort=False):
        if len(set(rows["label"])) != 1 or len(set(map(_group_text, rows["group"]))) != 1:
            raise InputError(f"{path}: object {object_id}: its rows disagree on label or group")
        files = {}
        for row in rows.itertuples():
            if row.channel in files:
                raise InputError(f"{path}: object {object_id}: two rows for channel '{row.channel}'")
            files[row.channel] = row.file
        absent = [channel for channel in channels if channel not in files]
        if absent:
            raise InputError(f"{path}: object {object_id}: no row for channel '{absent[0]}'")
        first = rows.iloc[0]
        objects.append(
            _Object(str(object_id), first["label"], _group_text(first["group"]), [files[c] for c in channels])
        )
    return _objects_table(objects, channels)


_INGESTERS = {
    "folder": _ingest_folder,
    "synthetic": _ingest_synthetic,
    "montage": _ingest_montage,
    "medmnist": _ingest_medmnist,
    "manifest": _ingest_manifest,
}


# ------------------------------------------------------------------------------------------------------- helpers


def _existing(source: dict, key: str) -> Path:
    if not source.get(key):
        raise InputError(f"source.{key}: missing")
    path = Path(source[key])
    if not path.exists():
        raise InputError(f"source.{key}: {path} does not exist")
    return path


def _class_files(root: Path):
    """``(class name, folder, image files)`` per class folder of ``root``, sorted by name.

    A folder of images with no class folders is an unlabelled dump (a new sample to screen): one class named ``""``.
    Files beside the class folders that are not images (a README, a licence) are not data and are passed over.
    """
    if not root.is_dir():
        raise InputError(f"source.path: {root} is not a folder")
    entries = sorted(entry for entry in root.iterdir() if not is_ignored(entry.name))
    class_dirs = [entry for entry in entries if entry.is_dir()]
    loose = [entry for entry in entries if not entry.is_dir() and is_image(entry)]
    if class_dirs and loose:
        raise InputError(f"{loose[0]}: a file beside the class folders of {root}; expected one folder per class")
    if not class_dirs and not loose:
        raise InputError(f"{root}: no class folders and no images (expected one folder of images per class)")
    for class_name, folder in [(entry.name, entry) for entry in class_dirs] or [("", root)]:
        files = []
        for entry in sorted(folder.iterdir()):
            if is_ignored(entry.name) or (folder == root and not is_image(entry)):
                continue
            if entry.is_dir():
                raise InputError(f"{entry}: a folder inside class folder {folder}; expected image files only")
            if not is_image(entry):
                raise InputError(f"{entry}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
            files.append(entry)
        if not files:
            raise InputError(f"{folder}: empty class folder (no image files)")
        yield class_name, folder, files


def _object_id(class_name: str, key: str) -> str:
    return f"{class_name}/{key}" if class_name else key


def _stem(path: Path) -> str:
    """The file name without its image suffix (and the ``.ome`` of an ``.ome.tif``)."""
    return path.name[: -len(path.suffix)].removesuffix(".ome")


def _group_by_token(class_dir: Path, files: list[Path], channels: list[str], tokens: dict) -> list:
    """``(object key, [file per channel])`` for the files of one class folder, grouped by removing the channel token.

    A token matches between name boundaries (start, end or ``_``): ``Ch1`` matches ``00042_Ch1`` and ``Ch1_00042``,
    never ``00042_Ch10``. Files of a channel the data set does not list are skipped.
    """
    absent = [channel for channel in channels if channel not in tokens]
    if absent:
        raise InputError(f"source.channel_tokens: no token for channel '{absent[0]}' (tokens: {tokens})")
    patterns = {channel: re.compile(rf"(?:^|_){re.escape(token)}(?=_|$)") for channel, token in tokens.items()}
    objects: dict[str, dict[str, Path]] = {}
    for path in files:
        stem = _stem(path)
        hits = [(channel, match) for channel, pattern in patterns.items() if (match := pattern.search(stem))]
        if len(hits) != 1:
            found = "none" if not hits else ", ".join(channel for channel, _ in hits)
            raise InputError(f"{path}: the name must match exactly one of source.channel_tokens {tokens} ({found})")
        channel, match = hits[0]
        if channel not in channels:
            continue
        key = stem[: match.start()] + stem[match.end() :]
        key = key.removeprefix("_") if match.start() == 0 else key
        slot = objects.setdefault(key, {})
        if channel in slot:
            raise InputError(f"{path} and {slot[channel]}: two files for channel '{channel}' of one object")
        slot[channel] = path
    for key, slot in objects.items():
        for channel in channels:
            if channel not in slot:
                raise InputError(
                    f"object {class_dir.name}/{key}: no file for channel '{channel}' "
                    f"(token '{tokens[channel]}') in {class_dir}"
                )
    return [(key, [slot[channel] for channel in channels]) for key, slot in sorted(objects.items())]


def _group_pattern(source: dict) -> re.Pattern | None:
    if not source.get("group_pattern"):
        return None
    try:
        pattern = re.compile(source["group_pattern"])
    except re.error as error:
        raise InputError(f"source.group_pattern: not a regular expression ({error})") from error
    if "group" not in pattern.groupindex:
        raise InputError("source.group_pattern: needs a named group, e.g. '(?P<group>P[0-9]+)_'")
    return pattern


def _group_of(pattern: re.Pattern | None, path: Path) -> str | None:
    if pattern is None:
        return None
    match = pattern.search(path.name)
    if match is None:
        raise InputError(f"{path}: the name does not match source.group_pattern '{pattern.pattern}'")
    return match["group"]


def _group_text(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _object_header(object_id: str, paths: list[Path], channels: list[str]) -> tuple[int, int, str]:
    """``(height, width, dtype)`` of an object whose ``paths`` hold one file per channel, or one with every channel."""
    if len(paths) == 1:
        header = read_header(paths[0])
        if header.channels != len(channels):
            raise InputError(
                f"channels: {paths[0]} has {header.channels} channel(s), but the data set lists {len(channels)} "
                f"({channels})"
            )
        return header.height, header.width, header.dtype
    headers = [read_header(path) for path in paths]
    for path, header in zip(paths, headers):
        if header.channels != 1:
            raise InputError(f"{path}: a {header.channels}-channel image as one channel's file; expected grey")
    if len({(header.height, header.width) for header in headers}) > 1:
        sizes = ", ".join(f"{path.name} {h.height} x {h.width}" for path, h in zip(paths, headers))
        raise InputError(f"object {object_id}: its channel files differ in size ({sizes})")
    if len({header.dtype for header in headers}) > 1:
        raise InputError(f"object {object_id}: its channel files differ in bit depth")
    return headers[0].height, headers[0].width, headers[0].dtype


def _objects_table(objects: list[_Object], channels: list[str]) -> pd.DataFrame:
    rows = []
    for obj in objects:
        height, width, dtype = _object_header(obj.object_id, obj.paths, channels)
        files = [str(obj.paths[0])] * len(channels) if len(obj.paths) == 1 else [str(path) for path in obj.paths]
        rows.append((obj.object_id, obj.class_name, obj.group, files, -1, "", "", height, width, dtype))
    return _table(rows)


def _table(rows: list[tuple]) -> pd.DataFrame:
    return _frame({column: [row[i] for row in rows] for i, column in enumerate(RAW_COLUMNS)})


def _frame(columns: dict[str, list]) -> pd.DataFrame:
    """The raw table, with the checks that span objects: unique object ids, one bit depth for the data set."""
    table = pd.DataFrame(columns, columns=RAW_COLUMNS)
    table["group"] = table["group"].astype("string")
    table = table.astype({"tile": "int64", "height": "int64", "width": "int64"})
    repeated = table["object_id"][table["object_id"].duplicated()]
    if len(repeated):
        raise InputError(f"object id '{repeated.iloc[0]}' occurs twice in the data set (rename one of its files)")
    depths = table.drop_duplicates("dtype")
    if len(depths) > 1:
        examples = "; ".join(f"{row.files[0]} is {row.dtype}" for row in depths.itertuples())
        raise InputError(f"mixed bit depths in one data set: {examples}")
    return table


def manifest_root(source: dict) -> Path:
    """The folder a manifest's ``path`` column is relative to: ``root``, by default the table's folder."""
    return Path(source.get("root", Path(source["path"]).parent))


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest table (CSV, TSV or parquet, by its suffix); an unreadable one is an :class:`InputError`."""
    try:
        return MANIFEST_READERS[path.suffix.lower()](path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the manifest table ({error})") from error
