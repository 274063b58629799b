"""Rare-event detection at a confidence threshold: threshold choice, simulated spiked samples, open-set rejection.

An object is *called* a class only when the classifier's confidence reaches the threshold; below it the object is
"unknown". The rare-bioparticle study (Luo et al., RSC Adv 2021) fixes the threshold at 0.98 and reports simulated
water samples (their Table 5); the same threshold decides whether an image of a class never seen in training (open
set) raises a false alarm.

A sample raises the *alarm* when enough of its objects are called a target: at least ``min_targets`` (1, the paper's
rule), or, given a ``false_alarm_rate``, as many as a blank sample of the same size reaches only with that probability,
from the classifier's false positives on validation (:func:`alarm_count`).
"""

import numpy as np
import pandas as pd
from scipy.stats import beta, binom

from cytodml.errors import InputError
from cytodml.evaluate.metrics import auroc

ALARM_DEFAULT = {"min_targets": 1}
"""The rare-bioparticle paper's rule: one object called a target makes the sample positive."""
BOUND_CONFIDENCE = 0.95
"""Confidence of the upper bound on the per-object false-positive rate that a calibrated alarm assumes."""


def choose_threshold(confidence_val, false_alarm_rate: float) -> float:
    """The lowest threshold t whose false-alarm rate on validation negatives is at most ``false_alarm_rate``.

    ``confidence_val`` holds, for every negative validation image (one that must not be called), the confidence of the
    call it would raise; give 0 to a negative whose call can never be an alarm. With the scores sorted in descending
    order s_1 >= s_2 >= ..., at most k = floor(rate * n) may reach t, so t is the next float above s_(k+1):
    mean(s >= t) <= rate, and no lower threshold keeps that bound. The lowest such t keeps the most true calls.
    """
    scores = np.sort(np.asarray(confidence_val, dtype=np.float64))[::-1]
    if not 0.0 <= false_alarm_rate <= 1.0:
        raise InputError(f"threshold.false_alarm_rate must lie in [0, 1], got {false_alarm_rate}")
    if len(scores) == 0:
        raise InputError("threshold.false_alarm_rate: no validation images to choose the threshold on")
    allowed = int(np.floor(false_alarm_rate * len(scores) + 1e-9))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def alarm_rule(spec: dict | None) -> dict:
    """The alarm rule of a config: ``{min_targets: k}`` (k >= 1) or ``{false_alarm_rate: a}`` (0 < a < 1).

    No rule is the paper's: one called target (:data:`ALARM_DEFAULT`).
    """
    rule = dict(spec or ALARM_DEFAULT)
    if len(rule) != 1 or not set(rule) <= {"min_targets", "false_alarm_rate"}:
        raise InputError(f"alarm: expected {{min_targets: k}} or {{false_alarm_rate: rate}}, got {spec}")
    value = next(iter(rule.values()))
    if "min_targets" in rule and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"alarm.min_targets: a positive number of targets, not {value!r}")
    if "false_alarm_rate" in rule and (isinstance(value, bool) or not isinstance(value, float) or not 0 < value < 1):
        raise InputError(f"alarm.false_alarm_rate: a probability between 0 and 1 (exclusive), not {value!r}")
    return rule


