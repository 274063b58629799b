"""The latent-space explorer: one self-contained HTML page to look at trained models' maps as a cytometrist would.

Each object is a point on a model's 2-D map (:mod:`cytodml.evaluate.latent_map`); hovering or tapping a point shows
the cell, its id, true class and subset, the classifier's call and confidence, and its distance to every class centre
(centroid, GMM) or its probability of every class (SVM, kNN, softmax). Widgets switch the model (loss and trial), the
classifier and the colouring (true class, call, confidence); a lasso or box selection lists the objects in a table and
saves them as a labels CSV (``object_id,label``) for ``cytodml gallery --labels``. The page is Bokeh standalone with
BokehJS inline: it opens from a file, with no network and no server. An experiment's page holds the test images of
every trial (:func:`evaluation_models`); an object that another trial tested has no place on this model's map (NaN
coordinates) and is neither drawn nor counted with it.

Filters. Under the current classifier every object has one outcome: *rejected* when called ``unknown`` (below the
classifier's threshold); else, for a labelled object, *correct* when the call is its true class and *wrong* when it is
not (so an open-set object called a known class is wrong); for an unlabelled object (a new sample's), *called*. Each
filter box names a kind of object: one of the outcomes, *open-set objects* (subset ``unknown``: a class the models
never trained on) or *target calls* (called one of ``targets``). An object is drawn when every box naming one of its
kinds is ticked, so unticking a box hides exactly the objects of its kind and ticking it back shows them again (as far
as the other boxes allow). A box is offered only when some object of the page can be of its kind: the outcome boxes
correct and wrong when some object is labelled, called when some is not, open-set when some object's subset is
``unknown``, target calls when ``targets`` are given; rejected always. The selection table and the CSV hold the
selected objects that are drawn.

Size. Every object carries its thumbnail, so above ``limit`` objects the page draws a class-balanced sample
(:func:`~cytodml.evaluate.latent_map.balanced_subsample`, as the static figures are sampled), taken before anything is
written to the page. The numbers of every view (map coordinates, confidences, scores) are float32 columns and the
calls one-byte codes into the list of class names: BokehJS receives them as binary arrays, and switching a view copies
them into the drawn columns. Five losses x three trials x five classifiers of 700 two-channel objects and ten classes,
with 2 000 reference images per model, make a page of 7.6 MB: 3.1 MB of views, 1.9 MB of thumbnails, 1.9 MB of
BokehJS.
"""

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from bokeh.document import Document
from bokeh.embed import file_html
from bokeh.events import DocumentReady
from bokeh.layouts import column, row
from bokeh.models import (
    BooleanFilter,
    BoxSelectTool,
    Button,
    CDSView,
    CheckboxGroup,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    DataTable,
    Div,
    HoverTool,
    IndexFilter,
    LassoSelectTool,
    Legend,
    LegendItem,
    LinearColorMapper,
    NumberFormatter,
    Range1d,
    Select,
    TableColumn,
    TapTool,
    TextInput,
)
from bokeh.plotting import figure
from bokeh.resources import INLINE
from matplotlib.colors import to_hex
from PIL import Image

from cytodml.data.qc import display_image
from cytodml.errors import InputError, require_columns
from cytodml.evaluate.latent_map import LatentMap, balanced_subsample
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.evaluate.objects import classifier_evidence
from cytodml.io import atomic_path
from cytodml.report.style import OKABE_ITO, SEQUENTIAL, UNKNOWN_COLOR, colors

__all__ = ["EXPLORER_POINTS", "ClassifierView", "ModelView", "evaluation_models", "explorer_page", "thumbnail"]

