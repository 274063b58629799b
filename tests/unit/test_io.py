"""Atomic writers: nothing under the final name until the write succeeded, and the usual file permissions."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from cytodml.io import atomic_path, commit, open_npy_for_writing, write_npy, write_parquet


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_npy(np.zeros(3), tmp_path / "a.npy")
    finally:
        os.umask(old)
    for name in ("t.parquet", "a.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_memmap_output_appears_only_on_commit(tmp_path):
    target = tmp_path / "patches.npy"
    array, tmp = open_npy_for_writing(target, (4, 2), np.uint16)
    array[:] = 7
    assert not target.exists()
    commit(array, tmp, target)
    np.testing.assert_array_equal(np.load(target), np.full((4, 2), 7, np.uint16))


def test_memmap_output_with_spare_rows_is_cut_on_commit(tmp_path):
    target = tmp_path / "patches.npy"
    array, tmp = open_npy_for_writing(target, (10, 3), np.uint8)
    array[:4] = np.arange(12, dtype=np.uint8).reshape(4, 3)
    commit(array, tmp, target, rows=4)
    np.testing.assert_array_equal(np.load(target), np.arange(12, dtype=np.uint8).reshape(4, 3))
    assert target.stat().st_size < 128 + 10 * 3  # the spare rows are gone from the file, not only from the header
