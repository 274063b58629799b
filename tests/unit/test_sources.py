"""Ingest: the raw table of every source kind, built from names and headers, and the bad inputs it refuses."""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cytodml.data.imageio import decode, npz_members, read_header
from cytodml.data.sources import RAW_COLUMNS, ingest, list_classes
from cytodml.errors import InputError


def grey(height=20, width=24, dtype=np.uint16, seed=0):
    top = 4000 if dtype == np.uint16 else 250
    return np.random.default_rng(seed).integers(0, top, (height, width)).astype(dtype)


def write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, pixels)
    else:
        Image.fromarray(pixels).save(path)
    return path


def test_folder_of_grey_and_rgb_images(tmp_path):
    write(tmp_path / "grey" / "b" / "x.png", grey(dtype=np.uint8))
    write(tmp_path / "grey" / "a" / "y.bmp", grey(12, 10, np.uint8))
    write(tmp_path / "grey" / "a" / "z.jpg", grey(dtype=np.uint8))
    raw = ingest({"kind": "folder", "path": str(tmp_path / "grey")}, ["brightfield"])
    assert list(raw.columns) == RAW_COLUMNS
    assert raw["object_id"].tolist() == ["a/y.bmp", "a/z.jpg", "b/x.png"]
    assert raw["class_name"].tolist() == ["a", "a", "b"]
    assert raw[["height", "width"]].values.tolist() == [[12, 10], [20, 24], [20, 24]]
    assert (raw["tile"] == -1).all() and (raw["member"] == "").all() and raw["group"].isna().all()
    assert set(raw["dtype"]) == {"uint8"}

    rgb = np.stack([grey(dtype=np.uint8, seed=s) for s in range(3)], axis=2)
    write(tmp_path / "rgb" / "cells" / "c.png", rgb)
    raw = ingest({"kind": "folder", "path": str(tmp_path / "rgb")}, ["red", "green", "blue"])
    assert raw["files"].iloc[0] == [str(tmp_path / "rgb" / "cells" / "c.png")] * 3
    with pytest.raises(InputError, match=r"channels: .*c\.png has 3 channel"):
        ingest({"kind": "folder", "path": str(tmp_path / "rgb")}, ["brightfield"])


def test_channel_tokens_group_files_into_objects(tmp_path):
    for number in ("00042", "00043"):
        for token, seed in (("Ch1", 1), ("Ch6", 6), ("Ch10", 10)):
            write(tmp_path / "cells" / f"{number}_{token}.ome.tif", grey(seed=seed))
    (tmp_path / "cells" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "cells" / "Thumbs.db").write_bytes(b"not an image")
    source = {"kind": "folder", "path": str(tmp_path), "channel_tokens": {"bf": "Ch1", "df": "Ch6", "ssc": "Ch10"}}
    raw = ingest(source, ["df", "bf"])  # Ch10 is not Ch1: its files belong to a channel the data set leaves out
    assert raw["object_id"].tolist() == ["cells/00042", "cells/00043"]
    assert [name.rsplit("/", 1)[1] for name in raw["files"].iloc[0]] == ["00042_Ch6.ome.tif", "00042_Ch1.ome.tif"]
    assert raw["dtype"].iloc[0] == "uint16"

    (tmp_path / "cells" / "00043_Ch6.ome.tif").unlink()
    with pytest.raises(InputError, match=r"object cells/00043: no file for channel 'df'"):
        ingest(source, ["df", "bf"])


def test_token_at_the_start_and_group_pattern(tmp_path):
    write(tmp_path / "g1" / "Ch3_P7_cell1.png", grey(dtype=np.uint8))
    write(tmp_path / "g1" / "Ch3_P9_cell2.png", grey(dtype=np.uint8))
    source = {
        "kind": "folder",
        "path": str(tmp_path),
        "channel_tokens": {"bf": "Ch3"},
        "group_pattern": r"(?P<group>P\d+)_",
    }
    raw = ingest(source, ["bf"])
    assert raw["object_id"].tolist() == ["g1/P7_cell1", "g1/P9_cell2"]
    assert raw["group"].tolist() == ["P7", "P9"]
    with pytest.raises(InputError, match="Ch3_P7_cell1.png: the name does not match source.group_pattern"):
        ingest({**source, "group_pattern": r"(?P<group>S\d+)"}, ["bf"])
    with pytest.raises(InputError, match="source.group_pattern: needs a named group"):
        ingest({**source, "group_pattern": r"P\d+"}, ["bf"])


