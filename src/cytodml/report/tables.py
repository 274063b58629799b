"""Tables over trials: mean +- std per loss x classifier, a paired test against the softmax baseline, paper layouts,
and the per-trial gain of a pretrained-encoder experiment over its random-weights baseline experiment.

The inputs are the per-trial tables that :func:`cytodml.evaluate.run.write_trial` writes, stacked with a ``loss`` and a
``trial`` column (:func:`collect_trials`). Numbers are printed as the source papers print them: accuracy-like rates in
percent with one decimal ("85.0 +- 0.6", Medela & Picon 2020, Table 1), silhouette, Davies-Bouldin and MCC raw with two
(Gupta et al. 2019, Tables 2-4); retrieval metrics, NMI and AMI in percent as the metric-learning papers print them.
The few-shot accuracy on novel classes is laid out as the few-shot papers lay it out: a column per setting and K.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cytodml.errors import InputError, require_columns
from cytodml.evaluate.detection import ALL_TARGETS
from cytodml.evaluate.recommend import RULE
from cytodml.io import write_csv, write_text

KEYS = ["loss", "classifier", "view", "metric"]
SIGNIFICANCE = 0.05
MARK = "*"
WILCOXON_MIN_TRIALS = 6
PERCENT = {
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "sensitivity",
    "specificity",
    "false_alarm_rate",
    "precision",
    "recall",
    "f1",
    "f_score",
    "known_lost_rate",
    "known_accepted_accuracy",
    "precision_at_1",
    "map_at_r",
    "r_precision",
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "nmi",  # in percent, as the metric-learning papers print them (Oh Song et al. 2016)
    "ami",
    "rejection_rate",
    "recovery",
}
COUNTS = {"tp", "fn", "fp", "tn", "unknown_total", "false_alarms", "known_total", "known_lost", "alarm_at"}
THREE_DECIMALS = {"auroc", "threshold"}
# What each paper-style table shows; the CSV beside it holds every metric of the view.
LAYOUTS = {
    "metrics": ("multiclass", ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "mcc"]),
    "binary": ("binary", ["sensitivity", "specificity", "precision", "f_score", "balanced_accuracy", "mcc"]),
    "rare": ("rare", ["sensitivity", "specificity", "precision", "f_score", "balanced_accuracy", "mcc", "auroc"]),
    "latent": ("latent", ["silhouette", "davies_bouldin", "precision_at_1", "map_at_r"]),
}
TRIAL_TABLES = ("metrics", "confusion", "per_class", "spiked", "open_set", "episodes", "novel")
PER_CLASS_METRICS = ("precision", "recall", "f1")


def collect_trials(trial_dirs: dict[tuple[str, int], object]) -> dict[str, pd.DataFrame]:
    """Stack the per-trial CSVs of :func:`write_trial` from ``{(loss, trial): eval_dir}``, adding ``loss``, ``trial``.

    Returns one table per name in :data:`TRIAL_TABLES`; a table no trial has rows for (header-only files: spiked
    samples without targets, episodes outside the episodic protocol, novel without novel classes) is None.
    """
    stacked: dict[str, list[pd.DataFrame]] = {name: [] for name in TRIAL_TABLES}
    for (loss, trial), eval_dir in trial_dirs.items():
        for name in TRIAL_TABLES:
            path = Path(eval_dir) / f"{name}.csv"
            if not path.exists():
                raise InputError(f"{path}: missing; the evaluate stage of loss {loss!r}, trial {trial} writes it")
            table = pd.read_csv(path, keep_default_na=False, na_values=[""])
            if table.empty:
                continue
            stacked[name].append(table.assign(loss=loss, trial=trial)[["loss", "trial", *table.columns]])
    return {name: pd.concat(tables, ignore_index=True) if tables else None for name, tables in stacked.items()}


def sum_confusion(confusion: pd.DataFrame) -> pd.DataFrame:
    """Confusion counts summed over trials, per loss, classifier, view and (actual, predicted) pair."""
    keys = [column for column in confusion.columns if column not in ("trial", "count")]
    return confusion.groupby(keys, as_index=False, sort=False)["count"].sum()


def _paired_test(values: np.ndarray, baseline: np.ndarray) -> tuple[str, float]:
    """Two-sided paired test of ``values`` against ``baseline`` (same trials, NaN pairs dropped)."""
    kept = ~(np.isnan(values) | np.isnan(baseline))
    values, baseline = values[kept], baseline[kept]
    if len(values) < 2:
        return "", np.nan
    test = "wilcoxon" if len(values) >= WILCOXON_MIN_TRIALS else "paired_t"
    if np.array_equal(values, baseline):
        return test, 1.0
    if test == "wilcoxon":
        return test, float(stats.wilcoxon(values, baseline).pvalue)
    return test, float(stats.ttest_rel(values, baseline).pvalue)


def aggregate(metrics: pd.DataFrame, baseline: str = "softmax") -> pd.DataFrame:
    """Mean, std (n - 1) and n over trials per (loss, classifier, view, metric), and a paired test against ``baseline``.

    Each loss is compared with the baseline loss for the same classifier, view and metric, trial by trial: the
    Wilcoxon signed-rank test where at least 6 trials pair up (below that its smallest two-sided p-value, 2 / 2^n,
    cannot reach 0.05), else the paired t-test; columns ``test`` (``wilcoxon``, ``paired_t`` or empty where nothing
    pairs) and ``p_value``. Identical pairs give p = 1. NaN values (0 / 0 metrics) are left out of mean, std and n.
    """
    require_columns(metrics, [*KEYS, "trial", "value"], "metrics table")
    table = metrics.groupby(KEYS, sort=False)["value"].agg(mean="mean", std="std", n="count").reset_index()
    by_trial = metrics.groupby([*KEYS, "trial"])["value"].first().unstack("trial")
    tests, p_values = [], []
    for key in zip(*(table[k] for k in KEYS)):
        base_key = (baseline, *key[1:])
        if key[0] == baseline or base_key not in by_trial.index or key not in by_trial.index:
            tests.append("")
            p_values.append(np.nan)
            continue
        test, p = _paired_test(by_trial.loc[key].to_numpy(float), by_trial.loc[base_key].to_numpy(float))
        tests.append(test)
        p_values.append(p)
    return table.assign(test=tests, p_value=p_values)


PAIRED_COLUMNS = [
    *KEYS,
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


def paired_gain(metrics: pd.DataFrame, baseline_metrics: pd.DataFrame, baseline_experiment: str) -> pd.DataFrame:
    """Per-trial gain of this experiment over ``baseline_experiment`` (the same losses trained from random weights on
    the same data set, split and trials), per (loss, classifier, view, metric) the two tables share.

    Both tables are per-trial metrics in :func:`collect_trials`' long layout. Trials pair up by number (same seeds,
    same draws): gain_t = value_t(init) - value_t(baseline), same trial t; pairs where either value is NaN are
    dropped. Columns (:data:`PAIRED_COLUMNS`): ``trials`` (pairs), ``mean`` and ``baseline_mean`` (over the paired
    trials, so ``gain_mean`` = ``mean`` - ``baseline_mean``), ``gain_mean``, ``gain_std`` (n - 1; NaN from one pair),
    ``wins`` (trials where this experiment scores higher), ``test`` and ``p_value`` (:func:`_paired_test`: Wilcoxon
    signed-rank from 6 pairs, else paired t-test) and ``baseline_experiment``. A key with no pair (a loss only one
    experiment trains, such as a loss of type none) has no row. Rows keep the order of ``metrics``.
    """
    columns = [*KEYS, "trial", "value"]
    require_columns(metrics, columns, "metrics table")
    require_columns(baseline_metrics, columns, f"metrics table of baseline experiment {baseline_experiment!r}")
    per_trial = [table.groupby([*KEYS, "trial"], sort=False)["value"].first() for table in (metrics, baseline_metrics)]
    pairs = (
        per_trial[0].to_frame().join(per_trial[1].rename("baseline"), how="inner").dropna(subset=["value", "baseline"])
    )
    rows = []
    for key, pair in pairs.groupby(level=KEYS, sort=False):
        values, baseline = pair["value"].to_numpy(float), pair["baseline"].to_numpy(float)
        gain = values - baseline
        test, p_value = _paired_test(values, baseline)
        rows.append(
            dict(zip(KEYS, key))
            | {
                "trials": len(gain),
                "mean": values.mean(),
                "baseline_mean": baseline.mean(),
                "gain_mean": gain.mean(),
                "gain_std": gain.std(ddof=1) if len(gain) > 1 else np.nan,
                "wins": int((gain > 0).sum()),
                "test": test,
                "p_value": p_value,
                "baseline_experiment": baseline_experiment,
            }
        )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _scale(metric: str) -> tuple[float, int]:
    """(factor, decimals) a metric is printed with."""
    if metric in PERCENT:
        return 100.0, 1
    if metric in COUNTS:
        return 1.0, 1
    return 1.0, 3 if metric in THREE_DECIMALS else 2


def format_cell(mean: float, std: float, metric: str, p_value: float = np.nan) -> str:
    """ "85.0 +- 0.6" in the metric's unit (std left out where undefined), ``*`` appended where p < 0.05."""
    if np.isnan(mean):
        return ""
    return _value_and_spread(mean, std, metric) + (MARK if p_value < SIGNIFICANCE else "")


