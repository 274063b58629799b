"""The workflow as a user runs it: lint, dry runs, config errors before any job, and a small study end to end."""

import copy
import re
import shutil

import anndata
import flowio
import numpy as np
import pandas as pd
import pytest
import torch

from cytodml.learn.trainer import weights_digest

from .conftest import ROOT, snakemake

pytestmark = pytest.mark.workflow


def planned_jobs(result) -> dict[str, int]:
    """Rule -> job count from a dry run's job table."""
    table = result.stdout.split("Job stats:")[-1]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)
        if rule != "total"
    }


def test_lint_is_clean(tmp_path):
    result = snakemake(ROOT, "--lint", check=False)
    assert "good condition" in result.stdout + result.stderr, result.stdout + result.stderr


def test_snakefmt_is_clean():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_study_dry_run(workdir, default_config):
    jobs = planned_jobs(snakemake(workdir, "-n", config=default_config))
    experiment = default_config["experiments"]["bioparticles"]
    trials, losses = experiment["trials"], len(experiment["losses"])
    assert jobs["synthesize"] == jobs["ingest"] == jobs["patch"] == 1
    assert jobs["split"] == jobs["augment"] == trials
    assert jobs.get("train") == jobs.get("embed") == jobs.get("evaluate") == trials * losses


def stand_in_dumps(config, workdir):
    """Point each of ``config``'s absent raw dumps (data a user brings; ../shared/data outside CI) at an empty stand-in
    of its form in ``workdir``: class folders named after the experiments' targets and open-set classes, and two more,
    or an empty .npz. A dry run needs a dump to exist and its classes to be listable, not its images."""
    for name, dataset in config["datasets"].items():
        source = dataset["source"]
        if source["kind"] == "synthetic" or (workdir / source["path"]).exists():
            continue
        stand_in = workdir / "stand-ins" / name
        if source["kind"] == "medmnist":
            stand_in = stand_in.with_suffix(".npz")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
        else:
            experiments = [spec for spec in config["experiments"].values() if spec["dataset"] == name]
            named = {label for spec in experiments for label in spec.get("targets", []) + spec.get("open_set", [])}
            for label in named | {"other-1", "other-2"}:
                (stand_in / label).mkdir(parents=True)
        source["path"] = str(stand_in)


def study_jobs(config) -> dict[str, int]:
    """The jobs of the stages every study has, for the experiments in ``run``: a data set's once, a split per trial,
    a training per loss and trial, one table per experiment."""
    runs = [config["experiments"][name] for name in config["run"]]
    datasets = len({spec["dataset"] for spec in runs})
    trials = sum(spec["trials"] for spec in runs)
    trainings = sum(spec["trials"] * len(spec["losses"]) for spec in runs)
    return {
        "ingest": datasets,
        "patch": datasets,
        "split": trials,
        "augment": trials,
        "train": trainings,
        "embed": trainings,
        "evaluate": trainings,
        "aggregate": len(runs),
    }