def false_positive_bound(false_positives: int, negatives: int, confidence: float = BOUND_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a per-object false-positive rate seen as ``false_positives``/``negatives``.

    p_upper = Beta^-1(confidence; x + 1, n - x) for x < n, else 1 (Clopper & Pearson, Biometrika 1934): the rate is
    at most p_upper with probability ``confidence``, however few negatives there were (0 of 150 gives 2.0 % at 95 %).
    """
    if negatives < 1 or not 0 <= false_positives <= negatives:
        raise InputError(
            f"alarm.false_alarm_rate: {false_positives} false positives among {negatives} validation negatives "
            "cannot calibrate an alarm (the split needs non-target validation images)"
        )
    if false_positives == negatives:
        return 1.0
    return float(beta.ppf(confidence, false_positives + 1, negatives - false_positives))


def alarm_count(rule: dict, objects: int, false_positives: int | None = None, negatives: int | None = None) -> int:
    """How many objects called a target raise the alarm in a sample of ``objects`` objects.

    ``{min_targets: k}`` gives k. ``{false_alarm_rate: a}`` gives the least k >= 1 with
    P(X >= k) <= a for X ~ Binomial(objects, p), p the upper bound (:func:`false_positive_bound`) of the classifier's
    per-object false-positive rate, ``false_positives`` of ``negatives`` non-target validation images called a target
    at the threshold: a blank sample of that size raises the alarm with probability at most a, if its objects are as
    the validation non-targets were (particle types never trained on are not covered).
    """
    rule = alarm_rule(rule)
    if "min_targets" in rule:
        return rule["min_targets"]
    if false_positives is None or negatives is None:
        raise InputError("alarm.false_alarm_rate: needs the classifier's false positives on validation")
    p = false_positive_bound(false_positives, negatives)
    # binom.sf(k - 1) = P(X >= k); the least k where it drops to the rate, found on the support 1..objects
    k = np.arange(1, max(objects, 1) + 1)
    below = np.flatnonzero(binom.sf(k - 1, objects, p) <= rule["false_alarm_rate"])
    return int(k[below[0]]) if len(below) else objects + 1


def _draw(rng: np.random.Generator, pool: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """``size`` members of ``pool``, with replacement only when the pool is too small."""
    replace = size > len(pool)
    return rng.choice(pool, size=size, replace=replace), replace


def spiked_samples(
    pred_is_target,
    confidence,
    is_target,
    threshold: float,
    background: int,
    spikes: tuple[int, int],
    samples: int,
    blanks: int,
    seed: int,
    alarm: dict | None = None,
    validation: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Simulated water samples: ``background`` non-target images, plus k target images spiked into each spiked sample.

    As Table 5 of Luo et al. (RSC Adv 2021): ``samples`` spiked samples, the i-th holding k = spikes[0] + i mod
    (spikes[1] - spikes[0] + 1) targets, then ``blanks`` samples with no target. An object is called a target when its
    predicted class is a target class and its confidence reaches ``threshold``. Per sample:

    - ``detected``: spiked targets called target; ``false_positives``: background objects called target;
    - ``sensitivity`` = detected / spikes; ``specificity`` = (background - false_positives) / background;
    - ``alarm_at``: called targets that raise the alarm in a sample of its size, by the ``alarm`` rule
      (:func:`alarm_count`; ``validation`` = (false positives, negatives) on validation, for a calibrated rule);
    - ``alarm`` = "yes" when at least ``alarm_at`` objects are called target (the sample would be reported positive);
    - ``recovery`` = (detected + false_positives) / spikes: the count the method reports over the count spiked, as a
      recovery in water testing; it equals sensitivity when there are no false positives.

    Backgrounds are drawn without replacement unless the pool holds fewer than ``background`` images, and spikes unless
    fewer than k targets exist; columns ``background_resampled`` and ``spikes_resampled`` say when that happened. A
    final row ``sample = "mean"`` averages images, false positives and specificity over all samples, spikes, detected,
    sensitivity and recovery over the spiked ones, and counts alarms as "spiked a/b, blank c/d".
    """
    pred_is_target = np.asarray(pred_is_target, dtype=bool)
    confidence = np.asarray(confidence, dtype=np.float64)
    is_target = np.asarray(is_target, dtype=bool)
    if not len(pred_is_target) == len(confidence) == len(is_target):
        raise InputError(
            f"spiked_samples: {len(pred_is_target)} predictions, {len(confidence)} confidences and "
            f"{len(is_target)} truths differ in length"
        )
    low, high = (int(v) for v in spikes)
    if not 1 <= low <= high:
        raise InputError(f"spiked.spikes must be [low, high] with 1 <= low <= high, got {list(spikes)}")
    if background < 1 or samples < 0 or blanks < 0:
        raise InputError(
            f"spiked: background must be at least 1 and samples, blanks at least 0; "
            f"got background={background}, samples={samples}, blanks={blanks}"
        )
    targets, pool = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    if samples and not len(targets):
        raise InputError("spiked.samples: the test images hold no target to spike")
    if not len(pool):
        raise InputError("spiked.background: the test images hold no non-target background")
    called = pred_is_target & (confidence >= threshold)
    rule = alarm_rule(alarm)
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(samples + blanks):
        spiked = number < samples
        k = low + number % (high - low + 1) if spiked else 0
        drawn, background_resampled = _draw(rng, pool, background)
        spike_idx, spikes_resampled = _draw(rng, targets, k) if spiked else (np.empty(0, dtype=int), False)
        detected, false_positives = int(called[spike_idx].sum()), int(called[drawn].sum())
        alarm_at = alarm_count(rule, background + k, *(validation or (None, None)))
        rows.append(
            {
                "sample": str(number + 1),
                "kind": "spiked" if spiked else "blank",
                "images": background + k,
                "spikes": k,
                "detected": detected,
                "false_positives": false_positives,
                "sensitivity": detected / k if spiked else np.nan,
                "specificity": (background - false_positives) / background,
                "alarm_at": alarm_at,
                "alarm": "yes" if detected + false_positives >= alarm_at else "no",
                "recovery": (detected + false_positives) / k if spiked else np.nan,
                "background_resampled": background_resampled,
                "spikes_resampled": spikes_resampled,
            }
        )
    table = pd.DataFrame(rows)
    alarms = table["alarm"].eq("yes")
    is_spiked = table["kind"].eq("spiked")
    mean = {
        "sample": "mean",
        "kind": "",
        "images": table["images"].mean(),
        "spikes": table["spikes"][is_spiked].mean(),
        "detected": table["detected"][is_spiked].mean(),
        "false_positives": table["false_positives"].mean(),
        "sensitivity": table["sensitivity"].mean(),
        "specificity": table["specificity"].mean(),
        "alarm_at": table["alarm_at"].mean(),
        "alarm": f"spiked {alarms[is_spiked].sum()}/{samples}, blank {alarms[~is_spiked].sum()}/{blanks}",
        "recovery": table["recovery"].mean(),
        "background_resampled": bool(table["background_resampled"].any()),
        "spikes_resampled": bool(table["spikes_resampled"].any()),
    }
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)[table.columns]


