"""Atomic writers: a failed or killed job never leaves a half-written output under its final name."""

import contextlib
import os
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


def commit(array: np.memmap, tmp, path) -> None:
    """Flush a memory-mapped array opened by :func:`open_npy_for_writing` and move it onto its final name."""
    array.flush()
    del array
    os.replace(tmp, path)
