"""The config that produced one experiment's results, on its own, for the report: a config that reruns just it."""

import yaml

from cytodml.io import write_text
from cytodml.runlog import logged

with logged(snakemake.log[0]) as log:
    write_text(yaml.safe_dump(snakemake.params.record, sort_keys=False), snakemake.output[0])
    log.info("config of experiment %s written", snakemake.wildcards.experiment)
