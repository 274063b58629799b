"""Threshold choice, the spiked-sample simulation and open-set counts, each against numbers worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from cytodml.errors import InputError
from cytodml.evaluate.detection import (
    alarm_count,
    alarm_rule,
    choose_threshold,
    false_positive_bound,
    open_set_results,
    spiked_samples,
)


def test_threshold_meets_the_false_alarm_rate_on_a_known_distribution():
    rng = np.random.default_rng(0)
    validation = rng.uniform(size=10_000)
    threshold = choose_threshold(validation, 0.01)
    assert np.mean(validation >= threshold) == 0.01  # exactly 100 of 10 000 distinct scores reach it
    assert threshold == pytest.approx(0.99, abs=0.003)  # the uniform's 99th percentile
    fresh = rng.uniform(size=100_000)
    assert np.mean(fresh >= threshold) == pytest.approx(0.01, abs=0.002)


def test_threshold_is_the_lowest_that_keeps_the_rate_and_cannot_split_ties():
    scores = np.r_[np.full(5, 0.9), np.full(95, 0.5)]
    # 3 alarms allowed, but the 5 tied at 0.9 go together: the threshold must pass all of them
    at_3 = choose_threshold(scores, 0.03)
    assert 0.9 < at_3 < 0.9 + 1e-12 and np.mean(scores >= at_3) == 0.0
    # 5 allowed: the 0.9s may alarm, the 0.5s may not
    at_5 = choose_threshold(scores, 0.05)
    assert 0.5 < at_5 <= 0.9 and np.mean(scores >= at_5) == 0.05
    assert choose_threshold(scores, 1.0) == 0.5


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_threshold_rate_outside_0_1(rate):
    with pytest.raises(InputError, match="threshold.false_positive_rate"):
        choose_threshold([0.5, 0.6], rate)


PAPER = {"min_targets": 1}  # the rare-bioparticle paper's alarm rule: one called target


def hand_case():
    """10 debris images, one called cryptosporidium (0.99); 3 cryptosporidium: one called, one below the threshold,
    one predicted as debris."""
    predicted = np.array(["crypto", "crypto", *["debris"] * 8, "crypto", "crypto", "debris"])
    confidence = np.r_[0.99, 0.5, np.full(8, 0.99), 0.99, 0.9, 0.99]
    truth = np.array(["debris"] * 10 + ["crypto"] * 3)
    return predicted, confidence, truth, ["crypto"]


def two_targets():
    """10 debris images, one called giardia (0.99); 3 cryptosporidium: one called crypto, one called giardia, one
    below the threshold; 2 giardia, both called giardia."""
    predicted = np.array(["giardia", *["debris"] * 9, "crypto", "giardia", "crypto", "giardia", "giardia"])
    confidence = np.r_[np.full(12, 0.99), 0.5, 0.99, 0.99]
    truth = np.array(["debris"] * 10 + ["crypto"] * 3 + ["giardia"] * 2)
    return predicted, confidence, truth, ["crypto", "giardia"]


def test_spiked_samples_by_hand():
    table = spiked_samples(
        *hand_case(), threshold=0.98, background=10, spikes=(3, 3), samples=2, blanks=1, seed=0, alarm=PAPER
    )
    # every spiked sample holds all 10 backgrounds and all 3 targets: 1 detected, 1 false positive
    spiked = table.iloc[:2]
    assert list(spiked["sample"]) == ["1", "2"] and (spiked["kind"] == "spiked").all()
    assert (spiked["target"] == "crypto").all() and (spiked["background"] == 10).all()
    assert (spiked["images"] == 13).all() and (spiked["spikes"] == 3).all()
    assert (spiked["detected"] == 1).all() and (spiked["false_positives"] == 1).all()
    assert (spiked["reported"] == 2).all()
    assert np.allclose(spiked["sensitivity"], 1 / 3)
    assert np.allclose(spiked["specificity"], 9 / 10)
    assert np.allclose(spiked["recovery"], (1 + 1) / 3)  # the method reports 2 objects for 3 spiked
    assert (spiked["alarm"] == "yes").all()
    blank = table.iloc[2]
    assert blank["kind"] == "blank" and blank["target"] == "" and blank["images"] == 10 and blank["spikes"] == 0
    assert blank["detected"] == 0 and blank["false_positives"] == 1 and blank["alarm"] == "yes"  # a false alarm
    assert np.isnan(blank["sensitivity"]) and np.isnan(blank["recovery"]) and blank["specificity"] == 0.9
    assert list(table["sample"].iloc[3:]) == ["mean", "mean"] and list(table["target"].iloc[3:]) == ["crypto", "all"]
    crypto = table.iloc[3]  # the target's samples only: no blank
    assert crypto["images"] == 13 and crypto["alarm"] == "spiked 2/2" and crypto["recovery"] == pytest.approx(2 / 3)
    mean = table.iloc[4]
    assert mean["images"] == pytest.approx(12) and mean["spikes"] == 3 and mean["detected"] == 1
    assert mean["sensitivity"] == pytest.approx(1 / 3) and mean["specificity"] == pytest.approx(0.9)
    assert mean["recovery"] == pytest.approx(2 / 3)
    assert mean["alarm"] == "spiked 2/2, blank 1/1"
    assert not table["spikes_resampled"].any()


def test_each_spiked_sample_holds_one_target_with_its_own_sensitivity_and_recovery():
    args = {"threshold": 0.98, "background": 10, "spikes": (3, 3), "samples": 2, "blanks": 0, "seed": 0}
    table = spiked_samples(*two_targets(), **args, alarm=PAPER)
    crypto, giardia = table.iloc[0], table.iloc[1]
    assert (crypto["target"], giardia["target"]) == ("crypto", "giardia")
    # crypto: all 3; the one called giardia is no crypto detection, and no background image is called crypto
    assert (crypto["detected"], crypto["false_positives"], crypto["reported"]) == (1, 1, 1)
    assert crypto["sensitivity"] == pytest.approx(1 / 3) and crypto["recovery"] == pytest.approx(1 / 3)
    # giardia: 3 drawn from the 2 that exist, all called giardia, and the background's false positive is called
    # giardia too: 4 reported for 3 spiked
    assert giardia["spikes_resampled"] and not crypto["spikes_resampled"]
    assert (giardia["detected"], giardia["false_positives"], giardia["reported"]) == (3, 1, 4)
    assert giardia["sensitivity"] == 1.0 and giardia["recovery"] == pytest.approx(4 / 3)
    assert list(table["target"].iloc[2:]) == ["crypto", "giardia", "all"]
    assert table["sensitivity"].iloc[2:].tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    # the alarm counts calls of any target: 3 in crypto's sample (crypto, giardia, the false positive), 4 in giardia's
    strict = spiked_samples(*two_targets(), **args, alarm={"min_targets": 4})
    assert list(strict["alarm"].iloc[:2]) == ["no", "yes"]


def test_a_mixed_spike_draws_from_every_target_as_one_class():
    table = spiked_samples(
        *two_targets(),
        threshold=0.98,
        background=10,
        spikes=(5, 5),
        samples=2,
        blanks=1,
        seed=0,
        alarm=PAPER,
        mixed=True,
    )
    spiked = table.iloc[:2]
    assert (spiked["target"] == "all").all()
    # all 5 targets in each: 4 called a target class (the crypto called giardia counts), 1 background false positive
    assert (spiked["detected"] == 4).all() and (spiked["false_positives"] == 1).all()
    assert (spiked["reported"] == 5).all()  # spikes called a target, and the false positive
    assert np.allclose(spiked["sensitivity"], 4 / 5) and np.allclose(spiked["recovery"], 1.0)
    assert list(table["sample"]) == ["1", "2", "3", "mean"] and table["target"].iloc[3] == "all"  # no per-target mean


def test_spiked_samples_share_the_targets_in_runs_with_the_same_spike_levels():
    args = {"threshold": 0.98, "background": 4, "spikes": (1, 3), "samples": 5, "blanks": 2, "seed": 3, "alarm": PAPER}
    table = spiked_samples(*two_targets(), **args)
    assert list(table["target"].iloc[:7]) == ["crypto"] * 3 + ["giardia"] * 2 + [""] * 2
    assert list(table["spikes"].iloc[:7]) == [1, 2, 3, 1, 2, 0, 0]
    mixed = spiked_samples(*two_targets(), **args, mixed=True)
    assert list(mixed["target"].iloc[:5]) == ["all"] * 5 and list(mixed["spikes"].iloc[:5]) == [1, 2, 3, 1, 2]
    with pytest.raises(InputError, match="spiked.samples: 1 spiked sample.*2 targets.*spiked.mixed: true"):
        spiked_samples(*two_targets(), **(args | {"samples": 1}))
    predicted, confidence, truth, targets = two_targets()
    with pytest.raises(InputError, match="no giardia to spike"):
        spiked_samples(predicted[:13], confidence[:13], truth[:13], targets, **args)


def test_spike_counts_cycle_through_the_range_and_draws_are_seeded():
    args = {"threshold": 0.98, "background": 4, "spikes": (1, 3), "samples": 5, "blanks": 2, "seed": 3, "alarm": PAPER}
    table = spiked_samples(*hand_case(), **args)
    assert list(table["spikes"].iloc[:7]) == [1, 2, 3, 1, 2, 0, 0]
    assert list(table["kind"].iloc[:7]) == ["spiked"] * 5 + ["blank"] * 2
    assert (table["images"].iloc[:7] == 4 + table["spikes"].iloc[:7]).all()
    # a sample of 4 of the 10 backgrounds holds the one called background image or not
    assert set(table["false_positives"].iloc[:7]) <= {0, 1}
    assert len(set(table["false_positives"].iloc[:7])) == 2  # and the draws differ between samples
    pd.testing.assert_frame_equal(table, spiked_samples(*hand_case(), **args))


@pytest.mark.parametrize("background", [10, 25, 2000])
def test_the_background_is_at_most_the_pool_and_never_repeats_an_image(background):
    table = spiked_samples(
        *hand_case(), threshold=0.98, background=background, spikes=(2, 2), samples=1, blanks=1, seed=0, alarm=PAPER
    )
    # the pool holds 10 non-targets: every sample holds each once, so exactly its one called image
    assert (table["background"] == 10).all() and list(table["images"].iloc[:2]) == [12, 10]
    assert (table["false_positives"].iloc[:2] == 1).all()
    short = spiked_samples(
        *hand_case(), threshold=0.98, background=5, spikes=(4, 4), samples=1, blanks=0, seed=0, alarm=PAPER
    )
    assert short["spikes_resampled"].iloc[0] and short["background"].iloc[0] == 5


def test_spiked_samples_need_targets():
    predicted, confidence, _, targets = hand_case()
    with pytest.raises(InputError, match="no crypto to spike"):
        spiked_samples(predicted, confidence, np.array(["debris"] * 13), targets, 0.98, 10, (6, 10), 6, 4, 0, PAPER)


def test_false_positive_bound_by_hand():
    # 0 of n: the bound solves (1 - p)^n = 0.05, the "rule of three" p ~ 3/n
    assert false_positive_bound(0, 150) == pytest.approx(1 - 0.05 ** (1 / 150))
    assert false_positive_bound(0, 150) == pytest.approx(3 / 150, rel=0.02)
    # x of n: P(Binomial(n, p_upper) <= x) = 0.05, the Clopper-Pearson definition
    from scipy.stats import binom

    bound = false_positive_bound(4, 200)
    assert binom.cdf(4, 200, bound) == pytest.approx(0.05) and bound > 4 / 200
    assert false_positive_bound(7, 7) == 1.0
    with pytest.raises(InputError, match="validation negatives"):
        false_positive_bound(0, 0)


def test_alarm_count_by_hand():
    assert alarm_count({"min_targets": 3}, 500) == 3
    assert alarm_count({"min_targets": 1}, 500) == 1  # the paper's rule
    # 0 false positives of 150 -> p = 0.0198; a blank of 100 objects: P(X >= 1) = 0.86, ..., the least k with
    # P(X >= k) <= 0.01 is 7 (P(X >= 6) = 0.0147, P(X >= 7) = 0.0038, worked out with the binomial pmf)
    assert alarm_count({"false_alarm_rate": 0.01}, 100, 0, 150) == 7
    # more objects, more expected false positives: the count grows; a stricter rate, too
    counts = [alarm_count({"false_alarm_rate": 0.01}, n, 2, 300) for n in (10, 100, 1000, 10_000)]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] > 10_000 * 2 / 300
    assert alarm_count({"false_alarm_rate": 0.001}, 1000, 2, 300) > alarm_count(
        {"false_alarm_rate": 0.05}, 1000, 2, 300
    )


def test_calibrated_alarm_keeps_blank_false_alarms_at_the_rate():
    """Blanks whose objects have the validation's false-positive rate alarm at most at the asked-for rate."""
    rng = np.random.default_rng(0)
    rate, objects, negatives, true_p = 0.05, 400, 300, 0.02
    alarms = []
    for _ in range(2000):
        false_positives = rng.binomial(negatives, true_p)  # what validation saw
        k = alarm_count({"false_alarm_rate": rate}, objects, false_positives, negatives)
        alarms.append(rng.binomial(objects, true_p) >= k)  # a blank sample
    assert np.mean(alarms) <= rate


