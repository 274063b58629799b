"""Figures: each draws from a small results fixture, writes a non-empty PNG and PDF, and labels its axes."""

import itertools
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_hex
from torch import nn

from cytodml.data import qc
from cytodml.errors import InputError
from cytodml.evaluate import explain, latent_map
from cytodml.learn.embed import MODEL_FORMAT, MODEL_VERSION, embed
from cytodml.learn.losses import build_loss
from cytodml.learn.models import EmbeddingNet, build_model
from cytodml.report import figures
from cytodml.report.style import KNOWN_COLOR, NOVEL_COLOR, OKABE_ITO, UNKNOWN_COLOR

KNOWN = ["bead", "crypto", "debris"]
LOSSES = ["softmax", "triplet"]
CLASSIFIERS = ["centroid", "knn"]
SIZE = 16


def written(path) -> bytes:
    data = path.read_bytes()
    assert len(data) > 1000, f"{path} is nearly empty"
    assert data[:4] in (b"\x89PNG", b"%PDF"), path
    return data


@pytest.fixture
def paths(tmp_path):
    """Where a figure goes: a PNG (the PDF is the same drawing through another backend, checked once below)."""
    return [tmp_path / "figure.png"]


def check_files(paths):
    for path in paths:
        written(path)


def embedding_table(dim: int, seed: int = 0, per_class: int = 20) -> pd.DataFrame:
    """Known classes around separate centres in train and test, and an unseen class in the middle (subset unknown)."""
    rng = np.random.default_rng(seed)
    rows = []
    angles = 2 * np.pi * np.arange(len(KNOWN)) / len(KNOWN)
    centres = {name: 4 * np.r_[np.cos(a), np.sin(a), np.zeros(dim - 2)] for name, a in zip(KNOWN, angles)}
    for subset in ("train", "test"):
        for name in KNOWN:
            for _ in range(per_class):
                rows.append((subset, name, centres[name] + rng.normal(0, 0.5, dim)))
    for _ in range(8):
        rows.append(("unknown", "pollen", rng.normal(0, 0.5, dim)))
    table = pd.DataFrame(rows, columns=["subset", "class_name", "embedding"])
    table.insert(0, "index", np.arange(len(table)))
    table["label"] = table["class_name"].map({"bead": 0, "crypto": 1, "debris": 2, "pollen": 3})
    table["embedding"] = [list(v) for v in table["embedding"]]
    return table


def polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.axison]


def legend_texts(figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


# -------------------------------------------------------------------------------------------- points and projections


def test_project_2d_keeps_a_2d_latent_space_and_names_the_method():
    X = np.random.default_rng(0).normal(size=(40, 2))
    xy, name = figures.project_2d(X)
    assert name == "latent" and np.array_equal(xy, X)
    xy, name = figures.project_2d(np.random.default_rng(0).normal(size=(40, 6)), method="tsne")
    assert name == "t-SNE" and xy.shape == (40, 2)
    with pytest.raises(InputError, match="projection method"):
        figures.project_2d(X, method="pca")
    with pytest.raises(InputError, match="at least 5 points"):
        figures.project_2d(np.zeros((3, 6)))


# ------------------------------------------------------------------------------------------------------ latent space


def map_table(dim: int, seed: int = 0) -> pd.DataFrame:
    """An embedding table on the latent map fitted to it (:mod:`cytodml.evaluate.latent_map`)."""
    table = embedding_table(dim, seed)
    return latent_map.map_table(table, latent_map.fit_map(table, seed=seed))


@pytest.mark.parametrize("dim, method", [(2, "latent"), (5, "t-SNE")])
def test_latent_space_has_a_panel_per_loss_named_by_method(tmp_path, dim, method):
    paths = [tmp_path / "latent.png", tmp_path / "latent.pdf"]
    tables = {loss: map_table(dim, seed) for seed, loss in enumerate(LOSSES)}
    figure = figures.latent_space(tables, paths)
    check_files(paths)
    axes = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in axes] == LOSSES
    assert {ax.get_xlabel() for ax in axes} == {f"{method} 1"} and {ax.get_ylabel() for ax in axes} == {f"{method} 2"}
    assert legend_texts(figure) == [*KNOWN, "pollen (unseen)"]
    # test and unknown rows only: 3 x 20 + 8 points per panel
    assert sum(len(c.get_offsets()) for c in axes[0].collections) == 68


