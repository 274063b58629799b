"""The config schema, the one owner of every default, and the cross-reference checks: a wrong key or value fails naming
the key; what a user leaves out is the schema's documented default, whichever protocol and network."""

import copy
import importlib
import itertools
import pkgutil
import re

import jsonschema
import numpy as np
import pytest

import cytodml
from cytodml.config import (
    PROTOCOLS,
    channel_indices,
    fill,
    load_config,
    predict_settings,
    resolve_source,
    schema,
    validate_config,
)
from cytodml.data.augment import augment
from cytodml.errors import InputError
from cytodml.learn.models import build_model

NETWORKS = schema()["$defs"]["experiment"]["properties"]["network"]["properties"]["name"]["enum"]
LOSS_TYPES = schema()["$defs"]["loss"]["properties"]["type"]["enum"]


@pytest.fixture()
def config(repo_root):
    return load_config(repo_root / "config.yaml")


def test_default_config_and_presets_are_valid(config, repo_root):
    validate_config(config)
    for preset in sorted((repo_root / "presets").glob("*.yaml")):
        validate_config(load_config(preset))


@pytest.mark.parametrize(
    "path, value, where",
    [
        (["experiments", "bioparticles", "trails"], 3, "experiments.bioparticles.trails: unknown key"),
        (["datasets", "synthetic-ifc", "patch", "size"], 2, "datasets.synthetic-ifc.patch.size: 2 is less than"),
        (["datasets", "synthetic-ifc", "patch", "mode"], "crop", "datasets.synthetic-ifc.patch.mode: 'crop'"),
        (["losses", "triplet", "margn"], 1.0, "losses.triplet.margn: unknown key"),
        (["experiments", "bioparticles", "protocol"], "oneshot", "experiments.bioparticles.protocol: 'oneshot'"),
        (["experiments", "bioparticles", "threshold"], 1.5, "experiments.bioparticles.threshold: 1.5"),
        (["datasets", "synthetic-ifc", "source", "classes", "giardia"], 0, "classes.giardia: 0 is less than"),
        (["experiment"], {}, "experiment: unknown key"),
    ],
)
def test_schema_rejects_wrong_keys_and_values(config, path, value, where):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InputError, match=where.replace(".", r"\.")):
        validate_config(config)


def paper_pairs_at(samples_per_class: int):
    """An edit giving the default study's constellation loss the paper's pairs and ``samples_per_class`` per batch."""

    def edit(config):
        config["losses"]["constellation-k3"]["pairs"] = "all"
        config["experiments"]["bioparticles"]["train"]["samples_per_class"] = samples_per_class

    return edit


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["experiments"]["bioparticles"].update(dataset="nope"), "experiments.bioparticles.dataset"),
        (lambda c: c["experiments"]["bioparticles"]["losses"].append("arcface"), "experiments.bioparticles.losses[5]"),
        (lambda c: c["run"].append("missing"), "run[1]"),
        (lambda c: c["experiments"]["bioparticles"].update(channels=["dna"]), "experiments.bioparticles.channels[0]"),
        (lambda c: c["experiments"]["bioparticles"].update(targets=["amoeba"]), "experiments.bioparticles.targets[0]"),
        (lambda c: c["experiments"]["bioparticles"].update(open_set=["giardia"]), "experiments.bioparticles"),
        (
            lambda c: c["experiments"]["bioparticles"].update(fractions={"train": 0.5, "val": 0.2, "test": 0.4}),
            "experiments.bioparticles.fractions",
        ),
        (lambda c: c["experiments"]["bioparticles"].update(protocol="fewshot"), "experiments.bioparticles.shots"),
        (lambda c: c["experiments"].update({"synthetic-ifc": c["experiments"]["bioparticles"]}), "synthetic-ifc"),
        (paper_pairs_at(5), r"experiments.bioparticles.train.samples_per_class \(loss 'constellation-k3'\): .*= 125"),
    ],
)
def test_cross_references_name_the_key(config, edit, key):
    from cytodml.data.sources import list_classes

    broken = copy.deepcopy(config)
    edit(broken)
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate_config(broken, list_classes=list_classes)