@pytest.mark.parametrize(
    "spec, named",
    [
        ({"min_targets": 0}, "alarm.min_targets"),
        ({"false_alarm_rate": 1.0}, "alarm.false_alarm_rate"),
        ({"min_targets": 1, "false_alarm_rate": 0.01}, "alarm:"),
        ({"rate": 0.1}, "alarm:"),
    ],
)
def test_alarm_rule_names_the_bad_key(spec, named):
    with pytest.raises(InputError, match=named):
        alarm_rule(spec)


def test_spiked_samples_alarm_by_a_calibrated_rule():
    args = {"threshold": 0.98, "background": 10, "spikes": (3, 3), "samples": 1, "blanks": 1, "seed": 0}
    # 1 called background and 1 called target: the paper's rule alarms on both samples, a rule asking for 2 only on
    # the spiked one; a calibrated rule from 0 of 1000 validation negatives asks for 1 in a sample of 13 objects
    assert list(spiked_samples(*hand_case(), **args, alarm=PAPER)["alarm"].iloc[:2]) == ["yes", "yes"]
    table = spiked_samples(*hand_case(), **args, alarm={"min_targets": 2})
    assert list(table["alarm"].iloc[:2]) == ["yes", "no"] and list(table["alarm_at"].iloc[:2]) == [2, 2]
    calibrated = spiked_samples(*hand_case(), **args, alarm={"false_alarm_rate": 0.05}, validation=(0, 1000))
    assert list(calibrated["alarm_at"].iloc[:2]) == [1, 1]
    # 30 of 100 validation negatives called a target: a sample of 10 to 13 objects needs many more than 2
    noisy = spiked_samples(*hand_case(), **args, alarm={"false_alarm_rate": 0.05}, validation=(30, 100))
    assert (noisy["alarm_at"].iloc[:2] > 5).all() and (noisy["alarm"].iloc[:2] == "no").all()