EXPLORER_POINTS = 20_000
"""Above this many objects the page draws a sample, as equal per class as the class sizes allow, and says so."""
THUMBNAIL_SIZE = 32
"""Pixels a side per channel of a thumbnail at most. Every drawn object carries one: 32 px is at most 1 kB of PNG per
channel (a noisy patch; a cell on a flat background takes less), so 700 two-channel objects add about 2 MB to a page
and a page sampled to :data:`EXPLORER_POINTS` stays within what a browser opens; 48 px would take 2.25 times as much."""
OBJECT_COLUMNS = ("object_id", "class_name", "subset", "thumbnail")
REFERENCE_COLUMNS = ("x", "y", "class_name")
SCORE_KINDS = {"distance": "distance to class centre", "probability": "class probability"}
OPEN_SET = "unknown"
"""The subset of the open-set objects: classes the models never trained on."""
COLOUR_BY = ("true class", "call", "confidence")
FILTERS = {
    "correct": "correct",
    "wrong": "wrong",
    "rejected": "rejected (called unknown)",
    "called": "called (unlabelled)",
    "open-set": "open-set objects",
    "target": "target calls",
}
UNLABELLED_COLOR = "#DDDDDD"
ALARM_COLOR = OKABE_ITO[5]  # vermilion: the count of target calls, when there are any
OPEN_SET_MARKER = "triangle"
MARGIN = 0.05
"""Of each axis's span, left blank on both sides of a map."""
PLOT_SIZE = (640, 560)


@dataclass(frozen=True)
class ClassifierView:
    """One classifier's verdict on every object of the page, rows aligned with the objects table.

    ``name`` is ``"centroid"``, ``"gmm"``, ``"svm"``, ``"knn"`` or ``"softmax"``; ``call`` the class called per object,
    or ``"unknown"`` below the ``threshold``; ``confidence`` per object in [0, 1]; ``scores`` per object and class
    (columns are class names) the distance to each class centre (``score_kind`` ``"distance"``: centroid, GMM) or the
    class probability (``"probability"``: SVM, kNN, softmax).
    """

    name: str
    call: np.ndarray
    confidence: np.ndarray
    scores: pd.DataFrame
    score_kind: str
    threshold: float


