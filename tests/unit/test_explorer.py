"""The latent-space explorer: the page builder's contract, then the page itself in a real headless Chromium.

Objects: three known classes in clusters and an open-set class in the middle, all labelled; three models (two losses,
two trials), each with a centroid (distances) and a kNN (probabilities) classifier that call by the nearest cluster,
so that every object's outcome is known here and the filters' counts can be checked in the browser. The browser tests
drive Debian's Chromium through playwright; they skip where it is missing, except in CI (``CI`` set), where they fail.
"""

import base64
import io
import os
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytodml.errors import InputError
from cytodml.evaluate.latent_map import LatentMap
from cytodml.report.explorer import ClassifierView, ModelView, evaluation_models, explorer_page, thumbnail

KNOWN = ["bead", "crypto", "debris"]
OPEN_SET = "pollen"
PER_CLASS = 15
SIZE = 16
TARGETS = ("crypto",)


def make_objects(seed: int = 0) -> pd.DataFrame:
    """15 objects of each known class (test) and 15 of an open-set class (subset unknown), with 2-channel thumbnails."""
    rng = np.random.default_rng(seed)
    classes = [*KNOWN, OPEN_SET]
    names = np.repeat(classes, PER_CLASS)
    subsets = np.where(names == OPEN_SET, "unknown", "test")
    patches = rng.integers(0, 4096, size=(len(names), 2, SIZE, SIZE)).astype(np.uint16)
    return pd.DataFrame(
        {
            "object_id": [f"img{i:03d}" for i in range(len(names))],
            "class_name": names,
            "subset": subsets,
            "thumbnail": [thumbnail(patch, size=8) for patch in patches],
        }
    )


def make_classifier(name: str, kind: str, centres: np.ndarray, xy: np.ndarray) -> ClassifierView:
    """Calls by the nearest class centre on the map, rejected beyond a radius: the open-set objects in the middle
    are rejected, a few known ones (those pushed off their cluster) are wrong."""
    distances = np.linalg.norm(xy[:, None, :] - centres[None], axis=2)
    nearest = distances.argmin(axis=1)
    call = np.array(KNOWN, dtype=object)[nearest]
    call[distances.min(axis=1) > 2.0] = "unknown"
    scores = pd.DataFrame(distances if kind == "distance" else np.exp(-distances), columns=KNOWN)
    if kind == "probability":
        scores = scores.div(scores.sum(axis=1), axis=0)
    confidence = np.exp(-distances.min(axis=1))
    return ClassifierView(name, call, confidence, scores, kind, threshold=float(np.exp(-2.0)))


def make_model(loss: str, trial: int, objects: pd.DataFrame, seed: int) -> ModelView:
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(len(KNOWN)) / len(KNOWN)
    centres = 5 * np.c_[np.cos(angles), np.sin(angles)]
    where = {name: centres[i] for i, name in enumerate(KNOWN)} | {OPEN_SET: np.zeros(2)}
    xy = np.array([where[name] for name in objects["class_name"]]) + rng.normal(0, 0.6, (len(objects), 2))
    xy[::10] = centres[(np.arange(len(objects))[::10] + 1) % len(KNOWN)]  # every tenth object lands in a wrong cluster
    spots = np.repeat(centres, 5, axis=0) + rng.normal(0, 0.6, (5 * len(KNOWN), 2))
    reference = pd.DataFrame({"x": spots[:, 0], "y": spots[:, 1], "class_name": np.repeat(KNOWN, 5)})
    classifiers = [
        make_classifier("centroid", "distance", centres, xy),
        make_classifier("knn", "probability", centres, xy),
    ]
    return ModelView(loss, trial, xy[:, 0], xy[:, 1], "t-SNE", classifiers, reference)


