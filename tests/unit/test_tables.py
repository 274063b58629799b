"""Aggregation over trials against numpy and scipy, the paper-style cell format, and the files write_tables makes."""

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytodml.errors import InputError
from cytodml.report.tables import (
    REJECTED,
    aggregate,
    collect_trials,
    format_cell,
    format_gain,
    novel_summary,
    paired_gain,
    paper_table,
    per_class_summary,
    retrieval_summary,
    write_tables,
)


def long_metrics(values: dict[tuple[str, str, str, str], list[float]]) -> pd.DataFrame:
    """Long metrics rows from {(loss, classifier, view, metric): one value per trial}, trials shuffled."""
    rows = [
        {"loss": loss, "trial": trial, "classifier": classifier, "view": view, "metric": metric, "value": value}
        for (loss, classifier, view, metric), per_trial in values.items()
        for trial, value in enumerate(per_trial)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


SOFTMAX_3 = [0.80, 0.84, 0.79]
TRIPLET_3 = [0.85, 0.86, 0.84]
SOFTMAX_7 = [0.30, 0.33, 0.31, 0.35, 0.29, 0.32, 0.34]
TRIPLET_7 = [0.36, 0.35, 0.38, 0.40, 0.33, 0.37, 0.36]


@pytest.fixture
def metrics():
    return long_metrics(
        {
            ("softmax", "knn", "multiclass", "balanced_accuracy"): SOFTMAX_3,
            ("triplet", "knn", "multiclass", "balanced_accuracy"): TRIPLET_3,
            ("softmax", "softmax", "multiclass", "balanced_accuracy"): [0.81, 0.83, 0.80],
            ("softmax", "embedding", "latent", "silhouette"): SOFTMAX_7,
            ("triplet", "embedding", "latent", "silhouette"): TRIPLET_7,
            ("triplet", "knn", "rare", "precision"): [0.5, np.nan, 0.7],  # 0 / 0 in trial 1
        }
    )


def row(aggregated, loss, classifier, metric):
    found = aggregated[
        (aggregated["loss"] == loss) & (aggregated["classifier"] == classifier) & (aggregated["metric"] == metric)
    ]
    assert len(found) == 1
    return found.iloc[0]


def test_mean_std_n_against_numpy(metrics):
    aggregated = aggregate(metrics)
    assert list(aggregated.columns) == ["loss", "classifier", "view", "metric", "mean", "std", "n", "test", "p_value"]
    for loss, values in (("softmax", SOFTMAX_3), ("triplet", TRIPLET_3)):
        found = row(aggregated, loss, "knn", "balanced_accuracy")
        assert found["mean"] == pytest.approx(np.mean(values))
        assert found["std"] == pytest.approx(np.std(values, ddof=1))
        assert found["n"] == 3
    precision = row(aggregated, "triplet", "knn", "precision")
    assert precision["n"] == 2 and precision["mean"] == pytest.approx(0.6)


def test_paired_tests_against_scipy(metrics):
    aggregated = aggregate(metrics)
    few = row(aggregated, "triplet", "knn", "balanced_accuracy")
    assert few["test"] == "paired_t"
    assert few["p_value"] == pytest.approx(stats.ttest_rel(TRIPLET_3, SOFTMAX_3).pvalue)
    many = row(aggregated, "triplet", "embedding", "silhouette")
    assert many["test"] == "wilcoxon"
    assert many["p_value"] == pytest.approx(stats.wilcoxon(TRIPLET_7, SOFTMAX_7).pvalue)
    assert many["p_value"] < 0.05
    # the baseline itself, and a metric the baseline lacks, are not tested
    for loss, classifier, metric in (("softmax", "knn", "balanced_accuracy"), ("triplet", "knn", "precision")):
        found = row(aggregated, loss, classifier, metric)
        assert found["test"] == "" and np.isnan(found["p_value"])


def test_identical_trials_give_p_one():
    same = long_metrics(
        {
            ("softmax", "knn", "multiclass", "accuracy"): [0.9] * 3,
            ("triplet", "knn", "multiclass", "accuracy"): [0.9] * 3,
        }
    )
    assert row(aggregate(same), "triplet", "knn", "accuracy")["p_value"] == 1.0


@pytest.mark.parametrize(
    ("mean", "std", "metric", "p", "expected"),
    [
        (0.85, 0.006, "balanced_accuracy", np.nan, "85.0 +- 0.6"),
        (0.37, 0.02, "silhouette", np.nan, "0.37 +- 0.02"),
        (1.41, 0.08, "davies_bouldin", 0.2, "1.41 +- 0.08"),
        (0.82, 0.011, "mcc", 0.01, "0.82 +- 0.01*"),
        (0.9971, np.nan, "accuracy", np.nan, "99.7"),
        (np.nan, np.nan, "accuracy", np.nan, ""),
    ],
)
def test_cells_print_as_the_papers_do(mean, std, metric, p, expected):
    assert format_cell(mean, std, metric, p) == expected


def test_paper_table_rows_and_columns(metrics):
    aggregated = aggregate(metrics)
    table = paper_table(aggregated, "multiclass", ["balanced_accuracy"])
    assert list(table.columns) == ["loss", "classifier", "balanced_accuracy"]
    assert sorted(zip(table["loss"], table["classifier"])) == [
        ("softmax", "knn"),
        ("softmax", "softmax"),
        ("triplet", "knn"),
    ]
    knn = paper_table(aggregated, "multiclass", ["balanced_accuracy", "mcc"], classifier="knn").set_index("loss")
    assert list(knn.columns) == ["balanced_accuracy", "mcc"]
    sd = np.std(TRIPLET_3, ddof=1) * 100
    assert knn.loc["triplet", "balanced_accuracy"] == f"{np.mean(TRIPLET_3) * 100:.1f} +- {sd:.1f}"
    assert knn.loc["triplet", "mcc"] == ""  # not reported: blank, not an error


def test_write_tables(tmp_path, metrics):
    confusion = pd.DataFrame(
        {
            "loss": "triplet",
            "trial": [0, 0, 1, 1],
            "classifier": "knn",
            "view": "multiclass",
            "actual": ["a", "a", "a", "a"],
            "predicted": ["a", "b", "a", "b"],
            "count": [5, 1, 6, 0],
        }
    )
    open_set = pd.DataFrame(
        {
            "loss": ["softmax", "triplet"] * 2,
            "trial": [0, 0, 1, 1],
            "classifier": "knn",
            "threshold": 0.98,
            "unknown_total": 10,
            "false_alarms": [4, 1, 6, 0],
            "known_total": 20,
            "known_lost": [0, 2, 1, 3],
        }
    )
    metrics = pd.concat(
        [
            metrics,
            long_metrics(
                {
                    ("softmax", "knn", "open_set", "false_alarm_rate"): [0.4, 0.6],
                    ("triplet", "knn", "open_set", "false_alarm_rate"): [0.1, 0.0],
                }
            ),
        ]
    )
    write_tables(aggregate(metrics), confusion, None, open_set, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            "aggregated.csv",
            "confusion.csv",
            *(f"{t}.{e}" for t in ("metrics", "latent", "rare", "open_set") for e in ("csv", "md", "tex")),
        ]
    )
    wide = pd.read_csv(tmp_path / "metrics.csv")
    assert list(wide.columns) == [
        "loss",
        "classifier",
        "balanced_accuracy_mean",
        "balanced_accuracy_std",
        "balanced_accuracy_p_value",
        "trials",
    ]
    assert wide.set_index(["loss", "classifier"]).loc[("triplet", "knn"), "balanced_accuracy_mean"] == pytest.approx(
        np.mean(TRIPLET_3)
    )
    summed = pd.read_csv(tmp_path / "confusion.csv")
    assert list(summed["count"]) == [11, 1] and "trial" not in summed.columns
    pooled = pd.read_csv(tmp_path / "open_set.csv").set_index("loss")
    assert pooled.loc["softmax", "false_alarms"] == 10 and pooled.loc["triplet", "known_lost"] == 5
    assert pooled.loc["triplet", "pooled_false_alarm_rate"] == pytest.approx(1 / 20)
    latent_md = (tmp_path / "latent.md").read_text()
    assert f"{np.mean(TRIPLET_7):.2f} +- {np.std(TRIPLET_7, ddof=1):.2f}*" in latent_md  # significant: marked
    assert "* p < 0.05 against the softmax loss" in latent_md
    assert "1 / 20 (5.0%)" in (tmp_path / "open_set.md").read_text()
    tex = (tmp_path / "latent.tex").read_text()
    assert r"$\pm$" in tex and r"$^{*}$" in tex and r"\begin{tabular}" in tex