@dataclass(frozen=True)
class ModelView:
    """One trained model (``loss``, ``trial``): the objects' map coordinates ``x``, ``y`` (aligned with the objects
    table) on axes named by ``axis`` (``"t-SNE"``, ``"UMAP"`` or ``"latent"``), its classifiers' verdicts, and
    optionally the ``reference`` it was trained on placed on the same map (columns ``x``, ``y``, ``class_name``),
    drawn small and faint under the objects, without thumbnails."""

    loss: str
    trial: int
    x: np.ndarray
    y: np.ndarray
    axis: str
    classifiers: list[ClassifierView]
    reference: pd.DataFrame | None = None

    @property
    def label(self) -> str:
        return f"{self.loss}, trial {self.trial}"


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> str:
    """A ``C x S x S`` patch as a PNG data URI (``"data:image/png;base64,..."``), as :func:`display_image` shows it:
    an 8-bit three-channel patch in colour, any other with its channels side by side; each channel shrunk to at most
    ``size`` pixels a side, so that a page of thousands of cells stays small."""
    patch = np.asarray(image)
    if patch.ndim != 3 or patch.shape[1] != patch.shape[2] or not patch.size:
        raise InputError(f"thumbnail: expected a C x S x S patch, got shape {patch.shape}")
    if size < 1:
        raise InputError(f"thumbnail: size must be at least 1 pixel, got {size}")
    shown = np.round(display_image(patch) * 255).astype(np.uint8)
    panels = [shown] if shown.ndim == 3 else np.split(shown, len(patch), axis=1)
    side = min(size, patch.shape[-1])
    # each channel on its own, so that shrinking blends no pixels across a channel boundary
    small = [np.asarray(Image.fromarray(panel).resize((side, side), Image.Resampling.BOX)) for panel in panels]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(small, axis=1)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explorer_page(
    objects: pd.DataFrame,
    models: list[ModelView],
    path,
    *,
    title: str,
    targets=(),
    limit: int = EXPLORER_POINTS,
    seed: int = 0,
) -> dict:
    """Write the explorer of ``objects`` on the maps of ``models`` to ``path`` (HTML) and return facts about it:
    ``{"objects": total, "shown": points drawn, "sampled": whether a sample was drawn, "bytes": file size}``.

    ``objects`` has one row per object (``object_id``, ``class_name``: the true class, empty or None where unknown,
    ``subset``, ``thumbnail``: a data URI of :func:`thumbnail`), aligned with every model's arrays; an object a model
    did not evaluate (a test image of another trial) has NaN coordinates in it and is not drawn with that model. ``targets`` are
    class names whose calls raise the alarm. Models are offered trial 0 first, in the given order of losses; the page
    opens on the first, its first classifier, coloured by true class (by call when no object is labelled). Above
    ``limit`` objects a class-balanced sample (``seed``) is drawn: per true class, and per call of that first
    classifier for unlabelled objects.
    """
    models = sorted(models, key=lambda model: model.trial)  # stable: the losses keep their order within a trial
    _validate(objects, models, limit)
    objects = objects.assign(class_name=objects["class_name"].fillna("").astype(str))
    truth = objects["class_name"].to_numpy()
    groups = np.where(truth != "", truth, np.asarray(models[0].classifiers[0].call, dtype=str))
    rows = balanced_subsample(groups, limit, seed)
    known, open_set = _class_names(objects, models)
    names = [*known, UNKNOWN_NAME]
    palette = {**colors(known), **dict.fromkeys([*open_set, UNKNOWN_NAME], UNKNOWN_COLOR), "": UNLABELLED_COLOR}
    views, meta = _view_columns(models, rows, names)
    shown = objects.iloc[rows]
    most_classes = max(len(scorer["classes"]) for view in meta for scorer in view["classifiers"])
    labelled = bool((shown["class_name"] != "").any())
    document = _document(
        _Page(
            points=_points_source(shown, most_classes),
            views=views,
            reference=_reference_source(models, palette),
            meta=meta,
            names=names,
            palette=palette,
            legends=_legend_entries(known, open_set, palette, unlabelled=bool((shown["class_name"] == "").any())),
            kinds=_filter_kinds(shown, labelled, targets),
            targets=[str(name) for name in targets],
            colour="true class" if labelled else "call",
        ),
        title=title,
        sampled=(len(rows), len(objects)) if len(rows) < len(objects) else None,
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(file_html(document, INLINE, title=title), encoding="utf-8")
    return {
        "objects": len(objects),
        "shown": len(rows),
        "sampled": len(rows) < len(objects),
        "bytes": path.stat().st_size,
    }


def evaluation_models(
    tables: dict[tuple[str, int], pd.DataFrame], thresholds: dict, maps: dict[tuple[str, int], LatentMap]
) -> tuple[pd.DataFrame, list[ModelView]]:
    """An experiment's evaluations as the page's input: ``(objects, models)``.

    ``tables`` holds the objects table (:func:`~cytodml.evaluate.objects.evaluation_objects`) of each model
    ``(loss, trial)``, restricted to the objects to draw; ``thresholds`` each model's threshold per classifier;
    ``maps`` each model's latent map, whose training images are drawn beneath. The objects are the union of the
    tables, by patch ``index`` (trials test different images), without ``thumbnail`` (the caller has the patches).
    """
    columns = ["index", "object_id", "class_name", "subset"]
    union = pd.concat([table[columns] for table in tables.values()]).drop_duplicates("index")
    union = union.sort_values("index").reset_index(drop=True)
    models = []
    for (loss, trial), table in tables.items():
        aligned = table.set_index("index").reindex(union["index"])
        classifiers = []
        for name in [name.removesuffix("_call") for name in table.columns if name.endswith("_call")]:
            kind, scores = classifier_evidence(aligned, name)
            classifiers.append(
                ClassifierView(
                    name=name,
                    call=aligned[f"{name}_call"].fillna("").to_numpy(dtype=object),
                    confidence=aligned[f"{name}_confidence"].to_numpy(dtype=np.float64),
                    scores=scores,
                    score_kind=kind,
                    threshold=thresholds[(loss, trial)][name],
                )
            )
        latent_map = maps[(loss, trial)]
        x, y = aligned["map_x"].to_numpy(np.float64), aligned["map_y"].to_numpy(np.float64)
        models.append(ModelView(loss, trial, x, y, latent_map.method, classifiers, latent_map.reference_points()))
    return union, models


# ---------------------------------------------------------------------------------------------------------- the input


def _validate(objects: pd.DataFrame, models: list[ModelView], limit: int) -> None:
    require_columns(objects, OBJECT_COLUMNS, "explorer objects")
    if objects.empty:
        raise InputError("explorer_page: no objects to show")
    if not models:
        raise InputError("explorer_page: no models given")
    if limit < 1:
        raise InputError(f"explorer_page: limit must be at least 1 object, got {limit}")
    labels = [model.label for model in models]
    if len(set(labels)) < len(labels):
        raise InputError(f"explorer_page: models given twice among {labels}")
    for model in models:
        _validate_model(model, len(objects))


def _validate_model(model: ModelView, n: int) -> None:
    where = f"explorer model {model.label!r}"
    for axis, values in (("x", model.x), ("y", model.y)):
        if len(values) != n:
            raise InputError(f"{where}: {len(values)} {axis} coordinates for {n} objects")
    on_map = _on_map(model)
    x, y = np.asarray(model.x, dtype=np.float64), np.asarray(model.y, dtype=np.float64)
    if not (np.isfinite(x[on_map]).all() and np.isfinite(y[on_map]).all()) or not on_map.any():
        raise InputError(f"{where}: coordinates must be finite, or NaN in both for an object not on this map")
    if not model.classifiers:
        raise InputError(f"{where}: no classifier")
    names = [scorer.name for scorer in model.classifiers]
    if len(set(names)) < len(names):
        raise InputError(f"{where}: classifiers given twice among {names}")
    for scorer in model.classifiers:
        _validate_classifier(scorer, n, on_map, f"{where}, classifier {scorer.name!r}")
    if model.reference is not None:
        require_columns(model.reference, REFERENCE_COLUMNS, f"{where}: reference")


def _on_map(model: ModelView) -> np.ndarray:
    """Which objects the model placed: an object another trial evaluated has NaN coordinates in this one's map."""
    return ~(np.isnan(np.asarray(model.x, dtype=np.float64)) & np.isnan(np.asarray(model.y, dtype=np.float64)))


def _validate_classifier(scorer: ClassifierView, n: int, on_map: np.ndarray, where: str) -> None:
    if scorer.score_kind not in SCORE_KINDS:
        raise InputError(f"{where}: score_kind {scorer.score_kind!r}, expected one of {', '.join(SCORE_KINDS)}")
    for what, values in (("calls", scorer.call), ("confidences", scorer.confidence), ("score rows", scorer.scores)):
        if len(values) != n:
            raise InputError(f"{where}: {len(values)} {what} for {n} objects")
    if scorer.scores.shape[1] == 0:
        raise InputError(f"{where}: scores have no class columns")
    confidence = np.asarray(scorer.confidence, dtype=np.float64)[on_map]
    if not ((confidence >= 0) & (confidence <= 1)).all():
        raise InputError(f"{where}: confidences must lie in [0, 1]")
    calls = np.asarray(scorer.call, dtype=object)[on_map]
    strange = set(map(str, calls)) - set(map(str, scorer.scores.columns)) - {UNKNOWN_NAME}
    if strange:
        raise InputError(f"{where}: calls {sorted(strange)} are neither a scored class nor {UNKNOWN_NAME!r}")


def _class_names(objects: pd.DataFrame, models: list[ModelView]) -> tuple[list[str], list[str]]:
    """The known classes (trained on, scored or labelled outside the open set), sorted as the static figures sort
    them so that a class has the same colour everywhere, and the open-set classes, which are drawn grey."""
    scored = {str(name) for model in models for scorer in model.classifiers for name in scorer.scores.columns}
    referenced = {
        str(name) for model in models if model.reference is not None for name in model.reference["class_name"]
    }
    open_rows = (objects["subset"] == OPEN_SET).to_numpy()
    labelled = set(objects.loc[~open_rows, "class_name"]) - {""}
    known = sorted(scored | referenced | labelled)
    return known, sorted(set(objects.loc[open_rows, "class_name"]) - set(known) - {""})


def _filter_kinds(shown: pd.DataFrame, labelled: bool, targets) -> list[str]:
    """The filter boxes the page offers: those of the kinds some drawn object can be (module docstring)."""
    kinds = ["correct", "wrong", "rejected"] if labelled else ["rejected"]
    if (shown["class_name"] == "").any():
        kinds.append("called")
    if (shown["subset"] == OPEN_SET).any():
        kinds.append("open-set")
    if len(targets):
        kinds.append("target")
    return kinds


# -------------------------------------------------------------------------------------------------------- the data


def _span(values: np.ndarray) -> list[float]:
    """An axis's start and end around ``values`` (NaN: objects not on the map), with a margin."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    pad = MARGIN * (high - low) or 1.0
    return [low - pad, high + pad]


def _reference_xy(model: ModelView) -> tuple[np.ndarray, np.ndarray]:
    if model.reference is None:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    return model.reference["x"].to_numpy(np.float32), model.reference["y"].to_numpy(np.float32)


def _view_columns(models: list[ModelView], rows: np.ndarray, names: list[str]) -> tuple[ColumnDataSource, list]:
    """Every view's numbers as columns of one source (``x/<m>``, ``y/<m>``, and per classifier ``call/<m>/<c>``,
    ``confidence/<m>/<c>``, ``score/<m>/<c>/<k>``), and what the page's script needs to know of each model: among
    it, the rows (first, end) of its reference points in :func:`_reference_source`, one model after another."""
    code = {name: number for number, name in enumerate(names)}
    dtype = np.min_scalar_type(len(names) - 1)
    columns, meta, first = {}, [], 0
    for m, model in enumerate(models):
        x, y = np.asarray(model.x, np.float32)[rows], np.asarray(model.y, np.float32)[rows]
        columns[f"x/{m}"], columns[f"y/{m}"] = x, y
        reference_x, reference_y = _reference_xy(model)
        scorers = []
        for c, scorer in enumerate(model.classifiers):
            key = f"{m}/{c}"
            calls = np.asarray(scorer.call, dtype=object)[rows]
            # an object off this model's map has no call: any code does, the page never draws it
            columns[f"call/{key}"] = np.array([code.get(str(call), code[UNKNOWN_NAME]) for call in calls], dtype=dtype)
            columns[f"confidence/{key}"] = np.asarray(scorer.confidence, np.float32)[rows]
            scores = scorer.scores.to_numpy(np.float32)[rows]
            for k in range(scores.shape[1]):
                columns[f"score/{key}/{k}"] = np.ascontiguousarray(scores[:, k])
            scorers.append(
                {
                    "name": scorer.name,
                    "kind": SCORE_KINDS[scorer.score_kind],
                    "threshold": float(scorer.threshold),
                    "classes": [str(name) for name in scorer.scores.columns],
                }
            )
        meta.append(
            {
                "label": model.label,
                "axis": model.axis,
                "x_range": _span(np.concatenate([x, reference_x])),
                "y_range": _span(np.concatenate([y, reference_y])),
                "reference": [first, first + len(reference_x)],
                "classifiers": scorers,
            }
        )
        first += len(reference_x)
    return ColumnDataSource(columns, name="views"), meta


def _reference_source(models: list[ModelView], palette: dict) -> ColumnDataSource:
    """The models' reference points, one model after another, coloured by class; the page's script shows those of
    the current model through an index filter."""
    xs, ys, colours = [], [], []
    for model in models:
        x, y = _reference_xy(model)
        names = [] if model.reference is None else model.reference["class_name"].astype(str)
        xs.append(x)
        ys.append(y)
        colours.extend(palette.get(name, UNLABELLED_COLOR) for name in names)
    return ColumnDataSource({"x": np.concatenate(xs), "y": np.concatenate(ys), "colour": colours}, name="reference")


def _points_source(shown: pd.DataFrame, scores: int) -> ColumnDataSource:
    """The drawn objects: what each is (constant), and the columns of the current view, blank until the page's
    script fills them from the views' columns."""
    n = len(shown)
    subset = shown["subset"].astype(str).to_numpy()
    data = {
        "object_id": shown["object_id"].astype(str).tolist(),
        "true_class": shown["class_name"].tolist(),
        "subset": subset.tolist(),
        "thumbnail": shown["thumbnail"].astype(str).tolist(),
        "marker": np.where(subset == OPEN_SET, OPEN_SET_MARKER, "circle").tolist(),
        "x": np.full(n, np.nan, np.float32),
        "y": np.full(n, np.nan, np.float32),
        "call": [""] * n,
        "outcome": [""] * n,
        "confidence": np.full(n, np.nan, np.float32),
        "colour": [UNLABELLED_COLOR] * n,
    }
    data.update({f"score_{k}": np.full(n, np.nan, np.float32) for k in range(scores)})
    return ColumnDataSource(data, name="points")


