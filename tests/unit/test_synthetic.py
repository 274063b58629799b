"""The synthetic imaging-flow-cytometry renderer: dump layout, determinism, sizes and the difficulty knobs."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from cytodml.config import fill
from cytodml.data import synthetic
from cytodml.data.synthetic import render_dump
from cytodml.errors import InputError

CLEAN = {"noise": 0.0, "blur": 0.0, "size_overlap": 0.0}


def spec(classes, **difficulty):
    return {
        "kind": "synthetic",
        "path": "unused",
        "pixel_size_um": 0.33,
        "classes": classes,
        "difficulty": difficulty,
    }


def object_mask(image):
    """The particle: pixels darker than 3% under the background plane fitted to the frame border, holes filled."""
    image = image.astype(float)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    border = np.ones(image.shape, bool)
    border[2:-2, 2:-2] = False
    design = np.c_[np.ones(border.sum()), yy[border], xx[border]]
    coef = np.linalg.lstsq(design, image[border], rcond=None)[0]
    contrast = image / (coef[0] + coef[1] * yy + coef[2] * xx) - 1
    mask = ndimage.binary_fill_holes(contrast < -0.03)
    labels, n = ndimage.label(mask)
    return labels == 1 + np.argmax(ndimage.sum(mask, labels, range(1, n + 1)))


def diameters_um(manifest, class_name):
    paths = manifest.loc[manifest["class_name"] == class_name, "path"]
    return np.array([2 * np.sqrt(object_mask(tifffile.imread(p)).sum() / np.pi) * 0.33 for p in paths])


def file_bytes(manifest):
    return {row.object_id: Path(row.path).read_bytes() for row in manifest.itertuples()}


def test_known_classes_cover_the_default_config():
    assert set(synthetic.known_classes()) >= {"cryptosporidium", "giardia", "bead", "debris", "pollen"}


def test_dump_layout_naming_and_counts(tmp_path):
    counts = {"cryptosporidium": 3, "bead": 4, "debris": 5}
    manifest = render_dump(tmp_path, spec(counts), seed=1)

    assert list(manifest.columns) == ["object_id", "class_name", "path", "height", "width"]
    assert manifest["class_name"].value_counts().to_dict() == counts
    assert manifest["object_id"].is_unique
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted(f"{r.class_name}/{r.object_id}_Ch1.tif" for r in manifest.itertuples())
    assert all(re.fullmatch(r"\d{5}_Ch1\.tif", name.split("/")[1]) for name in on_disk)
    # rows come by object number, and acquisition order interleaves the classes rather than numbering them in blocks
    assert manifest["object_id"].is_monotonic_increasing
    names = manifest["class_name"]
    assert (names != names.shift()).sum() > len(counts)


def test_images_are_uint16_12_bit_with_varying_crops(tmp_path):
    manifest = render_dump(tmp_path, spec({"cryptosporidium": 8, "debris": 12}), seed=2)
    shapes = set()
    for row in manifest.itertuples():
        image = tifffile.imread(row.path)
        assert image.dtype == np.uint16 and image.ndim == 2
        assert image.shape == (row.height, row.width)
        assert image.max() <= 4095
        assert 450 < np.median(image) < 1000
        shapes.add(image.shape)
    assert len(shapes) > 10
    assert any(h != w for h, w in shapes)
    assert min(min(s) for s in shapes) >= 32


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    classes = {"giardia": 3, "bead": 3, "pollen": 2}
    first = file_bytes(render_dump(tmp_path / "a", spec(classes), seed=7))
    again = file_bytes(render_dump(tmp_path / "b", spec(classes), seed=7))
    other = file_bytes(render_dump(tmp_path / "c", spec(classes), seed=8))
    assert first == again
    assert set(first.values()).isdisjoint(other.values())


def test_changing_one_class_count_keeps_every_other_object(tmp_path):
    before = render_dump(tmp_path / "a", spec({"cryptosporidium": 2, "bead": 5}), seed=3)
    after = render_dump(tmp_path / "b", spec({"cryptosporidium": 6, "bead": 5}), seed=3)

    def bead_pixels(manifest):
        return sorted(Path(p).read_bytes() for p in manifest.loc[manifest["class_name"] == "bead", "path"])

    assert bead_pixels(before) == bead_pixels(after)


def test_rerender_removes_files_of_an_earlier_spec(tmp_path):
    render_dump(tmp_path, spec({"cryptosporidium": 5, "pollen": 2}), seed=4)
    manifest = render_dump(tmp_path, spec({"cryptosporidium": 2}), seed=4)
    assert not (tmp_path / "pollen").exists()
    assert sorted(p.name for p in (tmp_path / "cryptosporidium").iterdir()) == sorted(
        f"{i}_Ch1.tif" for i in manifest["object_id"]
    )


def test_a_failed_write_leaves_no_file_under_its_final_name(tmp_path, monkeypatch):
    def crash_midway(path, data, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\x00truncated")
        raise OSError("disk full")

    monkeypatch.setattr(synthetic.tifffile, "imwrite", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        render_dump(tmp_path, spec({"bead": 2}), seed=5)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("source", "key"),
    [
        (spec({"cryptosporidium": 2, "amoeba": 3}), "classes.amoeba"),
        (spec({"bead": -1}), "classes.bead"),
        (spec({"bead": 2}, noise=1.5), "difficulty.noise"),
        (spec({"bead": 2}, sharpness=0.5), "difficulty.sharpness"),
        ({**spec({"bead": 2}), "pixel_size_um": 0}, "pixel_size_um"),
    ],
)
def test_bad_spec_names_the_config_key(tmp_path, source, key):
    with pytest.raises(InputError, match=re.escape(key)):
        render_dump(tmp_path, source, seed=0)
    assert not any(tmp_path.rglob("*.tif"))


def test_missing_difficulty_keys_take_the_defaults(tmp_path):
    partial = render_dump(tmp_path / "a", spec({"bead": 3}, blur=0.6), seed=6)
    documented = fill("source", {"kind": "synthetic", "classes": {"bead": 3}})["difficulty"]
    assert documented == {"noise": 0.6, "blur": 0.6, "size_overlap": 0.5}
    full = render_dump(tmp_path / "b", spec({"bead": 3}, **documented), seed=6)
    assert file_bytes(partial) == file_bytes(full)


def test_noise_free_sizes_match_the_published_ranges(tmp_path):
    manifest = render_dump(tmp_path, spec({"cryptosporidium": 30, "pollen": 10}, **CLEAN), seed=9)
    crypto = diameters_um(manifest, "cryptosporidium")
    assert 4.0 <= np.median(crypto) <= 6.0
    # doublets and particles cut by the border fall outside; the rim's halo blurs the thresholded edge by ~0.5 um
    assert np.mean((crypto > 3.5) & (crypto < 6.5)) >= 0.8
    assert 15.0 <= np.median(diameters_um(manifest, "pollen")) <= 30.0


def test_size_overlap_one_draws_every_class_from_one_range(tmp_path):
    classes = {"cryptosporidium": 20, "pollen": 20}
    published = render_dump(tmp_path / "a", spec(classes, **CLEAN), seed=10)
    shared = render_dump(tmp_path / "b", spec(classes, **{**CLEAN, "size_overlap": 1.0}), seed=10)

    def crossing(manifest):
        """Fractions of oocysts above 8 um and of pollen grains below 12 um: none as published."""
        return np.mean(diameters_um(manifest, "cryptosporidium") > 8), np.mean(diameters_um(manifest, "pollen") < 12)

    assert max(crossing(published)) < 0.1
    # log-uniform over 3-20 um puts about half above 8 um and three quarters below 12 um
    large_oocysts, small_pollen = crossing(shared)
    assert large_oocysts > 0.25 and small_pollen > 0.4


def test_noise_raises_the_background_spread(tmp_path):
    def background_std(noise):
        manifest = render_dump(tmp_path / str(noise), spec({"bead": 6}, noise=noise), seed=11)
        # differences of neighbours in a corner cancel the illumination gradient; sqrt(2) for the difference
        corners = [tifffile.imread(p)[:6, :6].astype(float) for p in manifest["path"]]
        return np.median([np.diff(corner).std() / np.sqrt(2) for corner in corners])

    assert background_std(0.0) < 1.0
    assert background_std(1.0) > 20.0


def test_blur_softens_the_edges(tmp_path):
    def steepest_edge(blur):
        manifest = render_dump(tmp_path / str(blur), spec({"bead": 6}, noise=0.0, blur=blur), seed=12)
        return np.median([np.abs(np.gradient(tifffile.imread(p).astype(float))).max() for p in manifest["path"]])

    assert steepest_edge(1.0) < 0.7 * steepest_edge(0.0)
