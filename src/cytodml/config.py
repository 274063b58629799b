"""The study config: its schema, the one owner of every default, and what the schema cannot say.

The schema (``config.schema.yaml`` in this package; ``schemas/config.schema.yaml`` links to it) holds every key, its
type, range and default, and the defaults that depend on another key (a protocol's split fractions and offline
augmentation, a network's embedding size) as ``if``/``then`` branches. :func:`validate_config` fills those defaults in
and checks the result; the workflow (``rules/common.smk``) and the ``cytodml`` command both read a config through it, and
library functions that take one block of it (``augment:``, ``train:``, a loss, ...) fill that block from the same
schema with :func:`fill` or :func:`checked`, so no default is written twice. :func:`check_config` checks what the schema
cannot: that names point at things that exist. Every error names the config key at fault.
"""

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from cytodml.errors import InputError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
#: the name the schema goes by when its references are resolved
SCHEMA_URI = "urn:cytodml:config-schema"
#: results/<name>/ is shared by data sets and experiments, and results/predict/ belongs to the predict rule
RESERVED_NAMES = {"predict", "benchmarks"}
#: the config blocks library functions take on their own, by where the schema defines them
BLOCKS = {
    "config": "",
    "source": "/$defs/source",
    "dataset": "/$defs/dataset",
    "patch": "/$defs/dataset/properties/patch",
    "loss": "/$defs/loss",
    "experiment": "/$defs/experiment",
    "network": "/$defs/experiment/properties/network",
    "train": "/$defs/experiment/properties/train",
    "pretrain": "/$defs/pretrain",
    "augment": "/$defs/experiment/properties/augment",
    "classifiers": "/$defs/experiment/properties/classifiers",
    "threshold": "/$defs/experiment/properties/threshold",
    "spiked": "/$defs/experiment/properties/spiked",
    "episodes": "/$defs/experiment/properties/episodes",
    "novel_episodes": "/$defs/experiment/properties/novel_episodes",
    "alarm": "/$defs/alarm",
    "predict": "/$defs/predict",
}
#: the experiment keys that make its split: experiments equal in these (and in data set, seed and trials) draw the
#: same images for every trial, which a ``baseline:`` comparison needs
SPLIT_KEYS = ("protocol", "fractions", "shots", "official_split", "drop_small_classes", "open_set", "novel_classes")
#: images of each class in a batch of a metric loss whose ``train.samples_per_class`` is unset and that needs no more
MIN_SAMPLES_PER_CLASS = 2
#: Medela & Picon keep spc^K, the negative combinations per positive pair of the constellation loss, under it (eq. 5)
NEGATIVE_COMBINATIONS_LIMIT = 100


