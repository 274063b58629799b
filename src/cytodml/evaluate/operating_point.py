"""The operating point an evaluation chose for a classifier, read back from the trial's ``metrics.csv``.

A detector screening new samples applies the evaluation's confidence threshold, and a calibrated alarm rests on the
false positives the evaluation counted among non-target validation images at that threshold
(:func:`cytodml.evaluate.detection.alarm_count`). Both are rows of the long metrics table that
:func:`cytodml.evaluate.run.write_trial` writes; reading them back is a job of its own, apart from the classifiers'
file (:mod:`cytodml.evaluate.detector`).
"""

import pandas as pd

from cytodml.errors import InputError

__all__ = ["read_evaluation"]


def read_evaluation(metrics_path, classifier: str, *, threshold=None, targets=None, evaluated_targets=None):
    """The threshold and the validation false positives the evaluation recorded for ``classifier`` (metrics.csv).

    Returns ``(threshold, validation)``: ``threshold`` the given one, else the evaluation's (view ``open_set``, metric
    ``threshold``: the configured number, or the one chosen on validation for a false-alarm rate); ``validation`` the
    ``(false positives, negatives)`` of non-target validation images at that threshold (view ``rare``), which a
    calibrated alarm rests on, or None where they do not apply: a threshold or targets other than the evaluation's
    (``evaluated_targets``), or an evaluation without targets.
    """
    try:
        table = pd.read_csv(metrics_path)
    except FileNotFoundError:
        if threshold is None:
            raise InputError(f"{metrics_path}: no such metrics file (give the threshold instead)") from None
        return float(threshold), None
    missing = {"classifier", "view", "metric", "value"} - set(table.columns)
    if missing:
        raise InputError(f"{metrics_path}: not an evaluation metrics table (no column(s) {sorted(missing)})")
    values = table[table["classifier"] == classifier].set_index(["view", "metric"])["value"]
    if ("open_set", "threshold") not in values.index:
        known = sorted(table.loc[table["metric"] == "threshold", "classifier"].unique())
        raise InputError(f"{metrics_path}: no threshold for classifier '{classifier}' (it has {known})")
    evaluated = float(values[("open_set", "threshold")])
    same = (threshold is None or float(threshold) == evaluated) and (
        targets is None or sorted(targets) == sorted(evaluated_targets or [])
    )
    validation = None
    if same and ("rare", "val_negatives") in values.index:
        validation = (int(values[("rare", "val_false_positives")]), int(values[("rare", "val_negatives")]))
    return (evaluated if threshold is None else float(threshold)), validation