def test_latent_space_draws_unseen_classes_grey(paths):
    figure = figures.latent_space({"triplet": map_table(2)}, paths)
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in figure.axes[0].collections}
    grey = tuple(np.round(np.array([int(UNKNOWN_COLOR[i : i + 2], 16) for i in (1, 3, 5)]) / 255, 3))
    assert grey in colours


def test_latent_space_refuses_a_table_without_map_positions(paths):
    with pytest.raises(InputError, match="latent map of loss 'softmax'.*'x'"):
        figures.latent_space({"softmax": map_table(2).drop(columns="x")}, paths)
    with pytest.raises(InputError, match="figure format"):
        figures.latent_space({"softmax": map_table(2)}, "latent.svg")


def test_block_tsne_has_a_row_per_network_and_a_column_per_block(paths):
    rng = np.random.default_rng(0)
    names = np.array(["bead"] * 15 + ["crypto"] * 15 + ["pollen"] * 6)
    features = {
        loss: {"block1": rng.normal(size=(36, 8)), "block2": rng.normal(size=(36, 16))} for loss in ("softmax", "npair")
    }
    figure = figures.block_tsne(features, names, paths, unseen=["pollen"])
    check_files(paths)
    assert titles(figure) == ["softmax: block1 (8)", "softmax: block2 (16)", "npair: block1 (8)", "npair: block2 (16)"]
    assert {ax.get_xlabel() for ax in figure.axes} == {"t-SNE 1"}
    assert "pollen (unseen)" in legend_texts(figure)
    with pytest.raises(InputError, match="35 class names"):
        figures.block_tsne(features, names[:35], paths)


def test_image_tsne_places_one_framed_thumbnail_per_occupied_cell(paths):
    table = embedding_table(2)
    # two channels, shown side by side: each thumbnail is twice as wide as high
    images = np.random.default_rng(0).integers(0, 255, (len(table), 2, SIZE, SIZE), dtype=np.uint8)
    X = np.stack(table["embedding"].to_numpy())
    figure = figures.image_tsne(images, X, table["class_name"], paths, unseen=["pollen"], cells=6, method="latent")
    check_files(paths)
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("latent 1", "latent 2")
    assert 3 <= len(ax.images) <= 36 and len(ax.patches) == len(ax.images)
    assert ax.get_title().startswith(f"{len(ax.images)} of {len(table)} images")
    # every class is framed in its own colour
    frames = {tuple(p.get_edgecolor()[:3]) for p in ax.patches}
    assert len(frames) == 4
    left, right, bottom, top = ax.images[0].get_extent()
    assert (right - left) / (top - bottom) == pytest.approx(2 * np.ptp(ax.get_xlim()) / np.ptp(ax.get_ylim()))


# -------------------------------------------------------------------------------------------------------- evaluation


def confusion_table(view: str = "multiclass") -> pd.DataFrame:
    rows = []
    for classifier in CLASSIFIERS:
        for actual in KNOWN:
            for predicted in KNOWN:
                rows.append((classifier, view, actual, predicted, 10 if actual == predicted else 1))
        if view == "open_set":
            rows += [(classifier, view, "unknown", "bead", 3), (classifier, view, "unknown", "unknown", 5)]
    return pd.DataFrame(rows, columns=["classifier", "view", "actual", "predicted", "count"])


