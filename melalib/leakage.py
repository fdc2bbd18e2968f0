"""The leakage audit: no group (patient / lesion) in two folds or in both train and test.

Used by `melalib.table` (`LesionTable.validate` audits a table that has folds) and
`melalib.folds` (which assigns them); it depends on neither, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, LeakageError


def audit_leakage(df: pd.DataFrame, group_column: str = "group_id") -> dict[str, Any]:
    """Raise `LeakageError` when a group spans several folds (training rows) or appears in
    both the train and the test split; return a summary of the folds.

    ``patient_id``, when present and different from ``group_column`` (e.g. HAM10000 or ISIC
    2019 where the group is the lesion), is audited too, but its findings are only reported
    in ``summary["patient_findings"]``: grouping by lesion is a deliberate choice where the
    patient is unknown or coarser than the split unit, so a patient spanning folds there is
    a caveat to report, not an error. Rows with an empty patient_id are skipped.
    """
    if group_column not in df.columns:
        raise DataError(f"audit_leakage needs column {group_column!r}", column=group_column)
    df = numpy_columns(df)
    groups = df[group_column].astype(str)
    if "split" in df.columns:
        train_mask = (df["split"] == "train").to_numpy()
        test_mask = (df["split"] == "test").to_numpy()
    else:
        train_mask, test_mask = np.ones(len(df), dtype=bool), np.zeros(len(df), dtype=bool)
    summary: dict[str, Any] = {
        "group_column": group_column,
        "n_images": len(df),
        "n_groups": int(groups.nunique()),
        "n_train_groups": int(groups[train_mask].nunique()),
        "n_test_groups": int(groups[test_mask].nunique()),
    }
    shared = _shared(groups, train_mask, test_mask)
    if shared:
        first = shared[0]
        n_train = int(((groups == first).to_numpy() & train_mask).sum())
        n_test = int(((groups == first).to_numpy() & test_mask).sum())
        raise LeakageError(
            f"{group_column} {first!r} appears in both the train split ({n_train} images) and "
            f"the test split ({n_test} images); {len(shared)} group(s) shared in all, e.g. "
            f"{shared[:5]}")
    if "fold" in df.columns:
        folds = _fold_values(df, train_mask, test_mask)
        spans = _spanning(groups[train_mask], folds[train_mask])
        if spans:
            first, first_folds = next(iter(spans.items()))
            raise LeakageError(
                f"{group_column} {first!r} spans folds {first_folds}; {len(spans)} group(s) "
                f"span several folds, e.g. {list(spans)[:5]}")
        summary.update(_fold_counts(df, groups, folds, train_mask))
    summary["patient_findings"] = _patient_findings(df, group_column, train_mask, test_mask)
    return summary


def numpy_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable extension columns (``string``, ``Int64``, ``Float64``, ``boolean``) as
    NumPy-backed object columns with NaN for missing, so that masks stay plain booleans."""
    nullable = [c for c in df.columns if getattr(df[c].dtype, "na_value", None) is pd.NA]
    if not nullable:
        return df
    out = df.copy()
    for c in nullable:
        out[c] = df[c].astype(object).where(df[c].notna().to_numpy(), np.nan)
    return out


def _shared(groups: pd.Series, train_mask: np.ndarray, test_mask: np.ndarray) -> list[str]:
    # a missing id is no group (under pandas 3 ``astype(str)`` keeps it NaN, a float)
    return sorted(set(groups[train_mask].dropna()) & set(groups[test_mask].dropna()))


def _fold_values(df: pd.DataFrame, train_mask: np.ndarray, test_mask: np.ndarray) -> np.ndarray:
    """``fold`` as int64: integers >= 0 on training rows, -1 on test rows (else DataError)."""
    raw = pd.to_numeric(df["fold"], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(raw)
    bad = train_mask & (~finite | (raw < 0) | (raw >= 2**31) | (np.round(raw) != raw))
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(f"training row with fold {df['fold'].iloc[pos]!r}; expected an integer "
                        ">= 0 (assign_folds)", row=pos + 1, column="fold")
    bad = test_mask & finite & (raw != -1)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(f"test row with fold {df['fold'].iloc[pos]!r}; test rows take fold -1",
                        row=pos + 1, column="fold")
    return np.where(finite & (np.abs(raw) < 2**31), raw, -1).astype(np.int64)


def _spanning(groups: pd.Series, folds: np.ndarray) -> dict[str, list[int]]:
    """Groups found in more than one fold -> their sorted folds."""
    by_group = pd.Series(folds, index=groups.index).groupby(groups.to_numpy(), sort=True)
    n_folds = by_group.nunique()
    leaking = n_folds.index[n_folds.to_numpy() > 1]
    if len(leaking) == 0:
        return {}
    mask = groups.isin(set(leaking)).to_numpy()
    per_group = pd.Series(folds[mask]).groupby(groups.to_numpy()[mask], sort=True).unique()
    return {str(g): sorted(int(f) for f in fs) for g, fs in per_group.items()}


def _fold_counts(df: pd.DataFrame, groups: pd.Series, folds: np.ndarray,
                 train_mask: np.ndarray) -> dict[str, Any]:
    fold_ids = sorted(int(f) for f in np.unique(folds[train_mask]))
    out: dict[str, Any] = {"folds": fold_ids, "groups_per_fold": {}, "images_per_fold": {}}
    labels = (pd.to_numeric(df["label"], errors="coerce").to_numpy()
              if "label" in df.columns else None)
    if labels is not None:
        out["class_counts_per_fold"] = {}
        binary = set(np.unique(labels[train_mask]).tolist()) <= {0, 1}
        if binary:
            out["positives_per_fold"] = {}
    for k in fold_ids:
        mask = train_mask & (folds == k)
        out["groups_per_fold"][k] = int(groups[mask].nunique())
        out["images_per_fold"][k] = int(mask.sum())
        if labels is not None:
            known = mask & np.isfinite(labels)  # a missing or text label is not a class
            values, counts = np.unique(labels[known], return_counts=True)
            out["class_counts_per_fold"][k] = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
            if "positives_per_fold" in out:
                out["positives_per_fold"][k] = int((labels[mask] == 1).sum())
    return out


def _patient_findings(df: pd.DataFrame, group_column: str, train_mask: np.ndarray,
                      test_mask: np.ndarray) -> list[str]:
    if "patient_id" not in df.columns or group_column == "patient_id":
        return []
    raw = df["patient_id"]
    known = (raw.notna() & (raw.astype(str).str.strip() != "")).to_numpy()
    patients = raw.astype(str)
    if (patients[known] == df[group_column].astype(str)[known]).all():
        return []
    findings = []
    shared = _shared(patients, train_mask & known, test_mask & known)
    if shared:
        findings.append(f"{len(shared)} patient(s) appear in both the train and the test split, "
                        f"e.g. {shared[:5]}")
    if "fold" in df.columns:
        folds = pd.to_numeric(df["fold"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
        mask = train_mask & known
        spans = _spanning(patients[mask], folds[mask])
        if spans:
            first, first_folds = next(iter(spans.items()))
            findings.append(f"{len(spans)} patient(s) span several folds (grouping by "
                            f"{group_column}), e.g. {first!r} in folds {first_folds}")
    return findings