def _value_and_spread(value: float, std: float, metric: str, sign: str = "") -> str:
    """ "85.0 +- 0.6" in the metric's unit, the std left out where undefined; ``sign="+"`` signs the value."""
    factor, decimals = _scale(metric)
    cell = f"{value * factor:{sign}.{decimals}f}"
    return cell if np.isnan(std) else cell + f" +- {std * factor:.{decimals}f}"


def format_gain(gain_mean: float, gain_std: float, metric: str, p_value: float, wins: int, trials: int) -> str:
    """ "+1.3 +- 2.0 (p=0.06, 4/5)": signed gain in the metric's unit (percentage points for rates), std over trials
    where defined, the paired test's p-value where there is one, and wins / trials; blank where the gain is NaN."""
    if np.isnan(gain_mean):
        return ""
    cell = _value_and_spread(gain_mean, gain_std, metric, sign="+")
    detail = [] if np.isnan(p_value) else ["p<0.001" if p_value < 0.001 else f"p={p_value:.2g}"]
    return cell + f" ({', '.join([*detail, f'{wins}/{trials}'])})"


def _header(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT else metric


def paper_table(aggregated: pd.DataFrame, view: str, metrics: list[str], classifier: str | None = None) -> pd.DataFrame:
    """One row per loss (per loss x classifier when ``classifier`` is None), one column per metric, cells formatted.

    Losses and classifiers keep their order of appearance (the config's order); a metric a row lacks is left blank.
    """
    rows = aggregated[aggregated["view"] == view]
    if classifier is not None:
        rows = rows[rows["classifier"] == classifier]
    if rows.empty:
        raise InputError(
            f"no aggregated metrics for view {view!r}" + (f", classifier {classifier!r}" if classifier else "")
        )
    index = ["loss"] if classifier is not None else ["loss", "classifier"]
    cells = rows.assign(
        cell=[
            format_cell(m, s, metric, p)
            for m, s, metric, p in zip(rows["mean"], rows["std"], rows["metric"], rows["p_value"])
        ]
    )
    table = _spread(cells, index, ["cell"])["cell"]
    return table.reindex(columns=metrics, fill_value="").fillna("").reset_index().rename_axis(columns=None)


def _spread(rows: pd.DataFrame, index: list[str], values: list[str]) -> pd.DataFrame:
    """``values`` of long rows spread over one column per metric; rows in order of first appearance."""
    table = rows.set_index([*index, "metric"])[values].unstack("metric")
    order = rows[index].drop_duplicates()
    return table.reindex(pd.MultiIndex.from_frame(order) if len(index) > 1 else pd.Index(order[index[0]]))


def _wide(aggregated: pd.DataFrame, view: str) -> pd.DataFrame:
    """Every metric of a view as ``{metric}_mean``, ``{metric}_std``, ``{metric}_p_value`` per loss x classifier."""
    rows = aggregated[aggregated["view"] == view]
    columns = ["mean", "std", "p_value"]
    table = _spread(rows, ["loss", "classifier"], columns)
    table.columns = [f"{metric}_{stat}" for stat, metric in table.columns]
    ordered = [f"{m}_{stat}" for m in dict.fromkeys(rows["metric"]) for stat in columns]
    trials = rows.groupby(["loss", "classifier"], sort=False)["n"].max().rename("trials")
    return table[ordered].join(trials).reset_index()


FOOTNOTE = (
    "Mean +- standard deviation over trials. {mark} p < 0.05 against the {baseline} loss with the same classifier "
    "(two-sided paired Wilcoxon signed-rank test over trials where there are at least 6, else paired t-test)."
)


PAIRED_FOOTNOTE = (
    "Gain of fine-tuning from the pretrained encoder over the same loss from random weights in experiment {baseline} "
    "(same data set, split and trials), per trial: gain_t = value_t(pretrained) - value_t(random), mean +- standard "
    "deviation over trials (rates in percentage points); p: two-sided paired Wilcoxon signed-rank test over trials "
    "where there are at least 6, else paired t-test; wins/trials: trials where fine-tuning from the pretrained encoder "
    "scores higher."
)


def _write_paired(paired: pd.DataFrame, out_dir: Path) -> None:
    """``paired.csv`` (:func:`paired_gain`, every view and metric) and, where the multiclass view has rows, its
    :data:`LAYOUTS` ``metrics`` columns as ``paired`` (.md/.tex), a row per loss x classifier (:func:`format_gain`)."""
    write_csv(paired, out_dir / "paired.csv")
    view, shown = LAYOUTS["metrics"]
    rows = paired[paired["view"] == view]
    if rows.empty:
        return
    cells = rows.assign(
        cell=[
            format_gain(*args)
            for args in zip(
                rows["gain_mean"], rows["gain_std"], rows["metric"], rows["p_value"], rows["wins"], rows["trials"]
            )
        ]
    )
    present = [m for m in shown if m in set(rows["metric"])]
    table = _spread(cells, ["loss", "classifier"], ["cell"])["cell"]
    table = table.reindex(columns=present, fill_value="").fillna("").reset_index().rename_axis(columns=None)
    baseline = ", ".join(dict.fromkeys(paired["baseline_experiment"].astype(str)))
    _write_formatted(table, PAIRED_FOOTNOTE.format(baseline=baseline), out_dir / "paired")


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\^{}"),
    ):
        text = text.replace(char, escaped)
    return text.replace(" +- ", r" $\pm$ ").replace(MARK, f"$^{{{MARK}}}$")


