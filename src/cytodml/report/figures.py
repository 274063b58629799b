"""Figures of the study, drawn with matplotlib's Agg canvas (no display needed), saved as PNG or PDF by suffix.

Every figure function takes plain arrays and tables (the workflow's files, read by the caller), writes the figure to
``path`` (one path, or a list of paths: one file per format) and returns the :class:`~matplotlib.figure.Figure`. The
look (palette, type sizes) is :mod:`cytodml.report.style`'s. Scatter plots of many images are thinned by
:func:`balanced_subsample`; a model's embeddings are drawn on its latent map (:mod:`cytodml.evaluate.latent_map`, computed
once per model), other features are projected to the plane by :func:`project_2d`, so every figure stays cheap on a CPU.
Patches are shown by :func:`cytodml.data.qc.display_image`; what a figure shows of the network's reasoning (nearest
prototypes, similarity maps) is computed in :mod:`cytodml.evaluate.explain`, and only drawn here.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from sklearn.manifold import TSNE
from sklearn.metrics import roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from cytodml.data.qc import display_image, figure_paths
from cytodml.errors import InputError, require_columns
from cytodml.evaluate.latent_map import balanced_subsample
from cytodml.evaluate.metrics import UNKNOWN_NAME, sklearn_seed
from cytodml.report.style import (
    HEAT,
    KNOWN_COLOR,
    NOVEL_COLOR,
    UNKNOWN_COLOR,
    colors,
    markers,
    new_figure,
    save,
    styled,
)

MAX_POINTS = 1500
PROJECTIONS = ("auto", "tsne", "umap")
UNSEEN_MARKERS = ("x", "+", "1", "2")
BARS = (("multiclass", "mcc"), ("multiclass", "balanced_accuracy"), ("latent", "silhouette"))
METRIC_NAMES = {"mcc": "MCC", "balanced_accuracy": "balanced accuracy", "map_at_r": "MAP@R", "auroc": "AUROC"}
SCORED_SUBSETS = ("test", "unknown")
MAP_COLUMNS = ("subset", "class_name", "x", "y", "map")
FEW_SHOT_METHODS = ("prototype", "knn", "siamese")
# the N-way K-shot settings of novel.csv as drawn: (setting, legend label, line style)
FEW_SHOT_SETTINGS = (("novel", "novel classes", "-"), ("base", "base classes", "--"))


# ------------------------------------------------------------------------------------------------- points and planes


def project_2d(
    X, seed: int = 0, method: str = "auto", threads: int = 1, iterations: int = 1000
) -> tuple[np.ndarray, str]:
    """The rows of ``X`` (N x D) in the plane, and the name of the axes (``"latent"``, ``"t-SNE"`` or ``"UMAP"``).

    ``auto``: a 2-D latent space is drawn as it is (Luo et al. 2021, Fig. 7); more dimensions go through UMAP
    (McInnes et al. 2018) where umap-learn is installed, else t-SNE (van der Maaten & Hinton 2008) with PCA
    initialisation, perplexity min(30, (N - 1) / 3) and ``iterations`` gradient steps (at least 250, the early
    exaggeration phase). ``tsne`` and ``umap`` force a method.

    The fit runs on ``threads`` threads: t-SNE's OpenMP gradient steps synchronise a thousand times, and on a machine
    whose cores are all busy each synchronisation waits for a descheduled thread (measured on two busy cores: 40
    points 0.3 s on one thread, 61 s on two; 1 500 points 18 s against 112 s).
    """
    X = np.asarray(X, dtype=np.float64)
    if method not in PROJECTIONS:
        raise InputError(f"projection method {method!r}: expected one of {', '.join(PROJECTIONS)}")
    if X.ndim != 2 or not np.isfinite(X).all():
        raise InputError(f"points to project must be a finite N x D array, got shape {X.shape}")
    if method == "auto" and X.shape[1] == 2:
        return X, "latent"
    if len(X) < 5:
        raise InputError(f"a 2-D projection needs at least 5 points, got {len(X)}")
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise InputError("projection method 'umap' needs the umap-learn package") from None
        else:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(X) - 1), random_state=sklearn_seed(seed))
            with threadpool_limits(threads):
                return reducer.fit_transform(X), "UMAP"
    tsne = TSNE(
        n_components=2,
        perplexity=min(30.0, (len(X) - 1) / 3),
        init="pca",
        max_iter=iterations,
        random_state=sklearn_seed(seed),
    )
    with threadpool_limits(threads):
        return tsne.fit_transform(X), "t-SNE"


def _class_styles(names, unseen: Sequence[str] = ()) -> dict[str, dict]:
    """Colour, marker and legend label per class of ``names``: the known ones (sorted) from the palette, the unseen
    (open-set) ones grey, each with its own marker."""
    present = set(names)
    known = sorted(present - set(unseen))
    unseen = [name for name in unseen if name in present]
    palette, shapes = colors(known), markers(known)
    styles = {name: {"color": palette[name], "marker": shapes[name], "label": name} for name in known}
    for number, name in enumerate(unseen):
        marker = UNSEEN_MARKERS[number % len(UNSEEN_MARKERS)]
        styles[name] = {"color": UNKNOWN_COLOR, "marker": marker, "label": f"{name} (unseen)"}
    return styles


def _scatter_classes(ax, xy: np.ndarray, names: np.ndarray, styles: dict) -> None:
    """One scatter per class, the most numerous first, so rare classes are drawn on top."""
    present = [name for name in styles if (names == name).any()]
    for name in sorted(present, key=lambda name: -np.count_nonzero(names == name)):
        style, rows = styles[name], names == name
        filled = style["marker"] not in UNSEEN_MARKERS
        ax.scatter(
            xy[rows, 0],
            xy[rows, 1],
            s=7,
            c=style["color"],
            marker=style["marker"],
            linewidths=0 if filled else 0.7,
            alpha=0.8,
            rasterized=True,  # thousands of points: a PDF stays small and fast to open
        )


def _class_legend(figure, styles: dict, present) -> None:
    present = set(present)
    handles = [
        Line2D([], [], ls="", marker=s["marker"], color=s["color"], markersize=5, label=s["label"])
        for name, s in styles.items()
        if name in present
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), markerscale=1.2)


def _axis_names(method: str) -> tuple[str, str]:
    return f"{method} 1", f"{method} 2"


def _grid(figure, panels: int, columns: int):
    """``panels`` axes in rows of ``columns``; axes past the last panel are hidden."""
    rows = math.ceil(panels / columns)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    return axes[:panels]


# ------------------------------------------------------------------------------------------------------ latent space


@styled
def latent_space(maps: Mapping[str, pd.DataFrame], path, limit: int = MAX_POINTS, seed: int = 0, columns: int = 5):
    """One panel per loss: the test and open-set images on the model's latent map (Luo et al. 2021, Fig. 7).

    ``maps`` maps a loss to the latent-map table of one trial (:func:`cytodml.evaluate.latent_map.map_table`:
    ``subset``, ``class_name``, ``x``, ``y``, ``map``), in the order the panels take (put the softmax baseline first
    to set it beside the metric losses). Each table is thinned by :func:`balanced_subsample` to ``limit`` rows; the
    map's method names the axes.
    """
    figure_paths(path)
    if not maps:
        raise InputError("latent_space: no latent maps given")
    for loss, table in maps.items():
        require_columns(table, MAP_COLUMNS, f"latent map of loss {loss!r}")
    scored = pd.concat([table[table["subset"].isin(SCORED_SUBSETS)] for table in maps.values()])
    styles = _class_styles(scored["class_name"], sorted(set(scored.loc[scored["subset"] == "unknown", "class_name"])))
    columns = min(columns, len(maps))
    figure = new_figure(2.3 * columns, 2.3 * math.ceil(len(maps) / columns) + 0.5)
    for ax, (loss, table) in zip(_grid(figure, len(maps), columns), maps.items()):
        shown = table[table["subset"].isin(SCORED_SUBSETS)]
        if shown.empty:
            raise InputError(f"latent map of loss {loss!r}: no test or unknown rows to draw")
        shown = shown.iloc[balanced_subsample(shown["class_name"].to_numpy(), limit, seed)]
        name = str(shown["map"].iloc[0])
        _scatter_classes(ax, shown[["x", "y"]].to_numpy(), shown["class_name"].to_numpy(), styles)
        ax.set_title(loss)
        ax.set_xlabel(_axis_names(name)[0])
        ax.set_ylabel(_axis_names(name)[1])
        if name == "latent":
            ax.set_aspect("equal", adjustable="datalim")  # distances are what the losses shape
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    _class_legend(figure, styles, styles)
    return save(figure, path)


@styled
def block_tsne(
    features: Mapping[str, Mapping[str, np.ndarray]],
    class_names,
    path,
    unseen: Sequence[str] = (),
    seed: int = 0,
    method: str = "tsne",
    threads: int = 1,
    iterations: int = 500,
):
    """A row per network, a column per block: the pooled block features projected to the plane (Luo et al. 2021,
    Fig. 8, t-SNE of each residual block of the Siamese and the softmax network).

    ``features`` maps a loss to ``{block name: N x F}`` (:func:`cytodml.learn.embed.embed` with ``blocks=True``), all
    over the same N images, whose classes are ``class_names``; ``unseen`` names the open-set classes among them.
    A grid holds many projections, so each t-SNE takes ``iterations`` steps (500: half the usual, about the same
    picture for a few hundred images at half the time).
    """
    figure_paths(path)
    names = np.asarray(class_names)
    if not features:
        raise InputError("block_tsne: no block features given")
    for loss, blocks in features.items():
        for block, values in blocks.items():
            if len(values) != len(names):
                raise InputError(f"block_tsne: {loss} {block} has {len(values)} rows for {len(names)} class names")
    styles = _class_styles(names, sorted(unseen))
    columns = max(len(blocks) for blocks in features.values())
    figure = new_figure(2.0 * columns, 2.0 * len(features) + 0.5)
    axes = figure.subplots(len(features), columns, squeeze=False)
    for row, (loss, blocks) in enumerate(features.items()):
        for column, ax in enumerate(axes[row]):
            if column >= len(blocks):
                ax.set_axis_off()
                continue
            block, values = list(blocks.items())[column]
            xy, name = project_2d(values, seed=seed, method=method, threads=threads, iterations=iterations)
            _scatter_classes(ax, xy, names, styles)
            ax.set_title(f"{loss}: {block} ({values.shape[1]})")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(_axis_names(name)[0])
            ax.set_ylabel(_axis_names(name)[1])
    _class_legend(figure, styles, set(names))
    return save(figure, path)


class _Cells(NamedTuple):
    """The plane cut into squares: its lower-left corner, a square's width and height, each point's square (column,
    row), and the points shown (one per occupied square)."""

    low: np.ndarray
    size: np.ndarray
    square: np.ndarray
    shown: np.ndarray


def _thumbnail_cells(xy: np.ndarray, cells: int) -> _Cells:
    """The bounding box of ``xy`` cut into ``cells`` x ``cells`` squares; in each occupied square, the point nearest
    its centre is shown."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    size = np.maximum(high - low, 1e-9) / cells
    square = np.minimum(((xy - low) / size).astype(int), cells - 1)
    centre_distance = np.linalg.norm((xy - low) / size - (square + 0.5), axis=1)
    order = np.lexsort((centre_distance, square[:, 1], square[:, 0]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(square[order][1:] != square[order][:-1], axis=1)
    return _Cells(low, size, square, order[first])


def _draw_thumbnails(ax, images: np.ndarray, names: np.ndarray, grid: _Cells, styles: dict) -> None:
    """Each shown image in its square, at its own aspect ratio, framed in its class colour."""
    for row in grid.shown:
        thumbnail = display_image(np.asarray(images[row]))
        aspect = thumbnail.shape[1] / thumbnail.shape[0]
        x0, y0 = grid.low + grid.square[row] * grid.size
        width, height = grid.size[0] * 0.92, grid.size[1] * 0.92 / aspect
        ax.imshow(
            thumbnail, cmap="gray", vmin=0, vmax=1, extent=(x0, x0 + width, y0, y0 + height), interpolation="none"
        )
        ax.add_patch(Rectangle((x0, y0), width, height, fill=False, edgecolor=styles[names[row]]["color"], lw=1.2))


@styled
def image_tsne(
    images: np.ndarray,
    xy,
    class_names,
    path,
    unseen: Sequence[str] = (),
    cells: int = 20,
    method: str = "t-SNE",
    title: str = "",
):
    """Thumbnails at their places on the latent map (Medela & Picon 2020, Fig. 5): the plane is cut into ``cells`` x
    ``cells`` squares and each occupied square shows the image nearest its centre, framed in its class colour.

    ``images`` (N x C x S x S) are the images at the map positions ``xy`` (N x 2) of the map ``method``
    (:mod:`cytodml.evaluate.latent_map`).
    """
    figure_paths(path)
    names = np.asarray(class_names)
    xy = np.asarray(xy, dtype=np.float64)
    if not (len(images) == len(names) == len(xy)):
        raise InputError(
            f"image_tsne: {len(images)} images, {len(xy)} map positions and {len(names)} class names differ"
        )
    grid = _thumbnail_cells(xy, cells)
    styles = _class_styles(names, sorted(unseen))
    figure = new_figure(7.5, 8.0)
    ax = figure.subplots()
    _draw_thumbnails(ax, images, names, grid, styles)
    ax.set_xlim(grid.low[0], grid.low[0] + cells * grid.size[0])
    ax.set_ylim(grid.low[1], grid.low[1] + cells * grid.size[1])
    ax.set_aspect("auto")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(_axis_names(method)[0])
    ax.set_ylabel(_axis_names(method)[1])
    ax.set_title(f"{title}{': ' if title else ''}{len(grid.shown)} of {len(names)} images at their {method} positions")
    handles = [Patch(fill=False, edgecolor=s["color"], lw=1.5, label=s["label"]) for n, s in styles.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    return save(figure, path)


# -------------------------------------------------------------------------------------------------------- evaluation


def _class_order(confusion: pd.DataFrame) -> list[str]:
    """Known classes sorted, then ``unknown`` (the open-set row and the rejected column), where it holds counts."""
    names = set(confusion["actual"]) | set(confusion["predicted"])
    order = sorted(names - {UNKNOWN_NAME})
    unknown = (confusion["actual"] == UNKNOWN_NAME) | (confusion["predicted"] == UNKNOWN_NAME)
    if (confusion.loc[unknown, "count"] > 0).any():
        order.append(UNKNOWN_NAME)
    return order


def _heatmap(ax, values: np.ndarray, labels: list[str], text: list[list[str]], vmax: float) -> None:
    ax.imshow(values, vmin=0, vmax=vmax, aspect="equal")
    for i, j in np.ndindex(values.shape):
        dark = not np.isnan(values[i, j]) and values[i, j] < 0.5 * vmax
        ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)


@styled
def confusion_heatmaps(confusion: pd.DataFrame, path, title: str = ""):
    """Per classifier (a column), the confusion matrix as counts (top) and row-normalised to percent of each actual
    class (below).

    ``confusion`` holds one loss and view of the aggregate stage's ``confusion.csv`` (``classifier``, ``actual``,
    ``predicted``, ``count``, summed over trials). An ``unknown`` row and column are shown where they hold counts
    (open-set images, images rejected below the threshold).
    """
    figure_paths(path)
    require_columns(confusion, ("classifier", "actual", "predicted", "count"), "confusion table")
    if confusion.empty:
        raise InputError("confusion table: no rows")
    classifiers = list(dict.fromkeys(confusion["classifier"]))
    classes = _class_order(confusion)
    side = 0.28 * len(classes)
    figure = new_figure((side + 0.3) * len(classifiers) + 1.2, 2 * side + 2.0 + (0.3 if title else 0))
    axes = figure.subplots(2, len(classifiers), squeeze=False)
    for count_ax, rate_ax, classifier in zip(axes[0], axes[1], classifiers):
        rows = confusion[confusion["classifier"] == classifier]
        counts = (
            rows.pivot_table(index="actual", columns="predicted", values="count", aggfunc="sum", fill_value=0)
            .reindex(index=classes, columns=classes, fill_value=0)
            .to_numpy(float)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = 100 * counts / counts.sum(axis=1, keepdims=True)
        _heatmap(count_ax, counts, classes, [[f"{v:.0f}" for v in row] for row in counts], max(counts.max(), 1))
        _heatmap(rate_ax, rates, classes, [["" if np.isnan(v) else f"{v:.0f}" for v in row] for row in rates], 100)
        count_ax.set_title(f"{classifier}: counts")
        rate_ax.set_title(f"{classifier}: % of actual class")
        count_ax.tick_params(labelbottom=False)
        count_ax.set_xlabel("")
    for ax in axes[:, 1:].ravel():
        ax.tick_params(labelleft=False)
        ax.set_ylabel("")
    if title:
        figure.suptitle(title)
    return save(figure, path)


def _metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def _of_metric(aggregated: pd.DataFrame, view: str, metric: str) -> pd.DataFrame:
    """The rows of one view and metric of the aggregated table."""
    return aggregated[(aggregated["view"] == view) & (aggregated["metric"] == metric)]


def _bar_groups(ax, rows: pd.DataFrame, losses: list[str], palette: dict) -> None:
    """A group of bars per classifier of ``rows`` (one view and metric), a bar per loss: mean +- std."""
    classifiers = list(dict.fromkeys(rows["classifier"]))
    bar = 0.8 / len(losses)
    for group, classifier in enumerate(classifiers):
        # centred on the losses this classifier has (the softmax classifier exists for softmax losses only)
        of_classifier = rows[rows["classifier"] == classifier].set_index("loss").reindex(losses).dropna(subset="mean")
        offsets = (np.arange(len(of_classifier)) - (len(of_classifier) - 1) / 2) * bar
        ax.bar(
            group + offsets,
            of_classifier["mean"],
            bar,
            yerr=of_classifier["std"].fillna(0),
            color=[palette[loss] for loss in of_classifier.index],
            capsize=1.5,
            error_kw={"elinewidth": 0.7, "capthick": 0.7},
        )
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(np.arange(len(classifiers)), classifiers, rotation=30, ha="right", rotation_mode="anchor")


@styled
def metric_bars(aggregated: pd.DataFrame, path, metrics: Sequence[tuple[str, str]] = BARS):
    """A panel per (view, metric): a bar per loss (colour) and classifier (group), mean with +- one standard
    deviation over trials (Gupta et al. 2019, Fig. 5, MCC and balanced accuracy per method).

    ``aggregated`` is the aggregate stage's long table (``loss``, ``classifier``, ``view``, ``metric``, ``mean``,
    ``std``); metrics it lacks are skipped.
    """
    figure_paths(path)
    require_columns(aggregated, ("loss", "classifier", "view", "metric", "mean", "std"), "aggregated table")
    panels = [(view, metric) for view, metric in metrics if not _of_metric(aggregated, view, metric).empty]
    if not panels:
        raise InputError(f"aggregated table: none of the metrics {list(metrics)} is present")
    losses = list(dict.fromkeys(aggregated["loss"]))
    palette = colors(losses)
    widths = [max(1.6, 0.18 * len(_of_metric(aggregated, *panel)) + 0.8) for panel in panels]
    figure = new_figure(sum(widths), 2.6)
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, (view, metric) in zip(axes, panels):
        _bar_groups(ax, _of_metric(aggregated, view, metric), losses, palette)
        ax.set_ylabel(_metric_name(metric))
        ax.set_title(f"{_metric_name(metric)} ({view})")
    handles = [Patch(color=palette[loss], label=loss) for loss in losses]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(losses), 6))
    return save(figure, path)


@styled
def training_curves(history: pd.DataFrame, path):
    """A column per loss: training and validation loss per epoch (top), the validation metric (below).

    ``history`` is the train stage's ``history.csv`` of every trial stacked with ``loss`` and ``trial`` columns; each
    trial is a thin line, the mean over the trials that reached an epoch a thick one.
    """
    figure_paths(path)
    require_columns(history, ("loss", "trial", "epoch", "train_loss", "val_loss"), "training history")
    if history.empty:
        raise InputError("training history: no rows")
    metrics = [c for c in history.columns if c.startswith("val_") and c != "val_loss"]
    losses = list(dict.fromkeys(history["loss"]))
    figure = new_figure(2.1 * len(losses), 1.8 * (1 + len(metrics)) + 0.4)
    axes = figure.subplots(1 + len(metrics), len(losses), squeeze=False)
    curves = [("train_loss", "training", KNOWN_COLOR), ("val_loss", "validation", NOVEL_COLOR)]
    for column, loss in enumerate(losses):
        of_loss = history[history["loss"] == loss]
        for row, series in enumerate([curves, *[[(m, "validation", NOVEL_COLOR)] for m in metrics]]):
            ax = axes[row, column]
            for name, _, color in series:
                for _, trial in of_loss.groupby("trial"):
                    ax.plot(trial["epoch"], trial[name], color=color, lw=0.6, alpha=0.35)
                mean = of_loss.groupby("epoch")[name].mean()
                ax.plot(mean.index, mean.to_numpy(), color=color, lw=1.5)
            if column == 0:
                ax.set_ylabel("loss" if row == 0 else f"validation {_metric_name(series[0][0][4:])}")
            if row == len(metrics):
                ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if row > 0 and column > 0:
                ax.sharey(axes[row, 0])  # the same metric for every loss: one scale to compare them on
        axes[0, column].set_title(loss)
    handles = [Line2D([], [], color=color, lw=1.5, label=label) for _, label, color in curves]
    figure.legend(handles=handles, loc="outside lower center", ncols=2)
    return save(figure, path)


def _shots_curves(ax, rows: pd.DataFrame, losses: list[str], palette: dict, shapes: dict) -> None:
    """Per loss and setting, accuracy (%) against shots: the mean over trials as a line, +- one std as a band."""
    for loss, (setting, _, style) in itertools.product(losses, FEW_SHOT_SETTINGS):
        of_curve = rows[(rows["loss"] == loss) & (rows["setting"] == setting)]
        if of_curve.empty:
            continue
        per_shots = of_curve.groupby("shots")["accuracy"].agg(["mean", "std"]).fillna({"std": 0.0}) * 100
        shots = per_shots.index.to_numpy()
        color = palette[loss]
        ax.plot(shots, per_shots["mean"], color=color, ls=style, marker=shapes[loss], ms=3, lw=1.2)
        ax.fill_between(
            shots,
            per_shots["mean"] - per_shots["std"],
            per_shots["mean"] + per_shots["std"],
            color=color,
            alpha=0.15,
            lw=0,
        )


@styled
def novel_shots_figure(novel_trials: pd.DataFrame, path):
    """A panel per few-shot method (prototype, knn, siamese): N-way K-shot accuracy (%) against shots (log axis), a
    colour per loss, solid on the novel classes (never trained on), dashed on the base classes (their test images);
    the mean over trials as a line, +- one standard deviation over trials as a band.

    ``novel_trials`` is the evaluate stage's ``novel.csv`` of every trial stacked with ``loss`` and ``trial`` columns
    (:func:`cytodml.report.tables.collect_trials`); its rows of scope ``all`` in settings ``novel`` and ``base`` are
    drawn (each trial's accuracy is already its mean over episodes).
    """
    figure_paths(path)
    require_columns(
        novel_trials, ("loss", "trial", "setting", "method", "ways", "shots", "scope", "accuracy"), "novel table"
    )
    settings = [setting for setting, _, _ in FEW_SHOT_SETTINGS]
    rows = novel_trials[novel_trials["setting"].isin(settings) & (novel_trials["scope"] == "all")]
    if rows.empty:
        raise InputError("novel table: no N-way K-shot rows (settings novel and base, scope all) to draw")
    present = list(dict.fromkeys(rows["method"]))
    methods = [m for m in FEW_SHOT_METHODS if m in present] + [m for m in present if m not in FEW_SHOT_METHODS]
    losses = list(dict.fromkeys(rows["loss"]))
    palette, shapes = colors(losses), markers(losses)
    shots = sorted(set(rows["shots"]))
    ways = " / ".join(str(w) for w in sorted(set(rows["ways"])))
    figure = new_figure(2.3 * len(methods) + 0.3, 2.6)
    axes = figure.subplots(1, len(methods), squeeze=False, sharey=True)[0]
    for ax, method in zip(axes, methods):
        _shots_curves(ax, rows[rows["method"] == method], losses, palette, shapes)
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_title(method)
        ax.set_xlabel("shots (K)")
    axes[0].set_ylabel(f"{ways}-way accuracy (%)")
    handles = [Line2D([], [], color=palette[loss], marker=shapes[loss], ms=3, lw=1.2, label=loss) for loss in losses]
    handles += [Line2D([], [], color="black", ls=style, lw=1.2, label=label) for _, label, style in FEW_SHOT_SETTINGS]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    return save(figure, path)


def mean_thresholds(aggregated: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(loss, classifier) -> the confidence threshold of the open-set view, mean over trials (the aggregated table's
    ``threshold`` metric: the configured one, or the one chosen on validation per trial)."""
    require_columns(aggregated, ("loss", "classifier", "view", "metric", "mean"), "aggregated table")
    rows = aggregated[(aggregated["view"] == "open_set") & (aggregated["metric"] == "threshold")]
    return {(loss, classifier): float(mean) for loss, classifier, mean in rows[["loss", "classifier", "mean"]].values}


def _rows_of(predictions: pd.DataFrame, loss: str, classifier: str) -> pd.DataFrame:
    return predictions[(predictions["loss"] == loss) & (predictions["classifier"] == classifier)]


@styled
def confidence_histograms(
    predictions: pd.DataFrame, path, thresholds: Mapping[tuple[str, str], float] | None = None, bins: int = 25
):
    """A row per loss, a column per classifier: the confidence of known test images against that of images of
    classes never trained on, each as a fraction of its images; a dashed line at the threshold.

    ``predictions`` is the evaluate stage's ``predictions.parquet`` with a ``loss`` column (trials may be stacked);
    the ``softmax`` classifier is the softmax network's own maximum probability. ``thresholds`` maps (loss,
    classifier) to the confidence threshold.
    """
    figure_paths(path)
    require_columns(predictions, ("loss", "classifier", "subset", "confidence"), "predictions")
    if predictions.empty:
        raise InputError("predictions: no rows")
    thresholds = thresholds or {}
    losses = list(dict.fromkeys(predictions["loss"]))
    classifiers = list(dict.fromkeys(predictions["classifier"]))
    figure = new_figure(1.9 * len(classifiers), 1.5 * len(losses) + 0.4)
    axes = figure.subplots(len(losses), len(classifiers), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    groups = [("test", "known classes (test)", KNOWN_COLOR), ("unknown", "unseen classes", NOVEL_COLOR)]
    drawn = set()
    for (row, loss), (column, classifier) in itertools.product(enumerate(losses), enumerate(classifiers)):
        ax, rows = axes[row, column], _rows_of(predictions, loss, classifier)
        if rows.empty:
            ax.set_axis_off()
            continue
        for subset, label, color in groups:
            confidence = rows.loc[rows["subset"] == subset, "confidence"].to_numpy()
            if len(confidence):
                weights = np.full(len(confidence), 1 / len(confidence))
                ax.hist(confidence, edges, weights=weights, histtype="stepfilled", fc=color, alpha=0.35)
                ax.hist(confidence, edges, weights=weights, histtype="step", ec=color, lw=1.0)
                drawn.add(label)
        if (loss, classifier) in thresholds:
            ax.axvline(thresholds[(loss, classifier)], color="black", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1])
        ax.set_title(f"{loss} / {classifier}")
        ax.set_xlabel("confidence")
        if column == 0:
            ax.set_ylabel("fraction of images")
    handles = [Patch(fc=color, ec=color, alpha=0.6, label=label) for _, label, color in groups if label in drawn]
    if thresholds:
        handles.append(Line2D([], [], color="black", ls="--", lw=0.8, label="threshold"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return save(figure, path)


def _roc_panel(ax, curves: list[tuple[str, np.ndarray, np.ndarray, float | None]], palette: dict) -> None:
    """ROC curves of (loss, positive flags, scores, threshold), AUC in the legend, the operating point marked."""
    ax.plot([0, 1], [0, 1], color=UNKNOWN_COLOR, ls=":", lw=0.8)
    for loss, positive, score, threshold in curves:
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, color=palette[loss], lw=1.2, label=f"{loss} ({roc_auc_score(positive, score):.2f})")
        if threshold is not None:
            called = score >= threshold
            ax.plot(called[~positive].mean(), called[positive].mean(), "o", color=palette[loss], ms=3.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    legend = ax.legend(loc="best", fontsize=6, handlelength=1.2, title="AUC", title_fontsize=6, frameon=True)
    legend.get_frame().set(edgecolor="none", alpha=0.8)


def _roc_views(sample: pd.DataFrame, target_labels: Sequence[int]) -> list[tuple[str, str, str]]:
    """The ROC rows ``sample`` can fill, as (view, x label, y label): target detection where it holds target
    images, the open set where it holds unseen-class images."""
    views = []
    if len(target_labels) and sample["label"].isin(target_labels).any():
        views.append(("target", "non-targets called a target", "targets detected (sensitivity)"))
    if (sample["subset"] == "unknown").any():
        views.append(("open_set", "unseen-class images accepted", "known images accepted"))
    if not views:
        raise InputError("roc_curves: no target images and no open-set images among the predictions")
    return views


def _roc_scores(rows: pd.DataFrame, view: str, target_labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Positive flags and scores of one view: targets scored by their confidence where called a target class (0
    otherwise), or known test images against unseen-class ones scored by their confidence."""
    if view == "target":
        positive = rows["label"].isin(target_labels).to_numpy()
        return positive, np.where(rows["predicted"].isin(target_labels), rows["confidence"], 0.0)
    return (rows["subset"] == "test").to_numpy(), rows["confidence"].to_numpy()


@styled
def roc_curves(
    predictions: pd.DataFrame,
    path,
    target_labels: Sequence[int] = (),
    thresholds: Mapping[tuple[str, str], float] | None = None,
):
    """ROC curves per classifier (a column), one line per loss, pooled over the stacked trials; a dot at the threshold.

    Top row, with ``target_labels``: rare-target detection as the spiked samples see it, on test and open-set
    images (Luo et al. 2021): an image is called a target when its predicted class is a target and its confidence
    reaches the threshold, swept from 1 to 0 (the score of an image predicted a non-target is 0). Bottom row, where
    there are open-set images: known test images accepted against unseen-class images accepted as the confidence
    threshold is swept. ``predictions`` as for :func:`confidence_histograms`, with ``label`` and ``predicted``.
    """
    figure_paths(path)
    require_columns(predictions, ("loss", "classifier", "subset", "label", "predicted", "confidence"), "predictions")
    sample = predictions[predictions["subset"].isin(SCORED_SUBSETS)]
    views = _roc_views(sample, target_labels)
    thresholds = thresholds or {}
    losses = list(dict.fromkeys(sample["loss"]))
    classifiers = list(dict.fromkeys(sample["classifier"]))
    palette = colors(losses)
    figure = new_figure(2.4 * len(classifiers), 2.9 * len(views))
    axes = figure.subplots(len(views), len(classifiers), squeeze=False)
    for row, (view, xlabel, ylabel) in enumerate(views):
        for column, classifier in enumerate(classifiers):
            curves = []
            for loss in losses:
                positive, score = _roc_scores(_rows_of(sample, loss, classifier), view, target_labels)
                curves.append((loss, positive, score, thresholds.get((loss, classifier))))
            ax = axes[row, column]
            _roc_panel(ax, curves, palette)
            ax.set_title(f"{classifier}: {'target detection' if view == 'target' else 'open set'}")
            ax.set_xlabel(xlabel)
            if column == 0:
                ax.set_ylabel(ylabel)
    return save(figure, path)


# --------------------------------------------------------------------------------------------------- similarity maps


def _overlay(ax, image: np.ndarray, cam: np.ndarray | None) -> None:
    """A patch in grey or colour and, where given, its map over it (opaque where the map is high), unframed; the map
    is repeated across channels shown side by side."""
    display = display_image(image)
    ax.imshow(display, cmap="gray", vmin=0, vmax=1)
    if cam is not None:
        cam = np.tile(cam, (1, display.shape[1] // cam.shape[1]))
        ax.imshow(cam, cmap=HEAT, vmin=0, vmax=1, alpha=0.75 * cam)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def _similarity_sections(cases: pd.DataFrame, called_maps: np.ndarray, own_maps: np.ndarray) -> list[tuple]:
    """The grid's rows as (label, case rows, maps or None for the bare images, distance column its panels show):
    correct cases and their map towards their class; wrong ones, their map towards the called class and towards
    their own."""
    correct = np.flatnonzero(cases["correct"].to_numpy())
    wrong = np.flatnonzero(~cases["correct"].to_numpy())
    sections = []
    if len(correct):
        sections += [("correct", correct, None, None), ("to its class", correct, called_maps, "distance")]
    if len(wrong):
        sections += [
            ("wrong", wrong, None, None),
            ("to the called class", wrong, called_maps, "distance"),
            ("to its class", wrong, own_maps, "own_distance"),
        ]
    return sections


def _similarity_row(ax_row, images: np.ndarray, cases: pd.DataFrame, section: tuple) -> None:
    """One row of the grid: a case per column, titled by its class (bare images) or its distance (maps)."""
    label, rows, maps, distance = section
    for column, ax in enumerate(ax_row):
        if column >= len(rows):
            ax.set_axis_off()
            continue
        case = cases.iloc[rows[column]]
        _overlay(ax, np.asarray(images[rows[column]]), None if maps is None else maps[rows[column]])
        if distance is None:
            ax.set_title(case["class_name"] if case["correct"] else f"{case['class_name']}\ncalled {case['called']}")
        else:
            ax.set_title(f"d = {case[distance]:.2f}", fontsize=7)
    ax_row[0].set_ylabel(label)
    ax_row[0].set_axis_on()


@styled
def similarity_grid(
    images: np.ndarray,
    cases: pd.DataFrame,
    called_maps: np.ndarray,
    own_maps: np.ndarray,
    path,
    layer: str = "",
    title: str = "",
):
    """Correctly and wrongly classified images beside their similarity maps, a case per column: correct cases with
    the map towards their class prototype; wrong ones with the map towards the prototype they were called, and
    towards their own class's.

    ``cases`` as :func:`cytodml.evaluate.explain.nearest_prototype_cases` returns them, ``images`` (N x C x S x S)
    and the maps (N x S x S, :func:`cytodml.evaluate.explain.similarity_maps`) in its row order; ``layer`` is the
    block the maps were taken at.
    """
    figure_paths(path)
    require_columns(cases, ("class_name", "called", "distance", "own_distance", "correct"), "cases")
    if not (len(images) == len(cases) == len(called_maps) == len(own_maps)) or cases.empty:
        raise InputError(
            f"similarity_grid: {len(images)} images, {len(cases)} cases and {len(called_maps)} / {len(own_maps)} maps; "
            "expected the same non-zero number"
        )
    sections = _similarity_sections(cases, called_maps, own_maps)
    columns = max(len(rows) for _, rows, _, _ in sections)
    aspect = display_image(np.asarray(images[0])).shape[1] / images.shape[-1]
    figure = new_figure(1.3 * aspect * columns + 0.6, 1.35 * len(sections) + (0.3 if title else 0))
    for ax_row, section in zip(figure.subplots(len(sections), columns, squeeze=False), sections):
        _similarity_row(ax_row, images, cases, section)
    if title or layer:
        figure.suptitle(title + (f" (Grad-CAM at {layer})" if layer else ""))
    return save(figure, path)
