"""Inputs edited in place: a file added, removed or replaced anywhere below a raw dump, a predict sample or the
gallery reruns the rule that reads it and what follows, and nothing else; an untouched input reruns nothing.

One finished run serves every case: each case is a data set (or a predict sample) of its own, its ingest, patches
and predictions recorded as done with ``--touch`` (which records what a run records, the parameters among them; an
output needs only to exist for Snakemake to plan what follows it). Then every dump is edited in its own way and one
``--summary`` says, per output file, what would run. Last, ``--touch`` marks the edits as done (docs/cluster.md, "Raw
data edited in place").
"""

import contextlib
import io
import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

from .conftest import ROOT

pytestmark = pytest.mark.workflow

# the rules a case plans; the tiny study's training is not among them, so placeholders stand in for its model
RULES = {"ingest", "patch", "predict"}
PATCH_OUTPUTS = ["patches.npy", "patches.parquet", "qc/counts.csv", "qc/montage.png"]
PREDICT_OUTPUTS = [
    "objects.parquet",
    "objects.csv",
    "summary.md",
    "targets.png",
    "objects.h5ad",
    "objects.fcs",
    "explorer.html",
]
MODEL_FILES = [
    "models/triplet/t0.pt",
    "eval/triplet/t0/classifiers.joblib",
    "eval/triplet/t0/metrics.csv",
    "maps/triplet/t0.npz",
]


def png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def class_folders(root):
    """A folder dump: classes a and b, two 8 x 8 PNGs each."""
    for name in ("a", "b"):
        for index in range(2):
            png(root / name / f"{index}.png", 10 * index)


def later(path):
    """The same bytes, a later modification time: ``touch``."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def folder(root):
    class_folders(root)
    return {"kind": "folder", "path": str(root)}


def montage(root):
    """Per class one 16 x 16 montage of four 8 x 8 tiles (channel token Ch1)."""
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        tifffile.imwrite(root / name / "m0_Ch1.tif", np.zeros((16, 16), np.uint16))
    return {"kind": "montage", "path": str(root), "tile_size": 8, "channel_tokens": {"brightfield": "Ch1"}}


def manifest(root):
    """A CSV listing the PNGs of a folder dump below it."""
    class_folders(root / "images")
    rows = [{"path": f"images/{name}/{index}.png", "label": name} for name in ("a", "b") for index in range(2)]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return {"kind": "manifest", "path": str(root / "manifest.csv")}


def medmnist(root, value=0):
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for subset in ("train", "val", "test"):
        arrays[f"{subset}_images"] = np.full((4, 8, 8), value, np.uint8)
        arrays[f"{subset}_labels"] = np.array([[0], [1], [0], [1]])
    np.savez(root / "blood.npz", **arrays)
    return {"kind": "medmnist", "path": str(root / "blood.npz"), "class_names": ["a", "b"]}


def replace_older(path, write):
    """Replace ``path`` by a file that ``write`` makes, keeping the old file's time stamp, as ``mv`` of a file that
    was made earlier, or ``cp -p``, would: a time-stamp comparison cannot see it."""
    stat = path.stat()
    write()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))


# data set -> (how its dump is made, how it is edited; None: left alone)
DUMPS = {
    "folder-added": (folder, lambda root: png(root / "a" / "2.png")),
    "folder-removed": (folder, lambda root: (root / "b" / "1.png").unlink()),
    "folder-replaced": (folder, lambda root: png(root / "a" / "0.png", 200)),
    "folder-touched": (folder, lambda root: later(root / "b" / "0.png")),
    "montage": (montage, lambda root: tifffile.imwrite(root / "a" / "m1_Ch1.tif", np.ones((16, 16), np.uint16))),
    "manifest-table": (manifest, lambda root: (root / "manifest.csv").write_text("path,label\nimages/a/0.png,a\n")),
    "manifest-file": (manifest, lambda root: png(root / "images" / "b" / "1.png", 99)),
    "medmnist": (medmnist, lambda root: replace_older(root / "blood.npz", lambda: medmnist(root, 1))),
    "untouched": (folder, None),
}
# the one edit a time stamp shows: the table is ingest's input file (the rest are seen by their signature alone)
SEEN_BY_TIME_STAMPS = {"manifest-table"}


def placeholders(folder, names):
    """Empty files in place of outputs that Snakemake needs only to find."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()


