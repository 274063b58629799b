"""One trial's evaluation end to end on synthetic embeddings tables, and the files it writes."""

import logging

import joblib
import numpy as np
import pandas as pd
import pytest

from cytodml.config import fill
from cytodml.errors import InputError
from cytodml.evaluate.detection import choose_threshold
from cytodml.evaluate.run import evaluate_trial, write_trial

# Known classes on a triangle in the plane z = 0; their data-set labels are not 0..2 and not in class order, as when
# an open-set class sits between them in the sorted class list.
CENTRES = {"giardia": (0.0, 0.0, 0.0), "cryptosporidium": (10.0, 0.0, 0.0), "debris": (5.0, 8.66, 0.0)}
LABELS = {"cryptosporidium": 0, "debris": 1, "pollen": 2, "giardia": 3}
CLASS_NAMES = ["giardia", "cryptosporidium", "debris"]  # the model's class order
# The unseen class sits far above the triangle's centre, as far from every known centre.
POLLEN = (5.0, 2.887, 30.0)
EXPERIMENT = {
    "protocol": "full",
    "classifiers": {"centroid": {}, "gmm": {"components": 1, "covariance": "full"}, "knn": {"k": 5}},
    "threshold": 0.98,
    "targets": ["cryptosporidium"],
    "open_set": ["pollen"],
    "spiked": {"samples": 3, "blanks": 2, "spikes": [2, 4]},
}


# Training embeddings: each class centre plus this symmetric pattern, so the fitted centres are the true ones.
PATTERN = np.concatenate([scale * sign * np.eye(3) for scale in (0.3, 0.6) for sign in (1, -1)])