@cache
def schema() -> dict:
    """The config schema (JSON Schema 2020-12, written in YAML)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


@cache
def _lookup(reference: str) -> dict:
    """The part of the schema a JSON pointer reference (``#/$defs/...``) names."""
    registry = Registry().with_resource(SCHEMA_URI, DRAFT202012.create_resource(schema()))
    return registry.resolver(SCHEMA_URI).lookup(reference).contents


def _block(name: str) -> dict:
    if name not in BLOCKS:
        raise KeyError(f"no config block {name!r}; known: {', '.join(BLOCKS)}")
    return _lookup(f"#{BLOCKS[name]}") if BLOCKS[name] else schema()


PROTOCOLS = tuple(schema()["$defs"]["experiment"]["properties"]["protocol"]["enum"])


def _resolve(subschema: dict) -> dict:
    """``subschema`` with a ``$ref`` replaced by its target (keys beside the ``$ref`` win)."""
    while "$ref" in subschema:
        target = _lookup(subschema["$ref"])
        subschema = {**target, **{k: v for k, v in subschema.items() if k != "$ref"}}
    return subschema


def _fits(instance, subschema: dict) -> bool:
    return _validator().evolve(schema=subschema).is_valid(instance)


def _refuse_renamed(instance: dict, subschema: dict, path: tuple) -> None:
    """A key the schema lists under ``x-renamed`` (old name -> what replaced it) raises :class:`InputError` naming the
    new key: a config written for an older cytodml fails saying what to write instead."""
    for old, new in subschema.get("x-renamed", {}).items():
        if old in instance:
            raise InputError(f"{_where('', (*path, old))}: renamed; write {new}")


def _fill(instance, subschema: dict, path: tuple = ()) -> None:
    """Fill the defaults ``subschema`` gives into ``instance`` in place, depth first (``path``: where it sits).

    Defaults come from ``properties`` (and ``$ref`` targets), then from the ``then`` (or ``else``) of each ``allOf``
    branch whose ``if`` the instance meets, then from the one ``oneOf`` / ``anyOf`` branch it fits; a key the user set
    is never overwritten, so the first default that applies to a key is the one it gets. A block marked
    ``x-merge-default`` takes the user's keys merged into its default (``pretrain.augment``: turning one transform of
    the strong views off keeps the others) where any other block's default applies only when the block is absent.
    """
    subschema = _resolve(subschema)
    if isinstance(instance, dict):
        for branch in [subschema, *subschema.get("oneOf", []), *subschema.get("anyOf", [])]:
            _refuse_renamed(instance, _resolve(branch), path)
        properties = subschema.get("properties", {})
        for key, property_schema in properties.items():
            property_schema = _resolve(property_schema)
            if key not in instance and "default" in property_schema:
                instance[key] = copy.deepcopy(property_schema["default"])
            elif property_schema.get("x-merge-default") and isinstance(instance.get(key), dict):
                instance[key] = merged(property_schema["default"], instance[key])
            if key in instance:
                _fill(instance[key], property_schema, (*path, key))
        extra = subschema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in instance.keys() - properties.keys():
                _fill(instance[key], extra, (*path, key))
    elif isinstance(instance, list) and isinstance(subschema.get("items"), dict):
        for index, item in enumerate(instance):
            _fill(item, subschema["items"], (*path, index))
    for branch in subschema.get("allOf", []):
        if "if" not in branch:
            _fill(instance, branch, path)
        elif _fits(instance, branch["if"]):
            _fill(instance, branch.get("then", {}), path)
        elif "else" in branch:
            _fill(instance, branch["else"], path)
    for keyword in ("oneOf", "anyOf"):
        fitting = [branch for branch in subschema.get(keyword, []) if _fits(instance, branch)]
        if fitting:
            _fill(instance, fitting[0], path)


def fill(block: str, value, where: str = ""):
    """A copy of ``value``, a config block (:data:`BLOCKS`: ``"train"``, ``"loss"``, ``"experiment"``, ...), with the
    schema's defaults filled in; only renamed keys are refused (naming ``where``), nothing else is checked (see
    :func:`checked`)."""
    filled = copy.deepcopy(value)
    _fill(filled, _block(block), tuple(where.split(".")) if where else ())
    return filled


def _where(prefix: str, path) -> str:
    where = prefix
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "config"


def checked(block: str, value, where: str = "", partial: bool = False):
    """:func:`fill`, then the schema's checks: the first error raises :class:`InputError` naming the key.

    ``where`` is the block's key in the config (e.g. ``losses.triplet``), prefixed to the key in the message.
    ``partial``: ``value`` holds some of the block's keys (those a rule passes on), so the block's own required keys
    may be absent.
    """
    filled = fill(block, value, where)
    errors = _validator().evolve(schema=_block(block)).iter_errors(filled)
    if partial:
        errors = (error for error in errors if error.validator != "required" or error.absolute_path)
    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return filled
    path, message = list(error.absolute_path), error.message
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        path.append(sorted(set(error.instance) - set(known))[0])
        message = f"unknown key; known: {', '.join(known)}"
    elif error.validator == "required":
        path.append(next(key for key in error.validator_value if key not in error.instance))
        message = "required, missing"
    raise InputError(f"{_where(where, path)}: {message}")


def validate_config(config: dict, list_classes=None, class_sizes=None) -> dict:
    """The study config with every default filled in, after the schema's checks, :func:`check_config`'s and, where
    it has a ``predict:`` block, :func:`check_predict_config`'s; ``list_classes`` and ``class_sizes`` as for
    :func:`check_config`."""
    filled = checked("config", config)
    check_config(filled, list_classes=list_classes, class_sizes=class_sizes)
    if "predict" in filled:
        check_predict_config(filled, list_classes=list_classes)
    return filled


def predict_settings(config: dict) -> dict:
    """The filled config's ``predict:`` block with what it takes from its experiment where it names nothing itself:
    the targets and the alarm rule (``model.threshold`` absent means the threshold the evaluation applied)."""
    predict = copy.deepcopy(config["predict"])
    experiment = config["experiments"][predict["model"]["experiment"]]
    predict.setdefault("targets", experiment["targets"])
    predict.setdefault("alarm", experiment["alarm"])
    return predict


def synthetic_dump(dataset: str) -> str:
    """Where rule ``synthesize`` writes a synthetic data set's raw dump."""
    return f"resources/{dataset}"


def resolve_source(dataset: str, spec: dict) -> dict:
    """The data set's ``source:`` block with the path of a synthetic dump filled in."""
    source = dict(spec["source"])
    if source["kind"] == "synthetic":
        source["path"] = synthetic_dump(dataset)
    return source


def channel_indices(dataset_channels: list[str], experiment_channels: list[str] | None) -> list[int]:
    """Positions of an experiment's channels on the patches' channel axis (all channels when it names none)."""
    if not experiment_channels:
        return list(range(len(dataset_channels)))
    return [dataset_channels.index(name) for name in experiment_channels]


def load_config(path) -> dict:
    """Read a YAML config (a test or a preset) as written, defaults not filled in (:func:`validate_config` does)."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def check_config(config: dict, list_classes=None, class_sizes=None) -> None:
    """Raise :class:`InputError` naming the key of the first broken cross-reference of a filled config.

    ``list_classes(source) -> list[str] | None`` tells a data set's classes cheaply (None: not knowable before ingest);
    class checks are skipped where it is not given or returns None. ``class_sizes(source) -> dict[str, int] | None``
    tells how many images each class has, where that is cheap; the novel classes' sizes are checked where it does.
    """
    _check_names(config)
    for name, experiment in config["experiments"].items():
        key = f"experiments.{name}"
        dataset = _check_experiment(config, key, experiment)
        _check_pretraining(config, key, experiment)
        source = resolve_source(experiment["dataset"], dataset)
        classes = list_classes(source) if list_classes else None
        if classes is not None:
            _check_classes(key, experiment, classes, config["losses"])
            sizes = class_sizes(source) if class_sizes else None
            if sizes is not None:
                _check_novel_sizes(key, experiment, classes, sizes)


def _check_names(config: dict) -> None:
    """Data sets and experiments own results/<name>/, so their names differ from each other and from reserved ones;
    ``run:`` names experiments."""
    datasets, experiments = config["datasets"], config["experiments"]
    for name in list(datasets) + list(experiments):
        if name in RESERVED_NAMES:
            raise InputError(f"'{name}' is reserved for results/{name}/; rename it in the config")
    shared = set(datasets) & set(experiments)
    if shared:
        raise InputError(
            f"data set and experiment share the name(s) {sorted(shared)}: both write under results/<name>/; rename one"
        )
    for index, name in enumerate(config["run"]):
        if name not in experiments:
            raise InputError(f"run[{index}]: unknown experiment '{name}' (known: {sorted(experiments)})")


def _check_experiment(config: dict, key: str, experiment: dict) -> dict:
    """The experiment's data set, losses and channels exist, its fractions sum to 1, a few-shot one names its shots,
    and no class is both a target and open set; returns the data set block."""
    datasets, losses = config["datasets"], config["losses"]
    if experiment["dataset"] not in datasets:
        raise InputError(f"{key}.dataset: unknown data set '{experiment['dataset']}' (known: {sorted(datasets)})")
    dataset = datasets[experiment["dataset"]]
    for index, loss in enumerate(experiment["losses"]):
        if loss not in losses:
            raise InputError(f"{key}.losses[{index}]: unknown loss '{loss}' (known: {sorted(losses)})")
        if "train" in losses[loss]:
            checked("train", loss_train(experiment["train"], losses[loss]), f"losses.{loss}.train")
    for index, channel in enumerate(experiment.get("channels", [])):
        if channel not in dataset["channels"]:
            raise InputError(
                f"{key}.channels[{index}]: data set '{experiment['dataset']}' has no channel '{channel}' "
                f"(it has {dataset['channels']})"
            )
    fractions = experiment["fractions"]
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise InputError(f"{key}.fractions: train + val + test = {sum(fractions.values()):.3f}, must be 1")
    if experiment["protocol"] == "fewshot" and "shots" not in experiment:
        raise InputError(f"{key}.shots: the fewshot protocol needs the number of training images per class")
    overlap = set(experiment["targets"]) & set(experiment["open_set"])
    if overlap:
        raise InputError(f"{key}: {sorted(overlap)} listed both as targets and as open-set classes")
    novel = experiment.get("novel_classes")
    if isinstance(novel, list):
        for field in ("targets", "open_set"):
            overlap = set(novel) & set(experiment[field])
            if overlap:
                raise InputError(f"{key}.novel_classes: {sorted(overlap)} also listed in {field}")
    return dataset


def _check_pretraining(config: dict, key: str, experiment: dict) -> None:
    """``network.init``, ``pretrain:``, losses of type none and ``baseline:`` fit together: a pretrain block is what
    ``init: pretrain`` starts from, its extra data sets have the experiment's channels and patch size, a loss of type
    none has a start to keep, and the baseline experiment draws the same images with the same network."""
    init = experiment["network"].get("init")
    if init == "pretrain" and "pretrain" not in experiment:
        raise InputError(f"{key}.network.init: 'pretrain' names the experiment's pretrain: block, which it lacks")
    if "pretrain" in experiment and init != "pretrain":
        raise InputError(
            f"{key}.pretrain: no loss starts from it; set network.init: pretrain (an encoder is reused elsewhere by "
            "its file path in network.init)"
        )
    for index, name in enumerate(experiment["losses"]):
        if config["losses"][name]["type"] == "none" and init is None:
            raise InputError(
                f"{key}.losses[{index}]: loss '{name}' of type none keeps the network as network.init leaves it, "
                "and this experiment has no network.init"
            )
    datasets = config["datasets"]
    own = datasets[experiment["dataset"]]
    channels = experiment.get("channels") or own["channels"]
    for index, name in enumerate(experiment.get("pretrain", {}).get("extra", [])):
        where = f"{key}.pretrain.extra[{index}]"
        if name not in datasets:
            raise InputError(f"{where}: unknown data set '{name}' (known: {sorted(datasets)})")
        if name == experiment["dataset"]:
            raise InputError(f"{where}: '{name}' is the experiment's own data set, whose unlabelled images it reads")
        missing = [channel for channel in channels if channel not in datasets[name]["channels"]]
        if missing:
            raise InputError(f"{where}: data set '{name}' lacks the experiment's channel(s) {missing}")
        if datasets[name]["patch"]["size"] != own["patch"]["size"]:
            raise InputError(
                f"{where}: data set '{name}' has patch.size {datasets[name]['patch']['size']}, the experiment's "
                f"{own['patch']['size']}"
            )
    # only where it runs: a dormant twin must not stop a run that edits its baseline's trials or network
    if "baseline" in experiment and key.removeprefix("experiments.") in config["run"]:
        _check_baseline(config, key, experiment)


def _check_baseline(config: dict, key: str, experiment: dict) -> None:
    name = experiment["baseline"]
    experiments = config["experiments"]
    if name not in experiments:
        raise InputError(f"{key}.baseline: unknown experiment '{name}' (known: {sorted(experiments)})")
    other = experiments[name]
    if other is experiment:
        raise InputError(f"{key}.baseline: an experiment cannot be its own baseline")
    differing = [
        field for field in ("dataset", "trials", "channels", *SPLIT_KEYS) if experiment.get(field) != other.get(field)
    ]
    if differing:
        raise InputError(
            f"{key}.baseline: experiment '{name}' differs in {differing}, so its trials draw other images; a paired "
            "comparison needs the same data set, split and trials"
        )
    if {k: v for k, v in experiment["network"].items() if k != "init"} != other["network"]:
        raise InputError(
            f"{key}.baseline: experiment '{name}' has network {other['network']}; the comparison needs this "
            "experiment's network without init"
        )


def _check_classes(key: str, experiment: dict, classes: list[str], losses: dict) -> None:
    """Targets and open-set classes are classes of the data set, at least two known classes remain, and the batches
    suit a constellation loss of every positive pair (its check needs the number of classes)."""
    for field in ("targets", "open_set"):
        for index, class_name in enumerate(experiment[field]):
            if class_name not in classes:
                raise InputError(
                    f"{key}.{field}[{index}]: data set '{experiment['dataset']}' has no class '{class_name}' "
                    f"(it has {classes})"
                )
    known = set(classes) - set(experiment["open_set"])
    if len(known) < 2:
        raise InputError(f"{key}.open_set: fewer than two known classes would be left to train on")
    if "novel_classes" in experiment:
        _check_novel(key, experiment, sorted(known))
    for name in experiment["losses"]:
        loss = losses[name]
        if loss["type"] == "constellation" and loss["pairs"] == "all":
            train = loss_train(experiment["train"], loss)
            samples_per_class = train.get("samples_per_class", MIN_SAMPLES_PER_CLASS)
            own = "samples_per_class" in loss.get("train", {})
            where = (
                f"losses.{name}.train.samples_per_class" if own else f"{key}.train.samples_per_class (loss '{name}')"
            )
            check_negative_combinations(samples_per_class, loss["k"], len(known), where)


def _check_novel(key: str, experiment: dict, known: list[str]) -> None:
    """Novel classes are known classes (not targets: the base classifier must learn a target), at least two base
    classes are left to train on in every trial, and an episode's ways fit both the novel and the base classes (the
    episodic protocol's own episodes, on the base classes' test images, too)."""
    spec = experiment["novel_classes"]
    if isinstance(spec, list):
        for index, class_name in enumerate(spec):
            if class_name not in known:
                raise InputError(
                    f"{key}.novel_classes[{index}]: '{class_name}' is not a known class of data set "
                    f"'{experiment['dataset']}' ({known})"
                )
    per_trial = len(novel_classes_of(spec, known, 0))
    if len(known) - per_trial < 2:
        raise InputError(
            f"{key}.novel_classes: {per_trial} of the {len(known)} known classes held out leaves fewer than two to "
            "train on"
        )
    novel = {name for trial in range(experiment["trials"]) for name in novel_classes_of(spec, known, trial)}
    overlap = novel & set(experiment["targets"])
    if overlap:
        raise InputError(
            f"{key}.novel_classes: target(s) {sorted(overlap)} would be novel in some trial; the base classifier "
            "must learn a target"
        )
    base = len(known) - per_trial
    if experiment["protocol"] == "episodic" and experiment["episodes"]["ways"] > base:
        raise InputError(
            f"{key}.episodes.ways: {experiment['episodes']['ways']}-way episodes on the test side, but with "
            f"novel_classes a trial keeps {base} base classes; set episodes.ways to at most {base}"
        )
    ways = experiment["novel_episodes"].get("ways", per_trial)
    if ways > per_trial or ways > base:
        raise InputError(
            f"{key}.novel_episodes.ways: {ways}-way episodes need {ways} novel and {ways} base classes; a trial has "
            f"{per_trial} novel and {len(known) - per_trial} base classes"
        )


def _check_novel_sizes(key: str, experiment: dict, classes: list[str], sizes: dict) -> None:
    """Every class novel in some trial holds the support and query images of the largest K-shot episode."""
    if "novel_classes" not in experiment:
        return
    known = sorted(set(classes) - set(experiment["open_set"]))
    episodes = experiment["novel_episodes"]
    need = max(episodes["shots"]) + episodes["queries"]
    for trial in range(experiment["trials"]):
        for class_name in novel_classes_of(experiment["novel_classes"], known, trial):
            if sizes.get(class_name, 0) < need:
                raise InputError(
                    f"{key}.novel_classes: class '{class_name}' (novel in trial {trial}) has "
                    f"{sizes.get(class_name, 0)} images, fewer than max(novel_episodes.shots) + "
                    f"novel_episodes.queries = {max(episodes['shots'])} + {episodes['queries']}"
                )


def novel_classes_of(spec, known: list[str], trial: int) -> list[str]:
    """The novel classes of ``trial``: the list ``spec`` itself, or for ``{rotate: n}`` the n classes at positions
    ``t n, ..., t n + n - 1`` (modulo their number) of the sorted ``known`` classes (those not open set)."""
    if spec is None:
        return []
    if isinstance(spec, list):
        return sorted(spec)
    known = sorted(known)
    count = spec["rotate"]
    if count >= len(known):
        raise InputError(f"novel_classes.rotate: {count} of {len(known)} known classes leaves none to train on")
    return sorted(known[(trial * count + offset) % len(known)] for offset in range(count))


def pretrain_scope(experiment: dict, trial: int) -> str:
    """The pretraining a trial's losses start from (``network.init: pretrain``): ``all``, one per experiment, where
    every trial tests the same images and holds out the same novel classes (the fewshot and episodic protocols, an
    official split); ``t<trial>`` where each trial splits anew (the full protocol) or rotates its novel classes, so
    that a trial's pretraining never sees what that trial tests or holds out."""
    fixed = experiment["official_split"] or experiment["protocol"] != "full"
    rotating = isinstance(experiment.get("novel_classes"), dict)
    return "all" if fixed and not rotating else f"t{trial}"