CONFUSION = pd.DataFrame(columns=["loss", "trial", "classifier", "view", "actual", "predicted", "count"])


def spiked_trials(targets: list[str]) -> pd.DataFrame:
    """Two trials of a spiked-sample table, as write_trial writes it: spiked samples holding ``targets`` in turn (6
    spikes, 6 and 5 detected in trial 0, 6 and 6 in trial 1), a blank (a false alarm in trial 1), the mean rows."""
    samples = []
    for trial, detected in enumerate([[6, 5], [6, 6]]):
        samples += [
            {
                "loss": "triplet",
                "trial": trial,
                "classifier": "gmm",
                "sample": str(i + 1),
                "kind": "spiked",
                "target": target,
                "background": 75,
                "spikes": 6,
                "detected": d,
                "false_positives": 0,
                "sensitivity": d / 6,
                "specificity": 1.0,
                "alarm_at": 1,
                "alarm": "yes",
                "recovery": d / 6,
                "threshold": 0.98,
            }
            for i, (d, target) in enumerate(zip(detected, targets))
        ]
        samples.append(
            {
                "loss": "triplet",
                "trial": trial,
                "classifier": "gmm",
                "sample": "3",
                "kind": "blank",
                "target": np.nan,  # "" in the trial's CSV, read back as missing
                "background": 75,
                "spikes": 0,
                "detected": 0,
                "false_positives": trial,
                "sensitivity": np.nan,
                "specificity": 1 - trial / 75,
                "alarm_at": 1 + trial,  # a calibrated rule asks more of the trial with a false positive on validation
                "alarm": "yes" if trial else "no",
                "recovery": np.nan,
                "threshold": 0.98,
            }
        )
        for target in [*dict.fromkeys(targets), "all"]:
            samples.append({"loss": "triplet", "trial": trial, "classifier": "gmm", "sample": "mean", "target": target})
    return pd.DataFrame(samples)


