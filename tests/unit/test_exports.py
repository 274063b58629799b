"""An evaluation's objects, one row each, and their AnnData and FCS exports read back with anndata and flowio."""

import anndata
import flowio
import numpy as np
import pandas as pd
import pytest

from cytodml.errors import InputError
from cytodml.evaluate.latent_map import fit_map, map_table
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.evaluate.objects import classifier_evidence, evaluation_objects
from cytodml.evaluate.run import evaluate_trial
from cytodml.report.exports import CODE_KEYWORD, fcs_parameters, object_numbers, write_fcs, write_h5ad
from tests.unit.test_evaluate_run import CLASS_NAMES, EXPERIMENT, embeddings_table

THRESHOLDS = {"centroid": 0.98, "gmm": 0.9, "knn": 0.8, "softmax": 0.98}


@pytest.fixture(scope="module")
def evaluated():
    """One softmax trial: its embeddings, predictions, objects table (on its latent map) and classifiers."""
    embeddings = embeddings_table(0, softmax=True)
    results = evaluate_trial(embeddings, EXPERIMENT, CLASS_NAMES, "softmax", seed=4)
    patches = embeddings[["index"]].assign(
        object_id=[f"{name}/cell_{number}.png" for number, name in enumerate(embeddings["class_name"])],
        qc_border=embeddings["index"] % 2 == 0,
    )
    placed = map_table(embeddings, fit_map(embeddings, seed=1))
    objects = evaluation_objects(
        embeddings,
        results["predictions"],
        results["classifiers"],
        THRESHOLDS,
        patches,
        placed,
        targets=["debris"],
        class_names=CLASS_NAMES,
    )
    return embeddings, results["predictions"], objects


def test_one_row_per_scored_object_with_every_classifier_call_and_evidence(evaluated):
    embeddings, predictions, objects = evaluated
    assert objects["index"].tolist() == predictions["index"].unique().tolist()
    name_of = dict(zip(embeddings["label"], embeddings["class_name"]))
    for classifier, rows in predictions.groupby("classifier"):
        rows = rows.set_index("index").loc[objects["index"]]
        best = rows["predicted"].map(name_of).to_numpy()
        called = rows["confidence"].to_numpy() >= THRESHOLDS[classifier]
        assert (objects[f"{classifier}_best_match"] == best).all()
        assert (objects[f"{classifier}_call"].to_numpy() == np.where(called, best, UNKNOWN_NAME)).all()
        assert (objects[f"{classifier}_is_target"] == (called & (best == "debris"))).all()
        kind, evidence = classifier_evidence(objects, classifier)
        assert kind == ("distance" if classifier in ("centroid", "gmm") else "probability")
        assert sorted(evidence.columns) == sorted(CLASS_NAMES)
        scores = evidence.to_numpy()
        pick = scores.argmin(axis=1) if kind == "distance" else scores.argmax(axis=1)
        agree = evidence.columns.to_numpy()[pick] == best
        assert agree.mean() > 0.95  # the evidence points at the call (GMM weighs its own variances)
    assert set(objects["subset"]) == {"val", "test", "unknown"}
    assert objects[["map_x", "map_y"]].notna().all().all()


def test_the_h5ad_reads_back_with_the_evaluation_in_obs(tmp_path, evaluated):
    embeddings, _, objects = evaluated
    X = np.stack(embeddings.set_index("index").loc[objects["index"], "embedding"].to_numpy())
    write_h5ad(objects, X, tmp_path / "objects.h5ad", map_method="t-SNE", uns={"model": "e/softmax/t0"})
    adata = anndata.read_h5ad(tmp_path / "objects.h5ad")
    assert adata.shape == X.shape and np.allclose(adata.X, X)
    assert adata.obs_names.tolist() == objects["object_id"].tolist()
    for column in objects.columns.drop(["object_id", "map_x", "map_y"]):
        assert adata.obs[column].astype(objects[column].dtype).tolist() == objects[column].tolist(), column
    np.testing.assert_allclose(adata.obsm["X_tsne"], objects[["map_x", "map_y"]].to_numpy(), rtol=1e-6)
    assert adata.uns["cytodml"]["model"] == "e/softmax/t0"


def test_the_fcs_file_has_an_event_per_object_and_the_code_tables(tmp_path, evaluated):
    _, _, objects = evaluated
    write_fcs(objects, tmp_path / "objects.fcs", text={"cytodml_model": "e/softmax/t0"})
    fcs = flowio.FlowData(str(tmp_path / "objects.fcs"))
    values, codes = fcs_parameters(objects)
    names = [fcs.channels[number]["pnn"] for number in sorted(fcs.channels)]
    assert fcs.version == "3.1" and fcs.event_count == len(objects) and names == list(values.columns)
    assert "object_number" not in names  # "giardia/cell_3.png" holds no instrument object number
    events = pd.DataFrame(fcs.as_array(), columns=names)
    table = fcs.text[CODE_KEYWORD.format("CENTROID_CALL_CODE").lower()]
    assert table == ";".join(
        f"{code}:{name}" for code, name in enumerate([*sorted([*CLASS_NAMES, "pollen"]), UNKNOWN_NAME])
    )
    name_of = dict(entry.split(":", 1) for entry in table.split(";"))
    calls = events["centroid_call_code"].astype(int).astype(str).map(name_of)
    assert calls.tolist() == objects["centroid_call"].tolist()
    # one code table for every column of class names: a code means one class throughout the file
    assert fcs.text["cytodml_class_name_code"] == table
    np.testing.assert_allclose(events["centroid_confidence"], objects["centroid_confidence"], rtol=1e-6)
    assert (events["qc_border"] == objects["qc_border"].astype(float)).all()
    assert fcs.text["cytodml_model"] == "e/softmax/t0"


def test_instrument_object_numbers_come_from_ideas_file_names(tmp_path):
    assert object_numbers(["G1/12", "S/7_Ch1.ome.tif", "Ana/300_Ch3.tif"]).tolist() == [12, 7, 300]
    assert object_numbers(["G1/12", "basophil/BA_112418.jpg"]) is None
    assert object_numbers(["G1/Ch3_CP.tif/17"]) is None  # a montage tile's place, not an object number
    objects = pd.DataFrame({"object_id": ["G1/12", "G2/40"], "confidence": [0.5, 1.0]})
    write_fcs(objects, tmp_path / "ideas.fcs")
    fcs = flowio.FlowData(str(tmp_path / "ideas.fcs"))
    assert fcs.channels[1]["pnn"] == "object_number" and fcs.as_array()[:, 0].tolist() == [12, 40]


def test_exports_refuse_what_they_cannot_write(tmp_path):
    objects = pd.DataFrame({"object_id": ["a"], "confidence": [np.nan]})
    with pytest.raises(InputError, match=r"\['confidence'\] hold values that are not finite"):
        write_fcs(objects, tmp_path / "bad.fcs")
    with pytest.raises(InputError, match="1 objects but embeddings of shape"):
        write_h5ad(objects, np.zeros((2, 3)), tmp_path / "bad.h5ad")
    with pytest.raises(InputError, match="no objects to export"):
        write_fcs(objects.iloc[:0], tmp_path / "empty.fcs")
    assert not list(tmp_path.iterdir())