def test_open_set_results_by_hand():
    results = open_set_results(
        confidence_known=[0.99, 0.97, 0.5, 0.985],
        pred_known=[0, 1, 1, 2],
        y_known=[0, 1, 0, 1],
        confidence_unknown=[0.99, 0.2, 0.981, 0.3, 0.97],
        threshold=0.98,
    )
    assert results["unknown_total"] == 5 and results["false_alarms"] == 2  # 0.99 and 0.981
    assert results["false_alarm_rate"] == pytest.approx(0.4)
    assert results["known_total"] == 4 and results["known_lost"] == 2  # 0.97 and 0.5
    assert results["known_lost_rate"] == pytest.approx(0.5)
    assert results["known_accepted_accuracy"] == pytest.approx(0.5)  # 0.99 right, 0.985 wrong
    # known beats unknown in 4.5 + 2.5 + 2 + 4 of the 20 pairs (a tie counts one half)
    assert results["auroc"] == pytest.approx(13 / 20)


def test_open_set_results_without_unknown_images():
    results = open_set_results([0.99, 0.5], [0, 1], [0, 1], [], 0.98)
    assert results["unknown_total"] == 0 and results["false_alarms"] == 0
    assert np.isnan(results["false_alarm_rate"]) and np.isnan(results["auroc"])
    assert results["known_lost"] == 1