def pretrain_trials(experiment: dict, scope: str) -> list[int]:
    """The trials whose splits a pretraining of ``scope`` reads (it sees only images none of them tests)."""
    return list(range(experiment["trials"])) if scope == "all" else [int(scope.removeprefix("t"))]


def loss_train(train: dict, loss: dict) -> dict:
    """The ``train:`` block a loss trains with: the experiment's, with the loss's own ``train:`` keys merged in key by
    key (nested blocks such as ``augment`` too)."""
    return merged(train, loss.get("train", {}))


def merged(block: dict, override: dict) -> dict:
    """A copy of ``block`` with ``override`` merged in, nested dicts key by key."""
    out = copy.deepcopy(block)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_negative_combinations(samples_per_class: int, k: int | str, num_classes: int, where: str) -> None:
    """The constellation loss's tuples of every positive pair (``pairs: all``) stay within Medela & Picon's eq. 5:
    spc^K < 100, spc the images per class in a batch, K = min(k, classes - 1) the negatives per pair."""
    negatives = num_classes - 1 if k == "all" else min(k, num_classes - 1)
    if samples_per_class**negatives >= NEGATIVE_COMBINATIONS_LIMIT:
        raise InputError(
            f"{where}: {samples_per_class} images per class with a constellation loss of pairs: all and K = "
            f"{negatives} negatives gives spc^K = {samples_per_class**negatives} negative combinations per positive "
            f"pair; Medela & Picon keep spc^K < {NEGATIVE_COMBINATIONS_LIMIT} (their eq. 5): lower "
            "train.samples_per_class or k, or use pairs: per_anchor"
        )