def test_spiked_table_has_a_row_per_target_and_one_over_every_sample(tmp_path, metrics):
    write_tables(aggregate(metrics), CONFUSION, spiked_trials(["crypto", "giardia"]), None, tmp_path)
    spiked = pd.read_csv(tmp_path / "spiked.csv", keep_default_na=False, na_values=[""]).set_index("target")
    assert list(spiked.index) == ["crypto", "giardia", "all"] and (spiked["trials"] == 2).all()
    # per target: the mean over its samples per trial, then over trials
    assert (spiked.loc["crypto", "sensitivity_mean"], spiked.loc["crypto", "sensitivity_std"]) == (1.0, 0.0)
    assert spiked.loc["giardia", "recovery_mean"] == pytest.approx(np.mean([5 / 6, 1.0]))
    assert spiked.loc["giardia", "recovery_std"] == pytest.approx(np.std([5 / 6, 1.0], ddof=1))
    assert (spiked.loc["giardia", "spiked_alarms"], spiked.loc["giardia", "blank_samples"]) == (2, 0)
    # over every sample, blanks included
    every = spiked.loc["all"]
    per_trial = [np.mean([1.0, 5 / 6]), 1.0]
    assert every["sensitivity_mean"] == pytest.approx(np.mean(per_trial))
    assert every["sensitivity_std"] == pytest.approx(np.std(per_trial, ddof=1))
    assert (every["spiked_alarms"], every["spiked_samples"]) == (4, 4)
    assert (every["blank_alarms"], every["blank_samples"], every["false_positives"]) == (1, 2, 1)
    assert every["alarm_at_mean"] == pytest.approx(np.mean([1, 4 / 3])) and every["background_mean"] == 75
    text = (tmp_path / "spiked.md").read_text()
    assert "| target" in text and "alarm at" in text and "1.2 +- 0.2" in text and "1 / 2" in text
    assert "one target class" in text and "Each sample holds 75 background images" in text
    giardia_row = next(line for line in text.splitlines() if "| giardia" in line)
    assert "2 / 2" in giardia_row and "/ 0" not in giardia_row  # a target's row counts no blank


def test_spiked_table_of_a_mixed_spike_has_one_row(tmp_path, metrics):
    write_tables(aggregate(metrics), CONFUSION, spiked_trials(["all", "all"]), None, tmp_path)
    spiked = pd.read_csv(tmp_path / "spiked.csv")
    assert list(spiked["target"]) == ["all"]
    assert (spiked["spiked_samples"].item(), spiked["blank_samples"].item()) == (4, 2)
    assert "counted as one (spiked.mixed)" in (tmp_path / "spiked.md").read_text()


def test_episodes_table(tmp_path, metrics):
    episodes = pd.DataFrame(
        {
            "loss": "contrastive",
            "trial": [0, 0, 1, 1],
            "class_name": ["basophil", "platelet"] * 2,
            "accuracy": [0.96, 0.99, 0.98, 1.0],
            "ci_low": 0.9,
            "ci_high": 1.0,
            "episodes": 200,
        }
    )
    write_tables(aggregate(metrics), CONFUSION, None, None, tmp_path, episodes=episodes)
    per_class = pd.read_csv(tmp_path / "episodes.csv").set_index("class_name")
    assert per_class.loc["basophil", "accuracy_mean"] == pytest.approx(0.97)
    assert per_class.loc["platelet", "accuracy_std"] == pytest.approx(np.std([0.99, 1.0], ddof=1))
    assert "97.0 +- 1.4" in (tmp_path / "episodes.md").read_text()
    assert not (tmp_path / "episodes.tex").exists() and not (tmp_path / "open_set.csv").exists()