def _legend_entries(known: list[str], open_set: list[str], palette: dict, unlabelled: bool) -> dict:
    """(label, colour, marker) of the legend when colouring by true class and when colouring by call."""
    classes = [(name, palette[name], "circle") for name in known]
    by_class = classes + [(f"{name} (open-set)", UNKNOWN_COLOR, OPEN_SET_MARKER) for name in open_set]
    if unlabelled:
        by_class.append(("unlabelled", UNLABELLED_COLOR, "circle"))
    return {"true class": by_class, "call": [*classes, (f"{UNKNOWN_NAME} (rejected)", UNKNOWN_COLOR, "circle")]}


def _sequential_palette(steps: int = 256) -> list[str]:
    """The style's sequential colour map (:data:`~cytodml.report.style.SEQUENTIAL`) as hex colours."""
    return [to_hex(rgba) for rgba in mpl.colormaps[SEQUENTIAL](np.linspace(0, 1, steps))]


# -------------------------------------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class _Page:
    """What the page draws: the sources, the models' descriptions, the colours and the filter boxes."""

    points: ColumnDataSource
    views: ColumnDataSource
    reference: ColumnDataSource
    meta: list
    names: list
    palette: dict
    legends: dict
    kinds: list
    targets: list
    colour: str


def _document(page: _Page, title: str, sampled: tuple[int, int] | None) -> Document:
    """The page: the widgets left of the map, the tapped object right of it, the selection table and the CSV below.
    One script (:data:`UPDATE_JS`) redraws everything from the widgets' state, on every change and once the page has
    loaded, so that no state of the page depends on the order of the reader's clicks."""
    plot, parts = _map_plot(page)
    first = page.meta[0]
    model = Select(title="model", options=[view["label"] for view in page.meta], value=first["label"], name="model")
    names = [scorer["name"] for scorer in first["classifiers"]]
    classifier = Select(title="classifier", options=names, value=names[0], name="classifier")
    colour = Select(title="colour by", options=list(COLOUR_BY), value=page.colour, name="colour")
    filters = CheckboxGroup(
        labels=[FILTERS[kind] for kind in page.kinds], active=list(range(len(page.kinds))), name="filters"
    )
    status = Div(name="status", width=220)
    details = Div(name="details", width=280)
    selection = ColumnDataSource({"object_id": [], "true_class": [], "call": [], "confidence": []}, name="selection")
    update = CustomJS(
        args=dict(
            parts,
            points=page.points,
            views=page.views,
            meta=page.meta,
            class_names=page.names,
            class_colours=page.palette,
            sequential=_sequential_palette(),
            kinds=page.kinds,
            targets=page.targets,
            unknown=UNKNOWN_NAME,
            open_set_subset=OPEN_SET,
            alarm=ALARM_COLOR,
            model=model,
            classifier=classifier,
            colour=colour,
            filters=filters,
            status=status,
            details=details,
            selection=selection,
        ),
        code=UPDATE_JS,
    )
    for widget in (model, classifier, colour):
        widget.js_on_change("value", update)
    filters.js_on_change("active", update)
    page.points.selected.js_on_change("indices", update)
    controls = column(model, classifier, colour, Div(text="<b>show</b>"), filters, status, width=240)
    layout = column(
        _header(title, sampled),
        row(controls, plot, details),
        row(_selection_table(selection), _save_controls(selection)),
    )
    document = Document()
    document.add_root(layout)
    document.title = title
    document.js_on_event(DocumentReady, update)
    return document


