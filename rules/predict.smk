# Detection in new samples: the model, classifier and threshold named in the config's `predict:` (or the experiment's
# recommended loss and classifier, where it names none) applied to each sample's raw dump. Not part of `rule all`: ask
# for results/predict/<sample>/summary.md, or the rule predict_all.
# The config lookups (PREDICT, PREDICT_SAMPLES, predict_*) live in rules/common.smk.


rule predict:
    input:
        unpack(predict_inputs),
    output:
        table="results/predict/{sample}/objects.parquet",
        csv=report(
            "results/predict/{sample}/objects.csv",
            caption="../report/predict_objects.rst",
            category="predict",
            subcategory="{sample}",
        ),
        summary=report(
            "results/predict/{sample}/summary.md",
            caption="../report/predict_summary.rst",
            category="predict",
            subcategory="{sample}",
        ),
        montage=report(
            "results/predict/{sample}/targets.png",
            caption="../report/predict_targets.rst",
            category="predict",
            subcategory="{sample}",
        ),
        h5ad="results/predict/{sample}/objects.h5ad",
        fcs="results/predict/{sample}/objects.fcs",
        explorer="results/predict/{sample}/explorer.html",
    log:
        "logs/predict/{sample}.log",
    benchmark:
        "results/benchmarks/predict/{sample}.tsv"
    wildcard_constraints:
        sample=_alternatives(PREDICT_SAMPLES),
    conda:
        "../envs/train.yaml"
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        trial=lambda wildcards: PREDICT["model"]["trial"],
        source=predict_source,
        gallery=predict_gallery,
        signatures=predict_signatures,
        channels=lambda wildcards: predict_dataset()["channels"],
        patch=lambda wildcards: predict_dataset()["patch"],
        experiment=lambda wildcards: PREDICT["model"]["experiment"],
        losses=predict_losses,
        # None: the recommended model's, read from the experiment's tables
        classifier=lambda wildcards: PREDICT["model"].get("classifier"),
        threshold=lambda wildcards: PREDICT["model"].get("threshold"),
        targets=predict_targets,
        evaluated_targets=lambda wildcards: predict_experiment()["targets"],
        alarm=lambda wildcards: PREDICT["alarm"],
    script:
        "../scripts/predict.py"


rule predict_all:
    input:
        expand("results/predict/{sample}/summary.md", sample=PREDICT_SAMPLES),