def make_models(objects: pd.DataFrame) -> list[ModelView]:
    """Given trial 1 first, so the page's ordering (trial 0 first) shows."""
    return [
        make_model("triplet", 1, objects, 1),
        make_model("triplet", 0, objects, 2),
        make_model("arcface", 0, objects, 3),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    objects = make_objects()
    models = make_models(objects)
    path = tmp_path_factory.mktemp("explorer") / "explorer.html"
    facts = explorer_page(objects, models, path, title="Latent space <test>", targets=TARGETS)
    return objects, models, path, facts


# -------------------------------------------------------------------------------------------------- the page builder


def test_page_is_self_contained(built):
    objects, _, path, facts = built
    text = path.read_text(encoding="utf-8")
    assert facts == {"objects": len(objects), "shown": len(objects), "sampled": False, "bytes": path.stat().st_size}
    assert not re.search(r"<script[^>]*\bsrc=", text), "a script is loaded from elsewhere"
    assert not re.search(r"<link[^>]*\bhref=\"https?://", text), "a style sheet is loaded from elsewhere"
    assert "Latent space &lt;test&gt;" in text
    assert "showing" not in text
    assert "cytodml gallery --labels" in text


def test_sampling_keeps_class_shares_and_says_so(tmp_path):
    objects = make_objects()
    # the first class is rare: a balanced sample keeps it whole and thins the others equally
    objects = objects.drop(index=range(10)).reset_index(drop=True)
    models = make_models(objects)
    facts = explorer_page(objects, models, tmp_path / "page.html", title="sampled", limit=30)
    assert facts["sampled"] and facts["shown"] == 30 and facts["objects"] == len(objects)
    text = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert f"showing 30 of {len(objects)} objects, sampled per class" in text
    drawn = [uri for uri in objects["thumbnail"] if uri in text]
    kept = objects[objects["thumbnail"].isin(drawn)]
    # the thumbnails of the dropped objects never reach the page
    assert len(kept) == 30
    # water-filled: the 5 beads whole, the other 25 rows shared as equally as they go
    assert kept["class_name"].value_counts().to_dict() == {"bead": 5, "crypto": 8, "debris": 8, OPEN_SET: 9}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda objects, models: (objects, []), "no models"),
        (lambda objects, models: (objects.iloc[:-1], models), "for 59 objects"),
        (lambda objects, models: (objects, [replace(models[0], classifiers=[])]), "no classifier"),
        (lambda objects, models: (objects.drop(columns="thumbnail"), models), "thumbnail"),
        (lambda objects, models: (objects, [with_classifier(models[0], score_kind="similarity")]), "score_kind"),
        (lambda objects, models: (objects, [with_classifier(models[0], call=np.full(60, "cyst"))]), "cyst"),
        (lambda objects, models: (objects, [replace(models[0], x=models[0].x[:-1])]), "59 x coordinates"),
    ],
)
def test_bad_input_is_refused(tmp_path, change, message):
    objects = make_objects()
    objects, models = change(objects, make_models(objects))
    with pytest.raises(InputError, match=message):
        explorer_page(objects, models, tmp_path / "page.html", title="bad")
    assert not (tmp_path / "page.html").exists()


def with_classifier(model: ModelView, **changes) -> ModelView:
    return replace(model, classifiers=[replace(model.classifiers[0], **changes)])


@pytest.mark.parametrize(
    ("channels", "dtype", "width"), [(2, np.uint16, 2 * 12), (3, np.uint8, 12), (1, np.float32, 12)]
)
def test_thumbnail_is_a_png_of_the_channels_side_by_side(channels, dtype, width):
    patch = (np.random.default_rng(0).random((channels, 24, 24)) * 200).astype(dtype)
    uri = thumbnail(patch, size=12)
    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == "PNG"
    assert image.size == (width, 12)
    assert image.mode == ("RGB" if channels == 3 else "L")


def test_thumbnail_does_not_enlarge_and_refuses_a_non_patch():
    image = Image.open(io.BytesIO(base64.b64decode(thumbnail(np.zeros((2, 6, 6)), size=48).split(",", 1)[1])))
    assert image.size == (12, 6)
    with pytest.raises(InputError, match="C x S x S"):
        thumbnail(np.zeros((6, 6)))


