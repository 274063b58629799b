"""The ``cytodml`` command: detect targets in a new sample, and add example images of a new class to a classifier.

The patch settings and channels of a dump come from the study config that trained the model (``--config``,
``--experiment``): the data set's ``patch:`` block (mode, size, downscale, background, noise_sigmas,
foreground_fraction) must match training, and the file that trained the model holds them; the model bundle's image size and
channel names are then checked against them. ``cytodml predict`` without ``--model``, ``--classifiers`` and
``--classifier`` applies the experiment's recommended model, as the workflow does for a config that names no loss and
classifier: the loss and classifier of ``<results>/<experiment>/tables/recommended.csv``, at ``--trial``. Bad input
ends the command with exit status 2 and a one-line message.
"""

import argparse
import sys
from pathlib import Path

import torch

from cytodml.config import dump_source, load_config, predict_settings, validate_config
from cytodml.errors import InputError
from cytodml.evaluate.detection import alarm_rule
from cytodml.evaluate.detector import load_detector, save_detector
from cytodml.evaluate.latent_map import load_map
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.evaluate.recommend import read_recommended
from cytodml.predict import add_gallery, predict_sample, read_labels
from cytodml.report.sample import write_prediction

SOURCE_KINDS = ("folder", "synthetic", "montage", "medmnist", "manifest")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.command(args)
    except InputError as error:
        print(f"cytodml {args.name}: error: {error}", file=sys.stderr)
        return 2
    return 0


def predict(args) -> None:
    config, dataset, experiment = _study(args.config, args.experiment)
    model, classifiers, classifier, recommended = _model_files(args, experiment)
    detector = load_detector(model, classifiers, classifier)
    map_path = args.map or _map_beside(model)
    # what the command line sets, as a config's predict: block would; the rest comes from the experiment
    asked = {"model": {"experiment": args.experiment}}
    if args.targets is not None:
        asked["targets"] = args.targets
    if args.min_targets is not None:
        asked["alarm"] = {"min_targets": args.min_targets}
    elif args.false_alarm_rate is not None:
        asked["alarm"] = {"false_alarm_rate": args.false_alarm_rate}
    settings = predict_settings(config | {"predict": asked})
    targets, alarm = settings["targets"], alarm_rule(settings["alarm"], "--min-targets / --false-alarm-rate")
    threshold, validation = read_evaluation(
        args.metrics or Path(classifiers).parent / "metrics.csv",
        classifier,
        threshold=args.threshold,
        targets=targets,
        evaluated_targets=experiment["targets"],
    )
    result = predict_sample(
        dump_source(dataset["source"], _dump(args.dump, args.kind)),
        detector,
        channels=dataset["channels"],
        patch=dataset["patch"],
        threshold=threshold,
        targets=targets,
        alarm=alarm,
        validation=validation,
        name=args.sample,
        recommended=recommended,
        latent_map=load_map(map_path) if map_path else None,
        workers=args.threads or 1,
    )
    write_prediction(result, args.out, model=_model_name(model))
    summary = result["summary"]
    alarm = "ALARM" if summary["alarm"] else "no alarm"
    chosen = f" (recommended model: loss {recommended['loss']}, classifier {classifier})" if recommended else ""
    print(
        f"{summary['sample']}: {alarm}, {summary['target_count']} target(s) among {summary['objects']} objects"
        f"{chosen}; {Path(args.out) / 'summary.md'}"
    )
    if summary["alarm_note"]:
        print(summary["alarm_note"])
    if map_path:
        print(f"explorer page: {Path(args.out) / 'explorer.html'} (the objects on the latent map {map_path})")
    else:
        print("no latent map beside the model (results/<experiment>/maps/): no explorer page; give --map for one")


def _model_files(args, experiment: dict) -> tuple[str, str, str, dict | None]:
    """(model file, classifiers file, classifier, recommended row or None): those given, or, with none of the three
    given, the experiment's recommended model at ``--trial`` in the workflow's layout under ``--results``."""
    given = {"--model": args.model, "--classifiers": args.classifiers, "--classifier": args.classifier}
    missing = [option for option, value in given.items() if value is None]
    if not missing:
        return args.model, args.classifiers, args.classifier, None
    if len(missing) < len(given):
        raise InputError(
            f"{', '.join(missing)}: missing; give --model, --classifiers and --classifier together, or none of them "
            "for the experiment's recommended model"
        )
    if args.trial >= experiment["trials"]:
        raise InputError(f"--trial: {args.trial}, but the experiment has {experiment['trials']} trial(s)")
    where = Path(args.results) / args.experiment
    recommended = read_recommended(where / "tables" / "recommended.csv", args.experiment, losses=experiment["losses"])
    run = f"{recommended['loss']}/t{args.trial}"
    model, classifiers = where / "models" / f"{run}.pt", where / "eval" / run / "classifiers.joblib"
    return str(model), str(classifiers), recommended["classifier"], recommended


def _map_beside(model) -> str | None:
    """The latent map the workflow made for a model in its layout (results/<experiment>/maps/<loss>/t<n>.npz for
    results/<experiment>/models/<loss>/t<n>.pt), where it exists."""
    model = Path(model)
    candidate = model.parents[2] / "maps" / model.parent.name / f"{model.stem}.npz" if len(model.parents) > 2 else None
    return str(candidate) if candidate is not None and candidate.is_file() else None