def _header(title: str, sampled: tuple[int, int] | None) -> Div:
    note = (
        "One point per object on the model's 2-D map of its latent space, faint points the images it trained on; "
        "hover over a point to see the cell, tap it to keep it beside the map. Triangles are open-set objects."
    )
    text = f"<h2>{html.escape(title)}</h2><p>{note}</p>"
    if sampled:
        text += f"<p><b>showing {sampled[0]:,} of {sampled[1]:,} objects, sampled per class</b></p>"
    return Div(text=text, name="header", width=1200)


def _map_plot(page: _Page):
    """The map and the models the page's script changes (``parts``, by the names the script uses)."""
    width, height = PLOT_SIZE
    x_range, y_range = Range1d(0, 1, name="x_range"), Range1d(0, 1, name="y_range")
    plot = figure(
        width=width,
        height=height,
        x_range=x_range,
        y_range=y_range,
        tools="pan,wheel_zoom,reset,save",
        active_scroll="wheel_zoom",
        toolbar_location="above",
        name="map",
    )
    reference_filter = IndexFilter(indices=[], name="reference_filter")
    plot.scatter(
        "x",
        "y",
        source=page.reference,
        view=CDSView(filter=reference_filter),
        size=4,
        color="colour",
        alpha=0.3,
        name="reference_points",
    )
    shown = BooleanFilter(booleans=[True] * len(page.points.data["object_id"]), name="shown")
    objects = plot.scatter(
        "x",
        "y",
        source=page.points,
        view=CDSView(filter=shown),
        marker="marker",
        size=8,
        fill_color="colour",
        line_color="colour",
        fill_alpha=0.8,
        name="objects",
    )
    hover = HoverTool(renderers=[objects], tooltips="@object_id", name="hover")
    plot.add_tools(hover, LassoSelectTool(renderers=[objects]), BoxSelectTool(renderers=[objects]))
    plot.add_tools(TapTool(renderers=[objects]))
    legends = {by: _legend(plot, entries, by) for by, entries in page.legends.items()}
    colour_bar = ColorBar(
        color_mapper=LinearColorMapper(palette=_sequential_palette(), low=0, high=1),
        title="confidence",
        visible=False,
        name="colour_bar",
    )
    plot.add_layout(colour_bar, "right")
    parts = {
        "shown": shown,
        "reference_filter": reference_filter,
        "hover": hover,
        "x_range": x_range,
        "y_range": y_range,
        "x_axis": plot.xaxis[0],
        "y_axis": plot.yaxis[0],
        "class_legend": legends["true class"],
        "call_legend": legends["call"],
        "colour_bar": colour_bar,
    }
    return plot, parts