def test_collect_trials_stacks_with_loss_and_trial(tmp_path):
    for loss in ("softmax", "npair"):
        for trial in (0, 1):
            folder = tmp_path / loss / f"t{trial}"
            folder.mkdir(parents=True)
            pd.DataFrame(
                {"classifier": ["knn"], "view": ["multiclass"], "metric": ["accuracy"], "value": [0.5 + trial]}
            ).to_csv(folder / "metrics.csv", index=False)
            for name in ("confusion", "open_set", "per_class"):
                pd.DataFrame({"classifier": ["knn"], "count": [trial]}).to_csv(folder / f"{name}.csv", index=False)
            (folder / "spiked.csv").write_text("classifier\n")  # an experiment without targets
            (folder / "episodes.csv").write_text("class_name,accuracy,ci_low,ci_high,episodes\n")
            (folder / "novel.csv").write_text(NOVEL_HEADER)  # an experiment without novel classes
    tables = collect_trials({(loss, t): tmp_path / loss / f"t{t}" for loss in ("softmax", "npair") for t in (0, 1)})
    assert list(tables["metrics"].columns[:2]) == ["loss", "trial"]
    assert len(tables["metrics"]) == 4 and set(tables["metrics"]["loss"]) == {"softmax", "npair"}
    assert tables["spiked"] is None and tables["episodes"] is None and tables["novel"] is None
    (tmp_path / "npair" / "t1" / "open_set.csv").unlink()
    with pytest.raises(InputError, match=r"open_set.csv: missing; the evaluate stage of loss 'npair', trial 1"):
        collect_trials({("npair", 1): tmp_path / "npair" / "t1"})
    aggregated = aggregate(tables["metrics"], baseline="softmax")
    assert row(aggregated, "npair", "knn", "accuracy")["mean"] == 1.0


def test_per_class_table_is_aggregated_over_trials(tmp_path, metrics):
    per_class = pd.DataFrame(
        {
            "loss": ["triplet"] * 4,
            "trial": [0, 0, 1, 1],
            "classifier": ["knn"] * 4,
            "class": ["crypto", "debris", "crypto", "debris"],
            "precision": [0.5, 1.0, np.nan, 0.8],  # crypto never predicted in trial 1: no precision
            "recall": [0.25, 0.75, 0.0, 1.0],
            "f1": [1 / 3, 6 / 7, np.nan, 8 / 9],
            "support": [4, 8, 6, 8],
        }
    )
    summary = per_class_summary(per_class).set_index("class")
    assert summary.loc["crypto", "precision_mean"] == 0.5 and np.isnan(summary.loc["crypto", "precision_std"])
    assert summary.loc["debris", "recall_mean"] == pytest.approx(0.875)
    assert summary.loc["debris", "recall_std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))
    assert summary.loc["crypto", "support"] == 5 and (summary["trials"] == 2).all()
    write_tables(aggregate(metrics), CONFUSION, None, None, tmp_path, per_class=per_class)
    assert "87.5 +- 17.7" in (tmp_path / "per_class.md").read_text()
    assert len(pd.read_csv(tmp_path / "per_class.csv")) == 2


def test_recommended_model_table_and_marker(tmp_path, metrics):
    """The recommended model's table holds its validation score and, for the record, its test score from the
    aggregated table; the Markdown of the views marks its row, the LaTeX and CSV stay as they were."""
    ranking = pd.DataFrame(
        {
            "rank": [1, 2],
            "loss": ["softmax", "triplet"],  # validation prefers softmax, though triplet is better on test
            "classifier": ["knn", "knn"],
            "view": "multiclass",
            "metric": "balanced_accuracy",
            "validation_mean": [0.9, 0.8],
            "validation_std": [0.01, 0.02],
            "trials": 3,
        }
    )
    aggregated = aggregate(metrics)
    write_tables(aggregated, CONFUSION, None, None, tmp_path, ranking=ranking, experiment="tiny")
    recommended = pd.read_csv(tmp_path / "recommended.csv")
    assert len(recommended) == 1
    best = recommended.iloc[0]
    assert (best["experiment"], best["loss"], best["classifier"], best["metric"]) == (
        "tiny",
        "softmax",
        "knn",
        "balanced_accuracy",
    )
    assert (best["validation_mean"], best["trials"]) == (0.9, 3)
    assert best["test_mean"] == pytest.approx(np.mean(SOFTMAX_3))
    assert best["test_std"] == pytest.approx(np.std(SOFTMAX_3, ddof=1))
    text = (tmp_path / "recommended.md").read_text()
    assert "Loss **softmax** with classifier **knn**" in text and "90.0 +- 1.0" in text
    assert "Test images never enter the choice" in text
    assert list(pd.read_csv(tmp_path / "validation.csv")["loss"]) == ["softmax", "triplet"]
    marked = (tmp_path / "metrics.md").read_text()
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in marked.splitlines()[2:] if line.startswith("|")]
    assert sorted(rows) == [["softmax", "knn (recommended)"], ["softmax", "softmax"], ["triplet", "knn"]]
    assert "(recommended): the experiment's recommended model" in marked
    assert "recommended" not in (tmp_path / "metrics.tex").read_text()
    assert "recommended" not in (tmp_path / "latent.md").read_text()  # no row of the recommended model
    assert list(pd.read_csv(tmp_path / "metrics.csv")["classifier"]) == ["knn", "knn", "softmax"]


