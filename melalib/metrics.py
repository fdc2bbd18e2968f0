"""Metrics for binary, multiclass and multilabel lesion tasks.

Predictions follow `melalib.tasks`: binary ``probs`` is (N,) or (N, 1) = P(positive);
multiclass (N, K) rows of class probabilities; multilabel (N, K) independent sigmoids.
``y_true`` holds integer labels (N,) in 0..K-1; multilabel metrics also take a (N, K) 0/1
matrix. Every metric validates its input and raises `MetricError` (a `ValueError`) saying
exactly what is wrong, e.g. ``roc_auc needs both classes; y_true has only class 0 (n=12)``.

Conventions:

- binary thresholds: ``p >= threshold`` is a positive call (scikit-learn's ROC convention,
  so a threshold returned by `threshold_for_sensitivity` is one of the scores);
- multiclass predictions are the argmax; a row whose maximum is shared by several classes
  (an exact tie) is scored as wrong, as the ISIC scorer does (`argmax_labels` gives -1);
- multilabel (MILK10k): each class is positive when its probability is *above* its
  threshold (``p > t``, the ISIC scorer's ``gt(0.5)``); a lesion with no class above
  threshold is predicted negative for every class and so misses its true class.

Calibration lives in `melalib.calibration`, subgroup tables in `melalib.subgroups`, group-aware
bootstrap CIs in `melalib.bootstrap` (which shares the kernels below: `auc_from_groups`,
`ap_from_groups`, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from .arrays import (
    MetricError,
    argmax_labels,
    binary_inputs,
    check_labels,
    group_weights,
    multiclass_inputs,
    multilabel_inputs,
    positions,
    tie_groups,
)
from .calibration import brier_score, expected_calibration_error
from .tasks import Task

MetricFn = Callable[[Any, Any], float]


# ------------------------------------------------------------------------ binary metrics
def auc_from_groups(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count 1/2) from per-tie-group weights in descending score
    (`arrays.group_weights`), one value per row of weights: `roc_auc` (one row) and the
    bootstrap's replicates (`melalib.bootstrap`); NaN where a row lacks a class."""
    cn = np.cumsum(N, axis=1)
    below = cn[:, -1:] - cn
    num = (P * (below + 0.5 * N)).sum(axis=1)
    den = P.sum(axis=1) * N.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def ap_from_groups(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Average precision (step-wise, as scikit-learn) from per-tie-group weights, one value
    per row: `pr_auc` and the bootstrap's replicates; NaN where a row lacks a class."""
    tp, fp = np.cumsum(P, axis=1), np.cumsum(N, axis=1)
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        recall_step = P / np.where(total > 0, total, 1.0)
    ap = (recall_step * precision).sum(axis=1)
    return np.where((total[:, 0] > 0) & (N.sum(axis=1) > 0), ap, np.nan)


def roc_auc(y_true: Any, probs: Any) -> float:
    """Area under the ROC curve (ties count one half; equals scikit-learn's)."""
    y, p = binary_inputs(y_true, probs, "roc_auc")
    order, starts, _ = tie_groups(p)
    return float(auc_from_groups(*group_weights(y, order, starts))[0])


def pr_auc(y_true: Any, probs: Any) -> float:
    """Average precision (scikit-learn's ``average_precision_score``, no interpolation)."""
    y, p = binary_inputs(y_true, probs, "pr_auc")
    order, starts, _ = tie_groups(p)
    return float(ap_from_groups(*group_weights(y, order, starts))[0])


def partial_auc(y_true: Any, probs: Any, min_tpr: float = 0.8) -> float:
    """ISIC 2024 partial AUC above ``min_tpr`` true-positive rate, range [0, 1 - min_tpr].

    The area between the ROC curve and the horizontal line TPR = ``min_tpr``, as the
    official Kaggle metric computes it: flip labels and scores, take scikit-learn's
    McClish-standardised AUC up to FPR = 1 - min_tpr and undo the standardisation.
    """
    if not 0.0 <= min_tpr < 1.0:
        raise MetricError(f"partial_auc: min_tpr must be in [0, 1), got {min_tpr}")
    y, p = binary_inputs(y_true, probs, "partial_auc")
    max_fpr = abs(1.0 - min_tpr)
    scaled = roc_auc_score(np.abs(y - 1), -p, max_fpr=max_fpr)
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def threshold_metrics(y_true: Any, probs: Any, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and the four counts with ``p >= threshold``
    called positive; a ratio with an empty denominator is NaN."""
    if not np.isfinite(threshold):
        raise MetricError(f"threshold_metrics: threshold must be finite, got {threshold}")
    y, p = binary_inputs(y_true, probs, "threshold_metrics", need_both=False)
    pred = p >= threshold
    pos = y == 1
    tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & ~pos))
    fn, tn = int(np.sum(~pred & pos)), int(np.sum(~pred & ~pos))
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def sensitivity(y_true: Any, probs: Any, threshold: float = 0.5) -> float:
    """True-positive rate at ``p >= threshold``; raises when y_true has no positive."""
    y, _ = binary_inputs(y_true, probs, "sensitivity", need_both=False)
    if not (y == 1).any():
        raise MetricError(f"sensitivity needs positives; y_true has only class 0 (n={len(y)})")
    return threshold_metrics(y_true, probs, threshold)["sensitivity"]


def specificity(y_true: Any, probs: Any, threshold: float = 0.5) -> float:
    """True-negative rate at ``p >= threshold``; raises when y_true has no negative."""
    y, _ = binary_inputs(y_true, probs, "specificity", need_both=False)
    if not (y == 0).any():
        raise MetricError(f"specificity needs negatives; y_true has only class 1 (n={len(y)})")
    return threshold_metrics(y_true, probs, threshold)["specificity"]


def _roc_points(y_true: Any, probs: Any, name: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, TPR, FPR) at every distinct score (``p >= t`` positive)."""
    y, p = binary_inputs(y_true, probs, name)
    order, starts, values = tie_groups(p)
    P, N = group_weights(y, order, starts)
    tp, fp = np.cumsum(P[0]), np.cumsum(N[0])
    return values, tp / tp[-1], fp / fp[-1]


def threshold_for_sensitivity(y_true: Any, probs: Any, target: float = 0.9
                              ) -> tuple[float, float, float]:
    """The highest threshold whose sensitivity is >= ``target``:
    (threshold, achieved sensitivity, specificity)."""
    if not 0.0 < target <= 1.0:
        raise MetricError(f"threshold_for_sensitivity: target must be in (0, 1], got {target}")
    thresholds, tpr, fpr = _roc_points(y_true, probs, "threshold_for_sensitivity")
    i = int(np.argmax(tpr >= target - 1e-12))
    return float(thresholds[i]), float(tpr[i]), float(1.0 - fpr[i])


def youden_threshold(y_true: Any, probs: Any) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (the highest
    such threshold when several tie)."""
    thresholds, tpr, fpr = _roc_points(y_true, probs, "youden_threshold")
    return float(thresholds[int(np.argmax(tpr - fpr))])


# -------------------------------------------------------------------- multiclass metrics
def _per_class_counts(y: np.ndarray, pred: np.ndarray, k: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted count, support) per class; ties (-1) predict nothing."""
    tp = np.bincount(y[pred == y], minlength=k)
    n_pred = np.bincount(pred[pred >= 0], minlength=k)
    return tp, n_pred, np.bincount(y, minlength=k)


def accuracy(y_true: Any, probs: Any) -> float:
    """Share of rows whose argmax is the true class (ties wrong)."""
    y, P = multiclass_inputs(y_true, probs, "accuracy")
    return float(np.mean(argmax_labels(P) == y))


def balanced_accuracy(y_true: Any, probs: Any) -> float:
    """Mean per-class recall over the classes present in y_true (ISIC's balanced multiclass
    accuracy = scikit-learn's ``balanced_accuracy_score``); argmax ties count as wrong."""
    y, P = multiclass_inputs(y_true, probs, "balanced_accuracy")
    tp, _, support = _per_class_counts(y, argmax_labels(P), P.shape[1])
    present = support > 0
    return float(np.mean(tp[present] / support[present]))


def f1_scores(tp: np.ndarray, den: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (predicted + true) from per-class counts ``tp`` and ``den`` = predicted +
    true (whole counts, or a bootstrap replicate's row-count weights: any shape); 0 where a
    class is neither true nor predicted, as scikit-learn's. The one F1 formula of the
    multiclass, per-class and thresholded multilabel F1 scores and of their bootstrap
    replicates (`melalib.bootstrap`)."""
    return np.where(den > 0, 2.0 * tp / np.where(den > 0, den, 1), 0.0)


def _f1_per_class(y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1 per class, support, and the mask of classes in y_true or predicted."""
    tp, n_pred, support = _per_class_counts(y, argmax_labels(P), P.shape[1])
    f1 = f1_scores(tp, n_pred + support)
    return f1, support, (support > 0) | (n_pred > 0)


def macro_f1(y_true: Any, probs: Any) -> float:
    """Unweighted mean F1 over the classes in y_true or predicted (scikit-learn's
    ``f1_score(average='macro')`` on the argmax; ties predict no class)."""
    y, P = multiclass_inputs(y_true, probs, "macro_f1")
    f1, _, used = _f1_per_class(y, P)
    return float(np.mean(f1[used]))


def weighted_f1(y_true: Any, probs: Any) -> float:
    """Support-weighted mean F1 (scikit-learn's ``average='weighted'``)."""
    y, P = multiclass_inputs(y_true, probs, "weighted_f1")
    f1, support, _ = _f1_per_class(y, P)
    return float(np.sum(f1 * support) / support.sum())


def ovr_targets(y_true: Any, probs: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) 0/1 one-vs-rest targets and probs, from labels or a multilabel matrix."""
    if np.asarray(y_true).ndim == 2 and np.asarray(y_true).shape[1] > 1:
        return multilabel_inputs(y_true, probs, name)
    y, P = multiclass_inputs(y_true, probs, name)
    return np.eye(P.shape[1], dtype=np.int64)[y], P


def _ovr_mean(y_true: Any, probs: Any, name: str, fn: Callable) -> float:
    Y, P = ovr_targets(y_true, probs, name)
    defined = (Y.min(axis=0) == 0) & (Y.max(axis=0) == 1)
    if defined.sum() == 0 or (np.asarray(y_true).ndim == 1 and defined.sum() < 2):
        present = np.flatnonzero(Y.max(axis=0) == 1).tolist()
        raise MetricError(f"{name} needs at least 2 classes in y_true; it has only "
                          f"class(es) {present} (n={len(Y)})")
    return float(np.mean([fn(Y[:, k], P[:, k]) for k in np.flatnonzero(defined)]))


def ovr_auc_macro(y_true: Any, probs: Any) -> float:
    """Mean one-vs-rest ROC AUC over the classes present in y_true (a class absent from
    y_true is left out, where scikit-learn would raise)."""
    return _ovr_mean(y_true, probs, "ovr_auc_macro", roc_auc)


def ovr_pr_auc_macro(y_true: Any, probs: Any) -> float:
    """Mean one-vs-rest average precision over the classes present in y_true."""
    return _ovr_mean(y_true, probs, "ovr_pr_auc_macro", pr_auc)


def confusion(y_true: Any, pred: Any, k: int, include_ties: bool = False) -> np.ndarray:
    """Counts (k, k): rows true class, columns predicted class. Predictions of -1 (argmax
    ties) raise unless ``include_ties``, which adds a last column counting them."""
    y = check_labels(y_true, "confusion", k)
    pr = np.asarray(pred)
    if pr.ndim != 1 or len(pr) != len(y):
        raise MetricError(f"confusion: pred must be 1-D with {len(y)} labels, got {pr.shape}")
    pr = check_labels(np.where(pr == -1, k, pr), "confusion", k + 1)
    if (pr == k).any() and not include_ties:
        raise MetricError(f"confusion: pred holds -1 (tied argmax) in rows {positions(pr == k)}"
                          "; pass include_ties=True to count them in an extra column")
    m = np.bincount(y * (k + 1) + pr, minlength=k * (k + 1)).reshape(k, k + 1)
    return m if include_ties else m[:, :k]


def per_class_report(y_true: Any, probs: Any, class_names: Sequence[str] | None = None
                     ) -> pd.DataFrame:
    """Per class: precision, recall, f1, support, n_pred and one-vs-rest AUC (NaN where the
    class is absent from y_true or is its only class)."""
    y, P = multiclass_inputs(y_true, probs, "per_class_report")
    k = P.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise MetricError(f"per_class_report: {len(names)} class names for {k} columns")
    tp, n_pred, support = _per_class_counts(y, argmax_labels(P), k)
    precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    f1 = f1_scores(tp, n_pred + support)
    auc = [roc_auc((y == c).astype(int), P[:, c]) if 0 < support[c] < len(y) else np.nan
           for c in range(k)]
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1,
                         "support": support, "n_pred": n_pred, "auc": auc},
                        index=pd.Index(names, name="class"))


# -------------------------------------------------------------------- multilabel metrics
def threshold_vector(thresholds: float | Sequence[float], k: int, name: str) -> np.ndarray:
    """``thresholds`` (one number, or one per class) as K finite per-class thresholds;
    MetricError naming ``name`` otherwise."""
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (k,)) if np.ndim(
        thresholds) == 0 else np.asarray(thresholds, dtype=np.float64)
    if t.shape != (k,) or not np.isfinite(t).all():
        raise MetricError(f"{name}: thresholds must be a number or {k} finite numbers, "
                          f"got {np.shape(thresholds)}")
    return t


def _binary_f1_columns(Y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    tp = np.sum(pred & (Y == 1), axis=0)
    return f1_scores(tp, pred.sum(axis=0) + Y.sum(axis=0))


def thresholded_f1_per_class(y_true: Any, probs: Any,
                             thresholds: float | Sequence[float] = 0.5) -> np.ndarray:
    """Each class's F1 with the class positive where ``p > threshold`` (per class): the K
    values `thresholded_macro_f1` averages (a class never true nor predicted scores 0)."""
    Y, P = multilabel_inputs(y_true, probs, "thresholded_f1_per_class")
    t = threshold_vector(thresholds, P.shape[1], "thresholded_f1_per_class")
    return _binary_f1_columns(Y, np.greater(P, t))


def thresholded_macro_f1(y_true: Any, probs: Any, thresholds: float | Sequence[float] = 0.5
                         ) -> float:
    """MILK10k challenge metric: each class positive where ``p > threshold`` (per class),
    F1 per class, unweighted mean over all K classes (a class never true nor predicted
    scores 0, as scikit-learn's ``f1_score(average='macro')`` on the 0/1 matrix)."""
    return float(np.mean(thresholded_f1_per_class(y_true, probs, thresholds)))


def tune_thresholds(y_true: Any, probs: Any, grid: Sequence[float] | None = None) -> np.ndarray:
    """Per-class threshold from ``grid`` maximising that class's F1 (``p > t``); fit on OOF
    predictions only. Ties go to the threshold nearest 0.5."""
    Y, P = multilabel_inputs(y_true, probs, "tune_thresholds")
    g = np.asarray(np.linspace(0.05, 0.95, 19) if grid is None else grid, dtype=np.float64)
    if g.ndim != 1 or len(g) == 0 or not np.isfinite(g).all():
        raise MetricError(f"tune_thresholds: grid must be a non-empty list of numbers, got {g!r}")
    g = g[np.argsort(np.abs(g - 0.5), kind="mergesort")]  # nearest 0.5 first wins ties
    best = np.empty(P.shape[1])
    for k in range(P.shape[1]):
        pred = P[None, :, k] > g[:, None]  # (G, N)
        tp = np.sum(pred & (Y[None, :, k] == 1), axis=1)
        f1 = f1_scores(tp, pred.sum(axis=1) + Y[:, k].sum())
        best[k] = g[int(np.argmax(f1))]
    return best


# ---------------------------------------------------------------------- task dispatching
METRIC_FUNCS: dict[str, MetricFn] = {
    "roc_auc": roc_auc, "pr_auc": pr_auc, "pauc_80": partial_auc,
    "sensitivity": sensitivity, "specificity": specificity,
    "accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1,
    "weighted_f1": weighted_f1, "ovr_auc_macro": ovr_auc_macro,
    "ovr_pr_auc_macro": ovr_pr_auc_macro, "thresholded_macro_f1": thresholded_macro_f1,
}


def check_task_probs(task: Task, probs: Any) -> None:
    """Raise MetricError when the shape of ``probs`` does not fit ``task``."""
    shape = np.shape(probs)
    if task.kind == "binary":
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return
        raise MetricError(f"task {task.name!r} is binary: probs must be (N,) or (N, 1) = "
                          f"P({task.classes[1]}), got {shape}")
    if len(shape) != 2 or shape[1] != task.n_classes:
        raise MetricError(f"task {task.name!r} has {task.n_classes} classes: probs must be "
                          f"(N, {task.n_classes}), got {shape}")


def _bind(fn: MetricFn, **kwargs: Any) -> MetricFn:
    """``fn`` with keyword arguments fixed, keeping its name for tables and errors."""
    return functools.update_wrapper(functools.partial(fn, **kwargs), fn)


def metric_for(task: Task, name: str, threshold: float = 0.5) -> MetricFn:
    """The function scoring ``name`` for this task's kind (``roc_auc`` on a multiclass or
    multilabel task is the macro one-vs-rest AUC; threshold metrics use ``threshold``)."""
    if task.kind != "binary":
        name = {"roc_auc": "ovr_auc_macro", "pr_auc": "ovr_pr_auc_macro"}.get(name, name)
    if name not in METRIC_FUNCS:
        raise MetricError(f"unknown metric {name!r}; known: {sorted(METRIC_FUNCS)}")
    if task.kind != "binary" and name in ("pauc_80", "sensitivity", "specificity"):
        raise MetricError(f"{name} is a binary metric; task {task.name!r} is {task.kind}")
    if task.kind == "binary" and name in ("ovr_auc_macro", "ovr_pr_auc_macro",
                                          "thresholded_macro_f1"):
        raise MetricError(f"{name} needs (N, K) probabilities; task {task.name!r} is binary")
    if name in ("sensitivity", "specificity"):
        return _bind(METRIC_FUNCS[name], threshold=threshold)
    if name == "thresholded_macro_f1":
        return _bind(thresholded_macro_f1, thresholds=threshold)
    return METRIC_FUNCS[name]


def chance_level(metric: str, n_classes: int = 2) -> float | None:
    """What a model that ignores its inputs scores on ``metric``: 0.5 for a ROC AUC (also
    macro one-vs-rest), 1 / K for balanced accuracy; None where it depends on the class
    balance (accuracy, PR AUC, F1, ...)."""
    if metric in ("roc_auc", "ovr_auc_macro"):
        return 0.5
    if metric == "balanced_accuracy":
        return 1.0 / n_classes
    return None


def primary_metric(task: Task, y_true: Any, probs: Any) -> float:
    """``task.primary_metric`` on these predictions (called every epoch: fast; raises
    MetricError when undefined on this fold, e.g. one class only)."""
    check_task_probs(task, probs)
    return metric_for(task, task.primary_metric)(y_true, probs)


def evaluate(task: Task, y_true: Any, probs: Any, threshold: float = 0.5) -> dict[str, float]:
    """Every headline metric for the task's kind, as plain floats (counts as ints).

    binary: n, n_pos, prevalence, roc_auc, pr_auc, pauc_80, threshold, sensitivity,
    specificity, ppv, npv (at ``threshold``), sens90_threshold / _sensitivity /
    _specificity, youden_threshold / _sensitivity / _specificity, brier, ece.
    multiclass: n, n_tied, accuracy, balanced_accuracy, macro_f1, weighted_f1,
    ovr_auc_macro, brier, ece (top-label). multilabel: n, thresholded_macro_f1 (each class
    at ``threshold``), ovr_auc_macro, and accuracy, balanced_accuracy, macro_f1 of the
    argmax when every row has one true class.
    """
    check_task_probs(task, probs)
    out: dict[str, float] = {}
    if task.kind == "binary":
        y, p = binary_inputs(y_true, probs, "evaluate")
        at = threshold_metrics(y, p, threshold)
        s90 = threshold_for_sensitivity(y, p, 0.9)
        yt = youden_threshold(y, p)
        at_y = threshold_metrics(y, p, yt)
        out.update(n=len(y), n_pos=int(y.sum()), prevalence=float(y.mean()),
                   roc_auc=roc_auc(y, p), pr_auc=pr_auc(y, p), pauc_80=partial_auc(y, p, 0.8),
                   threshold=float(threshold),
                   **{k: at[k] for k in ("sensitivity", "specificity", "ppv", "npv")},
                   sens90_threshold=s90[0], sens90_sensitivity=s90[1],
                   sens90_specificity=s90[2], youden_threshold=yt,
                   youden_sensitivity=at_y["sensitivity"],
                   youden_specificity=at_y["specificity"],
                   brier=brier_score(y, p), ece=expected_calibration_error(y, p))
        return out
    if task.kind == "multilabel":
        Y, P = multilabel_inputs(y_true, probs, "evaluate")
        out.update(n=len(Y), thresholded_macro_f1=thresholded_macro_f1(Y, P, threshold),
                   ovr_auc_macro=ovr_auc_macro(Y, P))
        single = (Y.sum(axis=1) == 1).all()
        if single:  # one true class per lesion (MILK10k): argmax metrics are defined too
            y = Y.argmax(axis=1)
            out.update(accuracy=accuracy(y, P), balanced_accuracy=balanced_accuracy(y, P),
                       macro_f1=macro_f1(y, P))
        return out
    y, P = multiclass_inputs(y_true, probs, "evaluate")
    out.update(n=len(y), n_tied=int(np.sum(argmax_labels(P) == -1)),
               accuracy=accuracy(y, P), balanced_accuracy=balanced_accuracy(y, P),
               macro_f1=macro_f1(y, P), weighted_f1=weighted_f1(y, P),
               ovr_auc_macro=ovr_auc_macro(y, P), brier=brier_score(y, P),
               ece=expected_calibration_error(y, P))
    return out