# ------------------------------------------------------------------------------------------------------ in a browser

READY = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].get_model_by_name('status').text !== ''"
DRAWN = """() => {
  const document = Bokeh.documents[0];
  return {
    drawn: document.get_model_by_name("objects").view.indices.count,
    booleans: Array.from(document.get_model_by_name("shown").booleans),
    points: document.get_model_by_name("points").get_length(),
  };
}"""
# where point i of the objects' source lies on the page, in CSS pixels
PIXEL = """(i) => {
  const document = Bokeh.documents[0];
  const view = Bokeh.index.find_one(document.get_model_by_name("map"));
  const points = document.get_model_by_name("points");
  const canvas = view.canvas_view.el.getBoundingClientRect();
  return [canvas.left + view.frame.x_scale.compute(points.data.x[i]),
          canvas.top + view.frame.y_scale.compute(points.data.y[i])];
}"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (Debian's) for the module: skipped where none is installed, except in CI, which installs
    it (.ci/run), so that the browser tests never go missing there unnoticed."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    missing = None if os.path.exists(executable) else f"Chromium not found at {executable} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing}: CI must run the explorer's browser tests")
    if missing:
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--headless=new"])
        yield chromium
        chromium.close()


def open_page(browser, path):
    """The page at ``path`` once its script has drawn the first view, and the list its errors go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_function(READY, timeout=20_000)
    return page, errors


@pytest.fixture
def loaded(browser, built):
    objects, models, path, _ = built
    page, errors = open_page(browser, path)
    yield page, errors, objects, models
    page.close()


def drawn(page, count: int) -> dict:
    """The drawn objects, once ``count`` are (the page's script may run a moment after the event that starts it)."""
    page.wait_for_function(f"() => ({DRAWN})().drawn === {count}", timeout=5_000)
    return page.evaluate(DRAWN)


def default_view(models: list[ModelView]) -> ModelView:
    """The model the page opens on: trial 0 first, then the given order of losses."""
    return next(model for model in models if model.trial == 0)


def outcomes(objects: pd.DataFrame, scorer: ClassifierView) -> np.ndarray:
    call, truth = np.asarray(scorer.call, dtype=str), objects["class_name"].to_numpy(dtype=str)
    return np.where(call == "unknown", "rejected", np.where(call == truth, "correct", "wrong"))


def test_page_loads_and_draws_every_object(loaded, tmp_path):
    page, errors, objects, models = loaded
    assert drawn(page, len(objects))["points"] == len(objects)
    names = "() => ['model', 'classifier', 'colour'].map((name) => Bokeh.documents[0].get_model_by_name(name).value)"
    assert page.evaluate(names) == ["triplet, trial 0", "centroid", "true class"]
    options = page.evaluate("() => Bokeh.documents[0].get_model_by_name('model').options")
    assert options == ["triplet, trial 0", "arcface, trial 0", "triplet, trial 1"]
    page.screenshot(path=tmp_path / "explorer.png")
    assert (tmp_path / "explorer.png").stat().st_size > 20_000
    assert errors == []


def test_hover_shows_the_cell(loaded):
    from playwright.sync_api import expect  # installed wherever the browser fixture did not skip

    page, errors, objects, models = loaded
    xy = np.c_[default_view(models).x, default_view(models).y]
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.diag(np.full(len(xy), np.inf))
    loner = int(gaps.min(axis=1).argmax())  # no other object under the mouse
    page.mouse.move(*page.evaluate(PIXEL, loner))
    tooltip = page.locator(".bk-tooltip-content")
    expect(tooltip.locator("img")).to_have_attribute("src", objects["thumbnail"][loner])
    expect(tooltip).to_contain_text(objects["object_id"][loner])
    expect(tooltip).to_contain_text("distance to class centre")
    page.locator("select").nth(1).select_option("knn")
    page.mouse.move(5, 5)
    page.mouse.move(*page.evaluate(PIXEL, loner))
    expect(tooltip).to_contain_text("class probability")
    assert errors == []


