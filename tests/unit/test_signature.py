"""The dump signature: every edit below a dump changes it, what ingest passes over does not, and reading it twice
without an edit gives the same string."""

import os
from pathlib import Path

import pandas as pd
import pytest

from cytodml.data.signature import dump_signature


def write(path, data=b"pixels", mtime_ns=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture()
def folder(tmp_path):
    """A folder dump: two class folders of two files each, with fixed modification times."""
    root = tmp_path / "dump"
    for index, name in enumerate(["a/1.png", "a/2.png", "b/1.png", "b/2.png"]):
        write(root / name, mtime_ns=1_700_000_000_000_000_000 + index)
    return {"kind": "folder", "path": str(root)}


def later(path):
    """Give ``path`` a modification time one second later, as a rewrite would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


EDITS = {
    "added in a class folder": lambda root: write(root / "a" / "3.png"),
    "removed from a class folder": lambda root: (root / "b" / "2.png").unlink(),
    "replaced by a bigger file": lambda root: write(root / "a" / "1.png", b"more pixels"),
    "replaced by an older file of its size": lambda root: write(root / "a" / "1.png", b"PIXELS", mtime_ns=10**18),
    "rewritten with the same bytes": lambda root: later(root / "a" / "2.png"),
    "renamed": lambda root: (root / "b" / "1.png").rename(root / "b" / "9.png"),
    "a new empty class folder": lambda root: (root / "c").mkdir(),
    "a file two levels down": lambda root: write(root / "a" / "deeper" / "1.png"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_every_edit_below_a_folder_changes_it(folder, edit):
    before = dump_signature(folder)
    assert dump_signature(folder) == before
    edit(Path(folder["path"]))
    assert dump_signature(folder) != before


def test_what_ingest_passes_over_changes_nothing(folder, tmp_path):
    before = dump_signature(folder)
    root = tmp_path / "dump"
    write(root / ".DS_Store")
    write(root / "a" / "._1.png")
    write(root / "b" / "Thumbs.db")
    write(root / ".ipynb_checkpoints" / "x.png")
    assert dump_signature(folder) == before


def test_counts_files_and_ignores_where_the_dump_lies(folder, tmp_path):
    signature = dump_signature(folder)
    assert signature.startswith("files: 4, sha1: ")
    (tmp_path / "dump").rename(tmp_path / "moved")
    assert dump_signature({**folder, "path": str(tmp_path / "moved")}) == signature


def test_a_link_back_up_the_tree_ends(folder, tmp_path):
    (tmp_path / "dump" / "a" / "loop").symlink_to(tmp_path / "dump")
    assert dump_signature(folder).startswith("files: ")


def test_medmnist_file(tmp_path):
    source = {"kind": "medmnist", "path": str(write(tmp_path / "blood.npz", b"archive"))}
    before = dump_signature(source)
    assert before.startswith("files: 1, ")
    later(tmp_path / "blood.npz")
    assert dump_signature(source) != before


def test_a_missing_dump_has_a_signature_of_its_own(tmp_path, folder):
    missing = dump_signature({"kind": "folder", "path": str(tmp_path / "nowhere")})
    assert missing != dump_signature(folder)


@pytest.fixture()
def manifest(tmp_path):
    """A manifest listing two files below ``images/``, which is also its ``root``."""
    for name in ("x.png", "y.png"):
        write(tmp_path / "images" / name, mtime_ns=1_700_000_000_000_000_000)
    table = tmp_path / "manifest.csv"
    pd.DataFrame({"path": ["x.png", "y.png"], "label": ["a", "b"]}).to_csv(table, index=False)
    return {"kind": "manifest", "path": str(table), "root": str(tmp_path / "images")}


def test_manifest_covers_its_table_and_the_files_it_lists(manifest, tmp_path):
    before = dump_signature(manifest)
    assert before.startswith("files: 3, ")  # the table and its two files
    write(tmp_path / "images" / "y.png", b"other")
    after_file = dump_signature(manifest)
    assert after_file != before
    pd.DataFrame({"path": ["x.png"], "label": ["a"]}).to_csv(tmp_path / "manifest.csv", index=False)
    assert dump_signature(manifest) != after_file


def test_manifest_ignores_files_it_does_not_list(manifest, tmp_path):
    before = dump_signature(manifest)
    write(tmp_path / "images" / "unlisted.png")
    assert dump_signature(manifest) == before


def test_manifest_with_a_listed_file_missing_or_an_unreadable_table(manifest, tmp_path):
    before = dump_signature(manifest)
    (tmp_path / "images" / "x.png").unlink()
    missing = dump_signature(manifest)
    assert missing != before
    write(tmp_path / "manifest.csv", b'"unclosed')  # ingest names the broken table; the signature still differs
    assert dump_signature(manifest) not in (before, missing)
