"""Splits: stratified per class, duplicates and groups never straddle subsets, protocols' trial semantics."""

import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from cytodml.config import checked
from cytodml.data.splits import make_split, trial_seed, units
from cytodml.errors import InputError

SUBSETS = ("train", "val", "test")


def make_patches(counts: dict[str, int]) -> pd.DataFrame:
    """A patches table: ``counts[name]`` images per class, every image unique, no groups, no official split."""
    names = [name for name in sorted(counts) for _ in range(counts[name])]
    label = {name: k for k, name in enumerate(sorted(counts))}
    return pd.DataFrame(
        {
            "index": np.arange(len(names)),
            "object_id": [f"o{i}" for i in range(len(names))],
            "class_name": names,
            "label": [label[name] for name in names],
            "group": None,
            "official_subset": "",
            "content_hash": [f"{i:040x}" for i in range(len(names))],
            "qc_empty": False,
        }
    )


def with_duplicates_and_groups(patches: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Copy some images (same content hash, also across classes) and put runs of images into specimen groups."""
    patches = patches.copy()
    n = len(patches)
    sources = rng.choice(n, n // 10, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), n // 10, replace=False)
    patches.loc[targets, "content_hash"] = patches.loc[sources, "content_hash"].to_numpy()
    grouped = rng.choice(n, n // 5, replace=False)
    patches["group"] = patches["group"].astype(object)
    patches.loc[grouped, "group"] = [f"slide{g}" for g in rng.integers(0, n // 20, len(grouped))]
    return patches


def split(patches, trial=0, seed=7, dataset="toy", protocol="full", **experiment):
    table, report = make_split(patches, {"protocol": protocol, **experiment}, trial, seed, dataset)
    return table, report


def subsets_per(table: pd.DataFrame, patches: pd.DataFrame, column: str) -> pd.Series:
    """Number of distinct subsets per value of ``column`` (content_hash, group) of patches."""
    joined = table.merge(patches[["index", column]], on="index").dropna(subset=[column])
    return joined.groupby(column)["subset"].nunique()


def test_table_columns_and_rows():
    patches = make_patches({"a": 30, "b": 50})
    table, report = split(patches)
    assert list(table.columns) == ["index", "class_name", "label", "subset"]
    assert table["index"].tolist() == list(range(80))
    assert (table["label"] == patches["label"]).all()
    assert set(table["subset"]) == set(SUBSETS)
    assert any(line.startswith("total") for line in report)


@pytest.mark.parametrize("fractions", [(0.48, 0.12, 0.40), (0.2, 0.1, 0.7), (0.06, 0.06, 0.88), (0.6, 0.3, 0.1)])
def test_per_class_sizes_within_one_unit_of_target(fractions):
    counts = {"rare": 17, "small": 50, "mid": 233, "common": 1000}
    patches = make_patches(counts)
    table, _ = split(patches, fractions=dict(zip(SUBSETS, fractions)))
    sizes = pd.crosstab(table["class_name"], table["subset"])
    for name, n in counts.items():
        for subset, fraction in zip(SUBSETS, fractions):
            if fraction * n >= 1:
                assert abs(sizes.loc[name, subset] - fraction * n) < 1, (name, subset, sizes.loc[name, subset])


def test_every_class_reaches_every_subset_even_below_one_expected_image():
    table, _ = split(make_patches({"tiny": 3, "common": 200}), protocol="episodic")
    sizes = pd.crosstab(table["class_name"], table["subset"])
    assert sizes.loc["tiny"].tolist() == [1, 1, 1]


def test_duplicates_and_groups_never_straddle_subsets():
    rng = np.random.default_rng(0)
    patches = with_duplicates_and_groups(make_patches({"a": 120, "b": 300, "c": 600}), rng)
    assert patches["content_hash"].duplicated().sum() > 50 and patches["group"].notna().sum() > 150
    table, _ = split(patches)
    assert subsets_per(table, patches, "content_hash").max() == 1
    assert subsets_per(table, patches, "group").max() == 1
    assert (table.groupby(units(patches))["subset"].nunique() == 1).all()
    # still stratified: a unit here holds a few images, so allow a few images of slack
    sizes = pd.crosstab(table["class_name"], table["subset"])
    for name, n in {"a": 120, "b": 300, "c": 600}.items():
        assert abs(sizes.loc[name, "train"] - 0.48 * n) <= 6


def test_units_join_hash_and_group_transitively():
    patches = make_patches({"a": 5})
    patches["group"] = pd.Series(["g1", "g1", None, "", "g2"], dtype=object)
    patches.loc[2, "content_hash"] = patches.loc[1, "content_hash"]  # 0 -g1- 1 =hash= 2
    unit = units(patches)
    assert unit[0] == unit[1] == unit[2]
    assert len({unit[0], unit[3], unit[4]}) == 3  # an empty or missing group links nothing


def test_large_group_moves_as_one():
    patches = make_patches({"a": 100, "b": 100})
    patches["group"] = patches["group"].astype(object)
    patches.loc[patches.index[:40], "group"] = "big-slide"
    table, _ = split(patches)
    assert table["subset"][:40].nunique() == 1


def test_open_set_classes_are_all_unknown_and_share_no_unit_with_training():
    patches = make_patches({"a": 60, "b": 90, "pollen": 40})
    patches.loc[0, "content_hash"] = patches.loc[patches["class_name"] == "pollen", "content_hash"].iloc[0]
    table, report = split(patches, open_set=["pollen"])
    assert (table["subset"][table["class_name"] == "pollen"] == "unknown").all()
    assert (table["subset"][table["class_name"] != "pollen"] != "unknown").all()
    assert table["subset"][0] == "test"  # a duplicate of an open-set image stays on the test side
    assert any("share a unit with open-set" in line for line in report)


def test_too_small_class_names_class_and_count():
    patches = make_patches({"Anaphase": 2, "G1": 100})
    with pytest.raises(InputError, match=r"'Anaphase' has 2 image\(s\) in 2 unit\(s\)"):
        split(patches)


def test_duplicates_count_once_towards_class_size():
    patches = make_patches({"rare": 4, "G1": 100})
    rare = np.flatnonzero(patches["class_name"] == "rare")
    patches.loc[rare[1], "content_hash"] = patches.loc[rare[0], "content_hash"]
    table, _ = split(patches)  # 3 units: one per subset
    assert set(table["subset"][rare]) == set(SUBSETS) and table["subset"][rare[0]] == table["subset"][rare[1]]
    patches.loc[rare[2], "content_hash"] = patches.loc[rare[0], "content_hash"]
    with pytest.raises(InputError, match=r"'rare' has 4 image\(s\) in 2 unit\(s\)"):
        split(patches)


def test_drop_small_classes_drops_and_reports():
    patches = make_patches({"Anaphase": 2, "G1": 100, "G2": 100})
    table, report = split(patches, drop_small_classes=True)
    assert "Anaphase" not in set(table["class_name"])
    assert len(table) == 200
    assert any("dropped" in line and "'Anaphase' has 2 image(s)" in line for line in report)


def test_determinism_and_trial_dependence():
    rng = np.random.default_rng(1)
    patches = with_duplicates_and_groups(make_patches({"a": 80, "b": 200}), rng)
    first, _ = split(patches, trial=0)
    pd.testing.assert_frame_equal(first, split(patches, trial=0)[0])
    assert not first["subset"].equals(split(patches, trial=1)[0]["subset"])
    assert not first["subset"].equals(split(patches, trial=0, dataset="other")[0]["subset"])
    assert not first["subset"].equals(split(patches, trial=0, seed=8)[0]["subset"])


def test_trial_seed_is_stable_and_distinct():
    assert trial_seed(2026, "synthetic-ifc", 0) == trial_seed(2026, "synthetic-ifc", 0)
    seeds = {
        trial_seed(2026, "synthetic-ifc"),
        *(trial_seed(2026, "synthetic-ifc", t) for t in range(5)),
        trial_seed(2026, "bloodmnist", 0),
        trial_seed(2027, "synthetic-ifc", 0),
    }
    assert len(seeds) == 8
    assert all(0 <= seed < 2**63 for seed in seeds)
    # SeedSequence and crc32 are fixed algorithms: every process, Python and machine gives these numbers
    assert trial_seed(2026, "synthetic-ifc", 0) == 806959106228407781
    assert trial_seed(2026, "synthetic-ifc") == 5395494386079462762
    with pytest.raises(InputError, match="seed"):
        trial_seed(-1, "x", 0)


FEWSHOT = {"protocol": "fewshot", "shots": 5}


def test_fewshot_fixed_split_new_draw_per_trial():
    patches = make_patches({"a": 40, "b": 60, "c": 50})
    tables = [split(patches, trial=t, **FEWSHOT)[0] for t in range(3)]
    # the fixed split, the one the episodic protocol keeps (same seed, no trial)
    fixed = split(patches, trial=0, protocol="episodic", fractions={"train": 0.48, "val": 0.12, "test": 0.40})[0]
    whole = fixed["subset"]
    for table in tables:  # drawn from the same training and validation sides, the same test side every trial
        assert (whole[table["subset"] == "train"] == "train").all() and (whole[table["subset"] == "val"] == "val").all()
        assert (
            table["subset"][whole == "test"].eq("test").all()
            and (table["subset"] == "test").sum() == (whole == "test").sum()
        )
    drawn = [set(t["index"][t["subset"] == "train"]) for t in tables]
    assert drawn[0] != drawn[1] and drawn[1] != drawn[2]
    for table in tables:
        assert table[table["subset"] == "train"]["class_name"].value_counts().to_dict() == {"a": 5, "b": 5, "c": 5}
        assert (table["subset"] == "pool").sum() == whole.isin(["train", "val"]).sum() - 15 - (
            table["subset"] == "val"
        ).sum()
    pd.testing.assert_frame_equal(tables[1], split(patches, trial=1, **FEWSHOT)[0])


def test_fewshot_validation_keeps_at_most_shots_per_class_drawn_per_trial():
    """Model and classifier selection see no more labels per class than training (../shared/DESIGN.md): the fixed
    split's validation side keeps ``shots`` images per class (all of a smaller class), a new draw each trial, the rest
    joins the pool; the training draw is the same as with the validation side left whole."""
    patches = make_patches({"a": 120, "b": 200, "small": 24})
    tables = [split(patches, trial=t, **FEWSHOT)[0] for t in range(2)]
    fixed = split(patches, trial=0, protocol="episodic", fractions={"train": 0.48, "val": 0.12, "test": 0.40})[0]
    whole = fixed.set_index("index")["subset"]
    for table in tables:
        val = table[table["subset"] == "val"]
        assert val["class_name"].value_counts().to_dict() == {"a": 5, "b": 5, "small": 3}
        assert (whole[val["index"]] == "val").all()
        pooled = table[table["subset"] == "pool"]
        assert set(whole[pooled["index"]]) == {"train", "val"}
        assert len(pooled) + (table["subset"].isin(["train", "val"])).sum() == whole.isin(["train", "val"]).sum()
    assert set(tables[0]["index"][tables[0]["subset"] == "val"]) != set(
        tables[1]["index"][tables[1]["subset"] == "val"]
    )


def test_fewshot_too_few_for_shots():
    patches = make_patches({"a": 40, "rare": 12})
    with pytest.raises(InputError, match=r"shots=20: 'a' has 19 training image\(s\); 'rare' has 6 training image"):
        split(patches, protocol="fewshot", shots=20)
    table, report = split(patches, protocol="fewshot", shots=10, drop_small_classes=True)
    assert set(table["class_name"]) == {"a"}
    assert any("dropped" in line and "'rare' has 6 training image(s)" in line for line in report)


def share(fraction: float, n: int) -> int:
    """The documented fractional-shots rule, ``max(1, round(fraction * n))`` (half up), never more than ``n``."""
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def test_fewshot_fraction_draws_a_share_of_each_class_per_side_per_trial():
    """``shots: 0.1``, only a tenth of the labels exist: each trial draws ``max(1, round(0.1 * N_c))`` training and
    validation images of each class c from the fixed split's sides (a class with few images still gets one), the rest
    of both sides is pool, the test side stays whole; a new draw per trial, the same for the same seed."""
    patches = make_patches({"a": 200, "b": 60, "tiny": 9})
    fixed = split(patches, protocol="episodic", fractions={"train": 0.48, "val": 0.12, "test": 0.40})[0]
    whole = fixed["subset"]
    sizes = pd.crosstab(fixed["class_name"], fixed["subset"])
    tables = [split(patches, trial=t, protocol="fewshot", shots=0.1)[0] for t in range(3)]
    for table in tables:
        for side in ("train", "val"):
            drawn = table[table["subset"] == side]
            assert (whole[drawn.index] == side).all()
            expected = {name: share(0.1, sizes.loc[name, side]) for name in sizes.index}
            assert drawn["class_name"].value_counts().to_dict() == expected
        assert (
            (table["subset"] == "pool") == (whole.isin(["train", "val"]) & ~table["subset"].isin(["train", "val"]))
        ).all()
        assert (table["subset"][whole == "test"] == "test").all()
    assert sizes.loc["a", "train"] == 96 and share(0.1, 96) == 10 and share(0.1, sizes.loc["tiny", "train"]) == 1
    assert len({frozenset(t["index"][t["subset"] == "train"]) for t in tables}) == 3
    assert len({frozenset(t["index"][t["subset"] == "val"]) for t in tables}) > 1
    pd.testing.assert_frame_equal(tables[2], split(patches, trial=2, protocol="fewshot", shots=0.1)[0])


def test_fewshot_integer_shots_draw_as_before():
    """An integer stays a count (1 is one image per class, 5.0 is 5): trial t draws, with the generator of
    ``trial_seed(seed, dataset, t)``, ``min(K, N_c)`` images per class, every training class before any validation one
    (results of integer shots do not change with fractional shots added)."""
    patches = make_patches({"a": 40, "b": 60, "c": 12})
    fixed = split(patches, protocol="episodic", fractions={"train": 0.48, "val": 0.12, "test": 0.40})[0]
    for shots in (1, 5):
        table = split(patches, trial=1, protocol="fewshot", shots=shots)[0]
        rng = np.random.default_rng(trial_seed(7, "toy", 1))
        expected = fixed["subset"].where(fixed["subset"] == "test", "pool").to_numpy(dtype=object)
        for side in ("train", "val"):
            for name in ("a", "b", "c"):
                candidates = np.flatnonzero((fixed["subset"] == side) & (fixed["class_name"] == name))
                expected[rng.choice(candidates, min(shots, len(candidates)), replace=False)] = side
        assert table["subset"].tolist() == expected.tolist()
    pd.testing.assert_frame_equal(
        split(patches, trial=1, protocol="fewshot", shots=5.0)[0],
        split(patches, trial=1, protocol="fewshot", shots=5)[0],
    )


@pytest.mark.parametrize("shots", [0, 1.5, -1, -0.5, True, "5", float("nan")])
def test_fewshot_bad_shots_refused_by_schema_and_split(shots):
    """Neither a count (integer >= 1) nor a fraction in (0, 1): the config check and the split both refuse it, naming
    ``shots``."""
    for good in (1, 5, 0.1, 0.999):
        assert checked("experiment", {"protocol": "fewshot", "shots": good}, partial=True)["shots"] == good
    if not (isinstance(shots, float) and math.isnan(shots)):  # the schema lets NaN (YAML's .nan) through
        with pytest.raises(InputError, match=r"^experiments\.e\.shots: "):
            checked("experiment", {"protocol": "fewshot", "shots": shots}, "experiments.e", partial=True)
    with pytest.raises(InputError, match=r"^shots: must be a positive integer .* or a fraction in \(0, 1\)"):
        split(make_patches({"a": 30, "b": 30}), protocol="fewshot", shots=shots)


def test_episodic_split_is_the_same_every_trial():
    patches = make_patches({"a": 200, "b": 300})
    first, _ = split(patches, trial=0, protocol="episodic")
    for trial in (1, 2):
        pd.testing.assert_frame_equal(first, split(patches, trial=trial, protocol="episodic")[0])
    train = (first["subset"] == "train").sum()
    assert train == pytest.approx(0.06 * 500, abs=2)


def test_official_split_passthrough():
    patches = make_patches({"a": 30, "b": 30, "c": 30})
    official = np.resize(np.array(SUBSETS), 90)
    patches["official_subset"] = official
    table, _ = split(patches, official_split=True, open_set=["c"])
    known = table["class_name"] != "c"
    assert (table["subset"][known] == official[known]).all()
    assert (table["subset"][~known] == "unknown").all()
    patches.loc[5, "official_subset"] = ""
    with pytest.raises(InputError, match="official_subset.*index 5"):
        split(patches, official_split=True)


@pytest.mark.parametrize(
    ("experiment", "key"),
    [
        ({"protocol": "kfold"}, "protocol"),
        ({"fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}, "fractions"),
        ({"fractions": {"train": 0.9, "test": 0.1}}, "fractions"),
        ({"open_set": ["no-such-class"]}, "open_set"),
        ({"protocol": "fewshot", "shots": 0}, "shots"),
    ],
)
def test_bad_experiment_names_the_key(experiment, key):
    with pytest.raises(InputError, match=key):
        split(make_patches({"a": 30, "b": 30}), **experiment)


@pytest.mark.shared_data
def test_pbc_duplicate_stays_on_one_side(shared_data):
    """PBC ships a byte-identical image in two class folders; the split keeps both copies in one subset."""
    files = sorted((shared_data / "pbc-subset").glob("*/*.jpg"))
    names = [path.parent.name for path in files]
    classes = sorted(set(names))
    patches = pd.DataFrame(
        {
            "index": np.arange(len(files)),
            "class_name": names,
            "label": [classes.index(name) for name in names],
            "content_hash": [hashlib.sha1(path.read_bytes()).hexdigest() for path in files],
        }
    )
    duplicated = patches["content_hash"].duplicated(keep=False)
    assert duplicated.sum() >= 2
    table, _ = split(patches, protocol="episodic", dataset="pbc-subset")
    assert subsets_per(table, patches, "content_hash").max() == 1
    assert table["subset"][duplicated].nunique() == 1
