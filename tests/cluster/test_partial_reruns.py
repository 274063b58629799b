"""The partial-rerun commands of docs/cluster.md, as dry runs on the tiny study: each plans exactly the jobs the
documentation promises, on a fresh directory or on one that holds a finished study."""

import copy

import pytest
import yaml

from ..workflow.conftest import ROOT, snakemake
from .dryrun import planned_jobs

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((ROOT / "tests" / "workflow" / "tiny.yaml").read_text())
EXPERIMENT, DATASET = "tiny", "tiny-ifc"
LOSSES, TRIALS = TINY["experiments"][EXPERIMENT]["losses"], range(TINY["experiments"][EXPERIMENT]["trials"])
DATA = [("synthesize", f"dataset={DATASET}"), ("ingest", f"dataset={DATASET}"), ("patch", f"dataset={DATASET}")]


def trial_jobs(rules, losses=LOSSES, trials=TRIALS, experiment=EXPERIMENT):
    """(rule, wildcards) of the per-trial rules in ``rules``, as a dry run prints them."""
    jobs = []
    for rule in rules:
        for trial in trials:
            if rule in ("split", "augment"):
                jobs.append((rule, f"experiment={experiment}, trial={trial}"))
            else:
                jobs += [(rule, f"experiment={experiment}, loss={loss}, trial={trial}") for loss in losses]
    return jobs


#: jobs that only present results (maps to draw on, exports, the explorer page), planned with the figures
PRESENTING = {"experiment_config", "latent_map", "export_objects", "explorer"}


def is_figure(rule: str) -> bool:
    return rule.startswith("figure_") or rule in PRESENTING