def test_no_recommended_model_without_validation(tmp_path, metrics):
    ranking = pd.DataFrame(columns=["rank", "loss", "classifier", "view", "metric", "validation_mean"])
    write_tables(aggregate(metrics), CONFUSION, None, None, tmp_path, ranking=ranking, experiment="tiny")
    assert pd.read_csv(tmp_path / "recommended.csv").empty
    assert "None: no trial scored validation images" in (tmp_path / "recommended.md").read_text()
    assert "recommended" not in (tmp_path / "metrics.md").read_text()


INIT_5 = [0.82, 0.85, 0.80, 0.88, 0.84]
RANDOM_5 = [0.80, 0.86, 0.75, 0.83, 0.81]


@pytest.fixture
def pretrained_and_random():
    """A pretrained-init experiment (with a loss of type none only it has) and its random-weights baseline."""
    init = long_metrics(
        {
            ("triplet", "knn", "multiclass", "balanced_accuracy"): INIT_5,
            ("triplet", "knn", "multiclass", "mcc"): [0.7, 0.8, np.nan, 0.9, 0.75],  # 0 / 0 in trial 2
            ("triplet", "embedding", "latent", "silhouette"): [0.3, 0.4],
            ("none", "knn", "multiclass", "balanced_accuracy"): [0.7] * 5,
        }
    )
    baseline = long_metrics(
        {
            ("triplet", "knn", "multiclass", "balanced_accuracy"): RANDOM_5,
            ("triplet", "knn", "multiclass", "mcc"): [0.6, 0.8, 0.5, 0.7, 0.7],
            ("triplet", "embedding", "latent", "silhouette"): [0.1, 0.25, 0.3],  # a trial the other lacks
        }
    )
    return init, baseline


def test_paired_gain_trial_by_trial(pretrained_and_random):
    paired = paired_gain(*pretrained_and_random, "random")
    assert list(paired.columns) == [
        "loss",
        "classifier",
        "view",
        "metric",
        "trials",
        "mean",
        "baseline_mean",
        "gain_mean",
        "gain_std",
        "wins",
        "test",
        "p_value",
        "baseline_experiment",
    ]
    assert "none" not in set(paired["loss"])  # trained only from the pretrained encoder: no pair
    assert (paired["baseline_experiment"] == "random").all()
    rows = paired.set_index(["classifier", "metric"])
    accuracy = rows.loc[("knn", "balanced_accuracy")]
    gain = [0.02, -0.01, 0.05, 0.05, 0.03]  # by hand, trial by trial
    assert accuracy["trials"] == 5 and accuracy["wins"] == 4
    assert accuracy["gain_mean"] == pytest.approx(np.mean(gain))
    assert accuracy["gain_std"] == pytest.approx(np.std(gain, ddof=1))
    assert accuracy["mean"] == pytest.approx(np.mean(INIT_5))
    assert accuracy["baseline_mean"] == pytest.approx(np.mean(RANDOM_5))
    assert accuracy["test"] == "paired_t"
    assert accuracy["p_value"] == pytest.approx(stats.ttest_rel(INIT_5, RANDOM_5).pvalue)
    mcc = rows.loc[("knn", "mcc")]  # the NaN trial drops its pair
    assert mcc["trials"] == 4 and mcc["wins"] == 3  # +0.1, 0, +0.2, +0.05: a tie is no win
    assert mcc["baseline_mean"] == pytest.approx(np.mean([0.6, 0.8, 0.7, 0.7]))
    assert mcc["gain_mean"] == pytest.approx(np.mean([0.1, 0.0, 0.2, 0.05]))
    silhouette = rows.loc[("embedding", "silhouette")]  # only trials 0 and 1 pair up
    assert silhouette["trials"] == 2 and silhouette["gain_mean"] == pytest.approx(0.175)
    assert silhouette["baseline_mean"] == pytest.approx(0.175)
    assert silhouette["gain_std"] == pytest.approx(np.std([0.2, 0.15], ddof=1))