def _legend(plot, entries, by: str) -> Legend:
    """A legend of fixed colours, whatever the view: each entry a renderer of one point off the map (NaN; with no
    point at all, a legend draws no marker)."""
    items = [
        LegendItem(label=label, renderers=[plot.scatter([np.nan], [np.nan], marker=marker, color=colour, size=8)])
        for label, colour, marker in entries
    ]
    legend = Legend(items=items, title=by, visible=False, name=f"legend {by}")
    plot.add_layout(legend, "right")
    return legend


def _selection_table(selection: ColumnDataSource) -> DataTable:
    columns = [
        TableColumn(field="object_id", title="object id"),
        TableColumn(field="true_class", title="true class"),
        TableColumn(field="call", title="call"),
        TableColumn(field="confidence", title="confidence", formatter=NumberFormatter(format="0.000")),
    ]
    return DataTable(
        source=selection, columns=columns, width=640, height=220, reorderable=False, name="selection_table"
    )


def _save_controls(selection: ColumnDataSource):
    label = TextInput(title="label of the selected objects", value="new_class", name="label")
    save = Button(label="save selection as CSV", name="save_csv")
    save.js_on_event("button_click", CustomJS(args={"selection": selection, "label": label}, code=SAVE_JS))
    note = Div(
        text="Lasso or box-select points to list them; the CSV (<code>object_id,label</code>) goes to "
        "<code>cytodml gallery --labels &lt;file&gt;</code>.",
        width=300,
    )
    return column(label, save, note)


