# Self-supervised pretraining per experiment (or trial), training of one embedding network per experiment x loss x
# trial, and the embedding of every patch.


rule pretrain:
    input:
        unpack(patches_of),
        unpack(pretrain_inputs),
    output:
        encoder="results/{experiment}/pretrain/{scope}.pt",
        history=report(
            "results/{experiment}/pretrain/{scope}.history.csv",
            caption="../report/pretrain_history.rst",
            category="{experiment}",
            subcategory="training",
            labels={"loss": "pretraining", "trial": "{scope}", "table": "history"},
        ),
    log:
        "logs/{experiment}/pretrain/{scope}.log",
    benchmark:
        "results/benchmarks/{experiment}/pretrain/{scope}.tsv"
    conda:
        "../envs/train.yaml"
    # one job that every loss and trial of the experiment waits for: both cores where there is no GPU
    threads: 2
    resources:
        mem_mb=8000,
        runtime=480,
    params:
        experiment=experiment_keys(TRAIN_KEYS),
        pretrain=lambda wildcards: experiment_of(wildcards)["pretrain"],
        dataset_channels=lambda wildcards: DATASETS[dataset_of(wildcards)]["channels"],
        dataset=dataset_of,
        extra=lambda wildcards: experiment_of(wildcards)["pretrain"]["extra"],
        extra_channels=lambda wildcards: {
            name: DATASETS[name]["channels"]
            for name in experiment_of(wildcards)["pretrain"]["extra"]
        },
        seed=config["seed"],
        checkpoints=lambda wildcards: f"results/{wildcards.experiment}/checkpoints/pretrain/{wildcards.scope}",
    script:
        "../scripts/pretrain.py"


rule train:
    input:
        unpack(patches_of),
        unpack(init_of),
        split="results/{experiment}/splits/t{trial}.parquet",
        augmented="results/{experiment}/augmented/t{trial}.npy",
        augmented_table="results/{experiment}/augmented/t{trial}.parquet",
    output:
        model="results/{experiment}/models/{loss}/t{trial}.pt",
        history=report(
            "results/{experiment}/models/{loss}/t{trial}.history.csv",
            caption="../report/history.rst",
            category="{experiment}",
            subcategory="training",
            labels={"loss": "{loss}", "trial": "{trial}", "table": "history"},
        ),
    log:
        "logs/{experiment}/train/{loss}/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/train/{loss}/t{trial}.tsv"
    conda:
        "../envs/train.yaml"
    # on CPU two small trainings side by side beat one on two threads; profiles/ raise it for GPU nodes
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        experiment=experiment_keys(TRAIN_KEYS),
        train=train_settings,
        loss=lambda wildcards: LOSSES[wildcards.loss],
        dataset_channels=lambda wildcards: DATASETS[dataset_of(wildcards)]["channels"],
        dataset=dataset_of,
        seed=config["seed"],
        # outside the declared outputs: Snakemake deletes those of a failed job, a resumed job needs its checkpoint
        checkpoints=lambda wildcards: f"results/{wildcards.experiment}/checkpoints/{wildcards.loss}/t{wildcards.trial}",
    script:
        "../scripts/train.py"


rule embed:
    input:
        unpack(patches_of),
        split="results/{experiment}/splits/t{trial}.parquet",
        model="results/{experiment}/models/{loss}/t{trial}.pt",
    output:
        "results/{experiment}/embeddings/{loss}/t{trial}.parquet",
    log:
        "logs/{experiment}/embed/{loss}/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/embed/{loss}/t{trial}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        dataset_channels=lambda wildcards: DATASETS[dataset_of(wildcards)]["channels"],
        experiment=experiment_keys(["channels"]),
    script:
        "../scripts/embed.py"