def test_synthetic_dump_is_a_one_channel_folder(tmp_path):
    write(tmp_path / "giardia" / "00001_Ch1.tif", grey(30, 34))
    write(tmp_path / "bead" / "00000_Ch1.tif", grey(40, 40))
    source = {"kind": "synthetic", "path": str(tmp_path), "classes": {"giardia": 1, "bead": 1, "pollen": 0}}
    raw = ingest(source, ["brightfield"])
    assert raw["object_id"].tolist() == ["bead/00000", "giardia/00001"]
    assert list_classes(source) == ["bead", "giardia"]
    assert list_classes({"kind": "synthetic", "path": str(tmp_path)}) == ["bead", "giardia"]
    with pytest.raises(InputError, match="channels: a synthetic data set has one channel"):
        ingest(source, ["brightfield", "darkfield"])


def test_montage_lists_every_grid_place(tmp_path):
    for token in ("Ch3", "Ch6"):
        write(tmp_path / "G1" / f"{token}_CP0001.tif", grey(30, 20))
    source = {"kind": "montage", "path": str(tmp_path), "tile_size": 10, "channel_tokens": {"bf": "Ch3", "df": "Ch6"}}
    raw = ingest(source, ["bf", "df"])
    assert len(raw) == 6 and raw["tile"].tolist() == list(range(6))
    assert raw["object_id"].iloc[4] == "G1/CP0001/4"
    assert (raw["height"] == 10).all() and (raw["width"] == 10).all()
    assert [name.rsplit("/", 1)[1] for name in raw["files"].iloc[0]] == ["Ch3_CP0001.tif", "Ch6_CP0001.tif"]
    with pytest.raises(InputError, match=r"CP0001.tif: 30 x 20 is not a whole grid of source.tile_size = 7"):
        ingest({**source, "tile_size": 7}, ["bf", "df"])