UPDATE_JS = """
// Draw what the widgets describe: the model's map, the classifier's calls, the colouring, the filters, the
// selection. Every change runs all of it: a pass over the objects costs little next to drawing them.
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const m = meta.findIndex((view) => view.label === model.value);
const view = meta[m];
const names = view.classifiers.map((scorer) => scorer.name);
if (names.join("\\n") !== classifier.options.join("\\n")) classifier.options = names;
if (!names.includes(classifier.value)) {
  classifier.value = names[0];  // whose change runs this again
  return;
}
const c = names.indexOf(classifier.value);
const scorer = view.classifiers[c];
const key = `${m}/${c}`;
const data = {...points.data};
const n = data.object_id.length;
data.x = views.data[`x/${m}`];
data.y = views.data[`y/${m}`];
data.call = Array.from(views.data[`call/${key}`], (code) => class_names[code]);
data.confidence = views.data[`confidence/${key}`];
scorer.classes.forEach((_, k) => { data[`score_${k}`] = views.data[`score/${key}/${k}`]; });

// the filters, as the module docstring of cytodml.report.explorer defines them
const ticked = new Set(filters.active.map((box) => kinds[box]));
const booleans = new Array(n);
const counts = {correct: 0, wrong: 0, rejected: 0, called: 0, target: 0, drawn: 0};
data.outcome = new Array(n);
let on_map = 0;
for (let i = 0; i < n; i++) {
  if (Number.isNaN(data.x[i])) {  // evaluated in another trial: not on this model's map
    booleans[i] = false;
    data.outcome[i] = "";
    continue;
  }
  on_map += 1;
  const truth = data.true_class[i], call = data.call[i];
  const outcome = call === unknown ? "rejected" : truth === "" ? "called" : call === truth ? "correct" : "wrong";
  const target = targets.includes(call), open_set = data.subset[i] === open_set_subset;
  data.outcome[i] = outcome;
  booleans[i] = ticked.has(outcome) && (!open_set || ticked.has("open-set")) && (!target || ticked.has("target"));
  counts[outcome] += 1;
  counts.target += target;
  counts.drawn += booleans[i];
}

const by = colour.value, steps = sequential.length;
data.colour = by === "confidence"
  ? Array.from(data.confidence, (value) => sequential[Math.min(steps - 1, Math.floor(value * steps))])
  : (by === "call" ? data.call : data.true_class).map((name) => class_colours[name]);
points.data = data;
shown.booleans = booleans;
const [first, end] = view.reference;
reference_filter.indices = Array.from({length: end - first}, (_, i) => first + i);
class_legend.visible = by === "true class";
call_legend.visible = by === "call";
colour_bar.visible = by === "confidence";
// a new model's map brings its own extent; the same model keeps the reader's zoom
for (const [range, [start, stop]] of [[x_range, view.x_range], [y_range, view.y_range]]) {
  if (range.reset_start !== start || range.reset_end !== stop) {
    range.setv({start, end: stop, reset_start: start, reset_end: stop});
  }
}
x_axis.axis_label = `${view.axis} 1`;
y_axis.axis_label = `${view.axis} 2`;

// one description of an object serves the tooltip (placeholders) and the tapped object's card (values)
const numeric = (field) => field === "confidence" || field.startsWith("score_");
const card = (show) =>
  `<div style="max-width: 280px"><img src="${show("thumbnail")}" style="height: 96px; image-rendering: pixelated">`
  + `<div><b>${show("object_id")}</b></div>`
  + `<div>true class: ${show("true_class")} (${show("subset")})</div>`
  + `<div>${esc(scorer.name)} call: <b>${show("call")}</b>, ${show("outcome")}; confidence ${show("confidence")}</div>`
  + `<div><i>${esc(scorer.kind)}</i> (threshold ${esc(scorer.threshold.toPrecision(3))}):</div>`
  + scorer.classes.map((name, k) => `<div>${esc(name)}: ${show(`score_${k}`)}</div>`).join("")
  + "</div>";
hover.tooltips = card((field) => (numeric(field) ? `@{${field}}{0.000}` : `@{${field}}`));

const chosen = points.selected.indices.filter((i) => booleans[i]).sort((a, b) => a - b);
selection.data = {
  object_id: chosen.map((i) => data.object_id[i]),
  true_class: chosen.map((i) => data.true_class[i]),
  call: chosen.map((i) => data.call[i]),
  confidence: chosen.map((i) => data.confidence[i]),
};
details.text = chosen.length
  ? card((field) => esc(numeric(field) ? data[field][chosen[0]].toFixed(3) : data[field][chosen[0]]))
  : "<i>Tap a point to keep its cell here; lasso or box-select points to list them below.</i>";

const tally = kinds.filter((kind) => kind in counts && kind !== "target").map((kind) => `${kind} ${counts[kind]}`);
let text = `<b>${counts.drawn}</b> of ${on_map} objects drawn<br>${tally.join(" · ")}`;
if (targets.length) {
  const style = counts.target ? `color: ${alarm}; font-weight: bold` : "";
  text += `<br><span style="${style}">${counts.target} called ${targets.map(esc).join(", ")}</span>`;
}
status.text = text;
"""

SAVE_JS = """
// The listed objects (selected and drawn) as `object_id,label`: a labels file of `cytodml gallery --labels`.
const ids = selection.data.object_id;
if (!ids.length) return;
const quote = (text) => (/[",\\r\\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text);
const name = label.value.trim() || "new_class";
const lines = ["object_id,label", ...ids.map((id) => `${quote(id)},${quote(name)}`)];
const link = document.createElement("a");
link.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"}));
link.download = `${name.replace(/[^\\w.-]+/g, "_")}.csv`;
document.body.appendChild(link);
link.click();
link.remove();
setTimeout(() => URL.revokeObjectURL(link.href), 1000);
"""