def test_each_filter_box_hides_exactly_its_objects(loaded):
    page, errors, objects, models = loaded
    scorer = default_view(models).classifiers[0]
    kinds = {
        "correct": outcomes(objects, scorer) == "correct",
        "wrong": outcomes(objects, scorer) == "wrong",
        "rejected (called unknown)": outcomes(objects, scorer) == "rejected",
        "open-set objects": (objects["subset"] == "unknown").to_numpy(),
        "target calls": np.isin(scorer.call, TARGETS),
    }
    labels = page.evaluate("() => Bokeh.documents[0].get_model_by_name('filters').labels")
    assert labels == list(kinds)
    for label, members in kinds.items():
        assert 0 < members.sum() < len(objects), f"the fixture has no test of box {label!r}"
        page.get_by_text(label, exact=True).click()
        assert drawn(page, len(objects) - members.sum())["booleans"] == (~members).tolist(), label
        page.get_by_text(label, exact=True).click()
        drawn(page, len(objects))
    assert errors == []


def test_switching_the_model_moves_the_points(loaded):
    page, errors, objects, models = loaded
    page.locator("select").nth(0).select_option("triplet, trial 1")
    first = "Bokeh.documents[0].get_model_by_name('points').data.x[0]"
    page.wait_for_function(f"() => Math.abs({first} - {models[0].x[0]}) < 1e-4")
    x = page.evaluate("() => Array.from(Bokeh.documents[0].get_model_by_name('points').data.x)")
    np.testing.assert_allclose(x, models[0].x, rtol=1e-6)
    page.locator("select").nth(2).select_option("confidence")
    visible = "(name) => Bokeh.documents[0].get_model_by_name(name).visible"
    assert page.evaluate(visible, "colour_bar") and not page.evaluate(visible, "legend true class")
    assert errors == []


def test_a_box_selection_is_listed_and_saved_as_labels(loaded):
    page, errors, objects, models = loaded
    page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('map').toolbar.tools"
        ".find((tool) => tool.type === 'BoxSelectTool').active = true"
    )
    chosen = np.flatnonzero(objects["class_name"] == "debris")[:4]
    corners = np.array([page.evaluate(PIXEL, int(i)) for i in chosen])
    low, high = corners.min(axis=0) - 3, corners.max(axis=0) + 3
    page.mouse.move(*low)
    page.mouse.down()
    page.mouse.move(*(low + high) / 2, steps=5)
    page.mouse.move(*high, steps=5)
    page.mouse.up()
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('selection').get_length() > 0")
    pixels = np.array([page.evaluate(PIXEL, i) for i in range(len(objects))])
    inside = np.flatnonzero(((pixels >= low) & (pixels <= high)).all(axis=1))
    listed = page.evaluate("() => Bokeh.documents[0].get_model_by_name('selection').data.object_id")
    assert listed == objects["object_id"].to_numpy()[inside].tolist() and len(listed) >= len(chosen)
    page.locator("input[type=text]").fill("blast, maybe")
    page.locator("input[type=text]").press("Enter")
    with page.expect_download() as download:
        page.get_by_role("button", name="save selection as CSV").click()
    saved = pd.read_csv(download.value.path(), dtype=str)
    assert saved.columns.tolist() == ["object_id", "label"]
    assert saved["object_id"].tolist() == listed and set(saved["label"]) == {"blast, maybe"}
    assert errors == []


def test_a_sample_without_labels_is_coloured_by_call(browser, tmp_path):
    objects = make_objects().assign(class_name=None, subset="sample")
    models = make_models(make_objects())
    path = tmp_path / "sample.html"
    facts = explorer_page(objects, models, path, title="sample", targets=TARGETS, limit=30)
    page, errors = open_page(browser, path)
    assert drawn(page, 30)["points"] == facts["shown"] == 30
    assert page.evaluate("() => Bokeh.documents[0].get_model_by_name('colour').value") == "call"
    labels = page.evaluate("() => Bokeh.documents[0].get_model_by_name('filters').labels")
    assert labels == ["rejected (called unknown)", "called (unlabelled)", "target calls"]
    assert errors == []
    page.close()