class Workflow:
    """The workflow on ``config`` in ``workdir``, run in this process through Snakemake's API: its imports (torch, for
    ``predict:``) are paid once for every case, not once per command."""

    def __init__(self, workdir, config):
        self.workdir = workdir
        self.configfile = workdir / "config.yaml"
        self.configfile.write_text(yaml.safe_dump(config, sort_keys=False))

    def _run(self, targets, action, **dag):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[self.configfile], replace_workflow_config=True),
                snakefile=ROOT / "Snakefile",
                workdir=self.workdir,
            )
            action(workflow.dag(DAGSettings(targets=set(targets), allowed_rules=RULES, **dag)))
        return printed.getvalue()

    def touch(self, targets, forcerun=frozenset()):
        """``snakemake --touch``: mark the jobs that would run as done, recording what a run records."""
        self._run(targets, lambda dag: dag.execute_workflow(pseudo_executor="touch"), forcerun=forcerun)

    def summary(self, targets):
        """``output file -> (status, plan)`` from ``snakemake --summary`` of ``targets``."""
        rows = [line.split("\t") for line in self._run(targets, lambda dag: dag.summary()).splitlines()]
        return {row[0]: (row[4], row[5]) for row in rows[1:] if len(row) == 6}


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """The summaries of a finished run: untouched, after every dump and one predict sample were edited, after the
    gallery was edited as well, and after ``--touch``."""
    workdir = tmp_path_factory.mktemp("edited")
    config = yaml.safe_load((ROOT / "tests" / "workflow" / "tiny.yaml").read_text())
    for name, (make, _) in DUMPS.items():
        config["datasets"][name] = {
            "source": make(workdir / "dumps" / name),
            "channels": ["brightfield"],
            "patch": {"mode": "resize", "size": 8},
        }
    for name in ("sample-edited", "sample-untouched"):  # unlabelled: images, no class folders
        for index in range(3):
            png(workdir / "predict" / name / f"{index}.png", index)
    class_folders(workdir / "predict" / "gallery")
    config["predict"] = {
        "model": {"experiment": "tiny", "loss": "triplet", "trial": 0, "classifier": "centroid"},
        "alarm": {"min_targets": 1},
        "gallery": {"kind": "folder", "path": str(workdir / "predict" / "gallery")},
        "samples": {
            name: {"kind": "folder", "path": str(workdir / "predict" / name)}
            for name in ("sample-edited", "sample-untouched")
        },
    }
    for name in DUMPS:
        placeholders(workdir / "results" / name, ["raw.parquet", *PATCH_OUTPUTS])
    placeholders(workdir / "results" / "tiny", MODEL_FILES)
    for sample in config["predict"]["samples"]:
        placeholders(workdir / "results" / "predict" / sample, PREDICT_OUTPUTS)
    patches = [f"results/{name}/patches.npy" for name in DUMPS]
    predictions = [f"results/predict/{sample}/summary.md" for sample in config["predict"]["samples"]]
    workflow = Workflow(workdir, config)
    # forced: a touch run passes over jobs whose outputs are newer than their inputs, and records nothing for them
    workflow.touch(patches + predictions, forcerun=RULES)

    summaries = {"untouched": workflow.summary(patches + predictions)}
    for name, (_, edit) in DUMPS.items():
        if edit:
            edit(workdir / "dumps" / name)
    png(workdir / "predict" / "sample-edited" / "1.png", 200)
    summaries["dumps edited"] = workflow.summary(patches + predictions)
    png(workdir / "predict" / "gallery" / "a" / "2.png")
    summaries["gallery edited"] = workflow.summary(predictions)
    workflow.touch(patches + predictions)
    summaries["edits marked done"] = workflow.summary(patches + predictions)
    return summaries


def plans(summary, prefix):
    return {plan for path, (_, plan) in summary.items() if path.startswith(prefix)}


def test_a_finished_run_reruns_nothing(edited):
    assert len(edited["untouched"]) == len(DUMPS) * (1 + len(PATCH_OUTPUTS)) + 2 * len(PREDICT_OUTPUTS)
    assert {plan for _, plan in edited["untouched"].values()} == {"no update"}, edited["untouched"]


@pytest.mark.parametrize("dataset", [name for name, (_, edit) in DUMPS.items() if edit])
def test_an_edited_dump_reruns_ingest_and_what_follows(edited, dataset):
    after = edited["dumps edited"]
    status = "updated input files" if dataset in SEEN_BY_TIME_STAMPS else "params changed"
    assert after[f"results/{dataset}/raw.parquet"] == (status, "update pending")
    assert plans(after, f"results/{dataset}/") == {"update pending"}


def test_an_untouched_dump_reruns_nothing(edited):
    assert plans(edited["dumps edited"], "results/untouched/") == {"no update"}


def test_an_edited_sample_reruns_its_prediction_only(edited):
    after = edited["dumps edited"]
    assert after["results/predict/sample-edited/summary.md"] == ("params changed", "update pending")
    assert plans(after, "results/predict/sample-untouched/") == {"no update"}


def test_an_edited_gallery_reruns_every_prediction(edited):
    after = edited["gallery edited"]
    assert after["results/predict/sample-untouched/summary.md"] == ("params changed", "update pending")
    assert plans(after, "results/predict/") == {"update pending"}


def test_touch_marks_the_edits_done(edited):
    assert {plan for _, plan in edited["edits marked done"].values()} == {"no update"}, edited["edits marked done"]
