"""Split a data set's patches into train / val / test for one trial: stratified, group- and duplicate-aware.

What a trial is depends on the protocol (docs/architecture.md):

- ``full`` (rare bioparticles, HEp-2 mitosis): a new stratified split per trial.
- ``fewshot`` (constellation loss): one fixed split for all trials; trial t draws ``shots`` training images per class
  (subset ``train``) and at most ``shots`` validation images per class (``val``: model and classifier selection see
  no more labels per class than training, ../shared/DESIGN.md); the rest of both sides becomes ``pool``. ``shots`` is
  a count K (an integer >= 1) or a fraction f in (0, 1): then each side draws ``n_c = max(1, round(f * N_c))`` images
  of class c, ``N_c`` its images on that side (rounded half up; none where the side has none), e.g. ``shots: 0.1``
  for an experiment where only a tenth of the training images are labelled.
- ``episodic`` (Siamese blood cells): one fixed split, 6/6/88 by default, the same table for every trial.

Open-set classes never enter train or val: all their images get subset ``unknown`` (test side). Novel classes
(``novel_classes``, :func:`cytodml.config.novel_classes_of`) are split and drawn like any other, so the other classes'
subsets do not depend on which classes are novel; then all their images become subset ``novel``, the pool the
novel-class few-shot evaluation draws its support and query images from.
"""

import zlib

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cytodml.config import PROTOCOLS, fill, novel_classes_of
from cytodml.errors import InputError, require_columns

SUBSETS = ("train", "val", "test")
TEST = SUBSETS.index("test")
REQUIRED_COLUMNS = ("index", "class_name", "label", "content_hash")


def trial_seed(seed: int, dataset: str, trial: int | None = None) -> int:
    """The seed of every random choice made for ``(seed, dataset, trial)``, as a non-negative 63-bit int.

    numpy's ``SeedSequence`` mixes ``[seed, crc32(dataset), 1, trial]`` (``[seed, crc32(dataset), 0]`` for
    ``trial=None``), so the value is the same in every process and Python version (unlike ``hash``), neighbouring
    trials give unrelated streams, and it fits both ``numpy.random.default_rng`` and ``torch.Generator.manual_seed``.
    ``trial=None`` seeds what a protocol keeps fixed across trials (the few-shot and episodic splits).
    """
    if int(seed) < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed}")
    entropy = [int(seed), zlib.crc32(str(dataset).encode())]
    if trial is None:
        entropy.append(0)
    elif int(trial) < 0:
        raise InputError(f"trial: must be a non-negative integer, got {trial}")
    else:
        entropy += [1, int(trial)]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def units(patches: pd.DataFrame) -> np.ndarray:
    """Unit id (0, 1, ...) per row: rows that share a ``content_hash`` or a ``group`` are one unit.

    Units are the connected components of both relations together (image A duplicates B, B is in the specimen of C:
    A, B and C are one unit). A split never cuts a unit: a duplicate or a sibling from the same specimen on the
    training side would let a test image be recognised rather than classified. A missing or empty group links nothing.
    """
    n = len(patches)
    rows, nodes = [np.arange(n)], [np.arange(n)]
    offset = n
    for column in ("content_hash", "group"):
        if column not in patches:
            continue
        values = patches[column].replace("", np.nan)
        codes, uniques = pd.factorize(values)
        linked = codes >= 0
        rows.append(np.flatnonzero(linked))
        nodes.append(codes[linked] + offset)
        offset += len(uniques)
    rows, nodes = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, nodes)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    return pd.factorize(component[:n])[0]


