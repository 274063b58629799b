"""The signature of a raw dump: one short string that changes when a file ingest reads is added, removed or replaced.

A workflow compares a folder's modification time with its outputs', but a folder's time stamp moves only when an
entry directly inside it is added, removed or renamed: a file replaced inside a class folder, or added one level
down, goes unseen. The signature covers every file below the dump instead, from its directory entries and one
``stat`` each (no image is opened), so that comparing it with the one recorded at the last run is cheap enough for
every dry run of a dump of 100 000 files (benchmarks/README.md, "Edited inputs").

What it covers, by the dump's form:

- a folder (``folder``, ``montage``, ``synthetic``): every file and folder below it, by relative path, size and
  modification time; hidden files and system files (:func:`~cytodml.data.imageio.is_ignored`) are passed over, as
  ingest passes them over, so a ``.DS_Store`` written by a file browser changes nothing;
- a file (``medmnist``'s ``.npz``): its size and modification time;
- a ``manifest``: the table's file, and each file it lists (resolved as ingest resolves them).

A file rewritten with the same bytes (``touch``, a copy over itself) gets a new modification time and so a new
signature: the comparison says "changed" without reading contents, which would cost a read of every image.
"""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from cytodml.data.imageio import is_ignored
from cytodml.data.sources import MANIFEST_READERS, manifest_root, read_manifest
from cytodml.errors import InputError

#: what a path that cannot be read records in place of its size and time (ingest names the problem)
UNREADABLE = "unreadable"


def dump_signature(source: dict) -> str:
    """``"files: <n>, sha1: <hash>"`` of the files below ``source["path"]`` (and the files a manifest lists): it
    changes when a file is added, removed, or given another size or modification time."""
    path = Path(source["path"])
    entries = _walk(path, "", set()) if path.is_dir() else [(path.name, _stamp(path))]
    if source.get("kind") == "manifest":
        entries = [*entries, *_listed(source)]
    digest = hashlib.sha1(usedforsecurity=False)
    files = 0
    for name, stamp in entries:
        digest.update(f"{name}\0{stamp}\n".encode("utf-8", "surrogateescape"))
        files += stamp != ""
    return f"files: {files}, sha1: {digest.hexdigest()}"


def _stamp(path) -> str:
    """``"<size> <mtime in ns>"`` of a file, or :data:`UNREADABLE` (absent, a dangling link, no permission)."""
    try:
        stat = os.stat(path)
    except OSError:
        return UNREADABLE
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _walk(folder: Path, prefix: str, seen: set) -> Iterator[tuple[str, str]]:
    """``(relative path, stamp)`` of every entry below ``folder``, in name order; a folder's stamp is ``""`` (its
    own time stamp moves with hidden files too, and what it holds is listed anyway).

    Links to folders are followed, each folder once (``seen``: device and inode), so a link back up the tree ends.
    """
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        yield prefix, UNREADABLE
        return
    for entry in entries:
        if is_ignored(entry.name):
            continue
        name = prefix + entry.name
        if entry.is_dir():
            stat = entry.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            yield name + "/", ""
            yield from _walk(Path(entry.path), name + "/", seen)
        else:
            yield name, _stamp(entry.path)


def _listed(source: dict) -> list[tuple[str, str]]:
    """``(path as listed, stamp)`` of each file a manifest lists; none where the table is not one ingest can read (the
    table's own stamp still covers it, and ingest names the problem)."""
    path = Path(source["path"])
    if not path.is_file() or path.suffix.lower() not in MANIFEST_READERS:
        return []
    try:
        table = read_manifest(path)
    except InputError:
        return []
    if "path" not in table:
        return []
    root = manifest_root(source)
    return [(f"listed:{name}", _stamp(root / name)) for name in table["path"].astype(str)]
