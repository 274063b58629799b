"""The real-data presets through their data stages (ingest, patch, split, augment), with the class counts of
../shared/data/README.md: Jurkat after filler and duplicate removal, BloodMNIST's official split, PBC's duplicates."""

import copy

import pandas as pd
import pytest
import yaml

from .conftest import ROOT, snakemake

pytestmark = pytest.mark.workflow

JURKAT = {"Anaphase": 15, "Metaphase": 69, "Telophase": 28, "Prophase": 606, "G1": 900, "S_phase": 900, "G2": 900}
BLOODMNIST_OFFICIAL = {"train": 11959, "val": 1712, "test": 3421}


def run_data_stages(workdir, preset, experiment):
    config = yaml.safe_load((ROOT / "presets" / preset).read_text())
    config = copy.deepcopy(config)
    for spec in config["experiments"].values():
        spec["augment"] = {**spec.get("augment", {}), "count": 64}  # the suite stays fast; growth is unit-tested
    snakemake(workdir, "--cores", "2", f"results/{experiment}/augmented/t0.parquet", config=config)
    dataset = config["experiments"][experiment]["dataset"]
    patches = pd.read_parquet(workdir / f"results/{dataset}/patches.parquet")
    split = pd.read_parquet(workdir / f"results/{experiment}/splits/t0.parquet")
    augmented = pd.read_parquet(workdir / f"results/{experiment}/augmented/t0.parquet")
    assert set(augmented["source_index"]) <= set(split.loc[split["subset"] == "train", "index"])
    return patches, split


def test_jurkat_montages_to_augmented(shared_data, workdir):
    patches, split = run_data_stages(workdir, "jurkat.yaml", "jurkat-labelfree")
    assert patches["class_name"].value_counts().to_dict() == JURKAT
    counts = pd.read_csv(workdir / "results/jurkat/qc/counts.csv").set_index("class_name")
    assert counts.loc["Anaphase", "dropped_duplicate"] == 1 and counts["dropped_filler"].sum() > 0
    fractions = split["subset"].value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.48, abs=0.01) and fractions["test"] == pytest.approx(0.40, abs=0.01)


def test_bloodmnist_keeps_its_official_split(shared_data, workdir):
    patches, split = run_data_stages(workdir, "bloodmnist.yaml", "bloodmnist-fewshot")
    assert patches["official_subset"].value_counts().to_dict() == BLOODMNIST_OFFICIAL
    assert split["subset"].value_counts()["test"] == BLOODMNIST_OFFICIAL["test"]
    official = split.merge(patches[["index", "official_subset"]], on="index").set_index("index")["official_subset"]
    for side in ("train", "val"):  # 20 shots per class, and as many validation images, each from its official side
        drawn = split[split["subset"] == side]
        assert drawn.groupby("class_name").size().eq(20).all() and (official[drawn["index"]] == side).all()


def test_pbc_jpegs_with_duplicates_on_one_side(shared_data, workdir):
    patches, split = run_data_stages(workdir, "pbc.yaml", "pbc-episodic")
    assert patches["class_name"].value_counts().to_dict() == {name: 150 for name in patches["class_name"].unique()}
    assert len(patches) == 1200
    subsets = split.merge(patches[["index", "content_hash"]], on="index").groupby("content_hash")["subset"].nunique()
    assert (subsets == 1).all(), "a duplicated image straddles subsets"
    assert patches["content_hash"].duplicated().sum() >= 1  # PBC holds byte-identical duplicates