def test_paired_gain_wilcoxon_from_six_trials():
    init = [0.5, 0.6, 0.55, 0.7, 0.65, 0.62]
    random = [0.4, 0.5, 0.56, 0.6, 0.5, 0.6]
    key = ("arcface", "knn", "multiclass", "accuracy")
    paired = paired_gain(long_metrics({key: init}), long_metrics({key: random}), "scratch").iloc[0]
    assert paired["test"] == "wilcoxon"
    assert paired["p_value"] == pytest.approx(stats.wilcoxon(init, random).pvalue)
    only = paired_gain(long_metrics({key: [0.5]}), long_metrics({key: [0.4]}), "scratch").iloc[0]
    assert only["trials"] == 1 and np.isnan(only["gain_std"]) and only["test"] == "" and np.isnan(only["p_value"])


def test_format_gain():
    assert format_gain(0.013, 0.02, "balanced_accuracy", 0.0625, 4, 5) == "+1.3 +- 2.0 (p=0.062, 4/5)"
    assert format_gain(-0.05, np.nan, "mcc", np.nan, 0, 1) == "-0.05 (0/1)"
    assert format_gain(0.1, 0.01, "mcc", 0.0001, 6, 6) == "+0.10 +- 0.01 (p<0.001, 6/6)"
    assert format_gain(np.nan, np.nan, "mcc", np.nan, 0, 0) == ""


def test_write_tables_paired(tmp_path, metrics, pretrained_and_random):
    paired = paired_gain(*pretrained_and_random, "random")
    write_tables(aggregate(metrics), CONFUSION, None, None, tmp_path / "with", paired=paired)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "with" / "paired.csv"), paired, check_dtype=False)
    text = (tmp_path / "with" / "paired.md").read_text()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("|")]
    assert rows[0] == ["loss", "classifier", "balanced_accuracy (%)", "mcc"]
    assert rows[2][:2] == ["triplet", "knn"] and len(rows) == 3  # no latent metric, no loss only one side has
    p = stats.ttest_rel(INIT_5, RANDOM_5).pvalue
    sd = np.std([0.02, -0.01, 0.05, 0.05, 0.03], ddof=1) * 100
    assert rows[2][2] == f"+2.8 +- {sd:.1f} (p={p:.2g}, 4/5)"
    assert "same loss from random weights in experiment random" in text
    assert r"$\pm$" in (tmp_path / "with" / "paired.tex").read_text()
    for empty in (None, paired.iloc[:0]):
        write_tables(aggregate(metrics), CONFUSION, None, None, tmp_path / "without", paired=empty)
        assert not any(p.name.startswith("paired") for p in (tmp_path / "without").iterdir())


# --------------------------------------------------------------------------------------------- novel classes, retrieval

NOVEL_HEADER = "setting,method,ways,shots,scope,class_name,accuracy,ci_low,ci_high,episodes\n"


def novel_trials() -> pd.DataFrame:
    """novel.csv of two losses x two trials, stacked: 3-way episodes at 1 and 5 shots on the novel classes (accuracy
    0.5, + 0.2 at 5 shots, + 0.1 for triplet, + 0.04 in trial 1; CI half-width 0.01 in trial 0, 0.02 in trial 1) and
    0.1 higher on the base classes, each with a per-class row; generalised rows at 0.9 on the base queries and the
    episodes' novel accuracy on the novel ones, without an interval."""
    rows = []
    for loss, trial, shots in itertools.product(("softmax", "triplet"), (0, 1), (1, 5)):
        novel = 0.5 + 0.2 * (shots == 5) + 0.1 * (loss == "triplet") + 0.04 * trial
        half = 0.01 * (trial + 1)
        key = {"loss": loss, "trial": trial, "ways": 3, "shots": shots}
        for (setting, accuracy), method in itertools.product(
            (("novel", novel), ("base", novel + 0.1)), ("prototype", "knn", "siamese")
        ):
            interval = {"accuracy": accuracy, "ci_low": accuracy - half, "ci_high": accuracy + half, "episodes": 50}
            rows.append(key | {"setting": setting, "method": method, "scope": "all", "class_name": np.nan} | interval)
            rows.append(key | {"setting": setting, "method": method, "scope": "class", "class_name": "a"} | interval)
        harmonic = 2 * 0.9 * novel / (0.9 + novel)
        for method, (scope, accuracy) in itertools.product(
            ("centroid", "knn"), (("base", 0.9), ("novel", novel), ("harmonic", harmonic))
        ):
            rows.append(key | {"setting": "generalised", "method": method, "scope": scope, "accuracy": accuracy})
    return pd.DataFrame(rows)


