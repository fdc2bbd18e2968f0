"""Folds: grouped + stratified, deterministic, audited; frozen folds; leaky vs grouped splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib.errors import ConfigError, DataError, LeakageError
from melalib.folds import (
    assign_folds,
    audit_leakage,
    fold_summary,
    grouped_split,
    random_split,
)
from melalib.table import SITE_MAP, LesionTable
from melalib.tasks import HAM7, MELANOMA, Task


def binary_table(n_groups: int = 300, seed: int = 0, n_test_groups: int = 0) -> LesionTable:
    """~300 patients with 1..12 images; ~15 % of patients have one melanoma."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups + n_test_groups):
        test = g >= n_groups
        size = int(rng.integers(1, 13))
        positive = (not test) and rng.random() < 0.15
        for i in range(size):
            label = -1 if test else int(positive and i == 0)
            rows.append({"image_id": f"img_{g:04d}_{i:02d}", "image_path": f"/x/{g}_{i}.jpg",
                         "group_id": f"P{g:04d}", "label": label,
                         "label_name": "" if test else MELANOMA.classes[label],
                         "age": float(rng.integers(20, 80)), "sex": "male", "site": "torso",
                         "source": "synthetic", "split": "test" if test else "train"})
    return LesionTable(pd.DataFrame(rows), MELANOMA).validate()


def folds_by_image(table: LesionTable) -> pd.Series:
    return table.df.set_index("image_id")["fold"].sort_index()


def test_assign_folds_is_deterministic_and_row_order_free() -> None:
    table = binary_table()
    a = folds_by_image(assign_folds(table, 5, seed=42))
    b = folds_by_image(assign_folds(table, 5, seed=42))
    pd.testing.assert_series_equal(a, b)
    shuffled = LesionTable(table.df.sample(frac=1.0, random_state=7), table.task)
    c = folds_by_image(assign_folds(shuffled, 5, seed=42))
    pd.testing.assert_series_equal(a, c)
    d = folds_by_image(assign_folds(table, 5, seed=43))
    assert not a.equals(d)  # the seed matters
    assert sorted(a.unique()) == [0, 1, 2, 3, 4]


def test_folds_keep_groups_whole_and_test_rows_out() -> None:
    table = binary_table(n_test_groups=20)
    before = table.df.copy()
    out = assign_folds(table, 5, seed=1)
    pd.testing.assert_frame_equal(table.df, before)  # input untouched
    assert "fold" not in table.df.columns
    df = out.df
    assert (df.loc[df["split"] == "test", "fold"] == -1).all()
    train = df[df["split"] == "train"]
    assert (train["fold"] >= 0).all()
    assert train.groupby("group_id")["fold"].nunique().max() == 1
    summary = audit_leakage(df)
    assert summary["n_test_groups"] == 20
    assert sum(summary["images_per_fold"].values()) == len(train)
    assert sum(summary["groups_per_fold"].values()) == train["group_id"].nunique()
    assert sum(summary["positives_per_fold"].values()) == int((train["label"] == 1).sum())
    out.validate()  # validate runs the audit too


def test_stratification_balances_the_positive_rate() -> None:
    table = binary_table(n_groups=300, seed=3)
    out = assign_folds(table, 5, seed=42)
    train = out.df
    overall = (train["label"] == 1).mean()
    per_fold = train.groupby("fold")["label"].mean()
    assert len(per_fold) == 5
    assert (per_fold - overall).abs().max() < 0.25 * overall
    sizes = train.groupby("fold").size()
    assert (sizes - len(train) / 5).abs().max() < 0.1 * len(train) / 5
    summary = fold_summary(out)
    pd.testing.assert_series_equal(summary["positive_rate"], per_fold, check_names=False)
    assert summary["images"].tolist() == sizes.tolist()
    groups = train.groupby("fold")["group_id"].nunique()
    assert summary["groups"].tolist() == groups.tolist()
    assert np.allclose(summary["mean_images_per_group"], sizes / groups)
    assert (summary["n_benign"] + summary["n_melanoma"]).tolist() == sizes.tolist()


def test_label_plus_size_reports_buckets_and_keeps_groups() -> None:
    table = binary_table(n_groups=300, seed=5)
    out, info = assign_folds(table, 5, seed=0, stratify="label+size", return_info=True)
    assert info["stratify"] == "label+size"
    edges = info["size_buckets_max_images"]
    assert edges == sorted(edges) and edges[-1] == table.df.groupby("group_id").size().max()
    assert out.df.groupby("group_id")["fold"].nunique().max() == 1
    with pytest.raises(ConfigError):
        assign_folds(table, 5, stratify="size")
    with pytest.raises(ConfigError):
        assign_folds(table, 1)


def test_audit_raises_on_a_group_spanning_folds() -> None:
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "group_id": ["p1", "p1", "p2", "p3"],
                       "label": [0, 1, 0, 1], "split": "train", "fold": [0, 2, 1, 0]})
    with pytest.raises(LeakageError, match=r"'p1' spans folds \[0, 2\]"):
        audit_leakage(df)
    df.loc[1, "fold"] = 0
    assert audit_leakage(df)["groups_per_fold"] == {0: 2, 1: 1}


