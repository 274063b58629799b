# cytodml: deep metric learning for rare-event detection and few-shot classification in microscopy images.
# The default study (config.yaml) runs on data the workflow renders itself; presets/ hold the source studies and the
# real data sets. Layout and contracts: docs/architecture.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/predict.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
