"""Metrics and error rates per subgroup (age band, sex, site, skin tone, confidence).

Every row lands in exactly one value of each ``by`` column (a missing value is
``"unknown"``), so the counts of a column's subgroups sum to N. A subgroup where a metric is
undefined (one class only, or fewer rows than ``min_count``) is reported with NaN and a
``reason``, never dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_many
from .errors import DataError
from .metrics import (
    MetricError,
    MetricFn,
    argmax_labels,
    check_task_probs,
    metric_for,
)
from .tasks import Task

AGE_BANDS = ("<30", "30-44", "45-59", "60-74", "75+", "unknown")
DEFAULT_BY = ("age_band", "sex", "site", "skin_tone")
DEFAULT_METRICS = {"binary": ("roc_auc", "pr_auc"),
                   "multiclass": ("balanced_accuracy", "accuracy"),
                   "multilabel": ("thresholded_macro_f1", "balanced_accuracy")}


def age_bands(age: Any) -> pd.Series:
    """Ordered categorical age band: <30, 30-44, 45-59, 60-74, 75+, unknown (NaN age)."""
    a = pd.to_numeric(pd.Series(age), errors="coerce")
    bands = pd.cut(a, [-np.inf, 30, 45, 60, 75, np.inf], right=False, labels=AGE_BANDS[:-1])
    out = bands.cat.add_categories(["unknown"]).fillna("unknown")
    return out.cat.reorder_categories(list(AGE_BANDS), ordered=True)


def confidence_bins(probs: Any, n: int = 5) -> pd.Series:
    """Ordered categorical bin of the predicted class's probability, ``n`` equal-width bins
    from 1/K (binary: 0.5) to 1, labelled like ``"0.50-0.60"``."""
    P = np.asarray(probs, dtype=np.float64)
    conf = np.maximum(P, 1.0 - P).reshape(-1) if P.ndim == 1 or P.shape[1] == 1 else P.max(axis=1)
    k = 2 if P.ndim == 1 or P.shape[1] == 1 else P.shape[1]
    if n < 1 or not np.isfinite(conf).all():
        raise MetricError(f"confidence_bins: need n >= 1 and finite probs (n={n})")
    edges = np.linspace(1.0 / k, 1.0, n + 1)
    labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in itertools.pairwise(edges)]
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="right"), 0, n - 1)
    return pd.Series(pd.Categorical.from_codes(idx, categories=labels, ordered=True))


def _probs_of(df: pd.DataFrame, task: Task, probs: Any) -> np.ndarray:
    if probs is None or (isinstance(probs, Sequence) and not isinstance(probs, str)
                         and len(probs) and isinstance(probs[0], str)):
        cols = task.prob_columns if probs is None else list(probs)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"prediction columns {missing} are not in the table "
                            f"(columns: {list(df.columns)[:20]})", column=missing[0])
        P = df[cols].to_numpy(dtype=np.float64)
        probs = P[:, 0] if task.kind == "binary" else P
    P = np.asarray(probs, dtype=np.float64)
    if len(P) != len(df):
        raise DataError(f"probs has {len(P)} rows but the table has {len(df)}")
    check_task_probs(task, P)
    return P


def _labels_of(df: pd.DataFrame, task: Task, label_column: str) -> np.ndarray:
    if label_column not in df.columns:
        raise DataError(f"no {label_column!r} column in the table", column=label_column)
    y = pd.to_numeric(df[label_column], errors="coerce").to_numpy()
    bad = ~np.isfinite(y) | (y < 0) | (y >= task.n_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"{int(bad.sum())} rows have no label in 0..{task.n_classes - 1} "
                        f"(first: {df[label_column].iloc[first]!r}; unlabelled test rows?); "
                        "pass only labelled rows", row=first + 1, column=label_column)
    return y.astype(np.int64)


def _subgroup_columns(df: pd.DataFrame, by: Sequence[str] | None,
                      probs: np.ndarray | None = None, n_conf_bins: int = 5,
                      default: Sequence[str] = DEFAULT_BY) -> dict[str, pd.Series]:
    """Column name -> values ('unknown' for missing); ``age_band`` is derived from ``age``
    and ``confidence_bin`` from ``probs`` when the table lacks them. With ``by=None`` the
    ``default`` columns present are used; an explicitly requested absent column raises."""
    explicit = by is not None
    out: dict[str, pd.Series] = {}
    for name in (list(by) if by is not None else list(default)):
        if name in df.columns:
            s = df[name].reset_index(drop=True)
            if isinstance(s.dtype, pd.CategoricalDtype):
                if "unknown" not in s.cat.categories:
                    s = s.cat.add_categories(["unknown"])
                out[name] = s.fillna("unknown")
            else:
                out[name] = s.astype(object).where(s.notna(), "unknown").astype(str)
        elif name == "age_band" and "age" in df.columns:
            out[name] = age_bands(df["age"].to_numpy())
        elif name == "confidence_bin" and probs is not None:
            out[name] = confidence_bins(probs, n_conf_bins)
        elif explicit:
            raise DataError(f"subgroup column {name!r} is not in the table", column=name)
    return out


def _values(s: pd.Series) -> list[Any]:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return [c for c in s.cat.categories if (s == c).any()]
    return sorted(s.unique().tolist(), key=lambda v: (v == "unknown", str(v)))


def _class_counts(y: np.ndarray, task: Task) -> str:
    counts = np.bincount(y, minlength=task.n_classes)
    return " ".join(f"{c}:{n}" for c, n in zip(task.classes, counts, strict=True) if n)


def subgroup_metrics(df: pd.DataFrame, task: Task, probs: Any = None,
                     by: Sequence[str] | None = None,
                     metrics: Sequence[str | MetricFn] | None = None, min_count: int = 10,
                     n_boot: int = 200, groups_column: str | None = "group_id",
                     label_column: str = "label", alpha: float = 0.05, seed: int = 0,
                     threshold: float = 0.5) -> pd.DataFrame:
    """Metrics per subgroup with group-aware bootstrap CIs.

    ``probs``: an array aligned with ``df`` rows, a list of prediction columns, or None for
    ``task.prob_columns``. ``by`` defaults to those of age_band (derived from ``age``), sex,
    site, skin_tone present in ``df``. Returns one row per (subgroup_column, value, metric):
    n, n_groups, n_pos (binary) / class_counts, estimate, low, high, n_boot_ok, reason.
    """
    P = _probs_of(df, task, probs)
    y = _labels_of(df, task, label_column)
    if groups_column is not None and groups_column not in df.columns:
        raise DataError(f"no {groups_column!r} column for the group-aware bootstrap "
                        "(pass groups_column=None to resample rows)", column=groups_column)
    groups = df[groups_column].to_numpy() if groups_column else np.arange(len(df))
    chosen = list(metrics) if metrics is not None else list(DEFAULT_METRICS[task.kind])
    fns: dict[str, Callable] = {
        (m if isinstance(m, str) else getattr(m, "__name__", repr(m))):
        (metric_for(task, m, threshold) if isinstance(m, str) else m) for m in chosen}
    rows = []
    for column, values in _subgroup_columns(df, by).items():
        for value in _values(values):
            mask = (values == value).to_numpy()
            ys, ps, gs = y[mask], P[mask], groups[mask]
            base = {"subgroup_column": column, "value": value, "n": int(mask.sum()),
                    "n_groups": int(pd.Series(gs).nunique()),
                    "n_pos": int(ys.sum()) if task.kind == "binary" else np.nan,
                    "class_counts": _class_counts(ys, task)}
            results, reason = _subgroup_results(fns, ys, ps, gs, min_count, n_boot, alpha, seed)
            for name in fns:
                rows.append({**base, "metric": name, **results.get(name, {}),
                             "reason": reason.get(name, "")})
    cols = ["subgroup_column", "value", "n", "n_groups", "n_pos", "class_counts", "metric",
            "estimate", "low", "high", "n_boot_ok", "reason"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out["value"] = out["value"].astype(str)
    return out


def _subgroup_results(fns: dict[str, Callable], y: np.ndarray, P: np.ndarray, groups: np.ndarray,
                      min_count: int, n_boot: int, alpha: float, seed: int
                      ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    nan = {"estimate": np.nan, "low": np.nan, "high": np.nan, "n_boot_ok": 0}
    if len(y) < min_count:
        why = f"n={len(y)} < min_count={min_count}"
        return {k: nan for k in fns}, {k: why for k in fns}
    results, reasons, ok = {}, {}, {}
    for name, fn in fns.items():
        try:
            fn(y, P)
            ok[name] = fn
        except MetricError as exc:
            results[name], reasons[name] = nan, str(exc)
    if ok:
        res = bootstrap_many(ok, y, P, groups, n_boot=n_boot, alpha=alpha, seed=seed)
        for name, r in res.items():
            results[name] = {k: r[k] for k in ("estimate", "low", "high", "n_boot_ok")}
    return results, reasons


def error_rates(df: pd.DataFrame, task: Task, probs: Any = None,
                by: Sequence[str] | None = None, threshold: float = 0.5,
                label_column: str = "label", n_conf_bins: int = 5) -> pd.DataFrame:
    """Errors per subgroup value (``by`` may name ``confidence_bin``, derived from probs).

    binary (``p >= threshold`` positive): n, n_pos, n_neg, fn, fp, fn_rate (fn / n_pos),
    fp_rate (fp / n_neg), error_rate; multiclass / multilabel (argmax, ties wrong): n,
    n_errors, error_rate. Rates with an empty denominator are NaN.
    """
    P = _probs_of(df, task, probs)
    y = _labels_of(df, task, label_column)
    if task.kind == "binary":
        pred = (P.reshape(-1) >= threshold).astype(np.int64)
    else:
        pred = argmax_labels(P)
    wrong = pred != y
    cols = _subgroup_columns(df, by, P, n_conf_bins, default=(*DEFAULT_BY, "confidence_bin"))
    rows = []
    for column, values in cols.items():
        for value in _values(values):
            m = (values == value).to_numpy()
            row: dict[str, Any] = {"subgroup_column": column, "value": str(value),
                                   "n": int(m.sum())}
            if task.kind == "binary":
                pos, neg = m & (y == 1), m & (y == 0)
                fn, fp = int(np.sum(pos & wrong)), int(np.sum(neg & wrong))
                row.update(n_pos=int(pos.sum()), n_neg=int(neg.sum()), fn=fn, fp=fp,
                           fn_rate=fn / pos.sum() if pos.any() else np.nan,
                           fp_rate=fp / neg.sum() if neg.any() else np.nan)
            row.update(n_errors=int(np.sum(m & wrong)), error_rate=float(np.mean(wrong[m])))
            rows.append(row)
    return pd.DataFrame(rows)