def make_split(
    patches: pd.DataFrame, experiment: dict, trial: int, seed: int, dataset: str
) -> tuple[pd.DataFrame, list[str]]:
    """The split of one trial: a table ``index, class_name, label, subset`` and report lines for the job log.

    ``experiment`` keys read, keys it lacks taking the config schema's defaults: ``protocol`` (full | fewshot |
    episodic), ``fractions`` {train, val, test}, ``shots`` (fewshot, required: an integer >= 1, images per class, or
    a fraction in (0, 1), share of each class; see :func:`_draw_shots`), ``open_set`` (class names),
    ``drop_small_classes``, ``official_split``, ``novel_classes``. Seeds come from
    :func:`trial_seed`: ``(seed, dataset, trial)`` for a full split and a few-shot draw, ``(seed, dataset)`` for the
    fixed few-shot and episodic splits. Rows of dropped classes are absent from the table.
    """
    _check_patches(patches)
    protocol = experiment.get("protocol")
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    experiment = fill("experiment", experiment)
    open_set = _open_set(patches, experiment["open_set"])
    drop_small = experiment["drop_small_classes"]
    if experiment["official_split"]:
        table, report = _official_split(patches, open_set)
    else:
        fractions = _fractions(experiment["fractions"])
        split_trial = trial if protocol == "full" else None
        rng = np.random.default_rng(trial_seed(seed, dataset, split_trial))
        table, report = _stratified_split(patches, fractions, open_set, drop_small, rng)
    known = sorted(set(patches["class_name"]) - set(open_set))
    novel = novel_classes_of(experiment.get("novel_classes"), known, trial)
    if protocol == "fewshot":
        shots = _shots(experiment.get("shots"))
        rng = np.random.default_rng(trial_seed(seed, dataset, trial))
        table, dropped = _draw_shots(table, shots, drop_small, rng, exempt=novel)
        report += dropped
    if novel:
        table = table.assign(subset=np.where(table["class_name"].isin(novel), "novel", table["subset"]))
        report.append(f"novel classes of trial {trial} (every image in the novel pool): {', '.join(novel)}")
    return table, report + _summary(table)


def _shots(shots) -> int | float:
    """``shots`` as a count (``int`` >= 1; a whole float such as ``5.0`` counts as ``5``) or a fraction (``float`` in
    (0, 1)); anything else (0, negative, 1.5, a bool, NaN, a string) is refused."""
    number = isinstance(shots, (int, float, np.integer, np.floating)) and not isinstance(shots, (bool, np.bool_))
    if number and np.isfinite(shots):
        if shots >= 1 and float(shots).is_integer():
            return int(shots)
        if 0 < shots < 1:
            return float(shots)
    raise InputError(
        "shots: must be a positive integer (training images per class) or a fraction in (0, 1) (share of each "
        f"class's training images), got {shots!r}"
    )


def _check_patches(patches: pd.DataFrame) -> None:
    require_columns(patches, REQUIRED_COLUMNS, "patches table")
    if patches.empty:
        raise InputError("patches table: no rows")
    unlabelled = patches["class_name"].isna() | (patches["class_name"] == "")
    if unlabelled.any():
        first = patches["index"][unlabelled].iloc[0]
        raise InputError(f"patches table: {int(unlabelled.sum())} row(s) without class_name (first: index {first})")


def _open_set(patches: pd.DataFrame, open_set: list[str]) -> list[str]:
    classes = set(patches["class_name"])
    unknown = [name for name in open_set if name not in classes]
    if unknown:
        raise InputError(f"open_set: {unknown} not among the data set's classes {sorted(classes)}")
    if classes <= set(open_set):
        raise InputError(f"open_set: lists every class of the data set ({sorted(classes)}); none is left to train on")
    return list(open_set)


def _fractions(fractions: dict) -> np.ndarray:
    if set(fractions) != set(SUBSETS):
        raise InputError(f"fractions: needs exactly the keys train, val, test; got {sorted(fractions)}")
    values = np.array([float(fractions[name]) for name in SUBSETS])
    if values.min() <= 0 or abs(values.sum() - 1) > 1e-6:
        raise InputError(f"fractions: train, val and test must be > 0 and sum to 1; got {dict(fractions)}")
    return values


def _stratified_split(
    patches: pd.DataFrame, fractions: np.ndarray, open_set: list[str], drop_small: bool, rng: np.random.Generator
) -> tuple[pd.DataFrame, list[str]]:
    report = []
    unit, known, pinned = _units_and_pins(patches, open_set)
    small = _small_classes(patches["class_name"].to_numpy()[known], unit[known], pinned)
    if small:
        described = "; ".join(f"{name!r} has {n} image(s) in {n_units} unit(s)" for name, (n, n_units) in small.items())
        shares = " / ".join(f"{name} {value:g}" for name, value in zip(SUBSETS, fractions))
        need = (
            f"fractions {shares} need, per class, at least 3 units (an image with its duplicates and group), "
            "one each in train, val and test"
        )
        if not drop_small:
            raise InputError(f"classes too small to split: {described}; {need}; drop_small_classes: true drops them")
        report.append(f"dropped classes too small to split: {described}; {need}")
        patches = patches[~patches["class_name"].isin(small)].reset_index(drop=True)
        unit, known, pinned = _units_and_pins(patches, open_set)

    classes, class_code = np.unique(patches["class_name"][known], return_inverse=True)
    n_pinned = int(pinned[unit[known]].sum())
    if n_pinned:
        report.append(f"{n_pinned} known-class image(s) share a unit with open-set images and go to test")
    subset_of_unit = _allocate(unit[known], class_code, len(classes), fractions, pinned, rng)

    subset = np.full(len(patches), "unknown", dtype=object)
    subset[known] = np.asarray(SUBSETS, dtype=object)[subset_of_unit[unit[known]]]
    report.append(f"{len(patches)} images in {unit.max() + 1} units (duplicates and groups, each kept in one subset)")
    return _table(patches, subset), report