def plan(workdir, *args, config=TINY, figures=False) -> list[tuple[str, str]]:
    """Sorted (rule, wildcards) of every stage job a dry run plans, ``all`` left out; the figure jobs (which follow
    whatever they draw from) only with ``figures``."""
    jobs = planned_jobs(snakemake(workdir, "-n", *args, config=config).stdout)
    return sorted((job.rule, job.wildcards) for job in jobs if job.rule != "all" and is_figure(job.rule) == figures)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A directory that holds the tiny study as after a complete run, made in seconds: every output an empty file
    (a directory for ``directory()`` outputs), all marked up to date with ``--touch``. Dry runs read nothing else."""
    workdir = tmp_path_factory.mktemp("finished")

    def missing():
        rows = [row.split("\t") for row in snakemake(workdir, "--summary", config=TINY).stdout.splitlines()[1:]]
        return [workdir / row[0] for row in rows if row[4] == "missing"]

    for path in missing():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    # --touch fails on a directory() output that is a file, and removes it: those become directories
    snakemake(workdir, "--touch", "--keep-going", "--cores", "1", config=TINY, check=False)
    for path in missing():
        path.unlink(missing_ok=True)
        path.mkdir()
    snakemake(workdir, "--touch", "--cores", "1", config=TINY)
    assert "Nothing to be done" in snakemake(workdir, "-n", config=TINY).stdout
    return workdir


# ---- on a fresh directory: run a part of the study ------------------------------------------------------------------


def test_one_trial_of_one_loss(tmp_path):
    jobs = plan(tmp_path, f"results/{EXPERIMENT}/eval/triplet/t1/metrics.csv")
    assert jobs == sorted(DATA + trial_jobs(["split", "augment", "train", "embed", "evaluate"], ["triplet"], [1]))


def test_one_loss_over_all_trials(tmp_path):
    targets = [f"results/{EXPERIMENT}/eval/triplet/t{trial}/metrics.csv" for trial in TRIALS]
    jobs = plan(tmp_path, *targets)
    assert jobs == sorted(DATA + trial_jobs(["split", "augment", "train", "embed", "evaluate"], ["triplet"]))


def test_one_data_set(tmp_path):
    assert plan(tmp_path, f"results/{DATASET}/patches.npy") == sorted(DATA)


def test_one_stage_and_what_it_needs(tmp_path):
    assert plan(tmp_path, "--until", "augment") == sorted(DATA + trial_jobs(["split", "augment"]))
    assert plan(tmp_path, "--until", "train") == sorted(DATA + trial_jobs(["split", "augment", "train"]))


def test_one_experiment_of_several(tmp_path):
    config = copy.deepcopy(TINY)
    config["experiments"]["other"] = {**config["experiments"][EXPERIMENT], "losses": ["softmax"]}
    config["run"] = [EXPERIMENT, "other"]
    jobs = plan(tmp_path, "--config", "run=[other]", config=config)
    steps = ["split", "augment", "train", "embed", "evaluate"]
    assert jobs == sorted(
        DATA + trial_jobs(steps, ["softmax"], experiment="other") + [("aggregate", "experiment=other")]
    )


def test_a_second_config_file_overrides_key_by_key(tmp_path):
    override = tmp_path / "three-trials.yaml"
    override.write_text(yaml.safe_dump({"experiments": {EXPERIMENT: {"trials": 3}}}))
    config_files = ["--configfile", str(tmp_path / "config.yaml"), str(override)]
    jobs = plan(tmp_path, *config_files, "--until", "split")
    assert jobs == sorted(DATA + trial_jobs(["split"], trials=range(3)))


# ---- on a finished study: redo a part, keep the rest ----------------------------------------------------------------


def test_tables_again_without_retraining(finished):
    assert plan(finished, "--forcerun", "aggregate") == [("aggregate", f"experiment={EXPERIMENT}")]
    # even where a changed setting would retrain: --allowed-rules keeps every other rule from running
    config = copy.deepcopy(TINY)
    config["experiments"][EXPERIMENT]["network"]["embedding_dim"] = 3
    assert len(plan(finished, config=config)) > 1
    jobs = plan(finished, "--forcerun", "aggregate", "--allowed-rules", "aggregate", config=config)
    assert jobs == [("aggregate", f"experiment={EXPERIMENT}")]


def test_figures_again_without_retraining(finished):
    figures = plan(finished, "--forcerun", "aggregate", figures=True)
    assert {rule for rule, _ in figures} >= {"figure_metrics", "figure_confusion"}
    assert all(wildcards.startswith(f"experiment={EXPERIMENT}") for _, wildcards in figures)
    assert plan(finished, "--forcerun", "aggregate") == [("aggregate", f"experiment={EXPERIMENT}")]


def test_evaluation_again_with_other_classifiers_without_retraining(finished):
    config = copy.deepcopy(TINY)
    config["experiments"][EXPERIMENT]["classifiers"] = {"centroid": {}, "knn": {"k": 7}}
    jobs = plan(finished, "--forcerun", "evaluate", "--allowed-rules", "evaluate", "aggregate", config=config)
    assert jobs == sorted(trial_jobs(["evaluate"]) + [("aggregate", f"experiment={EXPERIMENT}")])


def test_one_training_again(finished):
    jobs = plan(finished, "--forcerun", f"results/{EXPERIMENT}/models/triplet/t1.pt")
    assert jobs == sorted(
        trial_jobs(["train", "embed", "evaluate"], ["triplet"], [1]) + [("aggregate", "experiment=tiny")]
    )


def test_one_stage_again(finished):
    jobs = plan(finished, "--forcerun", "augment", "--until", "augment")
    assert jobs == sorted(trial_jobs(["augment"]))


def test_a_new_loss_trains_only_that_loss(finished):
    config = copy.deepcopy(TINY)
    config["losses"]["triplet-hard"] = {"type": "triplet", "mining": "hard"}
    config["experiments"][EXPERIMENT]["losses"].append("triplet-hard")
    jobs = plan(finished, "--rerun-triggers", "mtime", "input", "code", "software-env", config=config)
    steps = ["train", "embed", "evaluate"]
    assert jobs == sorted(trial_jobs(steps, ["triplet-hard"]) + [("aggregate", f"experiment={EXPERIMENT}")])
