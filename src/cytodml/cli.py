"""The ``cytodml`` command: detect targets in a new sample, and add example images of a new class to a classifier.

The patch settings and channels of a dump come from the study config that trained the model (``--config``,
``--experiment``): the data set's ``patch:`` block has five settings (mode, size, downscale, background, threshold)
that must all match training, and the file that trained the model holds them; the model bundle's image size and
channel names are then checked against them. Bad input ends the command with exit status 2 and a one-line message.
"""

import argparse
import sys
from pathlib import Path

import torch

from cytodml.config import experiment_settings, load_config
from cytodml.errors import InputError
from cytodml.predict import (
    add_gallery,
    dump_source,
    load_detector,
    predict_sample,
    read_evaluation,
    save_detector,
    write_prediction,
)

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
    dataset, experiment = _study(args.config, args.experiment)
    detector = load_detector(args.model, args.classifiers, args.classifier)
    targets = args.targets if args.targets is not None else experiment["targets"]
    threshold, validation = read_evaluation(
        args.metrics or Path(args.classifiers).parent / "metrics.csv",
        args.classifier,
        threshold=args.threshold,
        targets=targets,
        evaluated_targets=experiment.get("targets", []),
    )
    if args.min_targets is not None:
        alarm = {"min_targets": args.min_targets}
    elif args.false_alarm_rate is not None:
        alarm = {"false_alarm_rate": args.false_alarm_rate}
    else:
        alarm = experiment.get("alarm")
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
    dataset, _ = _study(args.config, args.experiment)
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


def _study(config_path, experiment_name: str) -> tuple[dict, dict]:
    """The data set and experiment blocks of ``experiment_name`` in the study config."""
    try:
        config = load_config(config_path)
    except FileNotFoundError:
        raise InputError(f"--config: {config_path} not found") from None
    experiments = config.get("experiments") or {}
    if experiment_name not in experiments:
        raise InputError(f"--experiment: {config_path} has no experiment '{experiment_name}' ({sorted(experiments)})")
    experiment = experiment_settings(experiments[experiment_name])
    datasets = config.get("datasets") or {}
    if experiment["dataset"] not in datasets:
        raise InputError(
            f"{config_path}: experiments.{experiment_name}.dataset '{experiment['dataset']}' is not defined"
        )
    return datasets[experiment["dataset"]], experiment


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
