"""Mean +- std over trials of every loss x classifier x metric, paired tests against softmax, paper-style tables, the
recommended model (the best on the validation images), the retrieval and novel-class few-shot tables, and, with a
baseline experiment (input baseline_metrics), the per-trial gain over the same losses trained from random weights.

params.novel_queries (optional): the novel episodes' queries per class, for the novel table's footnote.
"""

from pathlib import Path

import pandas as pd

from cytodml.evaluate.recommend import rank_models, validation_scores
from cytodml.report.tables import aggregate, collect_trials, paired_gain, sum_confusion, write_tables
from cytodml.runlog import logged


def trial_dirs_of(paths) -> dict[tuple[str, int], Path]:
    """``{(loss, trial): eval dir}`` from results/<experiment>/eval/<loss>/t<trial>/metrics.csv paths."""
    return {(Path(path).parent.parent.name, int(Path(path).parent.name[1:])): Path(path).parent for path in paths}


with logged(snakemake.log[0]) as log:
    trial_dirs = trial_dirs_of(snakemake.input.metrics)
    tables = collect_trials(trial_dirs)
    aggregated = aggregate(tables["metrics"])
    paired = None
    if snakemake.input.get("baseline_metrics"):
        baseline = snakemake.params.get("baseline")
        baseline_metrics = collect_trials(trial_dirs_of(snakemake.input.baseline_metrics))["metrics"]
        paired = paired_gain(tables["metrics"], baseline_metrics, baseline)
        log.info("per-trial gain over baseline experiment %s: %d paired rows", baseline, len(paired))
    settings = snakemake.params.recommend
    patches = pd.read_parquet(snakemake.input.patches, columns=["class_name", "label"])
    label_of = dict(zip(patches["class_name"], patches["label"]))
    predictions = pd.concat(
        [
            pd.read_parquet(folder / "predictions.parquet").assign(loss=loss, trial=trial)
            for (loss, trial), folder in trial_dirs.items()
        ],
        ignore_index=True,
    )
    ranking = rank_models(
        validation_scores(predictions, settings["classifiers"], [label_of[name] for name in settings["targets"]])
    )
    write_tables(
        aggregated,
        sum_confusion(tables["confusion"]),
        tables["spiked"],
        tables["open_set"],
        snakemake.output.tables,
        episodes=tables["episodes"],
        per_class=tables["per_class"],
        ranking=ranking,
        experiment=snakemake.wildcards.experiment,
        paired=paired,
        novel=tables["novel"],
        novel_queries=snakemake.params.get("novel_queries"),
    )
    log.info("tables of %d trials written to %s", len(trial_dirs), snakemake.output.tables)
    if tables["novel"] is not None:
        log.info("novel-class tables of %d rows over %d trials", len(tables["novel"]), len(trial_dirs))
    if ranking.empty:
        log.info("no recommended model: no trial scored validation images")
    else:
        best = ranking.iloc[0]
        log.info(
            "recommended model: loss %s, classifier %s (validation %s %s %.4f over %d trial(s))",
            best["loss"],
            best["classifier"],
            best["view"],
            best["metric"],
            best["validation_mean"],
            best["trials"],
        )