def _model_name(model) -> tuple[str, int]:
    """(loss, trial) of a model file in the workflow's layout (models/<loss>/t<n>.pt), which the explorer page names;
    the file's folder and trial 0 for a file elsewhere."""
    model = Path(model)
    number = model.stem.removeprefix("t")
    return model.parent.name, int(number) if number.isdigit() else 0


def gallery(args) -> None:
    _, dataset, _ = _study(args.config, args.experiment)
    detector = load_detector(args.model, args.classifiers, args.classifier)
    extended = add_gallery(
        detector,
        dump_source(dataset["source"], _dump(args.examples, args.kind)),
        channels=dataset["channels"],
        patch=dataset["patch"],
        labels=read_labels(args.labels) if args.labels else None,
        workers=args.threads or 1,
    )
    save_detector(extended, args.out)
    added = [name for name in extended.class_names if name not in detector.class_names]
    print(
        f"{args.out}: classifier '{args.classifier}' with classes {', '.join(extended.class_names)} "
        f"(new: {', '.join(added) or 'none'})"
    )


def _study(config_path, experiment_name: str) -> tuple[dict, dict, dict]:
    """The study config, validated and its defaults filled in as the workflow does, and the data set and experiment
    blocks of ``experiment_name``."""
    try:
        config = load_config(config_path)
    except FileNotFoundError:
        raise InputError(f"--config: {config_path} not found") from None
    try:
        config = validate_config(config)
    except InputError as error:
        raise InputError(f"--config {config_path}: {error}") from None
    experiments = config["experiments"]
    if experiment_name not in experiments:
        raise InputError(f"--experiment: {config_path} has no experiment '{experiment_name}' ({sorted(experiments)})")
    experiment = experiments[experiment_name]
    return config, config["datasets"][experiment["dataset"]], experiment


def _dump(path: str, kind: str | None) -> dict:
    return {"path": path} if kind is None else {"path": path, "kind": kind}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cytodml", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="name", required=True)

    def common(command, recommended: bool = False):
        """The options of both commands; with ``recommended``, the model's may be left out for the recommended one."""
        default = " (none of the three: the recommended model's)" if recommended else ""
        command.add_argument("--config", default="config.yaml", help="the study config that trained the model")
        command.add_argument("--experiment", required=True, help="the experiment of the config the model belongs to")
        command.add_argument(
            "--model",
            required=not recommended,
            help=f"a trained model, results/<experiment>/models/<loss>/t<n>.pt{default}",
        )
        command.add_argument(
            "--classifiers",
            required=not recommended,
            help=f"results/<experiment>/eval/<loss>/t<n>/classifiers.joblib, or a file `cytodml gallery` wrote{default}",
        )
        command.add_argument(
            "--classifier", required=not recommended, help=f"which classifier: centroid, gmm, svm or knn{default}"
        )
        command.add_argument("--kind", choices=SOURCE_KINDS, help="the dump's source kind (default: the data set's)")
        command.add_argument("--threads", type=int, help="CPU threads for patching and the network")

    run = commands.add_parser("predict", help="detect targets in a new, unlabelled sample dump")
    common(run, recommended=True)
    run.add_argument(
        "--results",
        default="results",
        help="the workflow's results folder, where the recommended model is looked up (default: results)",
    )
    run.add_argument("--trial", type=int, default=0, help="the recommended model's trial (default: 0)")
    run.add_argument("--dump", required=True, help="the sample's raw dump (folder, montage folder, .npz or table)")
    run.add_argument("--out", required=True, help="output folder: objects.parquet/.csv, summary.md, targets.png")
    run.add_argument("--threshold", type=float, help="confidence to call a class (default: the evaluation's)")
    run.add_argument("--metrics", help="the evaluation's metrics.csv (default: the one beside --classifiers)")
    run.add_argument("--targets", nargs="+", help="classes that raise the alarm (default: the experiment's targets)")
    alarm = run.add_mutually_exclusive_group()
    alarm.add_argument("--min-targets", type=int, help="targets called for an alarm (default: the experiment's rule)")
    alarm.add_argument(
        "--false-alarm-rate",
        type=float,
        help="alarm at the called-target count a blank sample of this size reaches at most at this rate",
    )
    run.add_argument("--sample", help="the sample's name in the summary (default: the dump's folder name)")
    run.add_argument(
        "--map",
        help="the model's latent map, for the explorer page (default: results/<experiment>/maps/<loss>/t<n>.npz "
        "beside the model's results/<experiment>/models/<loss>/t<n>.pt, where it exists)",
    )
    run.set_defaults(command=predict)

    add = commands.add_parser("gallery", help="add labelled examples of new classes to a centroid or kNN classifier")
    common(add)
    add.add_argument("--examples", required=True, help="labelled example images, one folder per class")
    add.add_argument(
        "--labels",
        help="a CSV of object_id,label (an explorer page's saved selection): the examples are those objects of "
        "--examples, with these labels",
    )
    add.add_argument("--out", required=True, help="the extended classifier, for --classifiers of `cytodml predict`")
    add.set_defaults(command=gallery)
    return parser


if __name__ == "__main__":
    sys.exit(main())
