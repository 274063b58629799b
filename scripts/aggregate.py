"""Mean +- std over trials of every loss x classifier x metric, paired tests against softmax, paper-style tables."""

from pathlib import Path

from cytodml.report.tables import aggregate, collect_trials, sum_confusion, write_tables
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    trial_dirs = {
        (Path(path).parent.parent.name, int(Path(path).parent.name[1:])): Path(path).parent
        for path in snakemake.input.metrics
    }
    tables = collect_trials(trial_dirs)
    aggregated = aggregate(tables["metrics"])
    write_tables(
        aggregated,
        sum_confusion(tables["confusion"]),
        tables["spiked"],
        tables["open_set"],
        snakemake.output.tables,
        episodes=tables["episodes"],
        per_class=tables["per_class"],
    )
    log.info("tables of %d trials written to %s", len(trial_dirs), snakemake.output.tables)
