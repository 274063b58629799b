"""The recommended model: chosen on the validation images only, by the stated score and tie rule."""

import numpy as np
import pandas as pd
import pytest

from cytodml.errors import InputError
from cytodml.evaluate.metrics import binary_metrics
from cytodml.evaluate.recommend import rank_models, read_recommended, validation_scores

TARGETS = [0]  # label 0 is the target class; labels 1 and 2 the background
CLASSIFIERS = ["centroid", "gmm"]


def trial_predictions(loss, trial, classifier, val_wrong: int, test_wrong: int = 0) -> pd.DataFrame:
    """One trial's predictions.parquet rows: 10 validation and 10 test images of each of 3 classes, the first
    ``val_wrong`` (``test_wrong``) target images of the subset called class 1."""
    rows = []
    for subset, wrong in (("val", val_wrong), ("test", test_wrong)):
        offset = 0 if subset == "val" else 1000
        for label in (0, 1, 2):
            for i in range(10):
                predicted = 1 if label == 0 and i < wrong else label
                rows.append((offset + 100 * label + i, subset, label, predicted))
    table = pd.DataFrame(rows, columns=["index", "subset", "label", "predicted"])
    return table.assign(classifier=classifier, confidence=1.0, loss=loss, trial=trial)


def stacked(*parts) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True)


def test_validation_chooses_and_test_does_not():
    # triplet is better on validation (1 target missed against 4), softmax on test (0 against 5): triplet is chosen
    predictions = stacked(
        *(trial_predictions("triplet", t, "gmm", val_wrong=1, test_wrong=5) for t in (0, 1)),
        *(trial_predictions("softmax", t, "gmm", val_wrong=4, test_wrong=0) for t in (0, 1)),
    )
    scores = validation_scores(predictions, CLASSIFIERS, TARGETS)
    ranking = rank_models(scores)
    assert list(ranking["loss"]) == ["triplet", "softmax"] and list(ranking["rank"]) == [1, 2]
    truth = np.repeat([True, False, False], 10)
    called = truth.copy()
    called[:1] = False  # triplet misses one of the 10 validation targets
    best = ranking.iloc[0]
    assert (best["view"], best["metric"], best["trials"]) == ("binary", "mcc", 2)
    assert best["validation_mean"] == pytest.approx(binary_metrics(truth, called)["mcc"])
    assert (scores["images"] == 30).all()  # validation images only: 10 per class


def test_balanced_accuracy_without_targets_and_other_classifiers_left_out():
    predictions = stacked(
        trial_predictions("triplet", 0, "knn", val_wrong=2),  # not among CLASSIFIERS
        trial_predictions("triplet", 0, "softmax", val_wrong=0),  # the network's own output: not applicable
        trial_predictions("triplet", 0, "centroid", val_wrong=2),
    )
    ranking = rank_models(validation_scores(predictions, CLASSIFIERS))
    assert list(ranking["classifier"]) == ["centroid"]
    assert (ranking.loc[0, "view"], ranking.loc[0, "metric"]) == ("multiclass", "balanced_accuracy")
    assert ranking.loc[0, "validation_mean"] == pytest.approx(np.mean([0.8, 1.0, 1.0]))


def test_ties_go_to_the_lower_std_then_to_the_names():
    # the multiclass balanced accuracy is linear in the misses: 1 and 3 misses score the same mean as 2 and 2
    spread = stacked(
        trial_predictions("a", 0, "gmm", val_wrong=1),
        trial_predictions("a", 1, "gmm", val_wrong=3),
        trial_predictions("b", 0, "gmm", val_wrong=2),
        trial_predictions("b", 1, "gmm", val_wrong=2),
    )
    ranking = rank_models(validation_scores(spread, CLASSIFIERS))
    assert ranking.loc[0, "validation_mean"] == pytest.approx(ranking.loc[1, "validation_mean"])
    assert list(ranking["loss"]) == ["b", "a"]  # b: the same score in both trials
    # the same scores in every trial: alphabetical order of loss, then classifier
    steady = stacked(
        *(
            trial_predictions(loss, trial, classifier, val_wrong=2)
            for loss in ("b", "a")
            for classifier in ("gmm", "centroid")
            for trial in (0, 1)
        )
    )
    ranking = rank_models(validation_scores(steady, CLASSIFIERS, TARGETS))
    assert ranking["validation_mean"].nunique() == 1 and (ranking["validation_std"] == 0).all()
    assert list(zip(ranking["loss"], ranking["classifier"])) == [
        ("a", "centroid"),
        ("a", "gmm"),
        ("b", "centroid"),
        ("b", "gmm"),
    ]


def test_no_validation_images_no_recommendation(tmp_path):
    predictions = trial_predictions("a", 0, "gmm", val_wrong=0)
    ranking = rank_models(validation_scores(predictions[predictions["subset"] == "test"], CLASSIFIERS, TARGETS))
    assert ranking.empty
    path = tmp_path / "recommended.csv"
    with pytest.raises(InputError, match="not found.*name predict.model.loss and predict.model.classifier"):
        read_recommended(path, "tiny")
    path.write_text("experiment,loss,classifier\n")
    with pytest.raises(InputError, match="no recommended model.*never uses test images.*predict.model.loss"):
        read_recommended(path, "tiny")
    path.write_text("experiment,loss,classifier\ntiny,arcface,gmm\n")
    assert read_recommended(path, "tiny")["loss"] == "arcface"
    with pytest.raises(InputError, match="'arcface', which is not among the experiment's"):
        read_recommended(path, "tiny", losses=["softmax", "triplet"])
