"""Detection in new samples: counts against the evaluation, alarms, the gallery, refusals, the command line.

One small network is trained once for the module (softmax loss, 32 px patches, 96 training images augmented to 400,
4 epochs: about 15 s on two idle cores) on a rendered data set with pollen held out as an open-set class, and evaluated
as the workflow does; new samples are rendered with other seeds, so that no object of a sample was seen in training.
"""

import math
import re
import subprocess
import sys

import anndata
import flowio
import joblib
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from cytodml.cli import main
from cytodml.config import check_predict_config, dump_source, fill, validate_config
from cytodml.data.augment import augment
from cytodml.data.patching import make_patches
from cytodml.data.sources import ingest, list_classes
from cytodml.data.splits import make_split
from cytodml.data.synthetic import render_dump
from cytodml.errors import InputError
from cytodml.evaluate.classifiers import CentroidClassifier, SVMClassifier
from cytodml.evaluate.detector import load_detector, save_detector
from cytodml.evaluate.latent_map import fit_map, save_map
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.evaluate.protocols import generalised_accuracy
from cytodml.evaluate.recommend import rank_models, validation_scores
from cytodml.evaluate.run import evaluate_trial, write_trial
from cytodml.learn.embed import embed, embedding_table, load_model
from cytodml.learn.inputs import class_labels, known_classes, subset_images
from cytodml.learn.trainer import train
from cytodml.predict import COUNT_RULE, add_gallery, gallery_classes, predict_sample, read_labels, summarize
from cytodml.report.sample import write_prediction
from cytodml.report.tables import aggregate, collect_trials, sum_confusion, write_tables

TARGETS = ["cryptosporidium", "giardia"]
CHANNELS = ["brightfield"]
PATCH = {"mode": "object", "size": 32, "downscale": True}
# Sizes apart and no noise or blur: what a network trained for seconds can learn, so the numbers test the plumbing.
DIFFICULTY = {"noise": 0.0, "blur": 0.0, "size_overlap": 0.0}
SOURCE = {
    "kind": "synthetic",
    "classes": {"cryptosporidium": 40, "giardia": 40, "bead": 60, "debris": 100, "pollen": 30},
    "difficulty": DIFFICULTY,
}
EXPERIMENT = {
    "dataset": "tiny-ifc",
    "protocol": "full",
    "fractions": {"train": 0.4, "val": 0.15, "test": 0.45},
    "trials": 1,
    "augment": {"count": 400},
    "network": {"name": "small", "embedding_dim": 4},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "patience": 4},
    "losses": ["softmax"],
    "classifiers": {"centroid": {}, "gmm": {"components": 1, "covariance": "full"}, "knn": {"k": 3}},
    "threshold": 0.98,
    "targets": TARGETS,
    "open_set": ["pollen"],
    "spiked": {"samples": 2, "blanks": 2, "background": 40, "spikes": [2, 4]},
}
SEED = 5