@pytest.mark.parametrize("preset", sorted(path.name for path in (ROOT / "presets").glob("*.yaml")))
def test_presets_dry_run(workdir, preset):
    import yaml

    config = yaml.safe_load((ROOT / "presets" / preset).read_text())
    stand_in_dumps(config, workdir)
    jobs = planned_jobs(snakemake(workdir, "-n", config=config))
    expected = study_jobs(config)
    assert {rule: jobs.get(rule) for rule in expected} == expected
    assert "synthesize" not in jobs


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c["experiments"]["bioparticles"].update(trails=3), "trails"),
        (lambda c: c["experiments"]["bioparticles"].update(dataset="nowhere"), "experiments.bioparticles.dataset"),
        (lambda c: c["experiments"]["bioparticles"].update(targets=["amoeba"]), "experiments.bioparticles.targets[0]"),
        (lambda c: c["datasets"]["synthetic-ifc"]["patch"].update(size="big"), "size"),
    ],
)
def test_bad_config_fails_before_any_job(workdir, default_config, edit, named):
    config = copy.deepcopy(default_config)
    edit(config)
    result = snakemake(workdir, "--cores", "1", config=config, check=False)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_tiny_study_end_to_end(tiny_run, tiny_config):
    experiment = tiny_config["experiments"]["tiny"]
    patches = pd.read_parquet(tiny_run / "results/tiny-ifc/patches.parquet")
    assert patches["class_name"].value_counts().to_dict() == tiny_config["datasets"]["tiny-ifc"]["source"]["classes"]
    for trial in range(experiment["trials"]):
        split = pd.read_parquet(tiny_run / f"results/tiny/splits/t{trial}.parquet")
        assert set(split.loc[split["class_name"] == "pollen", "subset"]) == {"unknown"}
        augmented = pd.read_parquet(tiny_run / f"results/tiny/augmented/t{trial}.parquet")
        assert len(augmented) == experiment["augment"]["count"]
        assert set(augmented["source_index"]) <= set(split.loc[split["subset"] == "train", "index"])
    # the constellation loss's own train: {epochs: 3} replaces the experiment's 2 for that loss only
    epochs = {
        loss: len(pd.read_csv(tiny_run / f"results/tiny/models/{loss}/t0.history.csv")) for loss in experiment["losses"]
    }
    assert epochs == {"softmax": 2, "triplet": 2, "constellation-k3": 3}
    # every evaluation's objects exported for scanpy and gating software, every model on the explorer page
    evaluation = tiny_run / "results/tiny/eval/triplet/t1"
    gmm = pd.read_parquet(evaluation / "predictions.parquet").query("classifier == 'gmm'")
    adata = anndata.read_h5ad(evaluation / "objects.h5ad")
    assert adata.n_obs == len(gmm) and adata.obsm["X_latent"].shape == (len(gmm), 2)  # a 2-D latent space: its own map
    assert np.allclose(adata.obs["gmm_confidence"], gmm["confidence"])
    assert flowio.FlowData(str(evaluation / "objects.fcs")).event_count == len(gmm)
    page = (tiny_run / "results/tiny/explorer.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script src=" not in page and "softmax, trial 1" in page


def test_pretraining_starts_every_loss_and_the_tables_compare_it_paired(tiny_run, tiny_config):
    """tiny-pretrained: one pretraining per trial (the full protocol splits anew), on the trial's unlabelled
    non-test images and an extra flat folder of images; every loss starts from it, type none keeps it; paired.csv
    compares softmax with tiny's."""
    # the extra dump: a flat folder (no classes) of the study's own debris images, so some are exact copies of
    # images a trial tests, which pretraining must leave out
    unlabelled = tiny_run / "unlabelled"
    unlabelled.mkdir(exist_ok=True)
    for image in sorted((tiny_run / "resources/tiny-ifc/debris").iterdir()):
        shutil.copy(image, unlabelled / image.name)
    config = copy.deepcopy(tiny_config)
    config["datasets"]["tiny-unlabelled"] = {
        "source": {"kind": "folder", "path": "unlabelled"},
        "channels": ["brightfield"],
        "patch": config["datasets"]["tiny-ifc"]["patch"],
    }
    config["experiments"]["tiny-pretrained"]["pretrain"]["extra"] = ["tiny-unlabelled"]
    snakemake(tiny_run, "--cores", "2", "results/tiny-pretrained/tables", config=config)
    where = tiny_run / "results/tiny-pretrained"
    patches = pd.read_parquet(tiny_run / "results/tiny-ifc/patches.parquet")
    extra = pd.read_parquet(tiny_run / "results/tiny-unlabelled/patches.parquet")
    for trial in range(2):
        encoder = torch.load(where / f"pretrain/t{trial}.pt", weights_only=True)
        split = pd.read_parquet(where / f"splits/t{trial}.parquet")
        seen = split["subset"].isin(["train", "val", "pool"])
        held_out = set(patches.set_index("index").loc[split.loc[~seen, "index"], "content_hash"])
        copies = extra["content_hash"].isin(held_out).sum()
        assert 0 < copies < len(extra)
        assert encoder["images"] == seen.sum() + len(extra) - copies
        for loss in ("pretrained", "softmax"):
            model = torch.load(where / f"models/{loss}/t{trial}.pt", weights_only=True)
            assert model["init"]["sha256"] == weights_digest(encoder["state_dict"])
        as_is = torch.load(where / f"models/pretrained/t{trial}.pt", weights_only=True)
        assert all(torch.equal(as_is["state_dict"][key], value) for key, value in encoder["state_dict"].items())
    paired = pd.read_csv(where / "tables/paired.csv")
    assert set(paired["loss"]) == {"softmax"} and set(paired["baseline_experiment"]) == {"tiny"}
    accuracy = paired[(paired["view"] == "multiclass") & (paired["metric"] == "balanced_accuracy")]
    assert set(accuracy["trials"]) == {2} and set(accuracy["classifier"]) == {"centroid", "knn", "softmax"}
    metrics = pd.read_csv(where / "tables/metrics.csv")
    assert {"pretrained", "softmax"} <= set(metrics["loss"])


def test_rerun_does_nothing(tiny_run, tiny_config):
    result = snakemake(tiny_run, "-n", config=tiny_config)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_patch_change_reruns_only_what_depends_on_it(tiny_run, tiny_config):
    config = copy.deepcopy(tiny_config)
    config["datasets"]["tiny-ifc"]["patch"]["size"] = 40
    jobs = planned_jobs(snakemake(tiny_run, "-n", config=config))
    assert "synthesize" not in jobs and "ingest" not in jobs
    assert jobs["patch"] == 1 and jobs["split"] == 2 and jobs["augment"] == 2


def test_novel_classes_are_held_out_and_recognised_from_a_few_examples(tiny_run, tiny_config):
    """tiny-novel: bead and debris never trained on; their rejection before adding, episodes on them against the
    trained classes at the same N, the generalised setting, and the tables and figure made of them."""
    targets = ["results/tiny-novel/tables", "results/tiny-novel/figures/novel_shots.png"]
    snakemake(tiny_run, "--cores", "2", *targets, config=tiny_config)
    where = tiny_run / "results/tiny-novel"
    split = pd.read_parquet(where / "splits/t0.parquet")
    assert set(split.loc[split["subset"] == "novel", "class_name"]) == {"bead", "debris"}
    assert not set(split.loc[split["subset"] != "novel", "class_name"]) & {"bead", "debris"}
    model = torch.load(where / "models/softmax/t0.pt", weights_only=True)
    assert model["class_names"] == ["cryptosporidium", "giardia"]
    novel = pd.read_csv(where / "eval/softmax/t0/novel.csv")
    assert set(novel["setting"]) == {"novel", "base", "generalised"} and set(novel["shots"]) == {1, 3}
    metrics = pd.read_csv(where / "eval/softmax/t0/metrics.csv")
    assert {"novel_rejection", "novel_latent"} <= set(metrics["view"])
    for table in ("novel", "retrieval"):
        for suffix in ("csv", "md", "tex"):
            assert (where / f"tables/{table}.{suffix}").stat().st_size > 0
    assert (where / "figures/novel_shots.pdf").exists()