def _write_formatted(
    table: pd.DataFrame, footnote: str, path_stem: Path, latex: bool = True, recommended: dict | None = None
) -> None:
    """``table`` (cells already formatted) as Markdown and, with ``latex``, as a LaTeX tabular, each with its footnote;
    the Markdown marks the rows of the ``recommended`` loss and classifier (:func:`_marked`)."""
    table = table.rename(columns=lambda c: _header(c) if c not in ("loss", "classifier") else c)
    marked, note = _marked(table, recommended)
    write_text(marked.to_markdown(index=False) + f"\n\n{footnote}{note}\n", path_stem.with_suffix(".md"))
    if latex:
        escaped = table.map(lambda cell: _latex_escape(str(cell))).rename(columns=_latex_escape)
        tabular = escaped.to_latex(index=False, escape=False, column_format="l" * len(escaped.columns))
        write_text(tabular + f"\\par\\footnotesize {_latex_escape(footnote)}\n", path_stem.with_suffix(".tex"))


RECOMMENDED = "(recommended)"


def _marked(table: pd.DataFrame, recommended: dict | None) -> tuple[pd.DataFrame, str]:
    """``table`` with :data:`RECOMMENDED` after the classifier of the recommended model's rows, and the footnote's
    sentence saying so; unchanged, and no sentence, where it has no such row."""
    if recommended is None or not {"loss", "classifier"} <= set(table.columns):
        return table, ""
    rows = (table["loss"] == recommended["loss"]) & (table["classifier"] == recommended["classifier"])
    if not rows.any():
        return table, ""
    marked = table.copy()
    marked.loc[rows, "classifier"] = f"{recommended['classifier']} {RECOMMENDED}"
    note = (
        f" {RECOMMENDED}: the experiment's recommended model, the best on the validation images (recommended.md), "
        "which predict applies when the config names no loss and classifier."
    )
    return marked, note