@pytest.mark.parametrize("view, classes", [("multiclass", 3), ("open_set", 4)])
def test_confusion_heatmaps_show_counts_and_rates_per_classifier(paths, view, classes):
    figure = figures.confusion_heatmaps(confusion_table(view), paths, title="triplet")
    check_files(paths)
    assert titles(figure) == [f"{c}: {kind}" for kind in ("counts", "% of actual class") for c in CLASSIFIERS]
    ax = figure.axes[len(CLASSIFIERS)]  # rates of the first classifier, below its counts
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "actual")
    assert len(ax.get_xticklabels()) == classes
    cells = [t.get_text() for t in ax.texts]
    assert cells[0] == "83"  # 10 of 12 bead images, in percent
    if view == "open_set":
        assert [t.get_text() for t in figure.axes[0].get_yticklabels()][-1] == "unknown"


def aggregated_table() -> pd.DataFrame:
    rows = []
    for loss_number, loss in enumerate(LOSSES):
        for classifier in CLASSIFIERS:
            for metric in ("mcc", "balanced_accuracy"):
                rows.append((loss, classifier, "multiclass", metric, 0.5 + 0.1 * loss_number, 0.05, 3))
        rows.append((loss, "embedding", "latent", "silhouette", 0.2 * loss_number, np.nan, 1))
        rows.append((loss, "centroid", "open_set", "threshold", 0.9, 0.0, 3))
    return pd.DataFrame(rows, columns=["loss", "classifier", "view", "metric", "mean", "std", "n"])


def test_metric_bars_have_a_bar_per_loss_and_classifier_with_error_bars(paths):
    figure = figures.metric_bars(aggregated_table(), paths)
    check_files(paths)
    assert [ax.get_ylabel() for ax in figure.axes] == ["MCC", "balanced accuracy", "silhouette"]
    assert [len(ax.patches) for ax in figure.axes] == [4, 4, 2]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == CLASSIFIERS
    heights = sorted(p.get_height() for p in figure.axes[0].patches)
    assert heights == pytest.approx([0.5, 0.5, 0.6, 0.6])
    assert legend_texts(figure) == LOSSES
    with pytest.raises(InputError, match="none of the metrics"):
        figures.metric_bars(aggregated_table(), paths, metrics=[("rare", "mcc")])


def test_mean_thresholds_are_the_open_set_threshold_per_loss_and_classifier():
    table = aggregated_table()
    assert figures.mean_thresholds(table) == {(loss, "centroid"): 0.9 for loss in LOSSES}


def history_table() -> pd.DataFrame:
    rows = []
    for loss in LOSSES:
        for trial, epochs in ((0, 5), (1, 3)):  # trial 1 stopped early
            for epoch in range(1, epochs + 1):
                rows.append((loss, trial, epoch, 2 / epoch, 2.2 / epoch, 1 - 0.5 / epoch))
    return pd.DataFrame(rows, columns=["loss", "trial", "epoch", "train_loss", "val_loss", "val_precision_at_1"])


def test_training_curves_have_loss_and_metric_rows_per_loss(paths):
    figure = figures.training_curves(history_table(), paths)
    check_files(paths)
    top = figure.axes[: len(LOSSES)]
    assert [ax.get_title() for ax in top] == LOSSES
    assert top[0].get_ylabel() == "loss" and figure.axes[len(LOSSES)].get_ylabel() == "validation precision at 1"
    assert {ax.get_xlabel() for ax in figure.axes[len(LOSSES) :]} == {"epoch"}
    # per curve: 2 trial lines and the mean; the mean runs to the last epoch any trial reached
    assert len(top[0].lines) == 6 and list(top[0].lines[2].get_xdata()) == [1, 2, 3, 4, 5]
    assert legend_texts(figure) == ["training", "validation"]