def open_set_results(confidence_known, pred_known, y_known, confidence_unknown, threshold: float) -> dict[str, float]:
    """How the threshold treats images of known classes and of classes never seen in training.

    - ``false_alarms``: unknown images assigned to a known class with confidence >= threshold;
      ``false_alarm_rate`` = false_alarms / unknown_total;
    - ``known_lost``: known images below the threshold, hence called unknown; ``known_lost_rate`` = known_lost /
      known_total;
    - ``known_accepted_accuracy``: accuracy over the known images that reach the threshold;
    - ``auroc``: area under the ROC curve of the confidence separating known (positive) from unknown images, i.e. the
      probability that a random known image is more confident than a random unknown one.

    Rates with an empty denominator are NaN.
    """
    confidence_known = np.asarray(confidence_known, dtype=np.float64)
    confidence_unknown = np.asarray(confidence_unknown, dtype=np.float64)
    pred_known, y_known = np.asarray(pred_known), np.asarray(y_known)
    if not len(confidence_known) == len(pred_known) == len(y_known):
        raise InputError(
            f"open_set_results: {len(confidence_known)} confidences, {len(pred_known)} predictions and "
            f"{len(y_known)} labels of known images differ in length"
        )
    accepted = confidence_known >= threshold
    false_alarms = int((confidence_unknown >= threshold).sum())
    known_lost = int((~accepted).sum())
    both = len(confidence_known) and len(confidence_unknown)
    return {
        "unknown_total": len(confidence_unknown),
        "false_alarms": false_alarms,
        "false_alarm_rate": false_alarms / len(confidence_unknown) if len(confidence_unknown) else np.nan,
        "known_total": len(confidence_known),
        "known_lost": known_lost,
        "known_lost_rate": known_lost / len(confidence_known) if len(confidence_known) else np.nan,
        "known_accepted_accuracy": (
            float((pred_known[accepted] == y_known[accepted]).mean()) if accepted.any() else np.nan
        ),
        "auroc": (
            auroc(
                np.concatenate([confidence_known, confidence_unknown]),
                np.r_[np.ones(len(confidence_known), bool), np.zeros(len(confidence_unknown), bool)],
            )
            if both
            else np.nan
        ),
    }
