"""The recommended model of an experiment: the loss x classifier with the best score on the validation images.

What ``predict`` applies when the config names no loss and classifier, and what the tables mark. The rule
(:data:`RULE`, :func:`rank_models`): in each trial, every classifier of the experiment's ``classifiers:`` (those
``cytodml predict`` can apply; the softmax network's own output is not one) is scored on the trial's validation images
at the arg-max (the evaluate stage's ``predictions.parquet``, subset ``val``): with targets, the MCC of the targets
against the rest (the binary view); without, the multiclass balanced accuracy. A loss x classifier scores the mean
over trials, and the highest mean is recommended; a tie (means equal to 12 decimals) goes to the lower standard
deviation over trials, then to the loss and classifier names in alphabetical order.

Only validation images are read, never test ones: the test images report what the chosen model does, and choosing on
them would make that report optimistic. An experiment whose trials scored no validation image (an official split that
ships none) has no recommended model, and nothing falls back on test: ``predict`` then needs the loss and classifier
named. In the fewshot protocol the split keeps at most ``shots`` validation images per class in each trial
(:mod:`cytodml.data.splits`), so model selection there sees no more labels per class than training does.
"""

import numpy as np
import pandas as pd

from cytodml.errors import InputError, require_columns
from cytodml.evaluate.metrics import binary_metrics, multiclass_metrics

__all__ = ["RULE", "rank_models", "read_recommended", "score_name", "validation_scores"]

VALIDATION = "val"
#: means closer than this are a tie (so the float sums of equal scores in another order tie too)
TIE_DECIMALS = 12
RANKING_COLUMNS = ["rank", "loss", "classifier", "view", "metric", "validation_mean", "validation_std", "trials"]
RULE = (
    "the loss x classifier with the highest mean over trials of its score on the validation images at the arg-max "
    "(with targets, the MCC of the targets against the rest; else the multiclass balanced accuracy); ties go to the "
    "lower standard deviation over trials, then to the loss and classifier names in alphabetical order. Test images "
    "never enter the choice."
)


def score_name(targets) -> tuple[str, str]:
    """The (view, metric) the recommendation scores: ``("binary", "mcc")`` with targets, else
    ``("multiclass", "balanced_accuracy")``, as the metrics tables name them."""
    return ("binary", "mcc") if len(targets) else ("multiclass", "balanced_accuracy")


def validation_scores(predictions: pd.DataFrame, classifiers, target_labels=()) -> pd.DataFrame:
    """Each (loss, trial, classifier)'s score on the trial's validation images: columns ``loss``, ``trial``,
    ``classifier``, ``view``, ``metric``, ``value``, ``images``.

    ``predictions`` are the evaluate stage's ``predictions.parquet`` tables stacked with ``loss`` and ``trial``
    columns; rows of other subsets and of classifiers not in ``classifiers`` are left out. ``target_labels`` (data-set
    labels) choose the score (:func:`score_name`): the MCC of targets against the rest at the arg-max, 0 where it is
    undefined (a classifier that calls every validation image a target, or none: no correlation), or the balanced
    accuracy. A trial without validation images has no row.
    """
    require_columns(
        predictions, ["loss", "trial", "classifier", "subset", "index", "label", "predicted"], "predictions"
    )
    view, metric = score_name(target_labels)
    rows = predictions[(predictions["subset"] == VALIDATION) & predictions["classifier"].isin(list(classifiers))]
    scores = []
    for (loss, trial, classifier), group in rows.groupby(["loss", "trial", "classifier"], sort=True):
        truth, predicted = group["label"].to_numpy(), group["predicted"].to_numpy()
        if len(target_labels):
            value = binary_metrics(np.isin(truth, target_labels), np.isin(predicted, target_labels))[metric]
            value = 0.0 if np.isnan(value) else value
        else:
            value = multiclass_metrics(truth, predicted, np.union1d(truth, predicted))[metric]
        scores.append((loss, trial, classifier, view, metric, float(value), len(group)))
    return pd.DataFrame(scores, columns=["loss", "trial", "classifier", "view", "metric", "value", "images"])


def rank_models(scores: pd.DataFrame) -> pd.DataFrame:
    """Every loss x classifier of :func:`validation_scores`, best first by :data:`RULE`; ``rank`` 1 is the recommended
    model. Columns :data:`RANKING_COLUMNS`; no row where no trial scored validation images."""
    if scores.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    grouped = scores.groupby(["loss", "classifier", "view", "metric"], sort=False)["value"]
    table = grouped.agg(validation_mean="mean", validation_std="std", trials="count").reset_index()
    order = table.assign(
        key_mean=-table["validation_mean"].round(TIE_DECIMALS),
        key_std=table["validation_std"].fillna(np.inf),
    ).sort_values(["key_mean", "key_std", "loss", "classifier"], kind="stable")
    ranked = table.loc[order.index].reset_index(drop=True)
    return ranked.assign(rank=np.arange(1, len(ranked) + 1))[RANKING_COLUMNS]


def read_recommended(path, experiment: str, losses=None) -> dict:
    """The recommended model that the aggregate stage wrote (``results/<experiment>/tables/recommended.csv``): a dict
    of its one row (``loss``, ``classifier``, ``view``, ``metric``, ``validation_mean``, ...).

    Raises :class:`InputError` where the file is missing or names no model, asking for the loss and classifier, and
    where it names a loss not among ``losses`` (the experiment's, where given).
    """
    ask = "name predict.model.loss and predict.model.classifier (cytodml predict: --model, --classifiers, --classifier)"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(
            f"{path}: not found, so experiment '{experiment}' has no recommended model yet (the aggregate stage "
            f"writes it: snakemake results/{experiment}/tables); {ask}"
        ) from None
    require_columns(table, ["loss", "classifier"], str(path))
    if table.empty:
        raise InputError(
            f"{path}: experiment '{experiment}' has no recommended model, since no trial scored validation images "
            f"and the choice never uses test images; {ask}"
        )
    recommended = table.to_dict("records")[0]
    if losses is not None and recommended["loss"] not in losses:
        raise InputError(
            f"{path}: recommends loss '{recommended['loss']}', which is not among the experiment's {list(losses)}; "
            f"rerun the aggregate stage (snakemake results/{experiment}/tables)"
        )
    return recommended