def _units_and_pins(patches: pd.DataFrame, open_set: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit per row, known-class rows, and per unit whether it holds open-set images (then it is pinned to test)."""
    unit = units(patches)
    known = ~patches["class_name"].isin(open_set).to_numpy()
    pinned = np.zeros(unit.max() + 1, dtype=bool)
    pinned[unit[~known]] = True
    return unit, known, pinned


def _small_classes(class_name: np.ndarray, unit: np.ndarray, pinned: np.ndarray) -> dict[str, tuple[int, int]]:
    """Classes (of known-class rows) with fewer free units than subsets to fill; a pinned unit already fills test."""
    frame = pd.DataFrame({"class_name": class_name, "unit": unit, "pinned": pinned[unit]})
    small = {}
    for name, rows in frame.groupby("class_name", sort=True):
        free = rows["unit"][~rows["pinned"]].nunique()
        if free < len(SUBSETS) - rows["pinned"].any():
            small[name] = (len(rows), rows["unit"].nunique())
    return small


def _allocate(
    unit: np.ndarray,
    class_code: np.ndarray,
    n_classes: int,
    fractions: np.ndarray,
    pinned: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Subset (0 train, 1 val, 2 test) per unit, meeting the per-class targets ``f_s * n_k`` as closely as units allow.

    Units holding open-set images (``pinned``) go to test. Then every class gets one unit in every subset (scarcest
    class first, smallest units first). The remaining units, largest first (random order among equal sizes), each go
    to the subset that least increases ``sum_k (n_ks - f_s n_k)^2 / n_k``, the squared miss of the per-class subset
    sizes, weighted so that a rare class counts as much as a common one. For a unit of one class this is the subset
    furthest below its target, which keeps each per-class size within one unit of its target wherever that target is
    at least one unit.
    """
    n_units = len(pinned)
    pairs, counts = np.unique(np.stack([unit, class_code]), axis=1, return_counts=True)
    composition = [[] for _ in range(n_units)]
    for u, k, count in zip(*pairs.tolist(), counts.tolist()):
        composition[u].append((k, count))
    n_class = np.bincount(class_code, minlength=n_classes).tolist()
    target = [[float(f) * n for f in fractions] for n in n_class]
    assigned = [[0, 0, 0] for _ in range(n_classes)]
    subset = [-1] * n_units
    subsets = range(len(SUBSETS))

    def place(u: int, s: int) -> None:
        subset[u] = s
        for k, count in composition[u]:
            assigned[k][s] += count

    def cost(u: int, s: int) -> float:
        return sum(c * (2 * (assigned[k][s] - target[k][s]) + c) / n_class[k] for k, c in composition[u])

    for u in np.flatnonzero(pinned).tolist():
        place(u, TEST)
    size = np.array([sum(c for _, c in parts) for parts in composition])
    order = rng.permutation(n_units)
    order = order[np.argsort(size[order], kind="stable")]  # smallest first, random among equal sizes

    units_of_class = [[] for _ in range(n_classes)]
    for u in order[~pinned[order]].tolist():
        for k, _ in composition[u]:
            units_of_class[k].append(u)
    for k in sorted(range(n_classes), key=lambda k: len(units_of_class[k])):
        missing = [s for s in subsets if assigned[k][s] == 0]
        free = (u for u in units_of_class[k] if subset[u] < 0)
        for s, u in zip(missing, free):
            place(u, s)

    for u in order[::-1].tolist():
        if subset[u] < 0 and composition[u]:
            place(u, min(subsets, key=lambda s: cost(u, s)))
    return np.array(subset)


def _official_split(patches: pd.DataFrame, open_set: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The source's own split (MedMNIST), as shipped; open-set classes still become ``unknown``."""
    if "official_subset" not in patches:
        raise InputError("official_split: true, but the patches table has no official_subset column")
    official = patches["official_subset"].fillna("").astype(str).to_numpy(dtype=object)
    known = ~patches["class_name"].isin(open_set).to_numpy()
    missing = known & ~np.isin(official, SUBSETS)
    if missing.any():
        first = np.flatnonzero(missing)[0]
        raise InputError(
            f"official_split: true, but {int(missing.sum())} row(s) of patches have no official_subset in "
            f"{SUBSETS} (first: index {patches['index'].iloc[first]}, official_subset {official[first]!r}); "
            "this source ships no split, set official_split: false"
        )
    subset = np.where(known, official, "unknown").astype(object)
    report = []
    straddling = pd.DataFrame({"hash": patches["content_hash"], "subset": subset}).groupby("hash")["subset"].nunique()
    if (straddling > 1).any():
        report.append(
            f"official split kept as shipped: {int((straddling > 1).sum())} content hash(es) appear in more "
            "than one subset (duplicates across the official split)"
        )
    return _table(patches, subset), report


def _draw_shots(
    table: pd.DataFrame, shots: int | float, drop_small: bool, rng: np.random.Generator, exempt=()
) -> tuple[pd.DataFrame, list[str]]:
    """Few-shot trial: some training images per class become ``train``, some validation images per class stay ``val``;
    the rest of both sides becomes ``pool``.

    An ``int`` ``shots`` = K draws K training images per class (a class with fewer is too small: an error, or dropped
    with ``drop_small``) and ``min(K, N_c)`` validation images of a class with ``N_c`` of them. A ``float`` ``shots`` =
    f in (0, 1) draws, on each side, ``n_c = max(1, round(f * N_c))`` images of class c (rounded half up, never more
    than ``N_c``, so none where the side holds none of c); only a class without training images is too small.
    Training draws come before validation ones, all from ``rng``. Classes in ``exempt`` (this trial's novel classes,
    whose draws are discarded) are never too small.
    """
    need = shots if isinstance(shots, int) else 1
    training = table["subset"] == "train"
    known = sorted(set(table["class_name"][table["subset"] != "unknown"]))
    counts = table["class_name"][training].value_counts()
    short = {name: int(counts.get(name, 0)) for name in known if counts.get(name, 0) < need and name not in exempt}
    report = []
    if short:
        described = "; ".join(f"{name!r} has {n} training image(s)" for name, n in short.items())
        if not drop_small:
            raise InputError(
                f"classes too small for shots={shots}: {described}; "
                f"{'lower shots, ' if need > 1 else ''}raise fractions.train, "
                "or set drop_small_classes: true to drop them"
            )
        report.append(f"dropped classes too small for shots={shots}: {described}")
        table = table[~table["class_name"].isin(short)].reset_index(drop=True)
        training = table["subset"] == "train"
        known = [name for name in known if name not in short]
    validation = table["subset"] == "val"
    subset = np.where(training | validation, "pool", table["subset"]).astype(object)
    # every training draw before any validation one, so a trial's training images do not depend on the validation side
    for side, drawn in ((training, "train"), (validation, "val")):
        for name in known:
            candidates = np.flatnonzero(side & (table["class_name"] == name))
            subset[rng.choice(candidates, _shot_count(shots, len(candidates)), replace=False)] = drawn
    return table.assign(subset=subset), report


def _shot_count(shots: int | float, available: int) -> int:
    """Images to draw from ``available`` of a class on one side: ``min(K, N)`` for a count K, ``max(1, round(f * N))``
    (half up, at most N) for a fraction f."""
    if isinstance(shots, int):
        return min(shots, available)
    return min(available, max(1, int(np.floor(shots * available + 0.5 + 1e-9))))


def _table(patches: pd.DataFrame, subset: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "index": patches["index"].to_numpy(dtype=np.int64),
            "class_name": patches["class_name"].to_numpy(),
            "label": patches["label"].to_numpy(dtype=np.int64),
            "subset": subset.astype(str),
        }
    )
    return table.sort_values("index", kind="stable").reset_index(drop=True)


def _summary(table: pd.DataFrame) -> list[str]:
    counts = pd.crosstab(table["class_name"], table["subset"])
    columns = [name for name in (*SUBSETS, "pool", "unknown", "novel") if name in counts]
    lines = [f"{'class':<24}" + "".join(f"{name:>9}" for name in columns)]
    for name, row in counts[columns].iterrows():
        lines.append(f"{name:<24}" + "".join(f"{row[column]:>9}" for column in columns))
    lines.append(f"{'total':<24}" + "".join(f"{counts[column].sum():>9}" for column in columns))
    return lines
