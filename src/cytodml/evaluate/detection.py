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

from cytodml.config import checked
from cytodml.errors import InputError
from cytodml.evaluate.metrics import auroc

BOUND_CONFIDENCE = 0.95
"""Confidence of the upper bound on the per-object false-positive rate that a calibrated alarm assumes."""
ALL_TARGETS = "all"
"""The ``target`` of a mixed spiked sample and of the mean over every sample: all target classes at once."""


def choose_threshold(confidence_val, false_positive_rate: float) -> float:
    """The lowest threshold t whose false-positive rate on validation negatives is at most ``false_positive_rate``.

    ``confidence_val`` holds, for every negative validation image (one that must not be called), the confidence of the
    call it would raise; give 0 to a negative whose call can never be an alarm. With the scores sorted in descending
    order s_1 >= s_2 >= ..., at most k = floor(rate * n) may reach t, so t is the next float above s_(k+1):
    mean(s >= t) <= rate, and no lower threshold keeps that bound. The lowest such t keeps the most true calls.
    """
    scores = np.sort(np.asarray(confidence_val, dtype=np.float64))[::-1]
    if not 0.0 <= false_positive_rate <= 1.0:
        raise InputError(f"threshold.false_positive_rate must lie in [0, 1], got {false_positive_rate}")
    if len(scores) == 0:
        raise InputError("threshold.false_positive_rate: no validation images to choose the threshold on")
    allowed = int(np.floor(false_positive_rate * len(scores) + 1e-9))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def alarm_rule(spec: dict, where: str = "alarm") -> dict:
    """An alarm rule checked against the config schema: ``{min_targets: k}`` (k >= 1; k = 1 is the rare-bioparticle
    paper's rule and the experiment's default) or ``{false_alarm_rate: a}`` (0 < a < 1); ``where`` names its key."""
    return checked("alarm", spec, where)


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


def _check_spiked(predicted, confidence, truth, spikes, background, samples, blanks) -> tuple[int, int]:
    """Raise :class:`InputError` on inputs that cannot make samples; return ``spikes`` as (low, high)."""
    if not len(predicted) == len(confidence) == len(truth):
        raise InputError(
            f"spiked_samples: {len(predicted)} predictions, {len(confidence)} confidences and "
            f"{len(truth)} truths differ in length"
        )
    low, high = (int(v) for v in spikes)
    if not 1 <= low <= high:
        raise InputError(f"spiked.spikes must be [low, high] with 1 <= low <= high, got {list(spikes)}")
    if background < 1 or samples < 0 or blanks < 0:
        raise InputError(
            f"spiked: background must be at least 1 and samples, blanks at least 0; "
            f"got background={background}, samples={samples}, blanks={blanks}"
        )
    return low, high


def _spike_plan(targets: list[str], samples: int, spikes: tuple[int, int], mixed: bool) -> list[tuple[str, int]]:
    """(target, k) of each spiked sample, in order.

    Unmixed, as Table 5 of Luo et al. (RSC Adv 2021), a sample holds one target class: the ``samples`` are shared
    among the targets in consecutive runs (6 samples, 2 targets: 3 of the first, then 3 of the second; runs differ by
    one at most), and the j-th sample of a run holds k = spikes[0] + j mod (spikes[1] - spikes[0] + 1), so every
    target meets the same spike levels. Mixed, the i-th sample holds k = spikes[0] + i mod (...) of any target class.
    """
    low, high = spikes
    if samples and not targets:
        raise InputError("spiked.samples: no targets to spike (experiment targets is empty)")
    if mixed:
        return [(ALL_TARGETS, low + i % (high - low + 1)) for i in range(samples)]
    if 0 < samples < len(targets):
        raise InputError(
            f"spiked.samples: {samples} spiked sample(s) cannot hold each of the {len(targets)} targets once; "
            "ask for more, or set spiked.mixed: true"
        )
    runs = np.array_split(np.arange(samples), len(targets))
    return [(target, low + j % (high - low + 1)) for target, run in zip(targets, runs) for j in range(len(run))]


def _sample_row(called_as: np.ndarray, its_targets, drawn: np.ndarray, spiked: np.ndarray, alarm_at: int) -> dict:
    """Counts and rates of one sample of background objects ``drawn`` and target objects ``spiked`` (indices into
    ``called_as``, the target each object is called, "" for none); ``its_targets``: the sample's target classes."""
    called = np.isin(called_as, its_targets)
    detected, reported = int(called[spiked].sum()), int(called[spiked].sum() + called[drawn].sum())
    false_positives = int((called_as[drawn] != "").sum())
    any_target = int((called_as[spiked] != "").sum()) + false_positives
    k = len(spiked)
    return {
        "images": len(drawn) + k,
        "background": len(drawn),
        "spikes": k,
        "detected": detected,
        "false_positives": false_positives,
        "reported": reported,
        "sensitivity": detected / k if k else np.nan,
        "specificity": (len(drawn) - false_positives) / len(drawn),
        "alarm_at": alarm_at,
        "alarm": "yes" if any_target >= alarm_at else "no",
        "recovery": reported / k if k else np.nan,
    }