def predictions_table(seed: int = 0) -> pd.DataFrame:
    """Known test images confident and mostly right, unseen ones less confident; targets are labels 0 and 1."""
    rng = np.random.default_rng(seed)
    parts = []
    for loss in LOSSES:
        classifiers = CLASSIFIERS + (["softmax"] if loss == "softmax" else [])
        for classifier in classifiers:
            label = np.r_[rng.integers(0, 3, 60), np.full(20, -1)]
            wrong = rng.random(80) < 0.1
            predicted = np.where((label < 0) | wrong, rng.integers(0, 3, 80), label)
            confidence = np.r_[rng.uniform(0.7, 1, 60), rng.uniform(0.3, 0.9, 20)]
            subset = ["test"] * 60 + ["unknown"] * 20
            columns = {"loss": loss, "classifier": classifier, "subset": subset, "label": label}
            parts.append(pd.DataFrame(columns | {"predicted": predicted, "confidence": confidence}))
    return pd.concat(parts, ignore_index=True)


def test_confidence_histograms_compare_known_and_unseen_per_loss_and_classifier(paths):
    thresholds = {(loss, c): 0.8 for loss in LOSSES for c in CLASSIFIERS}
    figure = figures.confidence_histograms(predictions_table(), paths, thresholds=thresholds)
    check_files(paths)
    shown = titles(figure)
    assert shown == ["softmax / centroid", "softmax / knn", "softmax / softmax", "triplet / centroid", "triplet / knn"]
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("confidence", "fraction of images")
    by_colour = {}
    for patch in ax.patches:
        if patch.get_fill():
            # a step histogram is one polygon: its area over bins of width 1 / 25 is the fraction drawn
            by_colour[to_hex(patch.get_facecolor())] = polygon_area(patch.get_xy()) * 25
    # each group's bars are fractions of its own images
    assert sorted(by_colour) == sorted([KNOWN_COLOR.lower(), NOVEL_COLOR.lower()])
    assert list(by_colour.values()) == pytest.approx([1, 1])
    assert ax.lines[0].get_xdata()[0] == 0.8
    assert legend_texts(figure) == ["known classes (test)", "unseen classes", "threshold"]


def test_roc_curves_for_target_detection_and_open_set(paths):
    thresholds = {(loss, c): 0.8 for loss in LOSSES for c in CLASSIFIERS}
    figure = figures.roc_curves(predictions_table(), paths, target_labels=[0, 1], thresholds=thresholds)
    check_files(paths)
    assert titles(figure) == [
        *(f"{c}: target detection" for c in [*CLASSIFIERS, "softmax"]),
        *(f"{c}: open set" for c in [*CLASSIFIERS, "softmax"]),
    ]
    assert figure.axes[0].get_ylabel() == "targets detected (sensitivity)"
    assert figure.axes[3].get_xlabel() == "unseen-class images accepted"
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert [text.split(" (")[0] for text in legend] == LOSSES
    # the softmax classifier exists for the softmax loss only
    assert [t.get_text().split(" (")[0] for t in figure.axes[2].get_legend().get_texts()] == ["softmax"]
    with pytest.raises(InputError, match="no target images and no open-set"):
        table = predictions_table()
        figures.roc_curves(table[table["subset"] == "test"], paths)


# --------------------------------------------------------------------------------------------------- similarity maps


def bundle_of(network: nn.Module, embedding_dim: int, channels: int = 1, size: int = SIZE) -> dict:
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "in_channels": channels,
        "image_size": size,
        "embedding_dim": embedding_dim,
        "normalization": {"mean": [0.0] * channels, "std": [1.0] * channels},
        "dtype": "uint8",
    }