def test_audit_raises_on_a_patient_in_train_and_test() -> None:
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"],
                       "group_id": ["p1", "p2", "p2", "p3", "p2"], "label": [0, 1, 0, -1, -1],
                       "split": ["train", "train", "train", "test", "test"]})
    with pytest.raises(LeakageError, match=r"'p2'.*train split \(2 images\).*test split "
                                           r"\(1 images\); 1 group"):
        audit_leakage(df)
    table = LesionTable(df.assign(image_path="x", label_name=["benign", "melanoma", "benign",
                                                             "", ""], age=50.0, sex="male",
                                  site="torso", source="custom"), MELANOMA)
    with pytest.raises(LeakageError, match="p2"):
        assign_folds(table, 2)


def test_audit_reports_patients_spanning_folds_without_raising() -> None:
    df = pd.DataFrame({"image_id": list("abcd"), "group_id": ["L1", "L2", "L3", "L4"],
                       "patient_id": ["P1", "P1", "P2", np.nan], "label": [0, 1, 0, 1],
                       "split": "train", "fold": [0, 1, 1, 0]})
    findings = audit_leakage(df)["patient_findings"]
    assert len(findings) == 1 and "'P1'" in findings[0] and "[0, 1]" in findings[0]
    with pytest.raises(LeakageError, match="patient_id 'P1' spans folds"):
        audit_leakage(df.dropna(), group_column="patient_id")
    df["patient_id"] = df["group_id"]  # same as the groups: nothing extra to report
    assert audit_leakage(df)["patient_findings"] == []


def test_audit_rejects_unassigned_training_rows() -> None:
    df = pd.DataFrame({"image_id": list("ab"), "group_id": ["p1", "p2"], "label": [0, 1],
                       "split": "train", "fold": [0, -1]})
    with pytest.raises(DataError, match="row 2"):
        audit_leakage(df)


def test_one_class_validation_fold_is_an_error() -> None:
    table = binary_table(n_groups=40, seed=0)
    df = table.df.copy()
    positive_groups = sorted(df.loc[df["label"] == 1, "group_id"].unique())
    keep = set(positive_groups[:2])  # only 2 melanoma patients left for 5 folds
    df.loc[~df["group_id"].isin(keep), "label"] = 0
    df["label_name"] = np.where(df["label"] == 1, "melanoma", "benign")
    small = LesionTable(df, MELANOMA).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DataError, match=r"fold \d has only class 'benign'.*reduce n_folds"):
            assign_folds(small, 5)
        out, info = assign_folds(small, 2, return_info=True)
    assert set(out.df.loc[out.df["label"] == 1, "fold"]) == {0, 1}
    assert info["sparse_classes"] == {}


def test_sparse_multiclass_class_warns_through_info() -> None:
    task = Task("three", "multiclass", ("a", "b", "c"), "balanced_accuracy")
    rows = []
    for g in range(30):
        label = 2 if g < 2 else g % 2  # class c: only 2 groups
        rows += [{"image_id": f"{g}_{i}", "image_path": "x", "group_id": f"g{g}", "label": label,
                  "label_name": task.classes[label], "age": 40.0, "sex": "female",
                  "site": "torso", "source": "custom", "split": "train"} for i in range(2)]
    table = LesionTable(pd.DataFrame(rows), task).validate()
    with pytest.warns(UserWarning, match="'c' has only 2 group"):
        _, info = assign_folds(table, 3, return_info=True)
    assert info["sparse_classes"] == {"c": 2}
    assert len(info["missing_classes"]) == 1
    assert next(iter(info["missing_classes"].values())) == ["c"]


def test_fewer_groups_than_folds_is_an_error() -> None:
    table = binary_table(n_groups=4, seed=2)
    with pytest.raises(DataError, match=r"only 4 group\(s\).*n_folds=5"):
        assign_folds(table, 5)


def test_fold_summary_needs_folds() -> None:
    with pytest.raises(DataError, match="no 'fold' column"):
        fold_summary(binary_table(n_groups=10))


def test_random_split_fractions_and_grouped_split() -> None:
    table = binary_table(n_groups=300, seed=4)
    n = len(table.train)
    subset = random_split(table, (0.7, 0.1, 0.2), seed=0)
    assert subset.index.equals(table.train.index)
    counts = subset.value_counts()
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(counts[name] / n - frac) < 0.01
    labels = table.train["label"]
    for name in ("train", "val", "test"):  # stratified: positive rate kept
        assert abs(labels[subset == name].mean() - labels.mean()) < 0.02
    pd.testing.assert_series_equal(subset, random_split(table, seed=0))
    grouped = grouped_split(table, seed=0)
    assert grouped.groupby(table.train["group_id"]).nunique().max() == 1
    g_counts = grouped.value_counts()
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(g_counts[name] / n - frac) < 0.05
    with pytest.raises(ConfigError):
        random_split(table, (0.5, 0.5, 0.5))