def off_the_map(model: ModelView, rows: slice) -> ModelView:
    """``model`` without the objects of ``rows``: another trial tested them (NaN coordinates, no call)."""
    x, y = model.x.copy(), model.y.copy()
    x[rows] = y[rows] = np.nan
    blank = []
    for scorer in model.classifiers:
        call, confidence = np.array(scorer.call, dtype=object), np.array(scorer.confidence, dtype=np.float64)
        call[rows], confidence[rows] = "", np.nan
        blank.append(replace(scorer, call=call, confidence=confidence))
    return replace(model, x=x, y=y, classifiers=blank)


def test_objects_another_trial_tested_are_off_this_models_map(browser, tmp_path):
    objects = make_objects()
    models = [off_the_map(model, slice(45, 60)) if model.trial == 0 else model for model in make_models(objects)]
    explorer_page(objects, models, tmp_path / "trials.html", title="trials")
    page, errors = open_page(browser, tmp_path / "trials.html")
    assert drawn(page, 45)["points"] == 60  # trial 0 opens: its 45 objects
    assert "<b>45</b> of 45 objects drawn" in page.evaluate("() => Bokeh.documents[0].get_model_by_name('status').text")
    page.locator("select").nth(0).select_option("triplet, trial 1")
    drawn(page, 60)
    assert errors == []
    page.close()
    half = replace(models[1], y=np.r_[models[1].y[:45], np.zeros(15)])  # NaN in x only: not an object off the map
    with pytest.raises(InputError, match="NaN in both for an object not on this map"):
        explorer_page(objects, [half], tmp_path / "bad.html", title="bad")


def test_an_experiments_trials_are_joined_by_patch_index():
    """Each trial's objects table (cytodml.evaluate.objects) holds its own test images: the page holds their union,
    and each model has coordinates, calls and scores for its own."""
    tables = {}
    for trial, indices in ((0, [2, 4, 6]), (1, [4, 6, 8])):
        tables[("triplet", trial)] = pd.DataFrame(
            {
                "index": indices,
                "object_id": [f"cell/{index}" for index in indices],
                "class_name": ["bead", "debris", "bead"],
                "subset": "test",
                "map_x": [0.0, 1.0, 2.0],
                "map_y": [0.5, 1.5, 2.5],
                "centroid_call": ["bead", "unknown", "bead"],
                "centroid_confidence": [0.99, 0.4, 0.97],
                "centroid_distance_bead": [0.1, 3.0, 0.2],
                "centroid_distance_debris": [4.0, 2.0, 3.5],
            }
        )
    thresholds = {run: {"centroid": 0.9} for run in tables}
    fitted = LatentMap(
        np.zeros((2, 4), np.float32), np.array([[0.0, 0.0], [1.0, 1.0]]), np.array(["bead", "debris"]), "t-SNE", 5.0, 0
    )
    objects, models = evaluation_models(tables, thresholds, {run: fitted for run in tables})
    assert objects["index"].tolist() == [2, 4, 6, 8] and objects["object_id"].tolist()[-1] == "cell/8"
    first, second = models
    np.testing.assert_array_equal(first.x, [0.0, 1.0, 2.0, np.nan])
    np.testing.assert_array_equal(second.y, [np.nan, 0.5, 1.5, 2.5])
    scorer = second.classifiers[0]
    assert (scorer.name, scorer.score_kind, scorer.threshold) == ("centroid", "distance", 0.9)
    assert list(scorer.call) == ["", "bead", "unknown", "bead"] and list(scorer.scores.columns) == ["bead", "debris"]
    assert first.reference["class_name"].tolist() == ["bead", "debris"] and first.axis == "t-SNE"