def make_npz(path, counts=(5, 2, 3), classes=3, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    arrays = {}
    for subset, count in zip(("train", "val", "test"), counts):
        arrays[f"{subset}_images"] = rng.integers(0, 255, (count, *shape)).astype(np.uint8)
        arrays[f"{subset}_labels"] = (np.arange(count) % classes)[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_rows_and_official_split(tmp_path):
    make_npz(tmp_path / "m.npz")
    source = {
        "kind": "medmnist",
        "path": str(tmp_path / "m.npz"),
        "class_names": ["b", "a", "c"],
        "official_subsets": True,
    }
    raw = ingest(source, ["r", "g", "b"])
    assert raw["official_subset"].value_counts().to_dict() == {"train": 5, "test": 3, "val": 2}
    assert raw["member"].iloc[5] == "val_images" and raw["tile"].iloc[5] == 0 and raw["object_id"].iloc[5] == "val/0"
    assert raw["class_name"].iloc[:4].tolist() == ["b", "a", "c", "b"]
    assert raw["files"].iloc[0] == [str(tmp_path / "m.npz")] * 3
    assert (raw["height"] == 8).all() and (raw["dtype"] == "uint8").all()
    assert (ingest({**source, "official_subsets": False}, ["r", "g", "b"])["official_subset"] == "").all()
    assert list_classes(source) == ["a", "b", "c"]
    assert npz_members(tmp_path / "m.npz")["train_images"] == ((5, 8, 8, 3), "uint8")
    with pytest.raises(InputError, match="source.class_names: 2 names"):
        ingest({**source, "class_names": ["a", "b"]}, ["r", "g", "b"])
    with pytest.raises(InputError, match="channels: .* holds 3-channel images"):
        ingest(source, ["grey"])


def test_manifest_with_and_without_channel_rows(tmp_path):
    for name, seed in (("a1.tif", 1), ("a2.tif", 2), ("b1.tif", 3)):
        write(tmp_path / "img" / name, grey(seed=seed))
    pd.DataFrame({"path": ["img/a1.tif", "img/b1.tif"], "label": ["a", "b"], "group": ["s1", None]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    raw = ingest({"kind": "manifest", "path": str(tmp_path / "m.csv")}, ["bf"])
    assert raw["object_id"].tolist() == ["img/a1.tif", "img/b1.tif"]
    assert raw["group"].iloc[0] == "s1" and pd.isna(raw["group"].iloc[1])
    assert list_classes({"kind": "manifest", "path": str(tmp_path / "m.csv")}) == ["a", "b"]

    rows = {"path": ["a1.tif", "a2.tif"], "label": ["a", "a"], "object": ["o1", "o1"], "channel": ["df", "bf"]}
    pd.DataFrame(rows).to_csv(tmp_path / "img" / "m.tsv", sep="\t", index=False)
    raw = ingest({"kind": "manifest", "path": str(tmp_path / "img" / "m.tsv")}, ["bf", "df"])
    assert raw["object_id"].tolist() == ["o1"]
    assert [name.rsplit("/", 1)[1] for name in raw["files"].iloc[0]] == ["a2.tif", "a1.tif"]
    with pytest.raises(InputError, match="object o1: no row for channel 'ssc'"):
        ingest({"kind": "manifest", "path": str(tmp_path / "img" / "m.tsv")}, ["bf", "ssc"])

    pd.DataFrame({"path": ["missing.tif"], "label": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad.csv: row 0: file .*missing.tif not found"):
        ingest({"kind": "manifest", "path": str(tmp_path / "bad.csv")}, ["bf"])


def test_a_class_with_one_image_is_ingested(tmp_path):
    write(tmp_path / "rare" / "only.png", grey(dtype=np.uint8))
    write(tmp_path / "common" / "x.png", grey(dtype=np.uint8))
    write(tmp_path / "common" / "y.png", grey(dtype=np.uint8))
    raw = ingest({"kind": "folder", "path": str(tmp_path)}, ["bf"])
    assert raw["class_name"].value_counts().to_dict() == {"common": 2, "rare": 1}


def empty_class(root):
    (root / "empty").mkdir(parents=True)


def non_image(root):
    write(root / "a" / "x.png", grey(dtype=np.uint8))
    (root / "a" / "notes.txt").write_text("x")


def mixed_bit_depth(root):
    write(root / "a" / "x.png", grey(dtype=np.uint8))
    write(root / "b" / "y.tif", grey())


def corrupt_header(root):
    (root / "a").mkdir(parents=True)
    (root / "a" / "bad.tif").write_bytes(b"II*\x00garbage")


def float_tiff(root):
    write(root / "a" / "x.tif", grey(dtype=np.float32))


def rgba_png(root):
    write(root / "a" / "x.png", np.zeros((4, 4, 4), np.uint8))


BAD_FOLDERS = [
    (empty_class, r"empty: empty class folder"),
    (non_image, r"notes.txt: not an image"),
    (mixed_bit_depth, r"mixed bit depths in one data set: .*x.png is uint8; .*y.tif is uint16"),
    (corrupt_header, r"bad.tif: cannot read image"),
    (float_tiff, r"x.tif: 1-channel float32 image"),
    (rgba_png, r"x.png: pixel mode 'RGBA' is not"),
]


@pytest.mark.parametrize("build, message", BAD_FOLDERS, ids=[build.__name__ for build, _ in BAD_FOLDERS])
def test_bad_folders_name_the_culprit(tmp_path, build, message):
    build(tmp_path)
    with pytest.raises(InputError, match=message):
        ingest({"kind": "folder", "path": str(tmp_path)}, ["bf"])


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(InputError, match=r"source.path: .*nowhere does not exist"):
        ingest({"kind": "folder", "path": str(tmp_path / "nowhere")}, ["bf"])
    with pytest.raises(InputError, match=r"source.kind: unknown kind 'zarr'"):
        ingest({"kind": "zarr", "path": str(tmp_path)}, ["bf"])


def test_an_unreadable_channel_file_is_named(tmp_path):
    write(tmp_path / "cells" / "00001_Ch1.tif", grey())
    (tmp_path / "cells" / "00001_Ch6.tif").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=r"00001_Ch6.tif: cannot read image"):
        ingest({"kind": "folder", "path": str(tmp_path), "channel_tokens": {"bf": "Ch1", "df": "Ch6"}}, ["bf", "df"])


def test_list_classes_is_none_until_the_dump_exists(tmp_path):
    assert list_classes({"kind": "folder", "path": str(tmp_path / "later")}) is None
    assert list_classes({"kind": "manifest", "path": str(tmp_path / "later.csv")}) is None
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.md").write_text("x")
    assert list_classes({"kind": "folder", "path": str(tmp_path)}) == ["a", "b"]


def test_image_io_keeps_dtype_and_layout(tmp_path):
    planar = np.stack([grey(seed=s) for s in range(3)])
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert read_header(tmp_path / "planar.tif") == (20, 24, 3, "uint16")
    assert np.array_equal(decode(tmp_path / "planar.tif").pixels, planar.transpose(1, 2, 0))
    big_endian = grey().astype(">u2")
    tifffile.imwrite(tmp_path / "be.tif", big_endian, byteorder=">")
    pixels = decode(tmp_path / "be.tif").pixels
    assert pixels.dtype == np.dtype("=u2") and np.array_equal(pixels[:, :, 0], big_endian)
    write(tmp_path / "g16.png", grey())
    assert np.array_equal(decode(tmp_path / "g16.png").pixels[:, :, 0], grey())
    for compression in ("packbits", "tiff_lzw"):  # decoded by Pillow's C codecs
        Image.fromarray(grey()).save(tmp_path / f"{compression}.tif", compression=compression)
        assert read_header(tmp_path / f"{compression}.tif") == (20, 24, 1, "uint16")
        assert np.array_equal(decode(tmp_path / f"{compression}.tif").pixels[:, :, 0], grey())
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey(), grey()]), metadata=None)
    with pytest.raises(InputError, match="stack.tif: 2 pages"):
        read_header(tmp_path / "stack.tif")


def test_a_flat_folder_is_an_unlabelled_sample(tmp_path):
    for index in range(3):
        write(tmp_path / f"{index:05d}_Ch1.tif", grey(seed=index))
    raw = ingest({"kind": "folder", "path": str(tmp_path), "channel_tokens": {"brightfield": "Ch1"}}, ["brightfield"])
    assert raw["class_name"].tolist() == ["", "", ""]
    assert raw["object_id"].tolist() == ["00000", "00001", "00002"]


def test_loose_files_beside_class_folders_are_refused(tmp_path):
    write(tmp_path / "a" / "x.png", grey(dtype=np.uint8))
    write(tmp_path / "stray.png", grey(dtype=np.uint8))
    with pytest.raises(InputError, match="stray.png: a file beside the class folders"):
        ingest({"kind": "folder", "path": str(tmp_path)}, ["grey"])


def test_documents_beside_the_data_are_passed_over(tmp_path):
    write(tmp_path / "a" / "x.png", grey(dtype=np.uint8))
    (tmp_path / "README.md").write_text("how the images were taken")
    assert ingest({"kind": "folder", "path": str(tmp_path)}, ["grey"])["class_name"].tolist() == ["a"]
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="notes.txt: not an image file"):
        ingest({"kind": "folder", "path": str(tmp_path)}, ["grey"])


def test_a_jpeg_bound_for_a_small_patch_decodes_at_reduced_scale(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (360, 363, 3)).astype(np.uint8)
    path = write(tmp_path / "cell.jpg", rgb)
    full, reduced = decode(path).pixels, decode(path, at_least=64).pixels
    assert full.shape == (360, 363, 3)
    assert reduced.shape == (90, 91, 3)  # 1/4 scale: the smallest DCT scaling that keeps both sides >= 64
    np.testing.assert_array_equal(decode(path, at_least=64).pixels, reduced)  # deterministic, so hashes are too
