"""Figures and the report on the test suite's small study: every figure drawn, and a report that holds them all."""

import collections
import json
import re
import zipfile
from pathlib import PurePosixPath

import pytest
import yaml

from .conftest import snakemake

# the tiny study end to end, figures included: minutes on two idle cores, several times that on busy ones
pytestmark = [pytest.mark.workflow, pytest.mark.timeout(1800)]

PER_EXPERIMENT = ["latent", "blocks", "metrics", "training", "confidence", "roc"]
PER_LOSS = ["images", "confusion", "confusion_at_threshold", "similarity"]


def test_every_figure_is_drawn_as_png_and_pdf(tiny_run, tiny_config):
    figures = tiny_run / "results" / "tiny" / "figures"
    losses = tiny_config["experiments"]["tiny"]["losses"]
    for stem in PER_EXPERIMENT + [f"{loss}/{name}" for loss in losses for name in PER_LOSS]:
        for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
            path = figures / f"{stem}{suffix}"
            assert path.is_file(), f"{path} missing"
            data = path.read_bytes()
            assert data[:4] == magic and len(data) > 5000, f"{path}: {len(data)} bytes"


def holds(record, given) -> bool:
    """Whether ``record`` has every key of ``given`` (recursively) with the same value."""
    if isinstance(given, dict):
        return isinstance(record, dict) and all(
            key in record and holds(record[key], value) for key, value in given.items()
        )
    return record == given


def report_results(archive: zipfile.ZipFile) -> dict:
    """The report's ``results`` table: workflow path -> name, labels, caption, ..."""
    html = archive.read("report/report.html").decode()
    return json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))


def test_report_holds_every_figure_captioned_and_labelled_with_the_config(tiny_run, tiny_config):
    snakemake(tiny_run, "--report", "report.zip", config=tiny_config)
    losses = tiny_config["experiments"]["tiny"]["losses"]
    with zipfile.ZipFile(tiny_run / "report.zip") as archive:
        files = collections.Counter(PurePosixPath(name).name for name in archive.namelist())
        results = report_results(archive)
        page = archive.read("report/report.html").decode()
        recorded = [name for name in archive.namelist() if name.endswith("/config.yaml")]
        assert len(recorded) == 1
        record = yaml.safe_load(archive.read(recorded[0]))

    # the explorer page is linked from the report's description, not copied into it: it carries every object's cell
    assert "explorer.html" not in files and "results/tiny/explorer.html" in page

    # every figure's PNG, once per experiment or once per loss; the PDFs stay out (they are for papers)
    assert all(files[f"{name}.png"] == 1 for name in PER_EXPERIMENT), files
    assert all(files[f"{name}.png"] == len(losses) for name in PER_LOSS), files
    assert not any(name.endswith(".pdf") for name in files)

    # grouped by experiment and stage, labelled by figure and loss, each with its one-sentence caption
    figures = {path: result for path, result in results.items() if "/figures/" in path}
    assert len(figures) == len(PER_EXPERIMENT) + len(losses) * len(PER_LOSS)
    similarity = figures["results/tiny/figures/triplet/similarity.png"]
    assert similarity["labels"] == {"figure": "similarity maps", "loss": "triplet"}
    assert "Similarity maps of loss triplet" in similarity["caption"]
    assert figures["results/tiny/figures/roc.png"]["labels"] == {"figure": "ROC curves", "loss": "all"}

    # the config that produced them, with the schema's defaults filled in: a config that reruns just this experiment
    assert record["run"] == ["tiny"] and set(record["experiments"]) == {"tiny"}
    written = {key: tiny_config[key] for key in ("seed", "datasets")}
    written["losses"] = {name: tiny_config["losses"][name] for name in losses}
    written["experiments"] = {"tiny": tiny_config["experiments"]["tiny"]}
    assert holds(record, written)