# ------------------------------------------------------------------------------------------------- the predict: block
# Like check_config, these read only the filled config: the workflow checks a predict: block and completes a dump's
# source: block before any network code is loaded, and `cytodml predict` does the same with the same functions.

#: keys of a data set's ``source:`` block that describe how its files are laid out, inherited by a dump of that kind
LAYOUT_KEYS = ("channel_tokens", "group_pattern", "tile_size", "root", "class_names")
#: classifiers whose fitted state takes new classes without refitting (their ``add_classes``)
GALLERY_CLASSIFIERS = ("centroid", "knn")


def dump_source(dataset_source: dict, dump: dict) -> dict:
    """The ``source:`` block of a new dump: its own keys, the rest of its layout from the model's data set.

    ``dump`` holds at least ``path``; its ``kind`` defaults to the data set's, and a dump of the data set's kind
    inherits the layout keys (:data:`LAYOUT_KEYS`: channel tokens, tile size, ...) it does not set, since a new sample
    from the same instrument is exported the same way.
    """
    if not dump.get("path"):
        raise InputError("dump: the path of the raw dump is missing")
    kind = dump.get("kind", dataset_source["kind"])
    source = {"kind": kind}
    if kind == dataset_source["kind"]:
        source |= {key: dataset_source[key] for key in LAYOUT_KEYS if key in dataset_source}
    return source | dict(dump)


