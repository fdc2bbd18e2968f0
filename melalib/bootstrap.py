"""Group-aware bootstrap confidence intervals of the `melalib.metrics` metrics.

Whole groups (patients / lesions) are resampled with replacement, stratified (`Resampler`);
every metric is computed on the same replicates (`bootstrap_many`), and the interval is the
percentile interval of the replicates where the metric is defined (``n_boot_ok`` counts
them). The metrics with a vectorised replicate path (`batched_metric`: AUC, average
precision, pAUC, sensitivity / specificity, accuracy, balanced accuracy, the F1 scores,
macro one-vs-rest AUC) score all replicates at once from row-count weights, through the same
kernels as the metric functions where they compute the same quantity
(`metrics.auc_from_groups`, `metrics.ap_from_groups`, `metrics.f1_scores`); any other metric
is called on each replicate's rows.
`evaluate_with_ci` is the table every report uses (`DEFAULT_CI_METRICS` per task kind).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .arrays import (
    MetricError,
    argmax_labels,
    binary_inputs,
    group_weights,
    multiclass_inputs,
    multilabel_inputs,
    positions,
    tie_groups,
)
from .metrics import (
    METRIC_FUNCS,
    MetricFn,
    accuracy,
    ap_from_groups,
    auc_from_groups,
    balanced_accuracy,
    check_task_probs,
    f1_scores,
    macro_f1,
    metric_for,
    ovr_auc_macro,
    ovr_targets,
    partial_auc,
    pr_auc,
    roc_auc,
    sensitivity,
    specificity,
    threshold_vector,
    thresholded_macro_f1,
    weighted_f1,
)
from .tasks import Task


class Resampler:
    """Group-aware, stratified bootstrap of rows.

    Groups (patients / lesions) are drawn with replacement and bring all their rows. With
    ``stratify`` the groups are drawn separately per stratum: binary, groups holding any
    positive vs. the rest; otherwise, the majority class of the group (ties to the lower
    label). Each replicate keeps the number of groups per stratum.
    """

    def __init__(self, y: Any, groups: Any = None, stratify: bool = True,
                 binary: bool | None = None) -> None:
        a = np.asarray(y)
        labels = np.where(a.max(axis=1) > 0, a.argmax(axis=1), -1) if a.ndim == 2 and \
            a.shape[1] > 1 else a.reshape(-1).astype(np.int64)
        n = len(labels)
        if groups is None:
            self.group_index = np.arange(n)
        else:
            g = pd.Series(np.asarray(groups).reshape(-1) if not isinstance(groups, pd.Series)
                          else groups.to_numpy())
            if len(g) != n:
                raise MetricError(f"bootstrap: groups has {len(g)} rows but y_true has {n}")
            if g.isna().any():
                raise MetricError(f"bootstrap: groups are missing in rows "
                                  f"{positions(g.isna().to_numpy())}")
            self.group_index = pd.factorize(g)[0]
        n_groups = int(self.group_index.max()) + 1 if n else 0
        if binary is None:
            binary = set(np.unique(labels).tolist()) <= {0, 1}
        if not stratify:
            strata = np.zeros(n_groups, dtype=np.int64)
        elif binary:
            strata = np.zeros(n_groups, dtype=np.int64)
            np.maximum.at(strata, self.group_index, (labels == 1).astype(np.int64))
        else:
            shifted = labels + 1  # -1 (no class) becomes its own stratum 0
            table = np.zeros((n_groups, int(shifted.max()) + 1), dtype=np.int64)
            np.add.at(table, (self.group_index, shifted), 1)
            strata = table.argmax(axis=1)
        self.strata = [np.flatnonzero(strata == s) for s in np.unique(strata)]
        self.n_rows, self.n_groups = n, n_groups

    def chunks(self, n_boot: int, seed: int = 0, max_cells: int = 2_000_000
               ) -> Iterator[np.ndarray]:
        """Yield row-count matrices (b, N) (int32) whose rows sum to the replicates."""
        rng = np.random.default_rng(seed)
        size = max(1, min(n_boot, max_cells // max(self.n_rows, 1)))
        done = 0
        while done < n_boot:
            b = min(size, n_boot - done)
            gc = np.zeros((b, self.n_groups), dtype=np.int32)
            for ids in self.strata:
                m = len(ids)
                draws = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
                gc[:, ids] = np.bincount(draws.ravel(), minlength=b * m).reshape(b, m)
            yield gc[:, self.group_index]
            done += b


def _binary_groups(y: Any, probs: Any, counts: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    yb, p = binary_inputs(y, probs, "bootstrap", need_both=False)
    order, starts, _ = tie_groups(p)
    return group_weights(yb, order, starts, counts)


def _pauc_from_groups(P: np.ndarray, N: np.ndarray, min_tpr: float = 0.8) -> np.ndarray:
    """Area between the (piecewise-linear) ROC curve and TPR = min_tpr, per replicate; the
    geometry the flipped Kaggle formula of `partial_auc` computes."""
    zero = np.zeros((len(P), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.hstack([zero, np.cumsum(P, axis=1)]) / P.sum(axis=1, keepdims=True)
        fpr = np.hstack([zero, np.cumsum(N, axis=1)]) / N.sum(axis=1, keepdims=True)
        a, b, w = tpr[:, :-1] - min_tpr, tpr[:, 1:] - min_tpr, np.diff(fpr, axis=1)
        area = np.where(a >= 0, w * (a + b) / 2,
                        np.where(b > 0, w * b**2 / (2 * np.where(b > a, b - a, 1.0)), 0.0))
    ok = (P.sum(axis=1) > 0) & (N.sum(axis=1) > 0)
    return np.where(ok, area.sum(axis=1), np.nan)


def _batched_threshold(y: Any, probs: Any, counts: np.ndarray, threshold: float = 0.5,
                       which: str = "sensitivity") -> np.ndarray:
    yb, p = binary_inputs(y, probs, "bootstrap", need_both=False)
    cls = 1 if which == "sensitivity" else 0
    hit = ((p >= threshold) == bool(cls)) & (yb == cls)
    w = counts.astype(np.float64)
    den = w @ (yb == cls)
    return np.where(den > 0, (w @ hit) / np.where(den > 0, den, 1.0), np.nan)


def _batched_confusion(y: Any, probs: Any, counts: np.ndarray, which: str) -> np.ndarray:
    """accuracy / balanced_accuracy / macro_f1 / weighted_f1 from weighted confusions."""
    yl, P = multiclass_inputs(y, probs, "bootstrap")
    k = P.shape[1]
    pred = np.where(argmax_labels(P) < 0, k, argmax_labels(P))
    codes = np.zeros((len(yl), k * (k + 1)))
    codes[np.arange(len(yl)), yl * (k + 1) + pred] = 1.0
    C = (counts.astype(np.float64) @ codes).reshape(len(counts), k, k + 1)
    tp = C[:, np.arange(k), np.arange(k)]
    support, n_pred = C.sum(axis=2), C[:, :, :k].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if which == "accuracy":
            return tp.sum(axis=1) / support.sum(axis=1)
        if which == "balanced_accuracy":
            recall = np.where(support > 0, tp / np.where(support > 0, support, 1.0), 0.0)
            return recall.sum(axis=1) / (support > 0).sum(axis=1)
        den = n_pred + support
        f1 = f1_scores(tp, den)
        if which == "weighted_f1":
            return (f1 * support).sum(axis=1) / support.sum(axis=1)
        return f1.sum(axis=1) / (den > 0).sum(axis=1)


def _batched_thresholded_f1(y: Any, probs: Any, counts: np.ndarray,
                            thresholds: float | Sequence[float] = 0.5) -> np.ndarray:
    Y, P = multilabel_inputs(y, probs, "bootstrap")
    pred = np.greater(P, threshold_vector(thresholds, P.shape[1], "bootstrap"))
    w = counts.astype(np.float64)
    return f1_scores(w @ (pred & (Y == 1)), w @ pred + w @ Y).mean(axis=1)


def _batched_ovr_auc(y: Any, probs: Any, counts: np.ndarray) -> np.ndarray:
    Y, P = ovr_targets(y, probs, "bootstrap")
    per_class = []
    for k in range(P.shape[1]):
        order, starts, _ = tie_groups(P[:, k])
        per_class.append(auc_from_groups(*group_weights(Y[:, k], order, starts, counts)))
    vals = np.column_stack(per_class)
    ok = np.isfinite(vals)
    # defined when >= 2 classes have an AUC (>= 1 for a 0/1 multilabel matrix), as the scalar
    need = 1 if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] > 1 else 2
    mean = np.where(ok, vals, 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
    return np.where(ok.sum(axis=1) >= need, mean, np.nan)


# Vectorised replicate paths: batched(y, probs, counts (b, N), **keywords) -> (b,), equal to
# the metric on each replicate's rows (tests check this); NaN marks an undefined replicate.
_BATCHED: dict[Callable, Callable] = {
    roc_auc: lambda y, p, c: auc_from_groups(*_binary_groups(y, p, c)),
    pr_auc: lambda y, p, c: ap_from_groups(*_binary_groups(y, p, c)),
    partial_auc: lambda y, p, c, min_tpr=0.8: _pauc_from_groups(*_binary_groups(y, p, c),
                                                                min_tpr=min_tpr),
    sensitivity: functools.partial(_batched_threshold, which="sensitivity"),
    specificity: functools.partial(_batched_threshold, which="specificity"),
    accuracy: functools.partial(_batched_confusion, which="accuracy"),
    balanced_accuracy: functools.partial(_batched_confusion, which="balanced_accuracy"),
    macro_f1: functools.partial(_batched_confusion, which="macro_f1"),
    weighted_f1: functools.partial(_batched_confusion, which="weighted_f1"),
    thresholded_macro_f1: _batched_thresholded_f1,
    ovr_auc_macro: _batched_ovr_auc,
}


def batched_metric(fn: MetricFn) -> Callable[..., np.ndarray] | None:
    """The vectorised replicate function of ``fn`` (also through `functools.partial` with
    keyword arguments), or None when it has none."""
    kwargs: dict[str, Any] = {}
    if isinstance(fn, functools.partial) and not fn.args:
        fn, kwargs = fn.func, dict(fn.keywords)
    batched = _BATCHED.get(fn)
    return None if batched is None else functools.partial(batched, **kwargs)


def _resolve(metric: str | MetricFn) -> MetricFn:
    if isinstance(metric, str):
        if metric not in METRIC_FUNCS:
            raise MetricError(f"unknown metric {metric!r}; known: {sorted(METRIC_FUNCS)}")
        return METRIC_FUNCS[metric]
    return metric


def _replicate_values(fn: MetricFn, y: Any, probs: Any, counts: np.ndarray) -> np.ndarray:
    """Metric per replicate (b,); NaN where the metric is undefined on that replicate."""
    batched = batched_metric(fn)
    if batched is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = batched(y, probs, counts)
        return np.where(np.isfinite(values), values, np.nan)
    y_arr, p_arr = np.asarray(y), np.asarray(probs)
    rows = np.arange(counts.shape[1])
    out = np.full(len(counts), np.nan)
    for i, c in enumerate(counts):
        idx = np.repeat(rows, c)
        try:
            out[i] = float(fn(y_arr[idx], p_arr[idx]))
        except MetricError:
            continue
    return np.where(np.isfinite(out), out, np.nan)


def bootstrap_many(metrics: dict[str, MetricFn], y_true: Any, probs: Any, groups: Any = None,
                   n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                   stratify: bool = True) -> dict[str, dict[str, float]]:
    """`bootstrap_ci` for several metrics on the same replicates."""
    if n_boot < 0 or not 0.0 < alpha < 1.0:
        raise MetricError(f"bootstrap: need n_boot >= 0 and 0 < alpha < 1, got {n_boot}, {alpha}")
    if len(np.asarray(y_true)) != len(np.asarray(probs)):
        raise MetricError(f"bootstrap: y_true has {len(np.asarray(y_true))} rows but probs has "
                          f"{len(np.asarray(probs))}")
    fns = {name: _resolve(fn) for name, fn in metrics.items()}
    estimates = {name: float(fn(y_true, probs)) for name, fn in fns.items()}
    values: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    if n_boot:
        binary = np.ndim(probs) == 1 or (np.ndim(probs) == 2 and np.shape(probs)[1] == 1)
        sampler = Resampler(y_true, groups, stratify=stratify, binary=binary)
        for counts in sampler.chunks(n_boot, seed):
            for name, fn in fns.items():
                values[name].append(_replicate_values(fn, y_true, probs, counts))
    out = {}
    for name in fns:
        v = np.concatenate(values[name]) if values[name] else np.empty(0)
        v = v[np.isfinite(v)]
        lo, hi = (np.quantile(v, [alpha / 2, 1 - alpha / 2]) if len(v) else (np.nan, np.nan))
        out[name] = {"estimate": estimates[name], "low": float(lo), "high": float(hi),
                     "n_boot_ok": len(v), "n_boot": n_boot}
    return out


def bootstrap_ci(metric_fn: str | MetricFn, y_true: Any, probs: Any, groups: Any = None,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, stratify: bool = True
                 ) -> dict[str, float]:
    """Percentile bootstrap CI: dict(estimate, low, high, n_boot_ok, n_boot).

    Resamples ``groups`` (patients / lesions; rows when None) with replacement, stratified
    (see `Resampler`). Replicates where the metric is undefined are skipped and counted
    (``n_boot_ok`` < ``n_boot``); the estimate itself raises when undefined. AUC, average
    precision and macro one-vs-rest AUC run vectorised over replicates.
    """
    return bootstrap_many({"m": metric_fn}, y_true, probs, groups, n_boot, alpha, seed,
                          stratify)["m"]


DEFAULT_CI_METRICS = {
    "binary": ("roc_auc", "pr_auc", "pauc_80", "sensitivity", "specificity"),
    "multiclass": ("accuracy", "balanced_accuracy", "macro_f1", "ovr_auc_macro"),
    "multilabel": ("thresholded_macro_f1", "ovr_auc_macro"),
}


def evaluate_with_ci(task: Task, y_true: Any, probs: Any, groups: Any = None,
                     metrics: Sequence[str] | None = None, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, threshold: float = 0.5,
                     stratify: bool = True) -> pd.DataFrame:
    """Metrics with group-aware bootstrap CIs: DataFrame(metric, estimate, low, high,
    n_boot_ok, n_boot), all metrics on the same replicates."""
    check_task_probs(task, probs)
    names = list(metrics) if metrics is not None else list(DEFAULT_CI_METRICS[task.kind])
    fns = {name: metric_for(task, name, threshold) for name in names}
    res = bootstrap_many(fns, y_true, probs, groups, n_boot, alpha, seed, stratify)
    return pd.DataFrame([{"metric": name, **res[name]} for name in names])