def test_a_loss_trains_with_the_experiments_train_block_and_its_own_keys(config):
    from cytodml.config import loss_train

    experiment_train = {"epochs": 10, "lr": 0.003, "augment": {"dihedral": True, "noise": {"p": 0, "sigma": 0.1}}}
    loss = {"type": "constellation", "train": {"epochs": 80, "augment": {"noise": {"p": 0.5}}}}
    assert loss_train(experiment_train, loss) == {
        "epochs": 80, "lr": 0.003, "augment": {"dihedral": True, "noise": {"p": 0.5, "sigma": 0.1}}
    }  # fmt: skip
    assert loss_train(experiment_train, {"type": "softmax"}) == experiment_train
    broken = copy.deepcopy(config)
    broken["losses"]["triplet"]["train"] = {"epochz": 80}
    with pytest.raises(InputError, match=r"losses\.triplet\.train.*epochz"):
        validate_config(broken)
    fine = copy.deepcopy(config)
    fine["losses"]["triplet"]["train"] = {"epochs": 80}
    assert validate_config(fine)["losses"]["triplet"]["train"] == {"epochs": 80}  # no defaults filled into it


def test_paper_pairs_are_checked_against_the_known_classes_before_any_job(config):
    """4 known classes (pollen is open set): K = min(3, 3) = 3, so 4 per class gives 64 < 100, 5 gives 125; without
    the class list (not knowable before ingest) the trainer's check is the one that applies."""
    from cytodml.data.sources import list_classes

    fits = copy.deepcopy(config)
    paper_pairs_at(4)(fits)
    validate_config(fits, list_classes=list_classes)
    unknown_classes = copy.deepcopy(config)
    paper_pairs_at(5)(unknown_classes)
    validate_config(unknown_classes, list_classes=lambda source: None)
    own = copy.deepcopy(config)  # the loss's own train: keys are named where they are set
    paper_pairs_at(4)(own)
    own["losses"]["constellation-k3"]["train"] = {"samples_per_class": 5}
    with pytest.raises(InputError, match=r"losses\.constellation-k3\.train\.samples_per_class: .*= 125"):
        validate_config(own, list_classes=list_classes)


# ---- one owner of every default ---------------------------------------------------------------------------------


def _resolved(subschema: dict) -> dict:
    while "$ref" in subschema:
        target = jsonschema.Draft202012Validator(schema()).resolver.resolve(subschema["$ref"])[1]
        subschema = {**target, **{k: v for k, v in subschema.items() if k != "$ref"}}
    return subschema


def documented_defaults(subschema: dict, path=(), conditions=()):
    """Every ``default`` the schema documents: ``(path, value, conditions)``, the path through ``properties`` (``*``
    for any key of an ``additionalProperties`` map) and the ``if`` schemas (with the path they apply at) that must
    hold for it to apply."""
    subschema = _resolved(subschema)
    for key, child in subschema.get("properties", {}).items():
        child = _resolved(child)
        if "default" in child:
            yield (*path, key), child["default"], conditions
        yield from documented_defaults(child, (*path, key), conditions)
    if isinstance(subschema.get("additionalProperties"), dict):
        yield from documented_defaults(subschema["additionalProperties"], (*path, "*"), conditions)
    for branch in subschema.get("allOf", []):
        if "if" in branch:
            yield from documented_defaults(branch["then"], path, (*conditions, (path, branch["if"])))
        else:
            yield from documented_defaults(branch, path, conditions)