def retrieval_metrics(novel_side: bool = True) -> pd.DataFrame:
    """Latent metrics of two losses over two trials: retrieval on the test images, and on the novel images (nmi not
    reported there) where ``novel_side``; the rejection rate of novel images per loss x classifier."""
    values = {
        ("softmax", "embedding", "latent", "precision_at_1"): [0.80, 0.82],
        ("triplet", "embedding", "latent", "precision_at_1"): [0.90, 0.94],
        ("softmax", "embedding", "latent", "recall_at_4"): [0.90, 0.92],
        ("triplet", "embedding", "latent", "recall_at_4"): [0.95, 0.95],
        ("softmax", "embedding", "latent", "nmi"): [0.60, 0.70],
        ("triplet", "embedding", "latent", "nmi"): [0.65, 0.70],
        ("triplet", "embedding", "latent", "silhouette"): [0.3, 0.4],  # not a retrieval metric
        ("softmax", "centroid", "novel_rejection", "rejection_rate"): [0.3, 0.5],
        ("triplet", "centroid", "novel_rejection", "rejection_rate"): [0.2, 0.6],
        ("softmax", "knn", "novel_rejection", "rejection_rate"): [0.2, 0.2],
        ("triplet", "knn", "novel_rejection", "rejection_rate"): [0.2, 0.2],
        ("softmax", "softmax", "novel_rejection", "rejection_rate"): [0.1, 0.3],
    }
    if novel_side:
        values[("softmax", "embedding", "novel_latent", "precision_at_1")] = [0.5, 0.6]
        values[("triplet", "embedding", "novel_latent", "precision_at_1")] = [0.6, 0.72]
    return long_metrics(values)


def markdown_rows(path) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in path.read_text().splitlines() if "|" in line]


def test_novel_summary_over_trials():
    summary = novel_summary(novel_trials()).set_index(["loss", "setting", "method", "shots", "scope"])
    assert list(summary.columns) == ["ways", "class_name", "accuracy_mean", "accuracy_std", "ci_half_mean", "trials"]
    # 32 rows: 2 losses x 2 shots x (2 settings x 3 methods x 2 scopes + 2 classifiers x 3 scopes)
    assert len(summary) == 2 * 2 * (12 + 6) and (summary["trials"] == 2).all()
    five = summary.loc[("triplet", "novel", "prototype", 5, "all")]  # trials 0.8 and 0.84
    assert five["accuracy_mean"] == pytest.approx(0.82) and five["accuracy_std"] == pytest.approx(0.04 / np.sqrt(2))
    assert five["ci_half_mean"] == pytest.approx(0.015) and np.isnan(five["class_name"])
    assert summary.loc[("softmax", "base", "knn", 1, "all"), "accuracy_mean"] == pytest.approx(0.62)
    assert summary.loc[("softmax", "base", "knn", 1, "class"), "class_name"] == "a"
    generalised = summary.loc[("softmax", "generalised", "centroid", 1, "base")]
    assert generalised["accuracy_mean"] == pytest.approx(0.9) and generalised["accuracy_std"] == pytest.approx(0)
    assert np.isnan(generalised["ci_half_mean"])


