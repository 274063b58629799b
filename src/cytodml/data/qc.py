"""Patches as a person looks at them: one patch as an image, and the patch stage's per-class QC montage.

The lowest layer that draws, so the data stage needs nothing from the learning or report code to show its patches;
every figure of patches (:mod:`cytodml.report`) shows them through :func:`display_image` and writes the formats of
:func:`figure_paths`.
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cytodml.errors import InputError
from cytodml.io import atomic_path

FIGURE_FORMATS = {".png": "png", ".pdf": "pdf"}


def figure_paths(path) -> list[Path]:
    """``path`` (one path, or several: one per format) as a list, each checked for a known suffix."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    for p in paths:
        if p.suffix.lower() not in FIGURE_FORMATS:
            raise InputError(f"{p}: figure format must be one of {sorted(FIGURE_FORMATS)}")
    return paths


def display_image(patch: np.ndarray) -> np.ndarray:
    """A ``C x S x S`` patch as an image in [0, 1]: RGB for three channels, else the channels side by side.

    An 8-bit three-channel patch is a colour photograph (a stained smear) and is shown as recorded, since stretching
    each channel on its own shifts the hues a cytologist reads; other patches (fluorescence, brightfield, uint16
    channels of an imaging cytometer) are stretched per channel between their 1st and 99th percentiles.
    """
    if patch.dtype == np.uint8 and len(patch) == 3:
        return patch.transpose(1, 2, 0).astype(np.float32) / 255
    pixels = patch.astype(np.float32)
    low, high = np.percentile(pixels, [1, 99], axis=(1, 2), keepdims=True)
    stretched = np.clip((pixels - low) / np.maximum(high - low, 1e-6), 0, 1)
    if len(stretched) == 3:
        return stretched.transpose(1, 2, 0)
    return np.concatenate(list(stretched), axis=1)


def class_montage(images: np.ndarray, class_names: list[str], path, per_class: int = 8, seed: int = 0) -> None:
    """A grid of patches, one row per class (sorted), up to ``per_class`` drawn at random (``seed``) per row.

    ``images`` is ``N x C x S x S`` (a memory map is fine: only the drawn patches are read). Each patch is shown by
    :func:`display_image`: three channels as RGB, any other count as grey panels side by side.
    """
    (path,) = figure_paths(path)
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
                ax.imshow(display_image(np.asarray(images[drawn[column]])), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].text(-0.1, 0.5, label, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    figure.subplots_adjust(
        left=margin / figure.get_figwidth(), right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=FIGURE_FORMATS[path.suffix.lower()], dpi=100)
