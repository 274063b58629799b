"""Figures of the study, drawn with matplotlib's Agg canvas (no display needed), saved as PNG or PDF by suffix."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cytodml.errors import InputError
from cytodml.io import atomic_path

FIGURE_FORMATS = {".png": "png", ".pdf": "pdf"}


def class_montage(images: np.ndarray, class_names: list[str], path, per_class: int = 8, seed: int = 0) -> None:
    """A grid of patches, one row per class (sorted), up to ``per_class`` drawn at random (``seed``) per row.

    ``images`` is ``N x C x S x S`` (a memory map is fine: only the drawn patches are read). Each patch is contrast
    stretched per channel to its 1st..99th percentile; three channels show as RGB, any other count as grey panels
    side by side.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise InputError(f"{path}: figure format must be one of {sorted(FIGURE_FORMATS)}")
    names = np.asarray(class_names, dtype=object)
    if len(names) != len(images):
        raise InputError(f"class_montage: {len(names)} class names for {len(images)} images")
    rng = np.random.default_rng(seed)
    classes = sorted(set(class_names))
    labels = [f"{class_name} ({np.count_nonzero(names == class_name)})" for class_name in classes]
    margin = 0.2 + 0.075 * max(map(len, labels))  # inches for the row labels, at 9 points
    cell = 1.2 * (1 if images.shape[1] == 3 else images.shape[1])
    figure = Figure(figsize=(margin + cell * per_class, 1.2 * len(classes)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(classes), per_class, squeeze=False)
    for row, (class_name, label) in enumerate(zip(classes, labels)):
        members = np.flatnonzero(names == class_name)
        drawn = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        for column, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if column < len(drawn):
                ax.imshow(_display(np.asarray(images[drawn[column]])), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].text(-0.1, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    figure.subplots_adjust(
        left=margin / figure.get_figwidth(), right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=FIGURE_FORMATS[path.suffix.lower()], dpi=100)


def _display(patch: np.ndarray) -> np.ndarray:
    """A ``C x S x S`` patch as an image in [0, 1]: RGB for three channels, else the channels side by side."""
    pixels = patch.astype(np.float32)
    low, high = np.percentile(pixels, [1, 99], axis=(1, 2), keepdims=True)
    stretched = np.clip((pixels - low) / np.maximum(high - low, 1e-6), 0, 1)
    if len(stretched) == 3:
        return stretched.transpose(1, 2, 0)
    return np.concatenate(list(stretched), axis=1)