def render(path, classes: dict, seed: int):
    render_dump(path, {"kind": "synthetic", "classes": classes, "difficulty": DIFFICULTY}, seed=seed)
    return {"kind": "synthetic", "path": str(path)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A trained model, its evaluated classifiers and metrics in the workflow's layout, and the study config."""
    root = tmp_path_factory.mktemp("study")
    render_dump(root / "dump", SOURCE, seed=SEED)
    raw = ingest({"kind": "synthetic", "path": str(root / "dump")}, CHANNELS)
    patches_table, _ = make_patches(raw, PATCH, root / "patches.npy")
    patches = np.load(root / "patches.npy")
    split, _ = make_split(patches_table, EXPERIMENT, 0, SEED, "tiny-ifc")
    names = known_classes(split)
    train_rows = split[split["subset"] == "train"].sort_values("index")
    val_rows = split[split["subset"] == "val"].sort_values("index")
    images, ops = augment(
        subset_images(patches, split, "train", [0]),
        class_labels(train_rows["class_name"], names),
        train_rows["index"].to_numpy(),
        EXPERIMENT["augment"],
        SEED,
    )
    torch.set_num_threads(2)
    bundle, _ = train(
        images,
        ops["label"].to_numpy(),
        subset_images(patches, split, "val", [0]),
        class_labels(val_rows["class_name"], names),
        network=EXPERIMENT["network"],
        loss_spec={"type": "softmax"},
        train_spec=EXPERIMENT["train"],
        class_names=names,
        channel_names=CHANNELS,
        seed=SEED,
        checkpoint_dir=None,
        log=lambda *_: None,
    )
    model_path = root / "results/tiny/models/softmax/t0.pt"
    model_path.parent.mkdir(parents=True)
    torch.save(bundle, model_path)
    embeddings = embedding_table(load_model(bundle), patches, split, [0])
    results = evaluate_trial(embeddings, EXPERIMENT, known_classes(embeddings), "softmax", SEED)
    save_map(fit_map(embeddings, seed=SEED), root / "results/tiny/maps/softmax/t0.npz")
    eval_dir = root / "results/tiny/eval/softmax/t0"
    write_trial(results, eval_dir)
    config = {
        "seed": SEED,
        "datasets": {"tiny-ifc": {"source": SOURCE, "channels": CHANNELS, "patch": PATCH}},
        "losses": {"softmax": {"type": "softmax"}},
        "experiments": {"tiny": EXPERIMENT},
        "run": ["tiny"],
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {
        "root": root,
        "model": model_path,
        "classifiers": eval_dir / "classifiers.joblib",
        "metrics": results["metrics"],
        "metrics_path": eval_dir / "metrics.csv",
        "config": root / "config.yaml",
    }


@pytest.fixture(scope="module")
def gmm(study):
    return load_detector(study["model"], study["classifiers"], "gmm")


def run(detector, source, threshold, **options):
    options = {"channels": CHANNELS, "patch": PATCH, "targets": TARGETS, "alarm": {"min_targets": 1}, **options}
    return predict_sample(source, detector, threshold=threshold, **options)


def truth(objects: pd.DataFrame) -> pd.Series:
    """The class of each object of a rendered sample: its folder, the first part of the object id."""
    return objects["object_id"].str.split("/").str[0]


def rare_rate(metrics: pd.DataFrame, classifier: str, hits: str, misses: str) -> tuple[float, int]:
    """A rate of the evaluation's rare view, Laplace-smoothed ((k + 1) / (n + 2)), and the count n it rests on."""
    values = metrics[(metrics["classifier"] == classifier) & (metrics["view"] == "rare")].set_index("metric")["value"]
    k, n = int(values[hits]), int(values[hits] + values[misses])
    return (k + 1) / (n + 2), n


# ---------------------------------------------------------------------------------------------------------- counts


def test_spiked_sample_count_is_within_what_the_evaluation_predicted(study, gmm, tmp_path):
    """Spikes of 8 oocysts and 6 cysts in 160 background objects: the number called target must lie within three
    standard deviations of sensitivity x spikes + false-alarm rate x background, the rates from the evaluation's test
    set. The variance adds the sample's binomial draws and the uncertainty of the two rates (binomial over the test
    images they were measured on, Laplace-smoothed so that 0 of n still carries its spread)."""
    spikes, background = {"cryptosporidium": 8, "giardia": 6}, {"bead": 60, "debris": 100}
    threshold, _ = read_evaluation(study["metrics_path"], "gmm")
    result = run(gmm, render(tmp_path / "spiked", spikes | background, seed=101), threshold)
    objects, summary = result["objects"], result["summary"]

    sensitivity, n_targets = rare_rate(study["metrics"], "gmm", "tp", "fn")
    false_alarm, n_background = rare_rate(study["metrics"], "gmm", "fp", "tn")
    t, b = sum(spikes.values()), sum(background.values())
    expected = t * sensitivity + b * false_alarm
    variance = (
        t * sensitivity * (1 - sensitivity)
        + b * false_alarm * (1 - false_alarm)
        + t**2 * sensitivity * (1 - sensitivity) / n_targets
        + b**2 * false_alarm * (1 - false_alarm) / n_background
    )
    assert abs(summary["target_count"] - expected) <= 3 * math.sqrt(variance), (summary, expected, variance)
    # the objects behind the count: every called target is a target class called at the threshold
    called = objects[objects["is_target"]]
    assert summary["target_count"] == len(called) == sum(summary["target_counts"].values())
    assert called["predicted"].isin(TARGETS).all() and (called["confidence"] >= threshold).all()
    assert summary["alarm"] and summary["objects"] == len(objects) == t + b
    assert sum(summary["counts"].values()) == len(objects)


def test_objects_table_calls_unknown_below_the_threshold(study, gmm, tmp_path):
    result = run(gmm, render(tmp_path / "s", {"bead": 20, "debris": 20, "giardia": 5}, seed=102), 0.98)
    objects = result["objects"]
    names = gmm.class_names
    assert list(objects.columns[:5]) == ["object_id", "predicted", "best_match", "confidence", "is_target"]
    assert [f"distance_{name}" for name in names] == [c for c in objects.columns if c.startswith("distance_")]
    assert {"qc_empty", "qc_border", "qc_multiple", "qc_downscaled"} <= set(objects.columns)
    low = objects["confidence"] < 0.98
    assert (objects.loc[low, "predicted"] == "unknown").all()
    assert (objects.loc[~low, "predicted"] == objects.loc[~low, "best_match"]).all()
    # the distances are to the classes' mean training embeddings: the centroid classifier's centres, and the means
    # of the one-component GMM; the centroid classifier's best match is the nearest of them
    centroid = load_detector(study["model"], study["classifiers"], "centroid")
    np.testing.assert_allclose(gmm.centres.to_numpy(), centroid.centres.to_numpy(), rtol=1e-6, atol=1e-6)
    objects = run(centroid, {"kind": "synthetic", "path": str(tmp_path / "s")}, 0.98)["objects"]
    distances = objects[[f"distance_{name}" for name in names]].to_numpy()
    assert (np.array(names)[np.argmin(distances, axis=1)] == objects["best_match"]).all()


def test_blank_sample_raises_no_alarm(gmm, study, tmp_path):
    """A blank of 100 microplastic beads, the background the evaluation saw no false alarm from (the default study's
    model on a blank of its whole background: tests/workflow/test_default_model.py)."""
    threshold, _ = read_evaluation(study["metrics_path"], "gmm")
    result = run(gmm, render(tmp_path / "blank", {"bead": 100}, seed=103), threshold)
    summary = result["summary"]
    assert summary["target_count"] == 0 and not summary["alarm"]
    write_prediction(result, tmp_path / "out")
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "no alarm" in text and "![called targets, to confirm](targets.png)" in text
    assert (tmp_path / "out" / "targets.png").stat().st_size > 0


@pytest.mark.parametrize("min_targets, alarm", [(1, True), (3, True), (4, False)])
def test_alarm_rule_counts_called_targets(min_targets, alarm):
    objects = pd.DataFrame(
        {
            "predicted": ["giardia", "giardia", "cryptosporidium", "bead", "unknown"],
            "is_target": [True, True, True, False, False],
            "qc_border": [False, True, False, False, False],
        }
    )
    summary = summarize(
        objects,
        ["bead", "cryptosporidium", "giardia"],
        TARGETS,
        0.98,
        {"min_targets": min_targets},
        sample="s",
        classifier="gmm",
        origin="m",
    )
    assert summary["alarm"] is alarm
    assert summary["counts"] == {"bead": 1, "cryptosporidium": 1, "giardia": 2, "unknown": 1}
    assert summary["target_counts"] == {"cryptosporidium": 1, "giardia": 2} and summary["qc"] == {"qc_border": 1}
    with pytest.raises(InputError, match="alarm.min_targets"):
        summarize(objects, ["bead"], TARGETS, 0.98, {"min_targets": 0}, sample="s", classifier="gmm", origin="m")


def test_calibrated_alarm_reads_the_evaluations_false_positives(study, gmm, tmp_path):
    values = study["metrics"].query("classifier == 'gmm' and view == 'rare'").set_index("metric")["value"]
    threshold, validation = read_evaluation(study["metrics_path"], "gmm")
    assert validation == (int(values["val_false_positives"]), int(values["val_negatives"])) and validation[1] > 0
    # another threshold or other targets: the validation count does not apply
    assert read_evaluation(study["metrics_path"], "gmm", threshold=0.5)[1] is None
    assert read_evaluation(study["metrics_path"], "gmm", targets=["giardia"], evaluated_targets=TARGETS)[1] is None
    source = render(tmp_path / "s", {"bead": 30, "debris": 30}, seed=110)
    rule = {"false_alarm_rate": 0.01}
    result = run(gmm, source, threshold, alarm=rule, validation=validation)
    summary = result["summary"]
    assert summary["alarm_at"] >= 1 and summary["alarm"] == (summary["target_count"] >= summary["alarm_at"])
    write_prediction(result, tmp_path / "o")
    text = (tmp_path / "o" / "summary.md").read_text()
    assert "a blank sample of 60 objects reaches with probability at most 0.01" in text
    with pytest.raises(InputError, match="alarm.false_alarm_rate: the evaluation recorded no validation"):
        run(gmm, source, 0.5, alarm=rule, validation=None)


# ---------------------------------------------------------------------------------------------------------- gallery


def test_gallery_recognises_a_class_it_was_not_trained_on(study, tmp_path):
    """Five pollen grains (held out of training) join the centroid classifier; unseen pollen grains are then matched
    to pollen far above chance (1 in the 5 classes), and few objects of the known classes are taken for pollen."""
    centroid = load_detector(study["model"], study["classifiers"], "centroid")
    gallery = render(tmp_path / "gallery", {"pollen": 5}, seed=104)
    extended = add_gallery(centroid, gallery, channels=CHANNELS, patch=PATCH)
    assert extended.class_names == [*centroid.class_names, "pollen"] and "pollen" not in centroid.class_names
    assert len(centroid.classifier.classes_) == len(centroid.names) == 4  # the detector given is left as it was

    held_out = render(tmp_path / "held-out", {"pollen": 20, "bead": 10, "debris": 10, "giardia": 10}, seed=105)
    objects = run(extended, held_out, 0.98)["objects"]
    is_pollen = truth(objects) == "pollen"
    assert (objects.loc[is_pollen, "best_match"] == "pollen").mean() >= 0.6
    assert (objects.loc[~is_pollen, "best_match"] == "pollen").mean() <= 0.2
    before = run(centroid, held_out, 0.98)["objects"]
    assert "distance_pollen" in objects and "distance_pollen" not in before

    save_detector(extended, tmp_path / "with-pollen.joblib")
    reloaded = load_detector(study["model"], tmp_path / "with-pollen.joblib", "centroid")
    again = run(reloaded, held_out, 0.98)["objects"]
    pd.testing.assert_frame_equal(again, objects)


def test_gallery_target_takes_the_count_rule_where_the_calibrated_one_cannot_be_computed(study, tmp_path):
    """The evaluation never saw a gallery class, so it has no false positives for it: a calibrated alarm with one
    among the targets falls back on the count rule, and the summary and its report say so; a target the network was
    trained on without the evaluation's false positives is still refused."""
    centroid = load_detector(study["model"], study["classifiers"], "centroid")
    extended = add_gallery(centroid, render(tmp_path / "g", {"pollen": 5}, seed=104), channels=CHANNELS, patch=PATCH)
    assert gallery_classes(extended) == ["pollen"] and gallery_classes(centroid) == []
    targets, rule = [*TARGETS, "pollen"], {"false_alarm_rate": 0.01}
    threshold, validation = read_evaluation(
        study["metrics_path"], "centroid", targets=targets, evaluated_targets=TARGETS
    )
    assert validation is None  # the evaluation's targets were others
    source = render(tmp_path / "s", {"pollen": 6, "bead": 6}, seed=109)
    result = run(extended, source, 0.5, targets=targets, alarm=rule, validation=validation)
    summary = result["summary"]
    assert summary["alarm_rule"] == COUNT_RULE == {"min_targets": 1} and summary["alarm_at"] == 1
    assert summary["target_count"] >= 1 and summary["alarm"] and summary["validation"] is None
    note = summary["alarm_note"]
    assert "false_alarm_rate 0.01" in note and "gallery class(es) pollen" in note and "min_targets 1" in note
    write_prediction(result, tmp_path / "o")
    text = (tmp_path / "o" / "summary.md").read_text()
    assert note in text and "**ALARM**" in text and "a blank sample of" not in text
    # a calibrated rule with trained targets only: no note, and still refused without the evaluation's count
    assert run(centroid, source, 0.5)["summary"]["alarm_note"] is None
    with pytest.raises(InputError, match="alarm.false_alarm_rate: the evaluation recorded no validation"):
        run(extended, source, 0.5, targets=TARGETS, alarm=rule, validation=None)


@pytest.mark.parametrize("classifier", ["centroid", "knn"])
def test_gallery_path_gives_the_generalised_episodic_accuracy_of_its_support_set(study, tmp_path, capsys, classifier):
    """K = 3 pollen grains added by `cytodml gallery`, then a dump of unseen pollen and known objects predicted by
    arg-max (threshold 0): per class, the share called right equals what the evaluation's generalised setting
    computes from the same support and query images (novel accuracy, base accuracy, and so their harmonic mean)."""
    examples = render(tmp_path / "examples", {"pollen": 3}, seed=111)
    extended = tmp_path / "gallery.joblib"
    gallery = cli(study, "gallery", classifier=classifier)
    assert main([*gallery, "--examples", examples["path"], "--out", str(extended)]) == 0
    queries = render(tmp_path / "queries", {"pollen": 12, "bead": 6, "debris": 6, "giardia": 6}, seed=112)
    objects = run(load_detector(study["model"], extended, classifier), queries, 0.0)["objects"]
    called = (objects["predicted"] == truth(objects)).groupby(truth(objects)).mean()

    model = load_model(study["model"])
    evaluated = joblib.load(study["classifiers"])[classifier]

    def embedded(source, where):
        raw = ingest(source, CHANNELS)
        table, _ = make_patches(raw, PATCH, tmp_path / f"{where}.npy")
        return embed(model, np.load(tmp_path / f"{where}.npy"))["embedding"], table["class_name"].to_numpy()

    X_support, _ = embedded(examples, "support")
    X_query, names = embedded(queries, "query")
    label_of = {name: label for label, name in enumerate(sorted(SOURCE["classes"]))}  # the data set's labels
    result = generalised_accuracy(
        evaluated,
        X_support,
        np.full(len(X_support), label_of["pollen"]),
        X_query,
        np.array([label_of[name] for name in names]),
    )
    expected = {name: result["per_class"][label_of[name]] for name in called.index}
    assert called.to_dict() == pytest.approx(expected, abs=1e-12)
    assert result["novel"] == pytest.approx(called["pollen"])
    assert result["base"] == pytest.approx(called.drop("pollen").mean())


def test_gallery_needs_a_classifier_that_takes_new_classes(gmm, tmp_path):
    with pytest.raises(InputError, match="cannot take new classes.*centroid or knn"):
        add_gallery(gmm, render(tmp_path / "g", {"pollen": 2}, seed=106), channels=CHANNELS, patch=PATCH)


def test_saved_classifier_refuses_another_network(study, tmp_path):
    knn = load_detector(study["model"], study["classifiers"], "knn")
    save_detector(knn, tmp_path / "knn.joblib")
    bundle = torch.load(study["model"], weights_only=True)
    first = next(iter(bundle["state_dict"]))
    bundle["state_dict"][first] = bundle["state_dict"][first] + 0.01
    torch.save(bundle, tmp_path / "retrained.pt")
    with pytest.raises(InputError, match="another network"):
        load_detector(tmp_path / "retrained.pt", tmp_path / "knn.joblib", "knn")
    with pytest.raises(InputError, match="holds classifier 'knn', not 'centroid'"):
        load_detector(study["model"], tmp_path / "knn.joblib", "centroid")


def test_svm_takes_its_centres_from_a_classifier_beside_it(study, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)) + np.repeat(np.eye(4) * 5, 10, axis=0), np.repeat([0, 1, 2, 3], 10)
    fitted = {"svm": SVMClassifier().fit(X, y), "centroid": CentroidClassifier().fit(X, y)}
    joblib.dump(fitted, tmp_path / "classifiers.joblib")
    svm = load_detector(study["model"], tmp_path / "classifiers.joblib", "svm")
    np.testing.assert_allclose(svm.centres.to_numpy(), fitted["centroid"].centres_)
    assert list(svm.centres.index) == svm.class_names == ["bead", "cryptosporidium", "debris", "giardia"]
    joblib.dump({"svm": fitted["svm"]}, tmp_path / "svm-only.joblib")
    with pytest.raises(InputError, match="no class centres"):
        load_detector(study["model"], tmp_path / "svm-only.joblib", "svm")


# --------------------------------------------------------------------------------------------------------- refusals


def write_images(folder, count: int, shape: tuple, dtype) -> dict:
    """A dump of ``count`` images, a bright disc on a noisy background, in one unlabelled folder ``sample/``."""
    (folder / "sample").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (shape[0] / 5) ** 2
    for number in range(count):
        image = rng.normal(60, 3, shape).astype(dtype)
        image[disc] = 200
        if dtype == np.uint16:
            tifffile.imwrite(folder / "sample" / f"{number:03d}.tif", image)
        else:
            Image.fromarray(image).save(folder / "sample" / f"{number:03d}.png")
    return {"kind": "folder", "path": str(folder)}


def test_refuses_a_dump_with_another_channel_count(gmm, tmp_path):
    source = write_images(tmp_path / "rgb", 3, (40, 40, 3), np.uint8)
    with pytest.raises(InputError, match=r"has 3 channel\(s\), but the data set lists 1"):
        run(gmm, source, 0.98)


def test_refuses_a_dump_of_another_bit_depth(gmm, tmp_path):
    source = write_images(tmp_path / "grey8", 3, (40, 40), np.uint8)
    with pytest.raises(InputError, match="dtype uint8, but the model was trained on uint16"):
        run(gmm, source, 0.98)


def test_refuses_a_patch_size_the_model_does_not_take(gmm, tmp_path):
    source = write_images(tmp_path / "grey16", 3, (40, 40), np.uint16)
    with pytest.raises(InputError, match="48 px patches do not fit the model, which takes 32 x 32 px images"):
        run(gmm, source, 0.98, patch={**PATCH, "size": 48})
    with pytest.raises(InputError, match=r"lack \['brightfield'\]"):
        run(gmm, source, 0.98, channels=["darkfield"])


def test_refuses_files_that_are_not_ours(study, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a model")
    for path in ("foreign.pt", "text.pt"):
        with pytest.raises(InputError, match="not a cytodml model"):
            load_detector(tmp_path / path, study["classifiers"], "gmm")
    joblib.dump({"weights": [1, 2]}, tmp_path / "foreign.joblib")
    with pytest.raises(InputError, match="not a cytodml classifiers file"):
        load_detector(study["model"], tmp_path / "foreign.joblib", "gmm")
    with pytest.raises(InputError, match="no classifier 'svm'.*centroid, gmm, knn"):
        load_detector(study["model"], study["classifiers"], "svm")
    with pytest.raises(InputError, match="no threshold for classifier 'svm'"):
        read_evaluation(study["metrics_path"], "svm")


# ----------------------------------------------------------------------------------------------------- command line


def cli(study, command: str, model=None, classifiers=None, classifier: str = "gmm") -> list[str]:
    """The arguments of ``cytodml <command>`` that name the study's model and classifier (paths hold no spaces)."""
    head = f"{command} --config {study['config']} --experiment tiny --model {model or study['model']}"
    return [*head.split(), "--classifiers", str(classifiers or study["classifiers"]), "--classifier", classifier]


def test_command_line_predicts_and_writes_the_outputs(study, tmp_path):
    dump = render(tmp_path / "water-0001", {"bead": 30, "debris": 30, "cryptosporidium": 4}, seed=107)["path"]
    out = tmp_path / "results/predict/water-0001"
    command = [sys.executable, "-m", "cytodml.cli", *cli(study, "predict"), "--dump", dump, "--out", str(out)]
    done = subprocess.run([*command, "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "water-0001:" in done.stdout and "summary.md" in done.stdout and "explorer.html" in done.stdout
    objects = pd.read_parquet(out / "objects.parquet")
    assert len(objects) == 64 and len(pd.read_csv(out / "objects.csv")) == 64
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Sample water-0001") and "| total | 64 |" in summary
    assert f">= {read_evaluation(study['metrics_path'], 'gmm')[0]:g}" in summary  # the evaluation's threshold
    assert (out / "targets.png").read_bytes()[:4] == b"\x89PNG"
    # the objects on the model's latent map (found beside the model), in the exports and the explorer page
    assert objects[["map_x", "map_y"]].notna().all().all()
    adata = anndata.read_h5ad(out / "objects.h5ad")
    assert adata.n_obs == 64 and adata.obs["predicted"].tolist() == objects["predicted"].tolist()
    np.testing.assert_allclose(adata.obsm["X_tsne"], objects[["map_x", "map_y"]].to_numpy(), rtol=1e-6)
    assert flowio.FlowData(str(out / "objects.fcs")).event_count == 64
    page = (out / "explorer.html").read_text()
    assert "sample water-0001" in page and "<script src=" not in page


def test_command_line_gallery_then_predict(study, tmp_path, capsys):
    render(tmp_path / "examples", {"pollen": 5}, seed=108)
    extended = tmp_path / "with-pollen.joblib"
    gallery = cli(study, "gallery", classifier="centroid")
    assert main([*gallery, "--examples", str(tmp_path / "examples"), "--out", str(extended)]) == 0
    assert "(new: pollen)" in capsys.readouterr().out
    dump = render(tmp_path / "s", {"pollen": 6, "bead": 6}, seed=109)["path"]
    predict = cli(study, "predict", classifiers=extended, classifier="centroid")
    options = ["--threshold", "0.5", "--targets", "pollen", "--dump", dump, "--out", str(tmp_path / "out")]
    assert main([*predict, *options, "--false-alarm-rate", "0.01"]) == 0
    objects = pd.read_csv(tmp_path / "out" / "objects.csv")
    assert "distance_pollen" in objects and (objects["predicted"] == "pollen").any()
    # a calibrated rule cannot be computed for the gallery class: the count rule, said on the command line and in the
    # summary
    note = "cannot be computed for the gallery class(es) pollen"
    assert note in capsys.readouterr().out and note in (tmp_path / "out" / "summary.md").read_text()


def test_gallery_takes_the_objects_picked_in_an_explorer_page(study, tmp_path, capsys):
    """A selection saved from an explorer page (object_id, label) names objects of a dump, whatever their folder:
    those, with those labels, join the classifier."""
    dump = render(tmp_path / "sample", {"pollen": 8, "bead": 8}, seed=110)
    ids = ingest(dump, CHANNELS)["object_id"]
    picked = pd.DataFrame({"object_id": ids[ids.str.startswith("pollen/")].head(5), "label": "grain"})
    picked.to_csv(tmp_path / "selection.csv", index=False)
    centroid = load_detector(study["model"], study["classifiers"], "centroid")
    extended = add_gallery(
        centroid, dump, channels=CHANNELS, patch=PATCH, labels=read_labels(tmp_path / "selection.csv")
    )
    assert extended.class_names == [*centroid.class_names, "grain"]
    assert int(extended.classifier.counts_[-1]) == 5  # the five picked, not the dump's other objects

    out = tmp_path / "with-grain.joblib"
    gallery = cli(study, "gallery", classifier="centroid")
    options = ["--examples", dump["path"], "--labels", str(tmp_path / "selection.csv"), "--out", str(out)]
    assert main([*gallery, *options]) == 0 and "(new: grain)" in capsys.readouterr().out

    picked.assign(object_id=[f"pollen/none-{number}" for number in range(5)]).to_csv(
        tmp_path / "stray.csv", index=False
    )
    with pytest.raises(InputError, match=r"5 labelled object\(s\) are not objects of the dump, e.g. \['pollen/none-0'"):
        add_gallery(centroid, dump, channels=CHANNELS, patch=PATCH, labels=read_labels(tmp_path / "stray.csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("object_id,class\na,b\n", r"missing column\(s\) \['label'\]"),
        ("object_id,label\na,\n", "line 2: an empty object_id or label"),
        ("object_id,label\na,x\na,y\n", r"object\(s\) \['a'\] listed more than once"),
        ("object_id,label\n", "no labelled objects"),
    ],
)
def test_a_labels_file_is_checked_before_the_dump_is_read(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_labels(tmp_path / "labels.csv")
    with pytest.raises(InputError, match="no such labels file"):
        read_labels(tmp_path / "absent.csv")


def test_command_line_reports_bad_input_in_one_line(study, tmp_path, capsys):
    (tmp_path / "foreign.pt").write_text("not a model")
    options = ["--dump", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*cli(study, "predict", model=tmp_path / "foreign.pt"), *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cytodml predict: error:") and "not a cytodml model" in error and "Traceback" not in error
    wrong = cli(study, "predict")
    wrong[wrong.index("tiny")] = "nowhere"
    assert main([*wrong, *options]) == 2
    assert "no experiment 'nowhere'" in capsys.readouterr().err


def test_command_line_applies_the_recommended_model(study, tmp_path, capsys):
    """Without --model, --classifiers and --classifier: the loss and classifier of the experiment's
    tables/recommended.csv, made as the aggregate stage makes it, at --trial; the summary says so."""
    results, eval_dir = study["root"] / "results", study["classifiers"].parent
    tables = collect_trials({("softmax", 0): eval_dir})
    predictions = pd.read_parquet(eval_dir / "predictions.parquet").assign(loss="softmax", trial=0)
    labels = [sorted(SOURCE["classes"]).index(target) for target in TARGETS]  # the data set's labels
    ranking = rank_models(validation_scores(predictions, EXPERIMENT["classifiers"], labels))
    aggregated = aggregate(tables["metrics"])
    write_tables(
        aggregated,
        sum_confusion(tables["confusion"]),
        None,
        None,
        results / "tiny/tables",
        ranking=ranking,
        experiment="tiny",
    )
    best = ranking.iloc[0]
    dump = render(tmp_path / "water", {"bead": 10, "cryptosporidium": 4}, seed=110)["path"]
    head = ["predict", "--config", str(study["config"]), "--experiment", "tiny", "--dump", dump]
    out = tmp_path / "out"
    assert main([*head, "--results", str(results), "--out", str(out), "--threads", "1"]) == 0
    assert f"(recommended model: loss softmax, classifier {best['classifier']})" in capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert f"Classifier `{best['classifier']}`: network {results}/tiny/models/softmax/t0.pt" in summary
    assert "This is the recommended model of experiment tiny" in summary
    assert f"classifier `{best['classifier']}`, the best mean validation MCC of the targets" in summary
    # half of the model named, or no tables to read: refused, asking for the model
    assert main([*head, "--classifier", "gmm", "--out", str(out)]) == 2
    assert "--model, --classifiers: missing; give --model, --classifiers and --classifier" in capsys.readouterr().err
    assert main([*head, "--results", str(tmp_path / "elsewhere"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "recommended.csv: not found" in error and "--model, --classifiers, --classifier" in error


# ----------------------------------------------------------------------------------------------------------- config


def test_dump_inherits_the_layout_of_the_data_set_of_its_kind():
    dataset = {
        "kind": "folder",
        "path": "/train",
        "channel_tokens": {"brightfield": "Ch1"},
        "group_pattern": "(?P<group>P)",
    }
    assert dump_source(dataset, {"path": "/water"}) == {**dataset, "path": "/water"}
    assert dump_source(dataset, {"path": "/w", "channel_tokens": {"brightfield": "Ch9"}})["channel_tokens"] == {
        "brightfield": "Ch9"
    }
    assert dump_source(dataset, {"path": "/w.csv", "kind": "manifest"}) == {"kind": "manifest", "path": "/w.csv"}
    with pytest.raises(InputError, match="path"):
        dump_source(dataset, {"kind": "folder"})


@pytest.mark.parametrize(
    "predict, named",
    [
        ({"model": {"experiment": "other"}}, "predict.model.experiment"),
        ({"model": {"loss": "triplet"}}, "predict.model.loss"),
        ({"model": {"trial": 1}}, "predict.model.trial"),
        ({"model": {"classifier": "svm"}}, "predict.model.classifier"),
        ({"model": {"classifier": "gmm"}, "gallery": {"path": "g"}}, "predict.gallery"),
        ({"targets": ["pollen"]}, "predict.targets[0]"),  # open set: the model never learned it
        # a calibrated alarm needs the threshold and targets its validation count was made at
        ({"model": {"threshold": 0.5}, "alarm": {"false_alarm_rate": 0.01}}, "predict.alarm"),
        ({"targets": ["giardia"], "alarm": {"false_alarm_rate": 0.01}}, "predict.alarm"),
    ],
)
def test_predict_config_cross_references_are_checked(predict, named):
    model = {"experiment": "tiny", "loss": "softmax", "classifier": "centroid", **predict.pop("model", {})}
    config = {
        "datasets": {"tiny-ifc": {"source": SOURCE, "channels": CHANNELS, "patch": PATCH}},
        "experiments": {"tiny": EXPERIMENT},
        "predict": {"model": model, "samples": {"s": {"path": "s"}}, **predict},
    }
    with pytest.raises(InputError, match=re.escape(named)):
        check_predict_config(fill("config", config), list_classes=list_classes)
    config["predict"] = {"model": {"experiment": "tiny", "loss": "softmax", "classifier": "knn"}, "targets": TARGETS}
    check_predict_config(fill("config", config), list_classes=list_classes)
    config["predict"]["alarm"] = {"false_alarm_rate": 0.01}  # the evaluation's threshold and targets: fine
    check_predict_config(fill("config", config), list_classes=list_classes)
    # a gallery class as target: the prediction falls back on the count rule for it, so the config is accepted
    config["predict"] |= {
        "gallery": {"path": "g"},
        "targets": [*TARGETS, "pollen"],
        "model": {**config["predict"]["model"], "classifier": "centroid"},
    }
    check_predict_config(fill("config", config), list_classes=list_classes)
    del config["predict"]["gallery"]
    # the experiment's own calibrated rule, inherited, is named where it is set
    config["experiments"]["tiny"] = {**EXPERIMENT, "alarm": {"false_alarm_rate": 0.01}}
    config["predict"] = {"model": {"experiment": "tiny", "loss": "softmax", "classifier": "knn", "threshold": 0.9}}
    with pytest.raises(InputError, match="experiments.tiny.alarm"):
        check_predict_config(fill("config", config), list_classes=list_classes)


def test_predict_model_names_loss_and_classifier_both_or_neither():
    config = {
        "datasets": {"tiny-ifc": {"source": SOURCE, "channels": CHANNELS, "patch": PATCH}},
        "losses": {"softmax": {"type": "softmax"}},
        "experiments": {"tiny": EXPERIMENT},
        "run": ["tiny"],
        "predict": {"model": {"experiment": "tiny"}, "samples": {"s": {"path": "s"}}},
    }
    # neither: the recommended model, which the schema and the cross-references accept
    assert "loss" not in validate_config(config, list_classes=list_classes)["predict"]["model"]
    for model, named in (
        ({"loss": "softmax"}, "predict.model.classifier"),
        ({"classifier": "gmm"}, "predict.model.loss"),
    ):
        config["predict"]["model"] = {"experiment": "tiny", **model}
        with pytest.raises(InputError, match=re.escape(f"{named}: missing")):
            validate_config(config, list_classes=list_classes)
    # a gallery extends a classifier named: the recommended one may not take new classes
    config["predict"] |= {"model": {"experiment": "tiny"}, "gallery": {"path": "g"}}
    with pytest.raises(InputError, match="predict.gallery: .*name predict.model.loss and predict.model.classifier"):
        validate_config(config, list_classes=list_classes)


def test_command_line_validates_the_config_with_the_workflow_schema(study, tmp_path, capsys):
    with open(study["config"]) as handle:
        config = yaml.safe_load(handle)
    config["experiments"]["tiny"]["threshold"] = 1.5
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    wrong = cli(study, "predict")
    wrong[wrong.index("--config") + 1] = str(broken)
    assert main([*wrong, "--dump", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "experiments.tiny.threshold: 1.5 is greater than the maximum of 1" in capsys.readouterr().err