def _outer_default(block_defaults: dict, path: tuple, default):
    """The default a key gets where an enclosing block's own default names it (e.g. pretrain.augment's strong views
    over the online augmentation's zeros): the outermost such block wins, as the fill applies it first."""
    for cut in range(1, len(path)):
        node = block_defaults.get(path[:cut])
        for key in path[cut:]:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return default


def _nodes(node, path):
    """(concrete path, value) for each node ``path`` (with ``*`` wildcards) reaches in ``node``."""
    if not path:
        yield (), node
        return
    head, rest = path[0], path[1:]
    if not isinstance(node, dict):
        return
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        for sub, value in _nodes(node[key], rest):
            yield (key, *sub), value


def _at(node, path):
    for key in path:
        node = node[key]
    return node


def study(protocol: str, network: str, **experiment) -> dict:
    """The least config a user could write: every optional block left out, every loss type and classifier named."""
    return {
        "datasets": {
            "cells": {
                "source": {"kind": "synthetic", "classes": {"bead": 20, "debris": 20}},
                "channels": ["brightfield"],
                "patch": {"mode": "object", "size": 48},
            }
        },
        "losses": {kind: {"type": kind} | ({"loss": "ArcFaceLoss"} if kind == "pml" else {}) for kind in LOSS_TYPES},
        "experiments": {
            "study": {
                "dataset": "cells",
                "protocol": protocol,
                "losses": list(LOSS_TYPES),
                # started from its own pretraining, which a loss of type none needs
                "network": {"name": network, "init": "pretrain"} | ({"model": "resnet18"} if network == "timm" else {}),
                "pretrain": {},
                "classifiers": {"centroid": {}, "gmm": {}, "svm": {}, "knn": {}},
                **({"shots": 5} if protocol == "fewshot" else {}),
                **experiment,
            }
        },
        "run": ["study"],
        "predict": {
            "model": {"experiment": "study", "loss": "triplet", "classifier": "centroid"},
            "samples": {"water": {"path": "samples/water"}},
        },
    }


@pytest.mark.parametrize("protocol, network", itertools.product(PROTOCOLS, NETWORKS))
def test_every_documented_default_is_what_the_user_gets(protocol, network):
    written = study(protocol, network)
    filled = validate_config(written)
    validator = jsonschema.Draft202012Validator(schema())
    checked = 0
    defaults = list(documented_defaults(schema()))
    block_defaults = {path: default for path, default, _ in defaults if isinstance(default, dict)}
    for path, default, conditions in defaults:
        default = _outer_default(block_defaults, path, default)
        for concrete, value in _nodes(filled, path):
            holds = all(
                validator.evolve(schema=condition).is_valid(_at(filled, concrete[: len(at)]))
                for at, condition in conditions
            )
            if not holds or any(True for _ in _nodes(written, concrete)):
                continue
            # a block's default ({} or a mapping) gets its own keys' defaults filled in beside what it names
            got = {key: value[key] for key in default} if isinstance(default, dict) else value
            assert got == default, f"{'.'.join(concrete)}: got {value!r}, the schema documents {default!r}"
            checked += 1
    assert checked >= 50  # the walk reached every block: losses, train, augment, classifiers, spiked, episodes, ...


def test_documented_defaults_by_protocol_and_network():
    """The regression cases: each default that once came from elsewhere than the schema."""
    for protocol, count, fractions in (("full", 10000, 0.48), ("fewshot", 0, 0.48), ("episodic", 0, 0.06)):
        # a partial augment: block keeps the protocol's count (the schema once gave every protocol 10 000)
        experiment = validate_config(study(protocol, "small", augment={"flips": False}))["experiments"]["study"]
        assert experiment["augment"]["count"] == count and experiment["augment"]["flips"] is False
        assert experiment["fractions"]["train"] == fractions
    for network, dim in (("luo2021", 2), ("small", 2), ("gupta2019", 128), ("timm", 128)):
        experiment = validate_config(study("full", network))["experiments"]["study"]
        assert experiment["network"]["embedding_dim"] == dim, network
    experiment = validate_config(study("full", "small"))["experiments"]["study"]
    # outlier_alpha sits behind a $ref; its default reaches the classifiers that take it
    assert experiment["classifiers"]["centroid"]["outlier_alpha"] == schema()["$defs"]["outlier_alpha"]["default"]
    assert experiment["classifiers"]["gmm"]["outlier_alpha"] == schema()["$defs"]["outlier_alpha"]["default"]
    assert experiment["threshold"] == 0.98 and experiment["alarm"] == {"min_targets": 1}