# ------------------------------------------------------------------------- real tables
def ham_table(shared_data: Path) -> LesionTable:
    raw = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv", dtype=str)
    labels = raw["dx"].map({c: i for i, c in enumerate(HAM7.classes)}).astype(int)
    df = pd.DataFrame({"image_id": raw["image_id"], "image_path": raw["image_id"] + ".jpg",
                       "group_id": raw["lesion_id"], "label": labels, "label_name": raw["dx"],
                       "age": pd.to_numeric(raw["age"]), "sex": raw["sex"].fillna("unknown"),
                       "site": raw["localization"].str.lower().map(SITE_MAP),
                       "source": "ham10000", "split": "train"})
    return LesionTable(df, HAM7).validate()


@pytest.mark.realdata
def test_ham10000_folds_by_lesion(shared_data: Path) -> None:
    table = ham_table(shared_data)
    out, info = assign_folds(table, 5, seed=42, return_info=True)
    assert info["n_groups"] == 7470 and info["sparse_classes"] == {}
    assert info["missing_classes"] == {}
    summary = fold_summary(out)
    assert summary["groups"].sum() == 7470 and summary["images"].sum() == 10015
    overall = table.class_counts() / len(table.df)
    for name in HAM7.classes:  # every class near its overall share in every fold
        share = summary[f"n_{name}"] / summary["images"]
        assert (share - overall[name]).abs().max() < 0.25 * overall[name] + 0.005


@pytest.mark.realdata
def test_ham10000_random_split_leaks_lesions(shared_data: Path) -> None:
    table = ham_table(shared_data)
    groups = table.train["group_id"]
    leaky = random_split(table, seed=0)
    spanning = (leaky.groupby(groups).nunique() > 1).sum()
    multi = (groups.value_counts() > 1).sum()  # 1,956 lesions have several images
    assert spanning > 0.4 * multi
    assert (grouped_split(table, seed=0).groupby(groups).nunique() > 1).sum() == 0


@pytest.mark.realdata
def test_isic2020_triple_stratified_folds(shared_data: Path) -> None:
    raw = pd.read_csv(shared_data / "isic2020" / "train.csv", dtype=str)
    label = raw["target"].astype(int)
    df = pd.DataFrame({"image_id": raw["image_name"], "image_path": raw["image_name"] + ".jpg",
                       "group_id": raw["patient_id"], "label": label,
                       "label_name": np.array(MELANOMA.classes)[label],
                       "age": pd.to_numeric(raw["age_approx"]), "sex": raw["sex"].fillna("unknown"),
                       "site": raw["anatom_site_general_challenge"].str.lower().map(SITE_MAP)
                       .fillna("unknown"), "source": "isic2020", "split": "train"})
    table = LesionTable(df, MELANOMA).validate()
    out = assign_folds(table, 5, seed=42, stratify="label+size")
    summary = fold_summary(out)
    assert summary["groups"].sum() == 2056 and summary["n_melanoma"].sum() == 584
    assert (summary["positive_rate"] - 584 / 33126).abs().max() < 0.002
    per_patient = out.df.groupby("group_id").agg(n=("image_id", "size"), fold=("fold", "first"))
    buckets = pd.qcut(per_patient["n"], 4, labels=False, duplicates="drop")
    counts = pd.crosstab(per_patient["fold"], buckets)
    assert ((counts.max() - counts.min()) <= 0.1 * counts.mean()).all()


def _sklearn_folds(strata: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.full(len(strata), -1)
    splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
            out[val] = k
    return out


@pytest.mark.parametrize("n_classes", [1, 2, 3, 7, 28])
def test_fast_folds_equal_sklearn_stratified_group_kfold(n_classes: int) -> None:
    from melalib.folds import stratified_group_folds

    rng = np.random.default_rng(n_classes)
    for trial in range(6):
        n_groups = int(rng.integers(8, 300))
        groups = np.repeat(np.arange(n_groups), rng.integers(1, int(rng.integers(2, 14)),
                                                             n_groups))
        probs = rng.dirichlet(np.ones(n_classes) * 0.5)
        strata = rng.choice(n_classes, size=len(groups), p=probs)
        n_folds = int(rng.integers(2, 8))
        try:
            expected = _sklearn_folds(strata, groups, n_folds, trial)
        except ValueError:
            with pytest.raises(ValueError):
                stratified_group_folds(strata, groups, n_folds, trial)
            continue
        got = stratified_group_folds(strata, groups, n_folds, trial)
        np.testing.assert_array_equal(got, expected)


def test_assign_folds_matches_sklearn_on_the_table() -> None:
    table = binary_table(n_groups=300, seed=9)
    for stratify in ("label", "none"):
        out, _ = assign_folds(table, 5, seed=7, stratify=stratify, return_info=True)
        train = table.df.sort_values(["group_id", "image_id"], kind="mergesort")
        codes = pd.factorize(train["group_id"], sort=True)[0]
        labels = train["label"].to_numpy()
        strata = labels if stratify == "label" else np.zeros(len(labels), dtype=int)
        expected = pd.Series(_sklearn_folds(strata, codes, 5, 7), index=train["image_id"])
        got = out.df.set_index("image_id")["fold"]
        pd.testing.assert_series_equal(got.loc[expected.index], expected, check_names=False,
                                       check_dtype=False)
