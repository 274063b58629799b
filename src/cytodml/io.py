"""Atomic writers: a failed or killed job never leaves a half-written output under its final name."""

import contextlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; a result on a shared cluster file system should get the user's usual permissions
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def write_csv(table: pd.DataFrame, path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, **kwargs)


def write_npy(array: np.ndarray, path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def write_text(text: str, path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def open_npy_for_writing(path, shape, dtype) -> tuple[np.memmap, Path]:
    """A memory-mapped ``.npy`` at a temporary name, for outputs written in chunks; finish with :func:`commit`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
    return array, tmp


def commit(array: np.memmap, tmp, path, rows: int | None = None) -> None:
    """Flush a memory-mapped array opened by :func:`open_npy_for_writing` and move it onto its final name.

    ``rows``: keep only the first ``rows`` (an array opened with spare rows, when the count was not known in advance).
    """
    array.flush()
    del array  # unmap before the file is cut to its final length
    if rows is not None:
        _truncate_npy(tmp, rows)
    os.replace(tmp, path)


def _truncate_npy(path, rows: int) -> None:
    """Cut a ``.npy`` written with spare rows down to its first ``rows``, in place.

    The header's shape is rewritten padded to its old length (the format pads the header with spaces to align the
    data; NEP 1), so the data does not move.
    """
    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(handle)
        if shape[0] == rows:
            return
        offset = handle.tell()
        prefix, length_format = (10, "<H") if version == (1, 0) else (12, "<I")
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": fortran_order,
            "shape": (rows, *shape[1:]),
        }
        text = repr(header).ljust(offset - prefix - 1) + "\n"
        handle.seek(prefix - struct.calcsize(length_format))
        handle.write(struct.pack(length_format, len(text)) + text.encode("latin1"))
        handle.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)