def test_library_functions_read_the_schema_defaults():
    """A block passed straight to the library gets the same defaults as through a config."""
    net = build_model({"name": "gupta2019"}, 1, 48, normalize=False)
    assert net.head[-1].out_features == 128
    images = np.zeros((4, 1, 8, 8), np.uint8)
    fewshot = fill("experiment", {"protocol": "fewshot", "augment": {"flips": False}})["augment"]
    grown, _ = augment(images, np.array([0, 0, 1, 1]), np.arange(4), fewshot, seed=0)
    assert len(grown) == 4  # no offline augmentation in the few-shot protocol


def test_no_module_keeps_its_own_defaults():
    """Config defaults live in the schema only: no module of the library defines a ``*DEFAULT*`` constant."""
    own = []
    for module in pkgutil.walk_packages(cytodml.__path__, "cytodml."):
        names = vars(importlib.import_module(module.name))
        own += [f"{module.name}.{name}" for name in names if "DEFAULT" in name.upper() and name.isupper()]
    assert own == []


def test_predict_takes_targets_and_alarm_from_its_experiment():
    filled = validate_config(study("full", "small", targets=["bead"], alarm={"false_alarm_rate": 0.01}))
    assert predict_settings(filled)["targets"] == ["bead"]
    assert predict_settings(filled)["alarm"] == {"false_alarm_rate": 0.01}
    assert "threshold" not in predict_settings(filled)["model"]  # the evaluation's threshold, read from metrics.csv
    filled["predict"] |= {"targets": ["debris"], "alarm": {"min_targets": 3}}
    assert predict_settings(filled)["targets"] == ["debris"] and predict_settings(filled)["alarm"] == {"min_targets": 3}


def test_synthetic_source_path_and_channel_selection(config):
    assert resolve_source("synthetic-ifc", config["datasets"]["synthetic-ifc"])["path"] == "resources/synthetic-ifc"
    assert channel_indices(["brightfield", "dna", "darkfield"], ["brightfield", "darkfield"]) == [0, 2]
    assert channel_indices(["brightfield", "dna"], None) == [0, 1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["experiments"]["study"].update(threshold={"false_alarm_rate": 0.01}),
            "experiments.study.threshold.false_alarm_rate: renamed; write false_positive_rate",
        ),
        (
            lambda c: c["datasets"]["cells"]["patch"].update(threshold=4),
            "datasets.cells.patch.threshold: renamed; write noise_sigmas (object mode) or foreground_fraction",
        ),
        (
            lambda c: c["datasets"]["cells"].update(
                source={"kind": "medmnist", "path": "x.npz", "official_split": True}
            ),
            "datasets.cells.source.official_split: renamed; write official_subsets",
        ),
    ],
)
def test_an_old_name_is_refused_naming_the_new_one(edit, message):
    """Names that meant two things got two names; a config written with the old one fails saying what to write."""
    config = study("full", "small")
    edit(config)
    with pytest.raises(InputError, match=re.escape(message)):
        validate_config(config)


def test_patch_defaults_follow_the_mode():
    assert fill("patch", {"mode": "object", "size": 48}) == {
        "mode": "object", "size": 48, "downscale": True, "background": "auto", "noise_sigmas": 5.0
    }  # fmt: skip
    assert fill("patch", {"mode": "grid", "size": 48})["foreground_fraction"] == 0.5
