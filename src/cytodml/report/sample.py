"""A screened sample's report: its objects table and exports, the one-page summary, the montage of its called
targets and the explorer page of its objects on the model's latent map.

What a person reads after :func:`cytodml.predict.predict_sample` has classified a sample: the files of
``results/predict/<sample>/``. Drawing and writing only; the calls, counts and alarm come made in the result, so the
report shows what the prediction decided and decides nothing itself.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cytodml.data.qc import display_image
from cytodml.evaluate.detection import BOUND_CONFIDENCE
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.evaluate.objects import classifier_evidence
from cytodml.io import atomic_path, write_csv, write_parquet, write_text
from cytodml.report.explorer import ClassifierView, ModelView, explorer_page, thumbnail
from cytodml.report.exports import write_fcs, write_h5ad

__all__ = ["sample_explorer", "summary_markdown", "target_montage", "write_prediction"]

MONTAGE_LIMIT = 64
"""The montage shows the most confident called targets up to this many; the summary gives the full count."""
MONTAGE_COLUMNS = 8


def write_prediction(result: dict, out_dir, model: tuple[str, int] = ("model", 0)) -> None:
    """objects.parquet, objects.csv, objects.h5ad, objects.fcs, summary.md and targets.png of
    :func:`~cytodml.predict.predict_sample`'s result, each atomically, and explorer.html where the objects were placed
    on the latent map of the ``model`` (loss, trial)."""
    out_dir = Path(out_dir)
    objects, summary, latent_map = result["objects"], result["summary"], result["map"]
    write_parquet(objects, out_dir / "objects.parquet")
    write_csv(objects, out_dir / "objects.csv")
    about = {"sample": summary["sample"], "classifier": summary["classifier"], "threshold": summary["threshold"]}
    method = latent_map.method if latent_map is not None else None
    write_h5ad(objects, result["embedding"], out_dir / "objects.h5ad", map_method=method, uns=about)
    write_fcs(objects, out_dir / "objects.fcs", text={f"cytodml_{key}": value for key, value in about.items()})
    target_montage(result["target_images"], objects.loc[result["target_rows"]], out_dir / "targets.png")
    write_text(summary_markdown(summary, montage="targets.png"), out_dir / "summary.md")
    if latent_map is not None:
        sample_explorer(result, out_dir / "explorer.html", model)


def sample_explorer(result: dict, path, model: tuple[str, int]) -> dict:
    """The explorer page of a screened sample: its objects on the model's latent map, the training images the map
    was fitted on beneath them, each object's call, confidence and evidence (:func:`explorer_page`)."""
    objects, summary, latent_map = result["objects"], result["summary"], result["map"]
    kind, scores = classifier_evidence(objects, "")
    classifier = ClassifierView(
        name=summary["classifier"],
        call=objects["predicted"].to_numpy(),
        confidence=objects["confidence"].to_numpy(),
        scores=scores,
        score_kind=kind,
        threshold=summary["threshold"],
    )
    view = ModelView(
        loss=model[0],
        trial=model[1],
        x=objects["map_x"].to_numpy(),
        y=objects["map_y"].to_numpy(),
        axis=latent_map.method,
        classifiers=[classifier],
        reference=latent_map.reference_points(),
    )
    shown = pd.DataFrame(
        {
            "object_id": objects["object_id"],
            "class_name": None,
            "subset": "sample",
            "thumbnail": [thumbnail(image) for image in result["images"]],
        }
    )
    return explorer_page(shown, [view], path, title=f"sample {summary['sample']}", targets=summary["targets"])