def _write_recommended(ranking: pd.DataFrame, aggregated: pd.DataFrame, out_dir: Path, experiment: str) -> dict | None:
    """``recommended.csv`` and ``.md`` (the first model of ``ranking``, :func:`~cytodml.evaluate.recommend.rank_models`,
    with its test score beside, for the record) and ``validation.csv`` (the ranking); returns the recommended row, or
    None where the ranking is empty (the files then say that there is none)."""
    write_csv(ranking, out_dir / "validation.csv")
    columns = ["experiment", "loss", "classifier", "view", "metric", "validation_mean", "validation_std", "trials"]
    if ranking.empty:
        write_csv(pd.DataFrame(columns=[*columns, "test_mean", "test_std"]), out_dir / "recommended.csv")
        write_text(
            "# Recommended model\n\nNone: no trial scored validation images, and the choice never falls back on test "
            "images; predict needs predict.model.loss and predict.model.classifier named.\n",
            out_dir / "recommended.md",
        )
        return None
    best = ranking.iloc[0].to_dict() | {"experiment": experiment}
    key = (best["loss"], best["classifier"], best["view"], best["metric"])
    test = aggregated.set_index(KEYS)[["mean", "std"]]
    test_mean, test_std = test.loc[key].to_list() if key in test.index else (np.nan, np.nan)
    best |= {"test_mean": test_mean, "test_std": test_std}
    write_csv(pd.DataFrame([best])[[*columns, "test_mean", "test_std"]], out_dir / "recommended.csv")
    metric = best["metric"]
    scored = "MCC of the targets against the rest" if best["view"] == "binary" else "balanced accuracy"
    shown = ranking[["rank", "loss", "classifier"]].assign(
        **{
            f"validation {_header(metric)}": [
                format_cell(m, s, metric) for m, s in zip(ranking["validation_mean"], ranking["validation_std"])
            ],
            "trials": ranking["trials"],
        }
    )
    write_text(
        f"# Recommended model\n\nLoss **{best['loss']}** with classifier **{best['classifier']}**: validation "
        f"{scored} (arg-max) {format_cell(best['validation_mean'], best['validation_std'], metric)} over "
        f"{best['trials']} trial(s); on the test images "
        f"{format_cell(test_mean, test_std, metric) or 'not reported'}, for the record.\n\n"
        f"{shown.to_markdown(index=False)}\n\nChosen as {RULE} Predict applies this model when the config names no "
        "loss and classifier.\n",
        out_dir / "recommended.md",
    )
    return best


def _spiked_groups(spiked: pd.DataFrame) -> pd.DataFrame:
    """The per-trial sample rows (mean rows dropped) with, per loss x classifier, each target's spiked samples under
    its name, then every sample, blanks included, under ``target`` "all"; a mixed sample counts only under "all"."""
    samples = spiked[spiked["sample"].astype(str) != "mean"]
    parts = []
    for _, pair in samples.groupby(["loss", "classifier"], sort=False):
        parts += [pair[pair["kind"].eq("spiked") & pair["target"].ne(ALL_TARGETS)], pair.assign(target=ALL_TARGETS)]
    return pd.concat(parts, ignore_index=True)


def _spiked_summary(spiked: pd.DataFrame) -> pd.DataFrame:
    """Per loss x classifier x target (:func:`_spiked_groups`): per-trial means of the samples (sensitivity, recovery
    over spiked ones), then mean and std over trials; alarm counts and false positives summed over trials."""
    samples = _spiked_groups(spiked)
    is_spiked = samples["kind"] == "spiked"
    alarms = samples["alarm"] == "yes"
    keys = ["loss", "classifier", "target"]
    per_trial = (
        samples.assign(
            spiked_alarms=alarms & is_spiked,
            spiked_samples=is_spiked,
            blank_alarms=alarms & ~is_spiked,
            blank_samples=~is_spiked,
        )
        .groupby([*keys, "trial"], sort=False)
        .agg(
            sensitivity=("sensitivity", "mean"),
            specificity=("specificity", "mean"),
            recovery=("recovery", "mean"),
            alarm_at=("alarm_at", "mean"),
            background=("background", "mean"),
            false_positives=("false_positives", "sum"),
            spiked_alarms=("spiked_alarms", "sum"),
            spiked_samples=("spiked_samples", "sum"),
            blank_alarms=("blank_alarms", "sum"),
            blank_samples=("blank_samples", "sum"),
            threshold=("threshold", "first"),
        )
    )
    grouped = per_trial.groupby(keys, sort=False)
    rates = grouped[["sensitivity", "specificity", "recovery", "alarm_at", "background", "threshold"]].agg(
        ["mean", "std"]
    )
    rates.columns = [f"{metric}_{stat}" for metric, stat in rates.columns]
    counts = grouped[["false_positives", "spiked_alarms", "spiked_samples", "blank_alarms", "blank_samples"]].sum()
    counts = counts.astype(np.int64)
    return rates.join(counts).join(grouped.size().rename("trials")).reset_index()