def _mean_row(table: pd.DataFrame, target: str) -> dict:
    """``sample = "mean"`` over ``table``'s samples: images, background, false positives, specificity and alarm_at
    over all of them, spikes, detected, reported, sensitivity and recovery over the spiked ones; alarms counted as
    "spiked a/b", and ", blank c/d" in the row over every sample (``target`` "all")."""
    is_spiked = table["kind"].eq("spiked")
    alarms = table["alarm"].eq("yes")
    alarm = f"spiked {alarms[is_spiked].sum()}/{is_spiked.sum()}"
    if target == ALL_TARGETS:
        alarm += f", blank {alarms[~is_spiked].sum()}/{(~is_spiked).sum()}"
    over_all = ["images", "background", "false_positives", "specificity", "alarm_at"]
    over_spiked = ["spikes", "detected", "reported", "sensitivity", "recovery"]
    return {
        "sample": "mean",
        "kind": "",
        "target": target,
        **table[over_all].mean(),
        **table.loc[is_spiked, over_spiked].mean(),
        "alarm": alarm,
        "spikes_resampled": bool(table["spikes_resampled"].any()),
    }


def spiked_samples(
    predicted,
    confidence,
    truth,
    targets: list[str],
    threshold: float,
    background: int,
    spikes: tuple[int, int],
    samples: int,
    blanks: int,
    seed: int,
    alarm: dict,
    validation: tuple[int, int] | None = None,
    mixed: bool = False,
) -> pd.DataFrame:
    """Simulated water samples: background objects, plus k target objects spiked into each spiked sample.

    As Table 5 of Luo et al. (RSC Adv 2021): ``samples`` spiked samples, each holding one of the ``targets`` (class
    names; ``mixed``: any of them, as one class), then ``blanks`` samples with no target (:func:`_spike_plan`).
    ``predicted`` and ``truth`` are each object's predicted and true class name; an object is *called* a target when
    its predicted class is a target and its confidence reaches ``threshold``. The background pool is the objects of no
    target class; every sample holds min(``background``, pool) of them, drawn without replacement, whether
    ``background`` is the default or asked for, so no sample repeats an object (column ``background``). A sample's
    targets are its class, or every target in a mixed or blank sample. Per sample (:func:`_sample_row`):

    - ``detected``: spikes called one of the sample's targets; ``false_positives``: background objects called any
      target; ``reported``: objects called one of the sample's targets, the count the method reports;
    - ``sensitivity`` = detected / spikes; ``specificity`` = (background - false_positives) / background;
    - ``recovery`` = reported / spikes: the count reported over the count spiked, as a recovery in water testing
      (above 1 with false positives);
    - ``alarm_at``: called targets that raise the alarm in a sample of its size, by the ``alarm`` rule
      (:func:`alarm_count`; ``validation`` = (false positives, negatives) on validation, for a calibrated rule);
    - ``alarm`` = "yes" when at least ``alarm_at`` objects are called any target (the sample is reported positive).

    Spikes are drawn without replacement unless fewer than k objects of the class exist (``spikes_resampled``). Mean
    rows (:func:`_mean_row`) follow: one per target over its samples (unmixed), then one over every sample.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    confidence = np.asarray(confidence, dtype=np.float64)
    spikes = _check_spiked(predicted, confidence, truth, spikes, background, samples, blanks)
    plan = _spike_plan(list(targets), samples, spikes, mixed)
    pool = np.flatnonzero(~np.isin(truth, targets))
    if not len(pool):
        raise InputError("spiked.background: the test images hold no non-target background")
    sources = {t: np.flatnonzero(np.isin(truth, targets if t == ALL_TARGETS else [t])) for t, _ in plan}
    empty = [t for t, source in sources.items() if not len(source)]
    if empty:
        raise InputError(f"spiked.samples: the test images hold no {' or '.join(empty)} to spike")
    called_as = np.where(np.isin(predicted, targets) & (confidence >= threshold), predicted, "")
    background = min(background, len(pool))
    rng = np.random.default_rng(seed)
    rows = []
    for number, (target, k) in enumerate(plan + [("", 0)] * blanks):
        drawn = rng.choice(pool, size=background, replace=False)
        spiked, resampled = _draw(rng, sources[target], k) if k else (np.empty(0, dtype=int), False)
        its_targets = list(targets) if target in ("", ALL_TARGETS) else [target]
        alarm_at = alarm_count(alarm, background + k, *(validation or (None, None)))
        row = _sample_row(called_as, its_targets, drawn, spiked, alarm_at)
        kind = "spiked" if k else "blank"
        rows.append({"sample": str(number + 1), "kind": kind, "target": target, **row, "spikes_resampled": resampled})
    table = pd.DataFrame(rows)
    per_target = [] if mixed else [_mean_row(table[table["target"].eq(t)], t) for t in dict.fromkeys(sources)]
    means = pd.DataFrame([*per_target, _mean_row(table, ALL_TARGETS)])
    return pd.concat([table, means], ignore_index=True)[table.columns]


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