class Halves(nn.Module):
    """Two feature maps: the image's left half and its right half (zero elsewhere)."""

    def forward(self, x):
        left = x.clone()
        left[..., SIZE // 2 :] = 0
        return torch.cat([left, x - left], dim=1)


class LeftMean(nn.Module):
    """A one-dimensional embedding that only looks at the first feature map: its mean."""

    def forward(self, x):
        return x[:, :1].mean(dim=(2, 3))


def test_similarity_map_lights_only_the_region_the_distance_depends_on():
    network = EmbeddingNet(OrderedDict(halves=Halves()), LeftMean(), normalize=False).eval()
    model = (network, None, bundle_of(network, 1))
    images = np.full((2, 1, SIZE, SIZE), 10, dtype=np.uint8)
    # a prototype above the embedding (mean 10): brightening the left half brings the image closer
    maps, layer = explain.similarity_maps(model, images, np.full((2, 1), 50.0))
    assert layer == "halves" and maps.shape == (2, SIZE, SIZE)
    assert maps[:, :, : SIZE // 2 - 1].min() == pytest.approx(1) and maps[:, :, SIZE // 2 + 1 :].max() == 0
    # a prototype below: nothing in the image pulls it closer, the map is empty
    maps, _ = explain.similarity_maps(model, images, np.full((2, 1), -50.0))
    assert maps.max() == 0


def test_similarity_maps_of_a_trained_shape_network_pick_a_wide_block():
    network = build_model({"name": "small", "embedding_dim": 2}, 1, 32, False)
    loss = build_loss({"type": "contrastive"}, 2, 2)
    bundle = bundle_of(network, 2, size=32) | {
        "network": {"name": "small", "embedding_dim": 2},
        "loss": {"type": "contrastive"},
        "class_names": ["a", "b"],
        "state_dict": network.state_dict(),
        "loss_state_dict": loss.state_dict(),
    }
    images = np.random.default_rng(0).integers(0, 255, (3, 1, 32, 32), dtype=np.uint8)
    prototypes = embed(bundle, images)["embedding"] + 1.0
    maps, layer = explain.similarity_maps(bundle, images, prototypes)
    assert layer == "block1"  # 32 px: block1 is 8 px wide, block2 only 4
    # each map is scaled to its peak, or flat where no region pulls the image closer
    assert maps.shape == (3, 32, 32) and maps.min() >= 0
    assert all(peak == 0 or peak == pytest.approx(1) for peak in maps.max(axis=(1, 2)))
    maps, layer = explain.similarity_maps(bundle, images, prototypes, layer="input")
    assert layer == "input" and maps.max(axis=(1, 2)) == pytest.approx([1, 1, 1])
    with pytest.raises(InputError, match="layer 'block9'"):
        explain.similarity_maps(bundle, images, prototypes, layer="block9")
    with pytest.raises(InputError, match="prototypes of shape"):
        explain.similarity_maps(bundle, images, prototypes[:2])


def test_nearest_prototype_cases_are_the_nearest_class_mean():
    table = embedding_table(2)
    table.loc[(table["subset"] == "test") & (table["class_name"] == "bead"), "embedding"] = pd.Series(
        [[0.0, 4.0]] * 20, index=table.index[(table["subset"] == "test") & (table["class_name"] == "bead")]
    )  # every bead test image sits on the crypto centre
    cases, prototypes = explain.nearest_prototype_cases(table, per_outcome=4, seed=0)
    assert sorted(prototypes) == KNOWN
    assert list(cases["correct"]) == [True] * 4 + [False] * 4
    assert set(cases.loc[cases["correct"], "class_name"]) == {"crypto", "debris"}
    wrong = cases[~cases["correct"]]
    assert set(wrong["class_name"]) == {"bead"} and set(wrong["called"]) == {"crypto"}
    assert (wrong["distance"] < wrong["own_distance"]).all()


def test_similarity_grid_shows_correct_and_wrong_cases_with_their_maps(paths):
    table = embedding_table(2)
    cases, _ = explain.nearest_prototype_cases(table, per_outcome=3)
    cases.loc[2, "correct"] = False  # one wrong case
    images = np.random.default_rng(0).integers(0, 255, (len(cases), 2, SIZE, SIZE), dtype=np.uint16)
    maps = np.random.default_rng(1).random((len(cases), SIZE, SIZE))
    figure = figures.similarity_grid(images, cases, maps, maps, paths, layer="block2", title="triplet")
    check_files(paths)
    rows = [ax.get_ylabel() for ax in figure.axes[::2]]
    assert rows == ["correct", "to its class", "wrong", "to the called class", "to its class"]
    assert figure.get_suptitle() == "triplet (Grad-CAM at block2)"
    assert len(figure.axes[2].images) == 2  # the image under its map


def test_class_colours_are_okabe_ito():
    styles = figures._class_styles(KNOWN + ["pollen"], ["pollen"])
    assert [styles[name]["color"] for name in KNOWN] == list(OKABE_ITO[:3])
    assert styles["pollen"]["color"] == UNKNOWN_COLOR


def test_display_image_keeps_the_colours_of_a_photograph_and_stretches_instrument_channels():
    smear = np.zeros((3, 4, 4), np.uint8)
    smear[0], smear[1], smear[2] = 230, 180, 200  # a pink red cell: equal stretching per channel would turn it grey
    np.testing.assert_allclose(qc.display_image(smear)[0, 0], np.array([230, 180, 200]) / 255, rtol=1e-6)
    ifc = np.stack([np.linspace(100, 200, 16).reshape(4, 4), np.linspace(1000, 5000, 16).reshape(4, 4)])
    shown = qc.display_image(ifc.astype(np.uint16))
    assert shown.shape == (4, 8)  # two channels side by side, each stretched to [0, 1]
    assert shown[:, :4].min() == 0 and shown[:, :4].max() == 1 and shown[:, 4:].max() == 1


# ----------------------------------------------------------------------------------------------------- novel classes


def novel_table() -> pd.DataFrame:
    """novel.csv of two losses x two trials stacked: 3-way episodes at 1, 5 and 10 shots per method on the novel and
    the base classes (base 20 points higher), a per-class row each, and generalised rows the figure leaves out."""
    rows = []
    for loss, trial, shots in itertools.product(LOSSES, (0, 1), (1, 5, 10)):
        key = {"loss": loss, "trial": trial, "ways": 3, "shots": shots}
        accuracy = 0.4 + 0.04 * shots + 0.05 * trial
        for setting, scope, method in itertools.product(("novel", "base"), ("all", "class"), figures.FEW_SHOT_METHODS):
            value = accuracy + 0.2 * (setting == "base")
            rows.append(key | {"setting": setting, "method": method, "scope": scope, "accuracy": value})
        rows.append(key | {"setting": "generalised", "method": "centroid", "scope": "harmonic", "accuracy": 0.1})
    return pd.DataFrame(rows).assign(class_name="", ci_low=0.0, ci_high=1.0, episodes=100)


def test_novel_shots_figure_has_a_panel_per_method_and_a_line_per_loss_and_setting(tmp_path):
    paths = [tmp_path / "novel.png", tmp_path / "novel.pdf"]
    figure = figures.novel_shots_figure(novel_table(), paths)
    check_files(paths)
    assert titles(figure) == list(figures.FEW_SHOT_METHODS)
    assert figure.axes[0].get_ylabel() == "3-way accuracy (%)" and figure.axes[0].get_xscale() == "log"
    for ax in figure.axes:
        assert ax.get_xlabel() == "shots (K)" and [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "10"]
        assert len(ax.lines) == 2 * len(LOSSES) and len(ax.collections) == 2 * len(LOSSES)  # a band per line
        assert [line.get_linestyle() for line in ax.lines] == ["-", "--"] * len(LOSSES)
    novel, base = figure.axes[0].lines[:2]  # the first loss: mean over trials 0 and 1 (+ 0.05) in percent
    assert list(novel.get_xdata()) == [1, 5, 10]
    assert list(novel.get_ydata()) == pytest.approx([46.5, 62.5, 82.5])
    assert list(base.get_ydata()) == pytest.approx([66.5, 82.5, 102.5])
    assert to_hex(novel.get_color()) == OKABE_ITO[0].lower()
    assert legend_texts(figure) == [*LOSSES, "novel classes", "base classes"]
    with pytest.raises(InputError, match="no N-way K-shot rows"):
        table = novel_table()
        figures.novel_shots_figure(table[table["setting"] == "generalised"], paths)