def _spiked_footnote(spiked: pd.DataFrame) -> str:
    """What the spiked table's rows are, and the background size the samples had (the rule is
    :func:`~cytodml.evaluate.detection.spiked_samples`'s: at most the trial's non-target images)."""
    samples = spiked[spiked["sample"].astype(str) != "mean"]
    low, high = int(samples["background"].min()), int(samples["background"].max())
    spiked_targets = samples.loc[samples["kind"].eq("spiked"), "target"]
    mixed = len(spiked_targets) and spiked_targets.eq(ALL_TARGETS).all()
    held = (
        "each spiked sample holds targets of every class, counted as one (spiked.mixed)"
        if mixed
        else "each spiked sample holds one target class, a row per target over its samples"
    )
    return (
        f"Simulated samples (Luo et al. 2021, Table 5): {held}, and 'all' over every sample, blanks included. Per "
        "trial the mean over the samples, then mean +- standard deviation over trials; alarms and false positives "
        f"summed over trials. Each sample holds {low if low == high else f'{low} to {high}'} background images "
        "(spiked.background, at most the trial's non-target test and open-set images). A sample alarms at "
        "'alarm at' or more objects called a target (the experiment's alarm rule)."
    )


def _write_spiked(spiked: pd.DataFrame, out_dir: Path, recommended: dict | None = None) -> None:
    """The spiked table: :func:`_spiked_summary` as CSV, and its paper layout as Markdown and LaTeX."""
    summary = _spiked_summary(spiked)
    write_csv(summary, out_dir / "spiked.csv")
    shown = (
        summary[["loss", "classifier", "target"]]
        .assign(
            **{
                metric: [format_cell(m, s, metric) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
                for metric in ("sensitivity", "specificity", "recovery", "alarm_at")
            },
            **{
                "alarms, spiked": list(map(_count_of, summary["spiked_alarms"], summary["spiked_samples"])),
                "alarms, blank": list(map(_count_of, summary["blank_alarms"], summary["blank_samples"])),
                "false positives": summary["false_positives"],
            },
        )
        .rename(columns={"alarm_at": "alarm at"})
    )
    _write_formatted(shown, _spiked_footnote(spiked), out_dir / "spiked", recommended=recommended)


def _count_of(part: int, whole: int) -> str:
    """ "a / b", or blank where there is nothing to count (no blank sample in a target's row)."""
    return f"{part} / {whole}" if whole else ""


def _open_set_summary(open_set: pd.DataFrame, aggregated: pd.DataFrame) -> pd.DataFrame:
    """Counts summed over trials with pooled rates, beside the over-trial mean, std and test of every open-set metric."""
    counts = open_set.groupby(["loss", "classifier"], sort=False)[
        ["unknown_total", "false_alarms", "known_total", "known_lost"]
    ].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        counts["pooled_false_alarm_rate"] = counts["false_alarms"] / counts["unknown_total"]
        counts["pooled_known_lost_rate"] = counts["known_lost"] / counts["known_total"]
    wide = _wide(aggregated, "open_set").set_index(["loss", "classifier"])
    return counts.join(wide, how="left").reset_index()


def _fraction(part: float, whole: float) -> str:
    return f"{part:.0f} / {whole:.0f}" + (f" ({100 * part / whole:.1f}%)" if whole else "")


def per_class_summary(per_class: pd.DataFrame) -> pd.DataFrame:
    """Per loss x classifier x class: :data:`PER_CLASS_METRICS` as ``{metric}_mean`` / ``_std`` over trials (NaN
    trials, a class never predicted, left out of its mean), ``support`` (test images per trial, mean) and
    ``trials``."""
    grouped = per_class.groupby(["loss", "classifier", "class"], sort=False)
    summary = grouped[list(PER_CLASS_METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["support"] = grouped["support"].mean()
    summary["trials"] = grouped["trial"].nunique()
    return summary.reset_index()


def _write_per_class(per_class: pd.DataFrame, out_dir: Path) -> None:
    summary = per_class_summary(per_class)
    write_csv(summary, out_dir / "per_class.csv")
    shown = summary[["loss", "classifier", "class"]].assign(
        **{
            metric: [format_cell(m, s, metric) for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
            for metric in PER_CLASS_METRICS
        },
        support=summary["support"].round(1),
    )
    _write_formatted(
        shown,
        "Per class, on the test images at the arg-max (no threshold): mean +- standard deviation over trials; "
        "support: test images of the class per trial.",
        out_dir / "per_class",
        latex=False,
    )


NOVEL_KEYS = ["loss", "setting", "method", "ways", "shots", "scope", "class_name"]
EPISODIC_SETTINGS = ("novel", "base")  # N-way K-shot episodes; "generalised" classifies among base and novel classes
NOVEL_PARTS = ("novel", "base", "harmonic")  # the paper layout's columns per shots value, in this order
REJECTED = "rejected before adding"
RETRIEVAL = [
    "precision_at_1",
    "r_precision",
    "map_at_r",
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "nmi",
    "ami",
]
RETRIEVAL_SIDES = {"latent": "test", "novel_latent": "novel"}  # view of classifier "embedding" -> side


def novel_summary(novel: pd.DataFrame) -> pd.DataFrame:
    """Per loss, setting, method, ways, shots, scope and class_name (blank outside scope ``class``), over trials:

    ``accuracy_mean`` and ``accuracy_std`` (n - 1) of the per-trial accuracy (scope ``all``: the mean over episodes
    of the accuracy over an episode's queries); ``ci_half_mean``, the mean over trials of the per-trial half-width
    (ci_high - ci_low) / 2 of the 95% t-interval over episodes (NaN where no trial has one); ``trials``, the trials
    with an accuracy. Rows keep their order of first appearance.
    """
    require_columns(novel, [*NOVEL_KEYS, "trial", "accuracy", "ci_low", "ci_high"], "novel table")
    halves = novel.assign(ci_half=(novel["ci_high"] - novel["ci_low"]) / 2)
    grouped = halves.groupby(NOVEL_KEYS, sort=False, dropna=False)
    summary = grouped.agg(
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        ci_half_mean=("ci_half", "mean"),
        trials=("accuracy", "count"),
    )
    return summary.reset_index()


def _novel_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the paper layout as long cells: ``setting`` ("5-way episodes" or "generalised"), ``loss``,
    ``method``, ``metric`` (the column: "novel 1-shot", "base 1-shot", "harmonic 1-shot", ...) and ``cell``
    (accuracy, mean +- std over trials); episodic rows (scope all) first, then the generalised ones."""
    episodic = summary["setting"].isin(EPISODIC_SETTINGS) & summary["scope"].eq("all")
    generalised = summary["setting"].eq("generalised") & summary["scope"].isin(NOVEL_PARTS)
    rows = pd.concat([summary[episodic], summary[generalised]])
    is_episodic = rows["setting"].isin(EPISODIC_SETTINGS)
    part = rows["setting"].where(is_episodic, rows["scope"])
    return pd.DataFrame(
        {
            "setting": np.where(is_episodic, rows["ways"].astype(str) + "-way episodes", "generalised"),
            "loss": rows["loss"],
            "method": rows["method"],
            "metric": part + " " + rows["shots"].astype(str) + "-shot",
            "cell": [format_cell(m, s, "accuracy") for m, s in zip(rows["accuracy_mean"], rows["accuracy_std"])],
        }
    )


def _rejection_cells(aggregated: pd.DataFrame) -> pd.DataFrame:
    """``loss``, ``method`` (the classifier) and :data:`REJECTED`: the share of novel images the base classifier
    calls unknown at its threshold (view ``novel_rejection``, metric ``rejection_rate``), mean +- std over trials."""
    rows = aggregated[(aggregated["view"] == "novel_rejection") & (aggregated["metric"] == "rejection_rate")]
    return pd.DataFrame(
        {
            "loss": rows["loss"],
            "method": rows["classifier"],
            REJECTED: [format_cell(m, s, "rejection_rate") for m, s in zip(rows["mean"], rows["std"])],
        }
    )


def novel_table(summary: pd.DataFrame, aggregated: pd.DataFrame) -> pd.DataFrame:
    """The novel-class paper layout, cells formatted (% accuracy, mean +- std over trials).

    Rows: ``setting``, ``loss``, ``method``. First the N-way episodes ("5-way episodes": a row per loss x method,
    prototype, knn, siamese), then the generalised rows (a row per loss x classifier), then ("before adding") the
    classifiers with a rejection rate but no generalised row. Columns per shots value K, ascending: ``novel K-shot``
    and ``base K-shot`` (episodes: the novel or the base classes; generalised: accuracy on the novel or the base
    queries among all classes), ``harmonic K-shot`` (generalised: their harmonic mean); last, where the aggregated
    metrics have the ``novel_rejection`` view, :data:`REJECTED`. A cell a row lacks is blank.
    """
    cells = _novel_cells(summary)
    index = ["setting", "loss", "method"]
    table = _spread(cells, index, ["cell"])["cell"]
    shots = sorted(set(summary["shots"]))
    columns = [f"{part} {k}-shot" for k in shots for part in NOVEL_PARTS if f"{part} {k}-shot" in table.columns]
    table = table.reindex(columns=columns).fillna("").reset_index().rename_axis(columns=None)
    rejection = _rejection_cells(aggregated)
    return table if rejection.empty else _with_rejection(table, rejection)


def _with_rejection(table: pd.DataFrame, rejection: pd.DataFrame) -> pd.DataFrame:
    """:data:`REJECTED` beside the generalised row of the same loss and classifier; a classifier without one gets a
    row of its own, setting "before adding", at the end."""
    table = table.merge(rejection.assign(setting="generalised"), on=["setting", "loss", "method"], how="left")
    generalised = table[table["setting"] == "generalised"]
    known = set(zip(generalised["loss"], generalised["method"]))
    alone = rejection[[pair not in known for pair in zip(rejection["loss"], rejection["method"])]]
    return pd.concat([table, alone.assign(setting="before adding")], ignore_index=True).fillna("")


def _listed(values) -> str:
    return " / ".join(str(v) for v in sorted(set(values)))


def _novel_footnote(summary: pd.DataFrame, rejection: bool, queries: int | None) -> str:
    """What the novel table's cells are: the ways, shots and queries of the episodes, then, where present, the
    generalised rows and the rejection column."""
    episodic = summary[summary["setting"].isin(EPISODIC_SETTINGS)]
    generalised = summary[summary["setting"].eq("generalised")]
    shots = ", ".join(str(k) for k in sorted(set(summary["shots"])))
    sentences = []
    if not episodic.empty:
        sentences.append(
            f"{_listed(episodic['ways'])}-way K-shot accuracy (%, K = {shots}), "
            f"{queries if queries is not None else 'Q'} queries per class; mean over episodes per trial, then mean "
            "+- std over trials; 95% CI half-width over episodes in novel.csv. novel: episodes of the classes never "
            "trained on; base: the same N and K on the trained classes' test images. prototype: nearest mean of a "
            "class's support images; knn: nearest support images; siamese: smallest mean distance to a class's "
            "support images."
        )
    if not generalised.empty:
        sentences.append(
            f"generalised: the base classifier (method) extended with the K support images of each of the "
            f"{_listed(generalised['ways'])} novel classes, as a gallery does, classifies the base and novel "
            "queries among all classes: accuracy (%) on the base-class and the novel-class queries and their "
            "harmonic mean, mean +- std over trials."
        )
    if rejection:
        sentences.append(
            f"{REJECTED}: novel images the base classifier calls unknown at its threshold before they are added "
            "(%, mean +- std over trials)."
        )
    return " ".join(sentences)


def _write_novel(novel: pd.DataFrame, aggregated: pd.DataFrame, out_dir: Path, queries: int | None) -> None:
    """``novel.csv`` (:func:`novel_summary`) and its paper layout (:func:`novel_table`) as ``novel`` (.md/.tex)."""
    summary = novel_summary(novel)
    write_csv(summary, out_dir / "novel.csv")
    table = novel_table(summary, aggregated)
    _write_formatted(table, _novel_footnote(summary, REJECTED in table.columns, queries), out_dir / "novel")


def _by_loss_then_side(table: pd.DataFrame, losses: list[str]) -> pd.DataFrame:
    """Rows in the order of ``losses``, each loss's sides in the order of :data:`RETRIEVAL_SIDES`."""
    orders = {"loss": losses, "side": list(RETRIEVAL_SIDES.values())}
    return table.sort_values(
        ["loss", "side"], key=lambda column: column.map(orders[column.name].index), kind="stable", ignore_index=True
    )


def retrieval_summary(aggregated: pd.DataFrame) -> pd.DataFrame:
    """Per loss x ``side`` (``test``: view ``latent``, the trained classes' test images; ``novel``: view
    ``novel_latent``, the novel classes' images; classifier ``embedding``): ``{metric}_mean``, ``_std`` and
    ``_p_value`` (:func:`aggregate`) of each :data:`RETRIEVAL` metric present, in that order, and ``trials``."""
    parts = []
    for view, side in RETRIEVAL_SIDES.items():
        rows = aggregated[
            aggregated["view"].eq(view)
            & aggregated["classifier"].eq("embedding")
            & aggregated["metric"].isin(RETRIEVAL)
        ]
        if not rows.empty:
            parts.append(_wide(rows, view).drop(columns="classifier").assign(side=side))
    table = pd.concat(parts, ignore_index=True)
    present = [m for m in RETRIEVAL if f"{m}_mean" in table.columns]
    columns = [f"{m}_{stat}" for m in present for stat in ("mean", "std", "p_value")]
    return _by_loss_then_side(table[["loss", "side", *columns, "trials"]], list(dict.fromkeys(aggregated["loss"])))


def _write_retrieval(aggregated: pd.DataFrame, out_dir: Path, footnote: str) -> None:
    """``retrieval.csv`` (:func:`retrieval_summary`) and ``retrieval`` (.md/.tex): a row per loss x side, a column per
    :data:`RETRIEVAL` metric present, mean +- std over trials (:func:`paper_table`)."""
    summary = retrieval_summary(aggregated)
    write_csv(summary, out_dir / "retrieval.csv")
    present = [m for m in RETRIEVAL if f"{m}_mean" in summary.columns]
    parts = [
        paper_table(aggregated, view, present, classifier="embedding").assign(side=side)
        for view, side in RETRIEVAL_SIDES.items()
        if side in set(summary["side"])
    ]
    table = _by_loss_then_side(pd.concat(parts, ignore_index=True), list(dict.fromkeys(aggregated["loss"])))
    note = (
        " Retrieval in the latent space, leave-one-out: each image a query against the other images of its side "
        "(test: the trained classes' test images; novel: the images of the classes never trained on); nmi and ami "
        "of a k-means clustering into as many clusters as classes."
    )
    _write_formatted(table[["loss", "side", *present]], footnote + note, out_dir / "retrieval")


def _has_retrieval(aggregated: pd.DataFrame) -> bool:
    latent = aggregated[aggregated["view"].eq("latent") & aggregated["classifier"].eq("embedding")]
    return latent["metric"].isin(RETRIEVAL).any()


def write_tables(
    aggregated: pd.DataFrame,
    confusion: pd.DataFrame,
    spiked: pd.DataFrame | None,
    open_set: pd.DataFrame | None,
    out_dir,
    episodes: pd.DataFrame | None = None,
    per_class: pd.DataFrame | None = None,
    baseline: str = "softmax",
    ranking: pd.DataFrame | None = None,
    experiment: str = "",
    paired: pd.DataFrame | None = None,
    novel: pd.DataFrame | None = None,
    novel_queries: int | None = None,
) -> None:
    """Write the study's tables into ``out_dir`` (CSV with snake-case numeric columns, Markdown, LaTeX).

    - ``aggregated.csv``: :func:`aggregate`'s long table, every view;
    - ``metrics``, ``binary``, ``rare``, ``latent`` (.csv/.md/.tex): the multiclass, targets-vs-rest (arg-max),
      rare-event (at the threshold) and latent-space views, a row per
      loss x classifier; the CSV has ``{metric}_mean``, ``_std``, ``_p_value`` and ``trials``; a view no trial
      reported is skipped;
    - ``open_set`` (.csv/.md/.tex): false alarms on unseen classes and known images lost, summed over trials;
    - ``spiked`` (.csv/.md/.tex): the spiked-sample simulation per loss x classifier (skipped without targets);
      ``open_set`` and ``spiked`` are skipped where their table is None or empty;
    - ``confusion.csv``: confusion counts summed over trials;
    - ``per_class`` (.csv/.md): precision, recall and F1 of each known class (arg-max, test images) per loss x
      classifier, mean +- std over trials, and the class's test images per trial;
    - ``episodes`` (.csv/.md): per-class episodic accuracy, mean +- std over trials (episodic protocol only).
    - ``retrieval`` (.csv/.md/.tex), where the latent view has :data:`RETRIEVAL` metrics: a row per loss x side
      (``test``: view ``latent``; ``novel``: view ``novel_latent``, where present), precision_at_1, r_precision,
      map_at_r, recall_at_K, nmi and ami (:func:`retrieval_summary`);
    - with ``novel`` (the per-trial novel-class tables), skipped where None or empty: ``novel.csv``
      (:func:`novel_summary`: ``accuracy_mean``, ``accuracy_std``, ``ci_half_mean``, ``trials`` per loss, setting,
      method, ways, shots, scope, class_name) and ``novel`` (.md/.tex, :func:`novel_table`: N-way K-shot accuracy
      on novel and base classes, the generalised rows, and the novel images rejected before adding them);
      ``novel_queries`` (the episodes' queries per class) goes into its footnote.

    - with ``ranking`` (:func:`~cytodml.evaluate.recommend.rank_models`, of ``experiment``): ``recommended``
      (.csv/.md): the recommended model (``experiment``, ``loss``, ``classifier``, ``view``, ``metric``,
      ``validation_mean``, ``validation_std``, ``trials``, and its ``test_mean``, ``test_std`` for the record; the
      CSV has its header only where there is none) and ``validation.csv`` (every candidate, ranked); the Markdown
      of ``metrics``, ``binary``, ``rare``, ``open_set`` and ``spiked`` marks its rows "(recommended)".
    - with ``paired`` (:func:`paired_gain` against the experiment's ``baseline``, the same losses from random weights),
      skipped where None or empty: ``paired.csv`` (every row) and ``paired`` (.md/.tex): per loss x classifier the
      gain on the ``metrics`` layout's multiclass metrics, "+1.3 +- 2.0 (p=0.06, 4/5)": mean +- std over trials of the
      per-trial gain, the paired test's p-value and wins / trials.

    ``confusion``, ``spiked``, ``open_set``, ``episodes``, ``per_class`` and ``novel`` are the per-trial tables
    stacked with ``loss`` and ``trial`` columns, as :func:`collect_trials` returns them.
    """
    out_dir = Path(out_dir)
    footnote = FOOTNOTE.format(mark=MARK, baseline=baseline)
    write_csv(aggregated, out_dir / "aggregated.csv")
    recommended = None if ranking is None else _write_recommended(ranking, aggregated, out_dir, experiment)
    for name, (view, shown) in LAYOUTS.items():
        if not (aggregated["view"] == view).any():
            continue
        write_csv(_wide(aggregated, view), out_dir / f"{name}.csv")
        present = [m for m in shown if m in set(aggregated.loc[aggregated["view"] == view, "metric"])]
        _write_formatted(paper_table(aggregated, view, present), footnote, out_dir / name, recommended=recommended)

    if open_set is not None and not open_set.empty:
        summary = _open_set_summary(open_set, aggregated)
        write_csv(summary, out_dir / "open_set.csv")
        fractions = summary[["loss", "classifier"]].assign(
            **{
                "false alarms": list(map(_fraction, summary["false_alarms"], summary["unknown_total"])),
                "known lost": list(map(_fraction, summary["known_lost"], summary["known_total"])),
            }
        )
        rates = paper_table(aggregated, "open_set", ["false_alarm_rate", "known_lost_rate", "auroc"])
        _write_formatted(
            fractions.merge(rates, on=["loss", "classifier"], how="left"),
            footnote + " Counts are summed over trials.",
            out_dir / "open_set",
            recommended=recommended,
        )

    if _has_retrieval(aggregated):
        _write_retrieval(aggregated, out_dir, footnote)

    if novel is not None and not novel.empty:
        _write_novel(novel, aggregated, out_dir, novel_queries)

    if spiked is not None and not spiked.empty:
        _write_spiked(spiked, out_dir, recommended)

    if paired is not None and not paired.empty:
        _write_paired(paired, out_dir)

    keys = [c for c in confusion.columns if c not in ("trial", "count")]
    write_csv(confusion.groupby(keys, sort=False)["count"].sum().reset_index(), out_dir / "confusion.csv")

    if per_class is not None and not per_class.empty:
        _write_per_class(per_class, out_dir)

    if episodes is not None and not episodes.empty:
        per_class = (
            episodes.groupby(["loss", "class_name"], sort=False)["accuracy"]
            .agg(accuracy_mean="mean", accuracy_std="std", trials="count")
            .reset_index()
        )
        write_csv(per_class, out_dir / "episodes.csv")
        cells = per_class.assign(
            cell=[format_cell(m, s, "accuracy") for m, s in zip(per_class["accuracy_mean"], per_class["accuracy_std"])]
        )
        shown = cells.pivot_table(index="loss", columns="class_name", values="cell", aggfunc="first", sort=False)
        _write_formatted(
            shown.reset_index().rename_axis(columns=None),
            "Nearest-prototype accuracy per class (%), mean +- standard deviation over trials of the per-trial "
            "mean over episodes.",
            out_dir / "episodes",
            latex=False,
        )