def test_novel_tables(tmp_path):
    write_tables(
        aggregate(retrieval_metrics()), CONFUSION, None, None, tmp_path, novel=novel_trials(), novel_queries=15
    )
    summary = pd.read_csv(tmp_path / "novel.csv")
    assert list(summary.columns) == [
        "loss",
        "setting",
        "method",
        "ways",
        "shots",
        "scope",
        "class_name",
        "accuracy_mean",
        "accuracy_std",
        "ci_half_mean",
        "trials",
    ]
    rows = markdown_rows(tmp_path / "novel.md")
    parts = ("novel", "base", "harmonic")
    assert rows[0] == ["setting", "loss", "method", *(f"{p} {k}-shot" for k in (1, 5) for p in parts), REJECTED]
    by_key = {tuple(row[:3]): row[3:] for row in rows[2:]}
    assert list(by_key) == [
        *(("3-way episodes", loss, m) for loss in ("softmax", "triplet") for m in ("prototype", "knn", "siamese")),
        *(("generalised", loss, c) for loss in ("softmax", "triplet") for c in ("centroid", "knn")),
        ("before adding", "softmax", "softmax"),  # a rejection rate, but no generalised rows
    ]
    # triplet: novel 0.6 / 0.64 at 1 shot, 0.8 / 0.84 at 5; base 0.1 higher; std 0.04 / sqrt(2) = 2.8 points
    spread = "+- 2.8"
    assert by_key[("3-way episodes", "triplet", "siamese")] == [
        *(f"62.0 {spread}", f"72.0 {spread}", ""),
        *(f"82.0 {spread}", f"92.0 {spread}", ""),
        "",
    ]
    # generalised: base 0.9 in both trials, harmonic 2 b n / (b + n) per trial, then mean +- std
    harmonic_1 = [2 * 0.9 * 0.6 / 1.5, 2 * 0.9 * 0.64 / 1.54]  # 0.720, 0.748
    harmonic_5 = [2 * 0.9 * 0.8 / 1.7, 2 * 0.9 * 0.84 / 1.74]  # 0.847, 0.869
    assert by_key[("generalised", "triplet", "centroid")] == [
        *(f"62.0 {spread}", "90.0 +- 0.0", f"73.4 +- {np.std(harmonic_1, ddof=1) * 100:.1f}"),
        *(f"82.0 {spread}", "90.0 +- 0.0", f"85.8 +- {np.std(harmonic_5, ddof=1) * 100:.1f}"),
        "40.0 +- 28.3",  # rejection rates 0.2 and 0.6
    ]
    assert by_key[("generalised", "softmax", "knn")][-1] == "20.0 +- 0.0"
    assert by_key[("before adding", "softmax", "softmax")] == [""] * 6 + ["20.0 +- 14.1"]
    text = (tmp_path / "novel.md").read_text()
    assert "3-way K-shot accuracy (%, K = 1, 5), 15 queries per class; mean over episodes per trial" in text
    assert "95% CI half-width over episodes in novel.csv" in text and "each of the 3 novel classes" in text
    tex = (tmp_path / "novel.tex").read_text()
    assert r"\begin{tabular}" in tex and r"62.0 $\pm$ 2.8" in tex and r"95\% CI" in tex


def test_no_novel_tables_without_novel_rows(tmp_path):
    header_only = pd.read_csv(io.StringIO(NOVEL_HEADER)).assign(loss="x", trial=0)
    for novel in (None, header_only):
        write_tables(aggregate(retrieval_metrics()), CONFUSION, None, None, tmp_path, novel=novel)
        assert not any(p.name.startswith("novel") for p in tmp_path.iterdir())


def test_retrieval_tables(tmp_path):
    aggregated = aggregate(retrieval_metrics())
    summary = retrieval_summary(aggregated)
    expected = [f"{m}_{s}" for m in ("precision_at_1", "recall_at_4", "nmi") for s in ("mean", "std", "p_value")]
    assert list(summary.columns) == ["loss", "side", *expected, "trials"]
    losses = list(dict.fromkeys(aggregated["loss"]))  # the losses in their order of appearance (the config's)
    assert list(zip(summary["loss"], summary["side"])) == [
        (loss, side) for loss in losses for side in ("test", "novel")
    ]
    novel = summary.set_index(["loss", "side"]).loc[("triplet", "novel")]
    assert novel["precision_at_1_mean"] == pytest.approx(0.66) and np.isnan(novel["nmi_mean"])
    write_tables(aggregated, CONFUSION, None, None, tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "retrieval.csv"), summary, check_dtype=False)
    rows = markdown_rows(tmp_path / "retrieval.md")
    assert rows[0] == ["loss", "side", "precision_at_1 (%)", "recall_at_4 (%)", "nmi (%)"]
    expected = {
        "softmax": [["test", "81.0 +- 1.4", "91.0 +- 1.4", "65.0 +- 7.1"], ["novel", "55.0 +- 7.1", "", ""]],
        "triplet": [["test", "92.0 +- 2.8", "95.0 +- 0.0", "67.5 +- 3.5"], ["novel", "66.0 +- 8.5", "", ""]],
    }
    assert rows[2:] == [[loss, *cells] for loss in losses for cells in expected[loss]]
    assert "leave-one-out" in (tmp_path / "retrieval.md").read_text()
    assert r"$\pm$" in (tmp_path / "retrieval.tex").read_text()
    only_test = retrieval_summary(aggregate(retrieval_metrics(novel_side=False)))
    assert list(only_test["side"]) == ["test", "test"]