def target_montage(images: np.ndarray, objects: pd.DataFrame, path, limit: int = MONTAGE_LIMIT) -> None:
    """A grid of the called targets' patches, each captioned with its class and confidence, in the given order.

    ``objects`` holds the rows of ``images`` (columns ``object_id``, ``predicted``, ``confidence``); the first
    ``limit`` are drawn. A sample without targets gets a figure saying so, so the file always exists.
    """
    shown = min(len(images), limit)
    columns = min(MONTAGE_COLUMNS, max(shown, 1))
    rows = max(math.ceil(shown / columns), 1)
    aspect = 1 if images.shape[1] == 3 else images.shape[1]
    figure = Figure(figsize=(1.6 * columns * aspect, 1.9 * rows + 0.5))
    FigureCanvasAgg(figure)
    if not shown:
        figure.text(0.5, 0.5, "no target called in this sample", ha="center", va="center", fontsize=12)
    else:
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, image, row in zip(axes, images[:shown], objects.iloc[:shown].itertuples()):
            ax.imshow(display_image(image), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{row.predicted}\n{row.confidence:.3f}", fontsize=8)
            ax.text(0.5, -0.04, row.object_id, transform=ax.transAxes, ha="center", va="top", fontsize=6)
        more = f" (the {shown} most confident of {len(images)})" if len(images) > shown else ""
        figure.suptitle(f"called targets, to confirm{more}", fontsize=10)
        figure.subplots_adjust(left=0.01, right=0.99, bottom=0.04, top=1 - 0.5 / figure.get_figheight(), hspace=0.5)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def summary_markdown(summary: dict, montage: str | None = None) -> str:
    """A one-page Markdown report of a sample: the alarm (and ``alarm_note``, where the rule applied is not the one
    asked), the counts per class, the settings, the montage link."""
    alarm = "**ALARM**" if summary["alarm"] else "no alarm"
    found = ", ".join(f"{name} {count}" for name, count in summary["target_counts"].items())
    lines = [
        f"# Sample {summary['sample']}",
        "",
        f"{alarm}: {summary['target_count']} target(s) called ({found}) among {summary['objects']} objects; the rule "
        f"raises the alarm at {summary['alarm_at']} or more objects called a target class "
        f"({', '.join(summary['targets'])}) with confidence >= {summary['threshold']:g}.{_calibration(summary)}"
        + (f" {summary['alarm_note']}" if summary.get("alarm_note") else ""),
        "",
        "| class | objects |",
        "|---|---:|",
        *(
            f"| {name}{' (target)' if name in summary['targets'] else ''} | {count} |"
            for name, count in summary["counts"].items()
        ),
        f"| total | {summary['objects']} |",
        "",
        f"Objects below the threshold are `{UNKNOWN_NAME}`: none of the known classes, or not sure which.",
        "",
        "Quality flags: "
        + ", ".join(f"{flag.removeprefix('qc_')} {count}" for flag, count in summary["qc"].items())
        + f"; {summary['dropped']} object(s) dropped before classification (filler, duplicate or background).",
        "",
        f"Classifier `{summary['classifier']}`: {summary['origin']}.",
    ]
    if summary.get("recommended"):
        lines += ["", _recommended(summary["recommended"])]
    if montage:
        lines += ["", f"![called targets, to confirm]({montage})"]
    return "\n".join(lines) + "\n"


def _recommended(recommended: dict) -> str:
    """The sentence that says the model applied is the experiment's recommended one, and by what score."""
    scored = "MCC of the targets against the rest" if recommended["view"] == "binary" else "balanced accuracy"
    score = f"{recommended['validation_mean']:.3f}"
    if not math.isnan(recommended["validation_std"]):
        score += f" +- {recommended['validation_std']:.3f}"
    return (
        f"This is the recommended model of experiment {recommended['experiment']}, applied since the config names no "
        f"loss and classifier: loss `{recommended['loss']}` with classifier `{recommended['classifier']}`, the best "
        f"mean validation {scored} at the arg-max ({score} over {recommended['trials']} trial(s); "
        f"results/{recommended['experiment']}/tables/recommended.md)."
    )


def _calibration(summary: dict) -> str:
    """For a calibrated rule (``false_alarm_rate``), the sentence that says where its count comes from; else ""."""
    rule = summary["alarm_rule"]
    if "false_alarm_rate" not in rule:
        return ""
    false_positives, negatives = summary["validation"]
    return (
        f" This is how many a blank sample of {summary['objects']} objects reaches with probability at most "
        f"{rule['false_alarm_rate']:g}, from the classifier's {false_positives} false positive(s) among "
        f"{negatives} non-target validation images (upper {BOUND_CONFIDENCE:.0%} bound on the rate); fewer called "
        "targets cannot be told from false positives."
    )
