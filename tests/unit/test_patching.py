"""Patch: every mode on small synthetic frames, the montage drops, lossless output, QC flags, and failure hygiene."""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cytodml.data.patching import COUNT_COLUMNS, PATCH_COLUMNS, content_hash, foreground, make_patches
from cytodml.data.qc import class_montage
from cytodml.data.sources import ingest
from cytodml.errors import InputError

BACKGROUND, NOISE = 700.0, 5.0


def frame(height, width, disks=(), seed=0):
    """A uint16 brightfield-like frame: noisy flat background and bright disks ``(y, x, radius)``."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(BACKGROUND, NOISE, (height, width))
    yy, xx = np.mgrid[:height, :width]
    for y, x, radius in disks:
        pixels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] += 400
    return np.round(pixels).astype(np.uint16)


def one_object_raw(root, *images):
    """The raw table of a one-channel dump at ``root`` holding ``images``, one object each, in class ``cells``."""
    (root / "cells").mkdir(parents=True)
    for index, pixels in enumerate(images):
        tifffile.imwrite(root / "cells" / f"{index:03d}_Ch1.tif", pixels)
    return ingest({"kind": "synthetic", "path": str(root)}, ["brightfield"])


def centroid(mask):
    return np.argwhere(mask).mean(axis=0)


def test_object_mode_centres_the_object_and_pads_with_background(tmp_path):
    raw = one_object_raw(tmp_path / "dump", frame(60, 80, [(12, 66, 6)]))
    table, counts = make_patches(raw, {"mode": "object", "size": 32}, tmp_path / "p.npy")
    patch = np.load(tmp_path / "p.npy")[0, 0]
    assert patch.dtype == np.uint16 and patch.shape == (32, 32)
    assert np.allclose(centroid(patch > BACKGROUND + 200), (15.5, 15.5), atol=1.0)
    assert abs(np.median(patch[:2]) - BACKGROUND) <= 2  # the rows above the frame are the background level
    assert not table[["qc_empty", "qc_border", "qc_multiple", "qc_downscaled"]].to_numpy().any()
    assert list(table.columns) == PATCH_COLUMNS and list(counts.columns) == COUNT_COLUMNS
    make_patches(raw, {"mode": "object", "size": 32, "background": 650}, tmp_path / "fixed.npy")
    assert (np.load(tmp_path / "fixed.npy")[0, 0, :2] == 650).all()  # a given background level pads


@pytest.mark.parametrize(
    "disks, flag",
    [([], "qc_empty"), ([(0, 40, 6)], "qc_border"), ([(20, 20, 6), (40, 60, 5)], "qc_multiple")],
)
def test_object_mode_flags(tmp_path, disks, flag):
    raw = one_object_raw(tmp_path / "dump", frame(60, 80, disks, seed=1))
    table, counts = make_patches(raw, {"mode": "object", "size": 32}, tmp_path / "p.npy")
    flags = table.iloc[0][["qc_empty", "qc_border", "qc_multiple", "qc_downscaled"]]
    assert flags[flags].index.tolist() == [flag]
    assert counts[flag].iloc[0] == 1


def test_large_objects_shrink_or_are_cut(tmp_path):
    raw = one_object_raw(tmp_path / "dump", frame(100, 100, [(50, 50, 30)]))
    table, _ = make_patches(raw, {"mode": "object", "size": 32}, tmp_path / "shrunk.npy")
    shrunk = np.load(tmp_path / "shrunk.npy")[0, 0]
    assert table["qc_downscaled"].iloc[0]
    bright = np.argwhere(shrunk > BACKGROUND + 200)
    extent = bright.max(axis=0) - bright.min(axis=0) + 1
    assert (extent >= 28).all() and (shrunk[[0, 0, -1, -1], [0, -1, 0, -1]] < BACKGROUND + 100).all()  # disk inscribed
    table, _ = make_patches(raw, {"mode": "object", "size": 32, "downscale": False}, tmp_path / "cut.npy")
    cut = np.load(tmp_path / "cut.npy")[0, 0]
    assert not table["qc_downscaled"].iloc[0] and (cut > BACKGROUND + 200).all()  # a window inside the disk
    assert np.array_equal(cut, frame(100, 100, [(50, 50, 30)])[34:66, 34:66])  # lossless: source pixels


def test_resize_mode_is_lossless_at_the_source_size_and_keeps_dtype(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (24, 30, 3)).astype(np.uint8)
    (tmp_path / "dump" / "a").mkdir(parents=True)
    Image.fromarray(rgb).save(tmp_path / "dump" / "a" / "x.png")
    Image.fromarray(np.full((50, 40, 3), 77, np.uint8)).save(tmp_path / "dump" / "a" / "y.png")
    raw = ingest({"kind": "folder", "path": str(tmp_path / "dump")}, ["r", "g", "b"])
    make_patches(raw, {"mode": "resize", "size": 24}, tmp_path / "p.npy")
    patches = np.load(tmp_path / "p.npy")
    assert patches.shape == (2, 3, 24, 24) and patches.dtype == np.uint8
    assert np.array_equal(patches[0], rgb[:, 3:27].transpose(2, 0, 1))  # centre crop, no resampling
    assert (patches[1] == 77).all()  # a flat image stays flat through the filter

    raw16 = one_object_raw(tmp_path / "dump16", np.full((30, 36), 40000, np.uint16))
    make_patches(raw16, {"mode": "resize", "size": 12}, tmp_path / "p16.npy")
    assert np.load(tmp_path / "p16.npy").dtype == np.uint16 and (np.load(tmp_path / "p16.npy") == 40000).all()


def write_montage(folder, tiles_per_channel, rows):
    """Save one montage per channel, tiles placed column by column in a grid of ``rows`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for token, tiles in tiles_per_channel.items():
        size = tiles[0].shape[0]
        cols = len(tiles) // rows
        montage = np.zeros((rows * size, cols * size), np.uint16)
        for index, tile in enumerate(tiles):
            row, col = index % rows, index // rows
            montage[row * size : (row + 1) * size, col * size : (col + 1) * size] = tile
        tifffile.imwrite(folder / f"{token}_CP0001.tif", montage)


def test_tiles_mode_drops_filler_and_repeated_tiles(tmp_path):
    rng = np.random.default_rng(3)
    cells = {token: [rng.integers(100, 900, (10, 10)).astype(np.uint16) for _ in range(3)] for token in ("Ch3", "Ch6")}
    filler = np.tile(rng.integers(100, 900, (1, 10)).astype(np.uint16), (10, 1))
    # grid places: cell 0, cell 1, cell 0 again (a repeat), cell 2, then two filler places
    tiles = {token: [c[0], c[1], c[0], c[2], filler, filler] for token, c in cells.items()}
    write_montage(tmp_path / "dump" / "G1", tiles, rows=3)
    source = {
        "kind": "montage",
        "path": str(tmp_path / "dump"),
        "tile_size": 10,
        "channel_tokens": {"bf": "Ch3", "df": "Ch6"},
    }
    raw = ingest(source, ["bf", "df"])
    for workers in (1, 2):
        out = tmp_path / f"w{workers}" / "patches.npy"
        table, counts = make_patches(raw, {"mode": "tiles", "size": 10, "tile_size": 10}, out, workers=workers)
        patches = np.load(out)
        assert patches.shape == (3, 2, 10, 10)
        assert out.stat().st_size == 128 + patches.nbytes  # the spare rows reserved for drops are cut off
        for index, cell in enumerate([0, 1, 2]):
            assert np.array_equal(patches[index], np.stack([cells["Ch3"][cell], cells["Ch6"][cell]]))
        assert table["object_id"].tolist() == ["G1/CP0001/0", "G1/CP0001/1", "G1/CP0001/3"]
        assert counts.iloc[0][["objects", "dropped_filler", "dropped_duplicate", "patches"]].tolist() == [6, 2, 1, 3]
        assert table["content_hash"].iloc[0] == content_hash(np.stack([cells["Ch3"][0], cells["Ch6"][0]], axis=2))


def test_grid_mode_keeps_tiles_with_foreground(tmp_path):
    image = frame(64, 96, seed=2)
    image[:32, 32:64] += 500  # one tile of foreground among six
    raw = one_object_raw(tmp_path / "dump", image)
    table, counts = make_patches(raw, {"mode": "grid", "size": 32}, tmp_path / "p.npy")
    patches = np.load(tmp_path / "p.npy")
    assert patches.shape == (1, 1, 32, 32) and np.array_equal(patches[0, 0], image[:32, 32:64])
    assert table["object_id"].tolist() == ["cells/000/1"] and table["group"].tolist() == ["cells/000"]
    assert counts.iloc[0][["dropped_background", "patches"]].tolist() == [5, 1]


def test_workers_and_labels_and_duplicate_hashes(tmp_path):
    rng = np.random.default_rng(4)
    for class_name in ("neutrophil", "basophil", "ig"):
        (tmp_path / "dump" / class_name).mkdir(parents=True)
        for index in range(5):
            pixels = rng.integers(0, 255, (rng.integers(30, 50), rng.integers(30, 50), 3)).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "dump" / class_name / f"{index}.png")
    same = tmp_path / "dump" / "ig" / "0.png"
    (tmp_path / "dump" / "neutrophil" / "copy.png").write_bytes(same.read_bytes())
    raw = ingest({"kind": "folder", "path": str(tmp_path / "dump")}, ["r", "g", "b"])
    one, _ = make_patches(raw, {"mode": "resize", "size": 16}, tmp_path / "one.npy", workers=1)
    two, counts = make_patches(raw, {"mode": "resize", "size": 16}, tmp_path / "two.npy", workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert dict(zip(two["class_name"], two["label"])) == {"basophil": 0, "ig": 1, "neutrophil": 2}
    hashes = two.set_index("object_id")["content_hash"]
    assert hashes["neutrophil/copy.png"] == hashes["ig/0.png"] and hashes.nunique() == 15  # kept: the split decides
    assert counts["patches"].sum() == 16 and counts["dropped_duplicate"].sum() == 0


def test_array_rows_resize_identity(tmp_path):
    rng = np.random.default_rng(5)
    images = {
        f"{s}_images": rng.integers(0, 255, (n, 8, 8, 3)).astype(np.uint8)
        for s, n in [("train", 4), ("val", 2), ("test", 3)]
    }
    labels = {f"{s}_labels": np.zeros((n, 1), np.uint8) for s, n in [("train", 4), ("val", 2), ("test", 3)]}
    np.savez_compressed(tmp_path / "m.npz", **images, **labels)
    raw = ingest({"kind": "medmnist", "path": str(tmp_path / "m.npz"), "class_names": ["x", "y"]}, ["r", "g", "b"])
    make_patches(raw, {"mode": "resize", "size": 8}, tmp_path / "p.npy", workers=2)
    expected = np.concatenate([images[f"{s}_images"] for s in ("train", "val", "test")]).transpose(0, 3, 1, 2)
    assert np.array_equal(np.load(tmp_path / "p.npy"), expected)


def truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_corrupt_image_stops_patching_and_leaves_no_output(tmp_path, suffix, workers):
    rng = np.random.default_rng(6)
    (tmp_path / "dump" / "a").mkdir(parents=True)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(
            tmp_path / "dump" / "a" / f"{index}{suffix}"
        )
    truncated(tmp_path / "dump" / "a" / f"4{suffix}")
    raw = ingest({"kind": "folder", "path": str(tmp_path / "dump")}, ["r", "g", "b"])  # the header still reads
    out = tmp_path / "out" / "patches.npy"
    with pytest.raises(InputError, match=rf"4\{suffix}: cannot read image"):
        make_patches(raw, {"mode": "resize", "size": 32}, out, workers=workers)
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_patch_blocks_name_the_key(tmp_path):
    raw = one_object_raw(tmp_path / "dump", frame(20, 20))
    for patch, key in [
        ({"mode": "zoom", "size": 8}, "patch.mode"),
        ({"mode": "object", "size": 0}, "patch.size"),
        ({"mode": "object", "size": 8, "colour": 1}, "patch.colour"),
        ({"mode": "tiles", "size": 8}, "patch.mode: 'tiles' needs"),
    ]:
        with pytest.raises(InputError, match=key):
            make_patches(raw, patch, tmp_path / "p.npy")
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_class_montage(tmp_path, suffix):
    images = np.random.default_rng(7).integers(0, 4000, (12, 2, 16, 16)).astype(np.uint16)
    names = ["a"] * 9 + ["b"] * 3
    class_montage(images, names, tmp_path / f"m{suffix}", per_class=4, seed=1)
    head = (tmp_path / f"m{suffix}").read_bytes()[:4]
    assert head == (b"\x89PNG" if suffix == ".png" else b"%PDF")
    with pytest.raises(InputError, match="figure format"):
        class_montage(images, names, tmp_path / "m.svg")


def test_foreground_of_a_noiseless_image_whose_object_touches_the_border():
    """A rendered image without noise (a flat 647 background) and an object cut by the frame: the smoothed border is
    exact but for the object's rim, so its MAD is 0; the plane must still come from the background pixels and the
    object be found (it once came out NaN, and the mask empty)."""
    image = np.full((38, 35, 1), 647.0, np.float32)
    image[0:9, 10:20] += 300  # cut by the top edge
    image[15:25, 12:22] += 400
    mask, level = foreground(image, "auto", sigmas=4.0)
    assert mask[15:25, 12:22].all() and mask[0:9, 10:20].all()
    assert np.allclose(level, 647.0, atol=1.0)
