"""The ``cytodml`` command: detect targets in a new sample, and add example images of a new class to a classifier.

The patch settings and channels of a dump come from the study config that trained the model (``--config``,
``--experiment``): the data set's ``patch:`` block (mode, size, downscale, background, noise_sigmas,
foreground_fraction) must match training, and the file that trained the model holds them; the model bundle's image size and
channel names are then checked against them. Bad input ends the command with exit status 2 and a one-line message.
"""

import argparse
import sys
from pathlib import Path

import torch

from cytodml.config import dump_source, load_config, predict_settings, validate_config
from cytodml.errors import InputError
from cytodml.evaluate.detection import alarm_rule
from cytodml.evaluate.detector import load_detector, save_detector
from cytodml.evaluate.operating_point import read_evaluation
from cytodml.predict import add_gallery, predict_sample
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
    detector = load_detector(args.model, args.classifiers, args.classifier)
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
        args.metrics or Path(args.classifiers).parent / "metrics.csv",
        args.classifier,
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
        workers=args.threads or 1,
    )
    write_prediction(result, args.out)
    summary = result["summary"]
    alarm = "ALARM" if summary["alarm"] else "no alarm"
    print(
        f"{summary['sample']}: {alarm}, {summary['target_count']} target(s) among {summary['objects']} objects; "
        f"{Path(args.out) / 'summary.md'}"
    )


def gallery(args) -> None:
    _, dataset, _ = _study(args.config, args.experiment)
    detector = load_detector(args.model, args.classifiers, args.classifier)
    extended = add_gallery(
        detector,
        dump_source(dataset["source"], _dump(args.examples, args.kind)),
        channels=dataset["channels"],
        patch=dataset["patch"],
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

    def common(command):
        command.add_argument("--config", default="config.yaml", help="the study config that trained the model")
        command.add_argument("--experiment", required=True, help="the experiment of the config the model belongs to")
        command.add_argument(
            "--model", required=True, help="a trained model, results/<experiment>/models/<loss>/t<n>.pt"
        )
        command.add_argument(
            "--classifiers",
            required=True,
            help="results/<experiment>/eval/<loss>/t<n>/classifiers.joblib, or a file `cytodml gallery` wrote",
        )
        command.add_argument("--classifier", required=True, help="which classifier: centroid, gmm, svm or knn")
        command.add_argument("--kind", choices=SOURCE_KINDS, help="the dump's source kind (default: the data set's)")
        command.add_argument("--threads", type=int, help="CPU threads for patching and the network")

    run = commands.add_parser("predict", help="detect targets in a new, unlabelled sample dump")
    common(run)
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
    run.set_defaults(command=predict)

    add = commands.add_parser("gallery", help="add labelled examples of new classes to a centroid or kNN classifier")
    common(add)
    add.add_argument("--examples", required=True, help="labelled example images, one folder per class")
    add.add_argument("--out", required=True, help="the extended classifier, for --classifiers of `cytodml predict`")
    add.set_defaults(command=gallery)
    return parser


if __name__ == "__main__":
    sys.exit(main())