def check_predict_config(config: dict, list_classes=None) -> None:
    """Raise :class:`InputError` naming the key of the first broken cross-reference of a filled config's ``predict:``
    block (:func:`validate_config`).

    The model must name an experiment, one of its trials and one of its losses and classifiers (both, or neither for
    the experiment's recommended model); a gallery needs a centroid or kNN classifier, named; a calibrated alarm needs
    the evaluation's threshold and targets; targets must be classes of the data set (or of the gallery), where
    ``list_classes(source)`` can tell them.
    """
    experiment = _check_predict_model(config)
    predict = predict_settings(config)
    _check_calibrated_alarm(config, experiment, predict)
    if list_classes is None or "targets" not in config["predict"]:
        return
    known = _predict_classes(config, experiment, predict, list_classes)
    if known is None:
        return
    for index, target in enumerate(predict["targets"]):
        if target not in known:
            raise InputError(
                f"predict.targets[{index}]: '{target}' is not a class the model or gallery knows ({sorted(known)})"
            )


def _check_predict_model(config: dict) -> dict:
    """The model names an experiment and one of its losses, trials and classifiers (loss and classifier both, or
    neither: the experiment's recommended model), and a gallery one that takes new classes; returns the experiment
    block."""
    predict = config["predict"]
    model, experiments = predict["model"], config["experiments"]
    if model["experiment"] not in experiments:
        raise InputError(
            f"predict.model.experiment: unknown experiment '{model['experiment']}' ({sorted(experiments)})"
        )
    experiment = experiments[model["experiment"]]
    for named, absent in (("loss", "classifier"), ("classifier", "loss")):
        if named in model and absent not in model:
            raise InputError(
                f"predict.model.{absent}: missing; with predict.model.{named} given, name the {absent} too, or "
                "neither of them for the experiment's recommended model"
            )
    if model["trial"] >= experiment["trials"]:
        raise InputError(
            f"predict.model.trial: {model['trial']}, but the experiment has {experiment['trials']} trial(s)"
        )
    if "loss" not in model:
        if predict.get("gallery"):
            raise InputError(
                f"predict.gallery: extends {' or '.join(GALLERY_CLASSIFIERS)}, so name predict.model.loss and "
                "predict.model.classifier (the recommended model may use another classifier)"
            )
        return experiment
    if model["loss"] not in experiment["losses"]:
        raise InputError(f"predict.model.loss: '{model['loss']}' is not among the experiment's {experiment['losses']}")
    if model["classifier"] not in experiment["classifiers"]:
        raise InputError(
            f"predict.model.classifier: '{model['classifier']}' is not among the experiment's "
            f"{sorted(experiment['classifiers'])}"
        )
    if predict.get("gallery") and model["classifier"] not in GALLERY_CLASSIFIERS:
        raise InputError(f"predict.gallery: extends {' or '.join(GALLERY_CLASSIFIERS)}, not '{model['classifier']}'")
    return experiment


