"""What the JSON schema cannot say about a study config: cross-references, and the defaults that depend on the protocol.

The schema (``schemas/config.schema.yaml``) checks types, ranges, required and unknown keys; :func:`check_config`
checks that names point at things that exist: an experiment's data set, losses, channels, target and open-set classes,
and the experiments that ``run:`` lists. Every error names the config key at fault.
"""

import yaml

from cytodml.errors import InputError

#: split fractions by protocol where the experiment gives none (48/12/40: Luo et al. 2021; 6/6/88: the blood-cell paper)
DEFAULT_FRACTIONS = {
    "full": {"train": 0.48, "val": 0.12, "test": 0.40},
    "fewshot": {"train": 0.48, "val": 0.12, "test": 0.40},
    "episodic": {"train": 0.06, "val": 0.06, "test": 0.88},
}
#: augmentation is the rare-bioparticle protocol; the constellation paper trains few-shot without it
DEFAULT_AUGMENT_COUNT = {"full": 10000, "fewshot": 0, "episodic": 0}
#: results/<name>/ is shared by data sets and experiments, and results/predict/ belongs to the predict rule
RESERVED_NAMES = {"predict", "benchmarks"}


def synthetic_dump(dataset: str) -> str:
    """Where rule ``synthesize`` writes a synthetic data set's raw dump."""
    return f"resources/{dataset}"


def resolve_source(dataset: str, spec: dict) -> dict:
    """The data set's ``source:`` block with the path of a synthetic dump filled in."""
    source = dict(spec["source"])
    if source["kind"] == "synthetic":
        source["path"] = synthetic_dump(dataset)
    return source


def experiment_settings(experiment: dict) -> dict:
    """An experiment block with the protocol-dependent defaults filled in (the schema's defaults are protocol-free)."""
    protocol = experiment["protocol"]
    settings = dict(experiment)
    settings.setdefault("fractions", DEFAULT_FRACTIONS[protocol])
    settings.setdefault("trials", 3)
    augment = dict(experiment.get("augment", {}))
    augment.setdefault("count", DEFAULT_AUGMENT_COUNT[protocol])
    settings["augment"] = augment
    settings.setdefault("classifiers", {"centroid": {}, "knn": {}})
    settings.setdefault("threshold", 0.98)
    settings.setdefault("targets", [])
    settings.setdefault("open_set", [])
    return settings


def channel_indices(dataset_channels: list[str], experiment_channels: list[str] | None) -> list[int]:
    """Positions of an experiment's channels on the patches' channel axis (all channels when it names none)."""
    if not experiment_channels:
        return list(range(len(dataset_channels)))
    return [dataset_channels.index(name) for name in experiment_channels]


def load_config(path) -> dict:
    """Read a YAML config (a test or a preset) without Snakemake."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def check_config(config: dict, list_classes=None) -> None:
    """Raise :class:`InputError` naming the key of the first broken cross-reference.

    ``list_classes(source) -> list[str] | None`` tells a data set's classes cheaply (None: not knowable before ingest);
    class checks are skipped where it is not given or returns None.
    """
    datasets, losses, experiments = config["datasets"], config["losses"], config["experiments"]
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
    for name, experiment in experiments.items():
        key = f"experiments.{name}"
        if experiment["dataset"] not in datasets:
            raise InputError(f"{key}.dataset: unknown data set '{experiment['dataset']}' (known: {sorted(datasets)})")
        dataset = datasets[experiment["dataset"]]
        for index, loss in enumerate(experiment["losses"]):
            if loss not in losses:
                raise InputError(f"{key}.losses[{index}]: unknown loss '{loss}' (known: {sorted(losses)})")
        for index, channel in enumerate(experiment.get("channels", [])):
            if channel not in dataset["channels"]:
                raise InputError(
                    f"{key}.channels[{index}]: data set '{experiment['dataset']}' has no channel '{channel}' "
                    f"(it has {dataset['channels']})"
                )
        fractions = experiment.get("fractions")
        if fractions and abs(sum(fractions.values()) - 1) > 1e-6:
            raise InputError(f"{key}.fractions: train + val + test = {sum(fractions.values()):.3f}, must be 1")
        if experiment["protocol"] == "fewshot" and "shots" not in experiment:
            raise InputError(f"{key}.shots: the fewshot protocol needs the number of training images per class")
        overlap = set(experiment.get("targets", [])) & set(experiment.get("open_set", []))
        if overlap:
            raise InputError(f"{key}: {sorted(overlap)} listed both as targets and as open-set classes")
        classes = list_classes(resolve_source(experiment["dataset"], dataset)) if list_classes else None
        if classes is None:
            continue
        for field in ("targets", "open_set"):
            for index, class_name in enumerate(experiment.get(field, [])):
                if class_name not in classes:
                    raise InputError(
                        f"{key}.{field}[{index}]: data set '{experiment['dataset']}' has no class '{class_name}' "
                        f"(it has {classes})"
                    )
        if len(set(classes) - set(experiment.get("open_set", []))) < 2:
            raise InputError(f"{key}.open_set: fewer than two known classes would be left to train on")
