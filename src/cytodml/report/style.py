"""One look for every figure: Okabe-Ito colours, small type, no top or right spines, PNG and PDF by file suffix.

The Okabe & Ito (2008) palette stays distinguishable under the common colour-vision deficiencies; past its eight
colours, series are told apart by marker as well (:func:`markers`). Figures are built on matplotlib's Agg canvas, so
no display is needed and the pyplot state machine is never touched.
"""

import functools
from collections.abc import Sequence

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cytodml.data.qc import FIGURE_FORMATS, figure_paths
from cytodml.io import atomic_path

DPI = 150
# Okabe & Ito, "Color universal design" (2008): black first in the original; it goes last here so that a lone series
# is blue and "unknown" can take grey.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
UNKNOWN_COLOR = "#999999"
KNOWN_COLOR, NOVEL_COLOR = OKABE_ITO[0], OKABE_ITO[5]
SEQUENTIAL = "cividis"  # perceptually uniform and readable with red-green deficiency
HEAT = "inferno"  # similarity maps over grey images
RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "image.cmap": SEQUENTIAL,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,  # TrueType in the PDF, so a journal's editor can change the text
}


def styled(draw):
    """Run a figure function inside the style's rc context (figure creation and saving both read it)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path) -> Figure:
    """Write ``figure`` to each of ``path`` (see :func:`figure_paths`) atomically, in the style; return it."""
    with mpl.rc_context(RC):
        for p in figure_paths(path):
            with atomic_path(p) as tmp:
                figure.savefig(tmp, format=FIGURE_FORMATS[p.suffix.lower()])
    return figure


def colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per name, in the given order, cycling through Okabe-Ito (pair with :func:`markers` past eight)."""
    return {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}


def markers(names: Sequence[str]) -> dict[str, str]:
    """A marker per name: the same for the first eight, then a new one for each further cycle of the colours."""
    return {name: MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)] for i, name in enumerate(names)}