def _check_calibrated_alarm(config: dict, experiment: dict, predict: dict) -> None:
    """A ``false_alarm_rate`` rule rests on the validation false positives the evaluation counted, so only at the
    evaluation's own threshold and targets (``predict``: :func:`predict_settings`). With a gallery, a target the
    evaluation did not have may be a gallery class, for which the prediction falls back to the count rule and says
    so (:func:`cytodml.predict.predict_sample`)."""
    model, evaluated = predict["model"], sorted(experiment["targets"])
    if predict.get("gallery") and set(predict["targets"]) - set(evaluated):
        return
    if "false_alarm_rate" in predict["alarm"] and (
        "threshold" in model or not evaluated or sorted(predict["targets"]) != evaluated
    ):
        where = "predict.alarm" if "alarm" in config["predict"] else f"experiments.{model['experiment']}.alarm"
        raise InputError(
            f"{where}: a false_alarm_rate rule rests on the evaluation's false positives at its own threshold and "
            "targets; drop predict.model.threshold and predict.targets, or give predict.alarm: {min_targets: k}"
        )


def _predict_classes(config: dict, experiment: dict, predict: dict, list_classes) -> set[str] | None:
    """The classes the model learned (the data set's, less the open set) and those the gallery adds; None where
    ``list_classes`` cannot tell before ingest."""
    dataset = config["datasets"][experiment["dataset"]]
    classes = list_classes(resolve_source(experiment["dataset"], dataset))
    if classes is None:
        return None
    known = set(classes) - set(experiment["open_set"])
    if predict.get("gallery"):
        gallery = list_classes(dump_source(dataset["source"], predict["gallery"]))
        if gallery is None:
            return None
        known |= set(gallery)
    return known
