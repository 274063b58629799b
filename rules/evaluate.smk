# Classifiers on the latent space per trial, then tables over trials per experiment; the latent map of each model.


rule latent_map:
    input:
        "results/{experiment}/embeddings/{loss}/t{trial}.parquet",
    output:
        map="results/{experiment}/maps/{loss}/t{trial}.npz",
        table="results/{experiment}/maps/{loss}/t{trial}.parquet",
    log:
        "logs/{experiment}/maps/{loss}/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/maps/{loss}/t{trial}.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        seed=config["seed"],
    script:
        "../scripts/latent_map.py"


rule evaluate:
    input:
        "results/{experiment}/embeddings/{loss}/t{trial}.parquet",
    output:
        metrics="results/{experiment}/eval/{loss}/t{trial}/metrics.csv",
        confusion="results/{experiment}/eval/{loss}/t{trial}/confusion.csv",
        per_class="results/{experiment}/eval/{loss}/t{trial}/per_class.csv",
        predictions="results/{experiment}/eval/{loss}/t{trial}/predictions.parquet",
        spiked="results/{experiment}/eval/{loss}/t{trial}/spiked.csv",
        open_set="results/{experiment}/eval/{loss}/t{trial}/open_set.csv",
        episodes="results/{experiment}/eval/{loss}/t{trial}/episodes.csv",
        novel="results/{experiment}/eval/{loss}/t{trial}/novel.csv",
        classifiers="results/{experiment}/eval/{loss}/t{trial}/classifiers.joblib",
    log:
        "logs/{experiment}/evaluate/{loss}/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/evaluate/{loss}/t{trial}.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        experiment=experiment_keys(EVALUATE_KEYS),
        dataset=dataset_of,
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


rule aggregate:
    input:
        unpack(trial_evaluations),
    output:
        tables=report(
            directory("results/{experiment}/tables"),
            caption="../report/tables.rst",
            category="{experiment}",
            subcategory="tables",
            patterns=["{name}.md"],
        ),
    log:
        "logs/{experiment}/aggregate.log",
    benchmark:
        "results/benchmarks/{experiment}/aggregate.tsv"
    conda:
        "../envs/evaluate.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # what the recommended model is chosen by (cytodml.evaluate.recommend)
        recommend=experiment_keys(("targets", "classifiers")),
        baseline=lambda wildcards: experiment_of(wildcards).get("baseline"),
        novel_queries=lambda wildcards: experiment_of(wildcards)["novel_episodes"][
            "queries"
        ],
    script:
        "../scripts/aggregate.py"
