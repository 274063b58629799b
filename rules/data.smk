# Data stages: render the default data set, list the raw dump, cut patches, split per trial, grow the training set.


rule synthesize:
    output:
        directory("resources/{dataset}"),
    log:
        "logs/{dataset}/synthesize.log",
    benchmark:
        "results/benchmarks/{dataset}/synthesize.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        source=lambda wildcards: DATASETS[wildcards.dataset]["source"],
        seed=config["seed"],
    script:
        "../scripts/synthesize.py"


rule ingest:
    input:
        raw_dump,
    output:
        "results/{dataset}/raw.parquet",
    log:
        "logs/{dataset}/ingest.log",
    benchmark:
        "results/benchmarks/{dataset}/ingest.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        source=source_of,
        channels=lambda wildcards: DATASETS[wildcards.dataset]["channels"],
        signature=raw_dump_signature,
    script:
        "../scripts/ingest.py"


rule patch:
    input:
        "results/{dataset}/raw.parquet",
    output:
        npy="results/{dataset}/patches.npy",
        table="results/{dataset}/patches.parquet",
        counts=report(
            "results/{dataset}/qc/counts.csv",
            caption="../report/qc_counts.rst",
            category="{dataset}",
            subcategory="quality control",
        ),
        montage=report(
            "results/{dataset}/qc/montage.png",
            caption="../report/qc_montage.rst",
            category="{dataset}",
            subcategory="quality control",
        ),
    log:
        "logs/{dataset}/patch.log",
    benchmark:
        "results/benchmarks/{dataset}/patch.tsv"
    conda:
        "../envs/data.yaml"
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        patch=lambda wildcards: DATASETS[wildcards.dataset]["patch"],
        source=source_of,
        seed=config["seed"],
    script:
        "../scripts/patch.py"


rule split:
    input:
        unpack(patches_of),
    output:
        "results/{experiment}/splits/t{trial}.parquet",
    log:
        "logs/{experiment}/split/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/split/t{trial}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        experiment=experiment_keys(SPLIT_KEYS),
        dataset=dataset_of,
        seed=config["seed"],
    script:
        "../scripts/split.py"


rule augment:
    input:
        unpack(patches_of),
        split="results/{experiment}/splits/t{trial}.parquet",
    output:
        npy="results/{experiment}/augmented/t{trial}.npy",
        table="results/{experiment}/augmented/t{trial}.parquet",
    log:
        "logs/{experiment}/augment/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/augment/t{trial}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        augment=lambda wildcards: experiment_of(wildcards)["augment"],
        channels=lambda wildcards: experiment_of(wildcards).get("channels"),
        dataset_channels=lambda wildcards: DATASETS[dataset_of(wildcards)]["channels"],
        dataset=dataset_of,
        seed=config["seed"],
    script:
        "../scripts/augment.py"