def embeddings_table(seed: int, per_class: int = 45, softmax: bool = False) -> pd.DataFrame:
    """Per known class: len(PATTERN) train rows, then ``per_class`` rows alternating val, test, test (noisy);
    ``per_class`` pollen rows ("unknown") a hair's breadth from the axis through the triangle's centre."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, centre in [*CENTRES.items(), ("pollen", POLLEN)]:
        if name == "pollen":
            points = np.array(POLLEN) + rng.normal(scale=(0.01, 0.01, 1.0), size=(per_class, 3))
            subsets = ["unknown"] * per_class
        else:
            points = np.concatenate([centre + PATTERN, centre + rng.normal(scale=0.5, size=(per_class, 3))])
            subsets = ["train"] * len(PATTERN) + [("val", "test", "test")[k % 3] for k in range(per_class)]
        for subset, embedding in zip(subsets, points):
            row = {"subset": subset, "label": LABELS[name], "class_name": name, "embedding": embedding.tolist()}
            if softmax:
                # a confident network: nearly all mass on the nearest known class
                logits = -np.array([np.sum((embedding - CENTRES[c]) ** 2) for c in CLASS_NAMES])
                probability = np.exp(logits - logits.max())
                row["probability"] = (probability / probability.sum()).tolist()
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.assign(index=np.arange(len(table)) * 3)[["index", *table.columns]]


@pytest.fixture(scope="module")
def softmax_results():
    return evaluate_trial(embeddings_table(0, softmax=True), EXPERIMENT, CLASS_NAMES, "softmax", seed=4)


def metric(results, classifier, view, name):
    table = results["metrics"]
    rows = table[(table["classifier"] == classifier) & (table["view"] == view) & (table["metric"] == name)]
    assert len(rows) == 1, (classifier, view, name)
    return rows["value"].iloc[0]


def test_separated_classes_and_a_far_open_set_class(softmax_results):
    results = softmax_results
    for classifier in ("centroid", "gmm", "knn", "softmax"):
        assert metric(results, classifier, "multiclass", "accuracy") == 1.0
        assert metric(results, classifier, "rare", "sensitivity") == 1.0
        assert metric(results, classifier, "open_set", "unknown_total") == 45
        assert metric(results, classifier, "open_set", "known_total") == 90
    # pollen is as far from every known centre: the centroid posterior is split three ways, far below 0.98
    assert metric(results, "centroid", "open_set", "false_alarms") == 0
    assert metric(results, "centroid", "open_set", "known_lost") == 0
    assert metric(results, "centroid", "open_set", "auroc") == 1.0
    assert metric(results, "embedding", "latent", "silhouette") > 0.8
    assert metric(results, "embedding", "latent", "precision_at_1") == 1.0
    open_set = results["open_set"].set_index("classifier")
    assert open_set.loc["centroid", "false_alarms"] == 0 and open_set.loc["centroid", "threshold"] == 0.98


def test_binary_view_is_targets_against_the_rest_on_the_arg_max_without_threshold(softmax_results):
    predictions = softmax_results["predictions"]
    targets = [LABELS[name] for name in EXPERIMENT["targets"]]
    for classifier in ("centroid", "gmm", "knn", "softmax"):
        test = predictions[(predictions["classifier"] == classifier) & (predictions["subset"] == "test")]
        truth, called = test["label"].isin(targets), test["predicted"].isin(targets)
        tp, fn = int((truth & called).sum()), int((truth & ~called).sum())
        assert metric(softmax_results, classifier, "binary", "tp") == tp
        assert metric(softmax_results, classifier, "binary", "fn") == fn
        # the rare view counts only calls at the threshold: never more true positives
        assert metric(softmax_results, classifier, "rare", "tp") <= tp


def test_softmax_probability_makes_a_softmax_classifier_in_every_view(softmax_results):
    results = softmax_results
    metrics = results["metrics"]
    assert set(metrics.loc[metrics["classifier"] == "softmax", "view"]) == {"multiclass", "binary", "rare", "open_set"}
    predictions = results["predictions"]
    softmax = predictions[(predictions["classifier"] == "softmax") & (predictions["subset"] == "test")]
    # probability columns follow CLASS_NAMES, predictions are data-set labels
    assert (softmax["predicted"] == softmax["label"]).all()
    assert set(results["spiked"]["classifier"]) == {"centroid", "gmm", "knn", "softmax"}
    assert "softmax" not in results["classifiers"]


def test_tables_have_their_contracted_columns(softmax_results):
    results = softmax_results
    assert list(results["metrics"].columns) == ["classifier", "view", "metric", "value"]
    assert list(results["confusion"].columns[:2]) == ["classifier", "view"]
    assert {"actual", "predicted", "count"} <= set(results["confusion"].columns)
    assert list(results["predictions"].columns) == ["index", "subset", "label", "classifier", "predicted", "confidence"]
    # val, test and unknown rows (15 + 30 per known class, 45 pollen) for each of 4 classifiers
    assert len(results["predictions"]) == 4 * (45 + 90 + 45)
    assert set(results["predictions"]["index"] % 3) == {0}  # the table's own index, not row numbers
    # at the threshold, the open-set images are the actual "unknown" row
    open_view = results["confusion"][
        (results["confusion"]["view"] == "open_set") & (results["confusion"]["classifier"] == "centroid")
    ]
    unknown_row = open_view[open_view["actual"] == "unknown"].set_index("predicted")["count"]
    assert unknown_row.sum() == 45 and unknown_row["unknown"] == 45
    spiked = results["spiked"][results["spiked"]["classifier"] == "centroid"]
    assert list(spiked.columns[:4]) == ["classifier", "sample", "kind", "target"]
    assert {"background", "reported", "recovery", "alarm_at", "alarm", "threshold"} <= set(spiked.columns)
    assert list(spiked["sample"]) == ["1", "2", "3", "4", "5", "mean", "mean"]
    assert list(spiked["target"]) == ["cryptosporidium"] * 3 + ["", "", "cryptosporidium", "all"]
    assert list(spiked["spikes"].iloc[:5]) == [2, 3, 4, 0, 0]
    assert results["episodes"].empty


def background_shrinks_to_the_pool(spiked: pd.DataFrame, pool: int) -> None:
    """Every sample of every classifier holds the whole pool of non-target test and open-set images, once."""
    samples = spiked[spiked["sample"] != "mean"]
    assert (samples["background"] == pool).all()
    assert (samples["images"] == pool + samples["spikes"]).all()


def test_a_default_background_shrinks_to_the_pool_of_non_target_images(caplog):
    """Regression: ``spiked: {samples: 3}`` gets the schema's 2000-image background, which must still shrink to the
    test pool (30 debris + 45 pollen here, cryptosporidium and giardia both targets), as a given value does."""
    assert fill("spiked", {"samples": 3})["background"] == 2000
    experiment = EXPERIMENT | {
        "classifiers": {"centroid": {}},
        "targets": ["cryptosporidium", "giardia"],
        "spiked": {"samples": 3},
    }
    with caplog.at_level(logging.INFO, logger="cytodml"):
        results = evaluate_trial(embeddings_table(0, softmax=True), experiment, CLASS_NAMES, "softmax", seed=4)
    spiked = results["spiked"]
    background_shrinks_to_the_pool(spiked, 75)
    assert "75 background images each (spiked.background 2000, at most the 75 non-target" in caplog.text
    # one target per spiked sample, 2 + 1 in consecutive runs, then the schema's 4 blanks; paired across classifiers
    for _, samples in spiked.groupby("classifier"):
        assert list(samples["target"].iloc[:7]) == ["cryptosporidium"] * 2 + ["giardia"] + [""] * 4
        assert list(samples["spikes"].iloc[:3]) == [6, 7, 6]
    assert set(spiked["classifier"]) == {"centroid", "softmax"}
    given = evaluate_trial(
        embeddings_table(0), experiment | {"spiked": {"samples": 2, "background": 500}}, CLASS_NAMES, "softmax", 4
    )
    background_shrinks_to_the_pool(given["spiked"], 75)


def test_threshold_chosen_on_validation_meets_the_rate():
    experiment = EXPERIMENT | {"threshold": {"false_positive_rate": 0.05}, "classifiers": {"knn": {"k": 5}}}
    table = embeddings_table(1, softmax=True)
    results = evaluate_trial(table, experiment, CLASS_NAMES, "softmax", seed=0)
    predictions = results["predictions"]
    for classifier in ("knn", "softmax"):
        val = predictions[(predictions["classifier"] == classifier) & (predictions["subset"] == "val")]
        negative = val["label"] != LABELS["cryptosporidium"]
        called = val["predicted"] == LABELS["cryptosporidium"]
        scores = np.where(called, val["confidence"], 0.0)[negative]
        assert metric(results, classifier, "rare", "threshold") == choose_threshold(scores, 0.05)


def test_episodic_protocol_adds_prototype_episodes():
    experiment = EXPERIMENT | {
        "protocol": "episodic",
        "classifiers": {"centroid": {}},
        "episodes": {"ways": 3, "shots": 2, "queries": 5, "count": 10},
    }
    results = evaluate_trial(embeddings_table(2), experiment, CLASS_NAMES, "contrastive", seed=0)
    episodes = results["episodes"]
    assert sorted(episodes["class_name"]) == sorted(CLASS_NAMES)
    assert (episodes["accuracy"] == 1.0).all() and (episodes["episodes"] == 10).all()
    assert metric(results, "prototype", "episodic", "accuracy") == 1.0
    assert metric(results, "centroid", "multiclass", "accuracy") == 1.0  # and the classifiers as well


def test_write_trial(tmp_path, softmax_results):
    write_trial(softmax_results, tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "classifiers.joblib",
        "confusion.csv",
        "episodes.csv",
        "metrics.csv",
        "novel.csv",
        "open_set.csv",
        "per_class.csv",
        "predictions.parquet",
        "spiked.csv",
    ]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "metrics.csv"), softmax_results["metrics"])
    assert pd.read_csv(tmp_path / "novel.csv").empty  # header only: no novel classes
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "predictions.parquet"), softmax_results["predictions"])
    classifiers = joblib.load(tmp_path / "classifiers.joblib")
    assert set(classifiers) == {"centroid", "gmm", "knn"}
    assert (classifiers["knn"].predict(np.array([[10.0, 0.0, 0.0]])) == LABELS["cryptosporidium"]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": "transductive"}, "protocol: 'transductive' is not one of"),
        ({"targets": ["oocyst"]}, r"targets: \['oocyst'\]"),
        ({"threshold": 1.5}, "threshold: 1.5 is greater than the maximum of 1"),
        ({"spiked": {"background": 10, "spike": 3}}, "spiked.spike: unknown key"),
    ],
)
def test_bad_experiment_keys_are_named(change, message):
    with pytest.raises(InputError, match=message):
        evaluate_trial(embeddings_table(0, per_class=10), EXPERIMENT | change, CLASS_NAMES, "triplet", seed=0)


def test_bad_embeddings_tables_are_named():
    table = embeddings_table(0, per_class=10)
    with pytest.raises(InputError, match=r"loss 'triplet': missing column\(s\) \['embedding'\]"):
        evaluate_trial(table.drop(columns="embedding"), EXPERIMENT, CLASS_NAMES, "triplet", seed=0)
    short = table.assign(probability=[[0.5, 0.5]] * len(table))
    with pytest.raises(InputError, match="'probability' holds vectors of length \\[2\\], expected 3"):
        evaluate_trial(short, EXPERIMENT, CLASS_NAMES, "softmax", seed=0)
