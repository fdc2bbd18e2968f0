"""Multi-source training data (``dataset=ham10000+milk10k``, `merge_ham_milk`): one HAM10000
label space, MILK10k-only classes left out and counted, folds grouped by lesion within each
source, OOF metrics reported per source."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY

from melalib.classmap import class_mapping
from melalib.config import DataConfig, RunConfig
from melalib.data.load import DATASETS, MERGED, dataset_parts, load_table
from melalib.data.sources.merge import merge_ham_milk
from melalib.errors import DataError
from melalib.external import evaluate_external
from melalib.tasks import HAM7, MILK11


def _tables(root: Path):
    base = {**TINY, "data_dir": str(root)}
    ham = load_table(RunConfig.from_dict({**base, "synthetic_task": "multiclass"}).data)
    milk = load_table(RunConfig.from_dict({**base, "synthetic_task": "paired",
                                           "synthetic_seed": 2}).data)
    return ham, milk


def test_merge_keeps_the_shared_classes_and_counts_the_rest(tmp_path: Path) -> None:
    ham, milk = _tables(tmp_path)
    merged = merge_ham_milk(ham, milk)
    df = merged.df
    assert merged.task == HAM7 and not merged.paired
    assert (df["source"] == "ham10000").sum() == len(ham.df)
    train = milk.train
    only = [MILK11.index_of(c) for c in ("BEN_OTH", "INF", "MAL_OTH", "SCCKA")]
    kept = train[~train["label"].isin(only)]
    from_milk = df[df["source"] == "milk10k"]
    assert len(from_milk) == len(kept)
    assert sum(df.attrs["dropped_milk_classes"].values()) == int(train["label"].isin(only).sum())
    assert df.attrs["excluded_milk_test"] == len(milk.test)
    expected = [HAM7.classes[i] for i in class_mapping(HAM7, MILK11).labels(kept["label"])]
    assert list(from_milk["label_name"]) == expected
    assert list(from_milk["image_id"]) == ["milk10k:" + i for i in kept["image_id"]]
    assert from_milk["group_id"].str.startswith("milk10k:").all()
    assert not set(from_milk["group_id"]) & set(df.loc[df["source"] == "ham10000", "group_id"])
    with pytest.raises(DataError, match="must be a"):
        merge_ham_milk(milk, ham)


def test_training_reports_oof_metrics_per_source(tmp_path: Path) -> None:
    from melalib.engine import train

    ham, milk = _tables(tmp_path / "data")
    merged = merge_ham_milk(ham, milk)
    cfg = RunConfig.from_dict({**TINY, "output_dir": str(tmp_path / "out"), "name": "multi",
                               "data_dir": str(tmp_path / "data")})
    summary = train(cfg, table=merged, progress=False)
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"ham10000", "milk10k"} == set(summary["per_source"])
    oof = pd.read_csv(cfg.run_dir / "oof.csv")
    folds = pd.read_csv(cfg.run_dir / "table" / "table.csv").groupby("group_id")["fold"]
    assert (folds.nunique() == 1).all()  # grouped by lesion (within its source)
    ev = evaluate_external(cfg.run_dir, merged, n_boot=10, progress=False)
    by_source = ev.subgroups[ev.subgroups["subgroup_column"] == "source"]
    assert set(by_source["value"]) == {"ham10000", "milk10k"}
    n_milk = metrics["per_source"]["milk10k"]["n"]
    assert n_milk == int(oof["image_id"].isin(merged.df.loc[merged.df["source"] == "milk10k",
                                                               "image_id"]).sum())


def test_the_real_tables_merge(shared_data: Path) -> None:
    table = load_table(DataConfig(dataset="ham10000+milk10k", data_dir=str(shared_data)))
    gt = pd.read_csv(shared_data / "milk10k" / "MILK10k_Training_GroundTruth.csv")
    only = gt[["BEN_OTH", "INF", "MAL_OTH", "SCCKA"]].sum(axis=1) > 0
    ham = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv")
    counts = table.df["source"].value_counts()
    assert counts["ham10000"] == len(ham) and counts["milk10k"] == int((~only).sum())
    assert table.df.attrs["dropped_milk_classes"]["SCCKA"] == int(gt["SCCKA"].sum())


def test_dataset_parts_names_the_sources_of_every_dataset() -> None:
    """A merged dataset's parts are its downloads (not its name split at "+": isic2020+2019
    holds isic2019, not "2019"); any other dataset is its own single part."""
    assert dataset_parts("ham10000+milk10k") == ("ham10000", "milk10k")
    assert dataset_parts("isic2020+2019") == ("isic2020", "isic2019")
    for name in DATASETS:
        assert all(p in DATASETS for p in dataset_parts(name))
    assert set(MERGED) < set(DATASETS)
