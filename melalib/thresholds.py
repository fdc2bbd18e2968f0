"""Per-class thresholds for the thresholded macro F1, tuned without leaking labels.

MILK10k's official metric calls each class positive where its probability is above 0.5
(`metrics.thresholded_macro_f1`). Thresholds tuned per class on out-of-fold (OOF)
predictions raise it, but tuned on the rows they are scored on they flatter the figure. So:

- `nested_thresholds(y, probs, folds)`: for each held-out fold k, the thresholds tuned
  (`metrics.tune_thresholds`) on the OOF rows of the OTHER folds only; fold k's labels never
  reach its own thresholds;
- `nested_probs`: every fold's rows rescaled by its own thresholds (`bake`), so scoring them
  with the official 0.5 rule gives the nested figure; `nested_report` puts it beside the
  untuned one, both with group-resampled CIs;
- `bake(probs, thresholds)`: each class's probability mapped by a monotone, piecewise-linear
  map that sends its threshold to 0.5 (0 -> 0, 1 -> 1), so ``p > t`` exactly where the baked
  ``p' > 0.5``: a saved submission then carries the tuned thresholds under the official rule;
- `run_thresholds(run)`: a run's report, and the thresholds tuned on all of its OOF rows
  (what a submission of its test predictions bakes in: `melalib predict --tune-thresholds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import MetricError, multilabel_inputs
from .bootstrap import bootstrap_ci
from .metrics import thresholded_macro_f1, tune_thresholds
from .predictions import probabilities
from .runs import RunDir


def bake(probs: Any, thresholds: Sequence[float]) -> np.ndarray:
    """``probs`` (N, K) with class k's threshold moved to 0.5: ``p <= t`` -> ``0.5 p / t``,
    ``p > t`` -> ``0.5 + 0.5 (p - t) / (1 - t)``; strictly increasing per class, so ranks and
    AUCs are unchanged. Thresholds must lie in (0, 1)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if p.ndim != 2 or t.shape != (p.shape[1],):
        raise MetricError(f"bake: need probs (N, K) and K thresholds, got {p.shape} and "
                          f"{t.shape}")
    if not ((t > 0) & (t < 1)).all():
        raise MetricError(f"bake: thresholds must lie in (0, 1), got {t.tolist()}")
    # rounding never lifts a p <= t above 0.5, nor drops a p > t to 0.5
    low = np.minimum(0.5 * p / t, 0.5)
    high = np.maximum(0.5 + 0.5 * (p - t) / (1.0 - t), np.nextafter(0.5, 1.0))
    return np.clip(np.where(p <= t, low, high), 0.0, 1.0)


def nested_thresholds(y_true: Any, probs: Any, folds: Any,
                      grid: Sequence[float] | None = None) -> dict[int, np.ndarray]:
    """``{fold k: thresholds tuned on the rows of every other fold}`` (K per fold)."""
    Y, P = multilabel_inputs(y_true, probs, "nested_thresholds")
    f = np.asarray(folds)
    if f.shape != (len(P),):
        raise MetricError(f"nested_thresholds: folds has shape {f.shape}, expected ({len(P)},)")
    ks = np.unique(f)
    if len(ks) < 2:
        raise MetricError(f"nested_thresholds: needs at least 2 folds, got {ks.tolist()}")
    return {int(k): tune_thresholds(Y[f != k], P[f != k], grid) for k in ks}


def nested_probs(probs: Any, folds: Any, thresholds: dict[int, np.ndarray]) -> np.ndarray:
    """Each fold's rows of ``probs`` baked with that fold's thresholds (`nested_thresholds`)."""
    P = np.asarray(probs, dtype=np.float64)
    f = np.asarray(folds)
    out = np.empty_like(P)
    for k, t in thresholds.items():
        rows = f == k
        out[rows] = bake(P[rows], t)
    return out


@dataclass
class ThresholdReport:
    """The thresholded macro F1 untuned (0.5) and nested-tuned, each ``{estimate, low,
    high}``; the per-fold nested thresholds; the thresholds tuned on every row."""

    untuned: dict[str, float]
    nested: dict[str, float]
    fold_thresholds: dict[int, np.ndarray]
    all_rows: np.ndarray

    def summary(self, classes: Sequence[str]) -> dict[str, Any]:
        """Plain values (JSON): the two figures and the thresholds by class name."""
        def named(t: np.ndarray) -> dict[str, float]:
            return {c: float(v) for c, v in zip(classes, t, strict=True)}
        return {"untuned": self.untuned, "nested_tuned": self.nested,
                "fold_thresholds": {str(k): named(t) for k, t in self.fold_thresholds.items()},
                "thresholds_all_oof": named(self.all_rows)}


def nested_report(y_true: Any, probs: Any, folds: Any, groups: Any = None, n_boot: int = 1000,
                  grid: Sequence[float] | None = None, seed: int = 0) -> ThresholdReport:
    """`ThresholdReport` of OOF predictions: CIs resample ``groups`` (lesions / patients)."""
    Y, P = multilabel_inputs(y_true, probs, "nested_report")
    per_fold = nested_thresholds(Y, P, folds, grid)
    tuned = nested_probs(P, folds, per_fold)
    cis = [bootstrap_ci(thresholded_macro_f1, Y, p, groups, n_boot=n_boot, seed=seed)
           for p in (P, tuned)]
    pick = ("estimate", "low", "high")
    return ThresholdReport({k: cis[0][k] for k in pick}, {k: cis[1][k] for k in pick},
                           per_fold, tune_thresholds(Y, P, grid))


def run_thresholds(run: RunDir | str, n_boot: int = 1000) -> ThresholdReport:
    """`nested_report` of a run's pooled OOF predictions (a multilabel task: MILK10k)."""
    view = run if isinstance(run, RunDir) else RunDir.read(run)
    if view.task.kind != "multilabel":
        raise MetricError(f"per-class thresholds serve the multilabel thresholded macro F1; "
                          f"run {view.path} is {view.task.kind}")
    oof = view.oof()
    return nested_report(oof["label"].to_numpy(dtype=int), probabilities(view.task, oof),
                         oof["fold"].to_numpy(dtype=int), oof["group_id"].astype(str).to_numpy(),
                         n_boot=n_boot)
