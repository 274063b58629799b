"""The config schema and the cross-reference checks: a wrong key or value fails naming the key."""

import copy

import jsonschema
import pytest
import yaml

from cytodml.config import channel_indices, check_config, experiment_settings, load_config, resolve_source
from cytodml.errors import InputError


@pytest.fixture(scope="module")
def schema(repo_root):
    return yaml.safe_load((repo_root / "schemas" / "config.schema.yaml").read_text())


@pytest.fixture()
def config(repo_root):
    return load_config(repo_root / "config.yaml")


def errors_of(schema, config):
    validator = jsonschema.Draft202012Validator(schema)
    return [(list(error.absolute_path), error.message) for error in validator.iter_errors(config)]


def test_default_config_and_presets_are_valid(schema, config, repo_root):
    assert errors_of(schema, config) == []
    check_config(config)
    for preset in sorted((repo_root / "presets").glob("*.yaml")):
        preset_config = load_config(preset)
        assert errors_of(schema, preset_config) == [], preset.name
        check_config(preset_config)


@pytest.mark.parametrize(
    "path, value, where",
    [
        (["experiments", "bioparticles", "trails"], 3, ["experiments", "bioparticles"]),
        (["datasets", "synthetic-ifc", "patch", "size"], 2, ["datasets", "synthetic-ifc", "patch", "size"]),
        (["datasets", "synthetic-ifc", "patch", "mode"], "crop", ["datasets", "synthetic-ifc", "patch", "mode"]),
        (["losses", "triplet", "margn"], 1.0, ["losses", "triplet"]),
        (["experiments", "bioparticles", "protocol"], "oneshot", ["experiments", "bioparticles", "protocol"]),
        (["experiments", "bioparticles", "threshold"], 1.5, ["experiments", "bioparticles", "threshold"]),
        (["datasets", "synthetic-ifc", "source", "classes", "giardia"], 0, None),
    ],
)
def test_schema_rejects_wrong_keys_and_values(schema, config, path, value, where):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = errors_of(schema, config)
    assert errors, f"{path} = {value!r} was accepted"
    if where is not None:
        assert any(location == where for location, _ in errors), errors
    if path[-1] in ("trails", "margn"):
        assert any(path[-1] in message for _, message in errors)


def test_schema_rejects_unknown_top_level_key(schema, config):
    config["experiment"] = {}
    assert any("experiment" in message for _, message in errors_of(schema, config))


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
    ],
)
def test_cross_references_name_the_key(config, edit, key):
    from cytodml.data.sources import list_classes

    broken = copy.deepcopy(config)
    edit(broken)
    with pytest.raises(InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        check_config(broken, list_classes=list_classes)


def test_protocol_defaults():
    fewshot = experiment_settings({"protocol": "fewshot", "dataset": "d", "losses": ["a"], "network": {"name": "small"}})
    assert fewshot["augment"]["count"] == 0
    episodic = experiment_settings({"protocol": "episodic", "dataset": "d", "losses": ["a"], "network": {}})
    assert episodic["fractions"] == {"train": 0.06, "val": 0.06, "test": 0.88}
    full = experiment_settings({"protocol": "full", "dataset": "d", "losses": ["a"], "network": {}})
    assert full["augment"]["count"] == 10000 and full["threshold"] == 0.98


def test_synthetic_source_path_and_channel_selection(config):
    assert resolve_source("synthetic-ifc", config["datasets"]["synthetic-ifc"])["path"] == "resources/synthetic-ifc"
    assert channel_indices(["brightfield", "dna", "darkfield"], ["brightfield", "darkfield"]) == [0, 2]
    assert channel_indices(["brightfield", "dna"], None) == [0, 1]
