# Exports and the explorer page of each experiment, then its figures.
# The objects of every evaluation, one row each, beside its tables: Parquet, AnnData (.h5ad) and FCS.


rule export_objects:
    input:
        embeddings="results/{experiment}/embeddings/{loss}/t{trial}.parquet",
        predictions="results/{experiment}/eval/{loss}/t{trial}/predictions.parquet",
        classifiers="results/{experiment}/eval/{loss}/t{trial}/classifiers.joblib",
        metrics="results/{experiment}/eval/{loss}/t{trial}/metrics.csv",
        map="results/{experiment}/maps/{loss}/t{trial}.parquet",
        patches=lambda wildcards: patches_of(wildcards)["table"],
    output:
        table="results/{experiment}/eval/{loss}/t{trial}/objects.parquet",
        h5ad="results/{experiment}/eval/{loss}/t{trial}/objects.h5ad",
        fcs="results/{experiment}/eval/{loss}/t{trial}/objects.fcs",
    log:
        "logs/{experiment}/export/{loss}/t{trial}.log",
    benchmark:
        "results/benchmarks/{experiment}/export/{loss}/t{trial}.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        targets=lambda wildcards: experiment_of(wildcards)["targets"],
    script:
        "../scripts/export_objects.py"


# One page per experiment to look at every model's latent map with the cells, linked from the report (its caption
# in report/workflow.rst), not embedded in it: it holds a thumbnail per object.


rule explorer:
    input:
        unpack(patches_of),
        objects=per_loss_and_trial(
            "results/{experiment}/eval/{loss}/t{trial}/objects.parquet"
        ),
        metrics=per_loss_and_trial(
            "results/{experiment}/eval/{loss}/t{trial}/metrics.csv"
        ),
        maps=per_loss_and_trial("results/{experiment}/maps/{loss}/t{trial}.npz"),
    output:
        "results/{experiment}/explorer.html",
    log:
        "logs/{experiment}/explorer.log",
    benchmark:
        "results/benchmarks/{experiment}/explorer.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        runs=loss_trials,
        channels=figure_channels,
        targets=lambda wildcards: experiment_of(wildcards)["targets"],
        seed=config["seed"],
    script:
        "../scripts/explorer.py"


# Figures of each experiment, in results/{experiment}/figures/: a PNG for the report and a PDF beside it for papers.
# Figures of one trial (latent spaces, block features, thumbnails, similarity maps) draw trial FIGURE_TRIAL; the
# others pool or average over every trial.


rule figure_latent:
    input:
        maps=per_loss("results/{experiment}/maps/{loss}/t{trial}.parquet"),
    output:
        **figure("latent", "latent space", "latent space"),
    log:
        "logs/{experiment}/figures/latent.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/latent.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        losses=figure_losses,
        points=FIGURE_POINTS,
        seed=config["seed"],
    script:
        "../scripts/figure_latent.py"


rule figure_blocks:
    input:
        unpack(patches_of),
        split=f"results/{{experiment}}/splits/t{FIGURE_TRIAL}.parquet",
        models=per_loss("results/{experiment}/models/{loss}/t{trial}.pt"),
    output:
        **figure("blocks", "t-SNE of block features", "latent space"),
    log:
        "logs/{experiment}/figures/blocks.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/blocks.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        losses=figure_losses,
        channels=figure_channels,
        points=BLOCK_POINTS,
        seed=config["seed"],
    script:
        "../scripts/figure_blocks.py"


rule figure_images:
    input:
        unpack(patches_of),
        map=f"results/{{experiment}}/maps/{{loss}}/t{FIGURE_TRIAL}.parquet",
    output:
        **figure("images", "image t-SNE", "latent space", loss="{loss}"),
    log:
        "logs/{experiment}/figures/{loss}/images.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/{loss}/images.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        channels=figure_channels,
        points=FIGURE_POINTS,
        trial=FIGURE_TRIAL,
        seed=config["seed"],
    script:
        "../scripts/figure_images.py"


rule figure_confusion:
    input:
        tables="results/{experiment}/tables",
    output:
        multiclass=list(
            figure(
                "confusion", "confusion matrices", "evaluation", loss="{loss}"
            ).values()
        ),
        at_threshold=list(
            figure(
                "confusion_at_threshold",
                "confusion matrices at the threshold",
                "evaluation",
                loss="{loss}",
            ).values()
        ),
    log:
        "logs/{experiment}/figures/{loss}/confusion.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/{loss}/confusion.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/figure_confusion.py"


rule figure_metrics:
    input:
        tables="results/{experiment}/tables",
    output:
        **figure("metrics", "MCC, balanced accuracy, silhouette", "evaluation"),
    log:
        "logs/{experiment}/figures/metrics.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/metrics.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/figure_metrics.py"


rule figure_novel_shots:
    input:
        per_loss_and_trial("results/{experiment}/eval/{loss}/t{trial}/novel.csv"),
    output:
        **figure("novel_shots", "accuracy on novel classes against shots", "evaluation"),
    log:
        "logs/{experiment}/figures/novel_shots.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/novel_shots.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/figure_novel.py"


rule figure_training:
    input:
        histories=per_loss_and_trial(
            "results/{experiment}/models/{loss}/t{trial}.history.csv"
        ),
    output:
        # beside the train rule's history tables, with their labels
        **figure(
            "training",
            "",
            "training",
            labels={"loss": "all", "trial": "all", "table": "training curves"},
        ),
    log:
        "logs/{experiment}/figures/training.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/training.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        runs=loss_trials,
    script:
        "../scripts/figure_training.py"


rule figure_confidence:
    input:
        tables="results/{experiment}/tables",
        predictions=per_loss_and_trial(
            "results/{experiment}/eval/{loss}/t{trial}/predictions.parquet"
        ),
    output:
        **figure("confidence", "confidence of known and unseen classes", "detection"),
    log:
        "logs/{experiment}/figures/confidence.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/confidence.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=loss_trials,
    script:
        "../scripts/figure_confidence.py"


rule figure_roc:
    input:
        tables="results/{experiment}/tables",
        predictions=per_loss_and_trial(
            "results/{experiment}/eval/{loss}/t{trial}/predictions.parquet"
        ),
        patches=lambda wildcards: patches_of(wildcards)["table"],
    output:
        **figure("roc", "ROC curves", "detection"),
    log:
        "logs/{experiment}/figures/roc.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/roc.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=loss_trials,
        targets=lambda wildcards: experiment_of(wildcards)["targets"],
    script:
        "../scripts/figure_roc.py"


rule figure_similarity:
    input:
        unpack(patches_of),
        model=f"results/{{experiment}}/models/{{loss}}/t{FIGURE_TRIAL}.pt",
        embeddings=f"results/{{experiment}}/embeddings/{{loss}}/t{FIGURE_TRIAL}.parquet",
    output:
        **figure("similarity", "similarity maps", "similarity maps", loss="{loss}"),
    log:
        "logs/{experiment}/figures/{loss}/similarity.log",
    benchmark:
        "results/benchmarks/{experiment}/figures/{loss}/similarity.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        channels=figure_channels,
        trial=FIGURE_TRIAL,
        seed=config["seed"],
    script:
        "../scripts/figure_similarity.py"


rule experiment_config:
    output:
        report(
            "results/{experiment}/config.yaml",
            caption="../report/config.rst",
            category="{experiment}",
            subcategory="config",
        ),
    log:
        "logs/{experiment}/config.log",
    benchmark:
        "results/benchmarks/{experiment}/config.tsv"
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        record=experiment_config,
    script:
        "../scripts/experiment_config.py"
